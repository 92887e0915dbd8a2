//! The vocabulary of the endpoint inventory, shared by the agent (which observes each exchange),
//! the operator (which adds up what every node saw in `ApiMonitor` status) and the OpenAPI
//! export: how requests present credentials, and the buckets latency is counted in.

/// How a request presented credentials (the first match per header; a request may present
/// several). Only the scheme is kept, never the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthScheme {
    /// None of the headers below.
    None,
    /// `Authorization: Bearer …`
    Bearer,
    /// `Authorization: Basic …`
    Basic,
    /// `Authorization: Digest …`
    Digest,
    /// `Authorization: Negotiate …` or `NTLM …`
    Negotiate,
    /// `Authorization` with any other scheme.
    OtherAuthorization,
    /// An API key in `X-Api-Key`.
    XApiKey,
    /// An API key in `Api-Key`.
    ApiKey,
    /// A token in `X-Auth-Token`.
    XAuthToken,
    /// A token in `X-Access-Token`.
    XAccessToken,
    /// A `Cookie` header (a session, or only tracking: the inventory does not tell).
    Cookie,
}

impl AuthScheme {
    pub const ALL: [AuthScheme; 11] = [
        AuthScheme::None,
        AuthScheme::Bearer,
        AuthScheme::Basic,
        AuthScheme::Digest,
        AuthScheme::Negotiate,
        AuthScheme::OtherAuthorization,
        AuthScheme::XApiKey,
        AuthScheme::ApiKey,
        AuthScheme::XAuthToken,
        AuthScheme::XAccessToken,
        AuthScheme::Cookie,
    ];

    /// The name in status and reports: the scheme for `Authorization`, the header's name for
    /// API keys.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::None => "none",
            AuthScheme::Bearer => "bearer",
            AuthScheme::Basic => "basic",
            AuthScheme::Digest => "digest",
            AuthScheme::Negotiate => "negotiate",
            AuthScheme::OtherAuthorization => "authorization",
            AuthScheme::XApiKey => "x-api-key",
            AuthScheme::ApiKey => "api-key",
            AuthScheme::XAuthToken => "x-auth-token",
            AuthScheme::XAccessToken => "x-access-token",
            AuthScheme::Cookie => "cookie",
        }
    }

    pub fn parse(name: &str) -> Option<AuthScheme> {
        AuthScheme::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// This scheme's bit in a set of schemes ([`AuthScheme::from_bits`]).
    pub const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The schemes of a set built with [`AuthScheme::bit`], in the order of [`AuthScheme::ALL`].
    pub fn from_bits(bits: u16) -> impl Iterator<Item = AuthScheme> {
        AuthScheme::ALL.into_iter().filter(move |s| bits & s.bit() != 0)
    }

    /// The scheme a request header presents, if it presents one: `name` in any case, `value`
    /// the field's value (only the scheme word of `Authorization` is read).
    pub fn of_header(name: &str, value: &str) -> Option<AuthScheme> {
        let scheme = match name.len() {
            6 if name.eq_ignore_ascii_case("cookie") => AuthScheme::Cookie,
            7 if name.eq_ignore_ascii_case("api-key") => AuthScheme::ApiKey,
            9 if name.eq_ignore_ascii_case("x-api-key") => AuthScheme::XApiKey,
            12 if name.eq_ignore_ascii_case("x-auth-token") => AuthScheme::XAuthToken,
            13 if name.eq_ignore_ascii_case("authorization") => {
                let word = value.trim_start().split([' ', '\t']).next().unwrap_or("");
                match word.len() {
                    0 => return None,
                    4 if word.eq_ignore_ascii_case("ntlm") => AuthScheme::Negotiate,
                    5 if word.eq_ignore_ascii_case("basic") => AuthScheme::Basic,
                    6 if word.eq_ignore_ascii_case("bearer") => AuthScheme::Bearer,
                    6 if word.eq_ignore_ascii_case("digest") => AuthScheme::Digest,
                    9 if word.eq_ignore_ascii_case("negotiate") => AuthScheme::Negotiate,
                    _ => AuthScheme::OtherAuthorization,
                }
            }
            14 if name.eq_ignore_ascii_case("x-access-token") => AuthScheme::XAccessToken,
            _ => return None,
        };
        Some(scheme)
    }
}

/// Most request (and, separately, response) content types kept per endpoint; later ones are not
/// listed (an attacker choosing Content-Type values cannot grow the inventory).
pub const MAX_CONTENT_TYPES_PER_ENDPOINT: usize = 4;

/// Upper bounds of the latency buckets, in microseconds; a last bucket counts everything slower.
pub const LATENCY_BUCKET_BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Number of latency buckets: one per bound, and one above the last.
pub const LATENCY_BUCKETS: usize = LATENCY_BUCKET_BOUNDS_MICROS.len() + 1;

/// The bucket a latency falls in (a latency equal to a bound is in that bound's bucket).
pub fn latency_bucket(micros: u64) -> usize {
    LATENCY_BUCKET_BOUNDS_MICROS.partition_point(|bound| *bound < micros)
}

/// The latency below which a share `q` (0 < q ≤ 1) of the counted exchanges fell, as the upper
/// bound of the bucket that holds it (so at most one bucket too high), never above `max_micros`;
/// `None` when nothing was counted.
pub fn latency_quantile(counts: &[u64], q: f64, max_micros: u64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = LATENCY_BUCKET_BOUNDS_MICROS.get(i).copied().unwrap_or(max_micros);
            return Some(bound.min(max_micros));
        }
    }
    Some(max_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_read_from_their_header_and_keep_no_credential() {
        let cases = [
            ("Authorization", "Bearer eyJhbGciOi.x.y", Some(AuthScheme::Bearer)),
            ("authorization", "  basic dXNlcjpwYXNz", Some(AuthScheme::Basic)),
            ("AUTHORIZATION", "Digest username=\"a\"", Some(AuthScheme::Digest)),
            ("Authorization", "NTLM TlRMTVNT", Some(AuthScheme::Negotiate)),
            ("Authorization", "Negotiate YII", Some(AuthScheme::Negotiate)),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=x",
                Some(AuthScheme::OtherAuthorization),
            ),
            (
                "Authorization",
                "secret-without-scheme",
                Some(AuthScheme::OtherAuthorization),
            ),
            ("Authorization", "   ", None),
            ("X-API-Key", "k", Some(AuthScheme::XApiKey)),
            ("api-key", "k", Some(AuthScheme::ApiKey)),
            ("X-Auth-Token", "t", Some(AuthScheme::XAuthToken)),
            ("x-access-token", "t", Some(AuthScheme::XAccessToken)),
            ("Cookie", "session=abc", Some(AuthScheme::Cookie)),
            ("Proxy-Authorization", "Basic abc", None),
            ("Content-Type", "application/json", None),
            ("X-Api-Keys", "k", None),
        ];
        for (name, value, want) in cases {
            assert_eq!(AuthScheme::of_header(name, value), want, "{name}: {value}");
        }
        for s in AuthScheme::ALL {
            assert_eq!(AuthScheme::parse(s.as_str()), Some(s));
            assert!(!s.as_str().contains('='), "a name, not a value");
        }
        assert_eq!(AuthScheme::parse("Bearer"), None, "names are exact");
    }

    #[test]
    fn scheme_sets_round_trip_through_bits_in_a_fixed_order() {
        let bits = AuthScheme::Cookie.bit() | AuthScheme::None.bit() | AuthScheme::Bearer.bit();
        assert_eq!(
            AuthScheme::from_bits(bits).collect::<Vec<_>>(),
            vec![AuthScheme::None, AuthScheme::Bearer, AuthScheme::Cookie]
        );
        let all = AuthScheme::ALL.iter().fold(0u16, |b, s| b | s.bit());
        assert_eq!(AuthScheme::from_bits(all).count(), AuthScheme::ALL.len());
    }

    #[test]
    fn latencies_fall_in_the_bucket_of_the_first_bound_not_below_them() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(100), 0);
        assert_eq!(latency_bucket(101), 1);
        assert_eq!(latency_bucket(10_000_000), LATENCY_BUCKETS - 2);
        assert_eq!(latency_bucket(10_000_001), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_the_bound_of_the_bucket_that_holds_them() {
        let mut counts = [0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile(&counts, 0.5, 0), None);
        // 98 fast exchanges (≤ 100 µs), one at 3 ms, one at 20 s.
        counts[0] = 98;
        counts[latency_bucket(3_000)] += 1;
        counts[latency_bucket(20_000_000)] += 1;
        assert_eq!(latency_quantile(&counts, 0.5, 20_000_000), Some(100));
        assert_eq!(latency_quantile(&counts, 0.98, 20_000_000), Some(100));
        assert_eq!(latency_quantile(&counts, 0.99, 20_000_000), Some(5_000));
        assert_eq!(latency_quantile(&counts, 1.0, 20_000_000), Some(20_000_000));
        // Never above the slowest exchange seen.
        assert_eq!(latency_quantile(&counts, 0.5, 60), Some(60));
    }
}
