//! Server-side request forgery: URLs and host names in request values that point inside the
//! server's network (loopback, link-local and cloud metadata addresses, internal names), in
//! every spelling an HTTP client or resolver accepts (decimal, hex and octal IPv4, shortened
//! IPv4, IPv4-mapped IPv6, wildcard-DNS names, Unicode look-alikes), non-HTTP schemes that
//! clients follow (`gopher://`, `dict://`, `file://`...), and out-of-band callback domains.

use super::decode::{contains_str, excerpt, find_str, fold_unicode, position_of, AnyOf, ByteSet};
use super::scan::{group, Scan};
use super::Hit;
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

/// Schemes that URL fetchers follow to talk to non-HTTP services or read files.
pub(super) const DANGEROUS_SCHEMES: &[&str] = &[
    "gopher://",
    "dict://",
    "file:/",
    "tftp://",
    "netdoc:/",
    "jar:",
    "expect://",
];
/// Also dangerous at paranoia 2.
pub(super) const DANGEROUS_SCHEMES_2: &[&str] =
    &["ldap://", "ldaps://", "sftp://", "ftp://", "smb://", "php://"];

/// Out-of-band interaction services used by scanners to confirm blind SSRF and injections.
pub(super) const CALLBACK_DOMAINS: &[&str] = &[
    "burpcollaborator.net",
    "oastify.com",
    "oast.me",
    "oast.pro",
    "oast.live",
    "oast.site",
    "oast.online",
    "oast.fun",
    "interact.sh",
    "interactsh.com",
    "dnslog.cn",
    "ceye.io",
    "requestrepo.com",
    "canarytokens.com",
    "xss.ht",
];

/// Schemes whose authority is parsed.
pub(super) const URL_SCHEMES: &[&str] = &[
    "http:",
    "https:",
    "ftp:",
    "ftps:",
    "sftp:",
    "gopher:",
    "dict:",
    "ldap:",
    "ldaps:",
    "tftp:",
    "ws:",
    "wss:",
    "smb:",
    "file:",
    "rtsp:",
    "jar:http:",
];

/// Gates in front of the loops over the lists above: most values hold none of their entries.
static ANY_CALLBACK: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::new(CALLBACK_DOMAINS));
static ANY_DANGEROUS: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::new(DANGEROUS_SCHEMES));
static ANY_DANGEROUS_2: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::new(DANGEROUS_SCHEMES_2));
static ANY_URL: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::new(URL_SCHEMES));
/// The same in any ASCII case, to look at a value before lower-casing it.
static ANY_CALLBACK_ANY_CASE: LazyLock<AnyOf> =
    LazyLock::new(|| AnyOf::ignoring_ascii_case(CALLBACK_DOMAINS));
static ANY_DANGEROUS_ANY_CASE: LazyLock<AnyOf> =
    LazyLock::new(|| AnyOf::ignoring_ascii_case(DANGEROUS_SCHEMES));
static ANY_DANGEROUS_2_ANY_CASE: LazyLock<AnyOf> =
    LazyLock::new(|| AnyOf::ignoring_ascii_case(DANGEROUS_SCHEMES_2));

pub struct Ssrf {
    paranoia: u8,
    /// Hosts (and their subdomains) never reported.
    allow_hosts: Vec<String>,
}

impl Ssrf {
    pub fn new(paranoia: u8, allow_hosts: Vec<String>) -> Ssrf {
        Ssrf {
            paranoia,
            allow_hosts: allow_hosts
                .into_iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// `header`: the value comes from a header, where only callback domains and dangerous schemes
    /// count (a Referer of `http://localhost:3000/` is how local development looks).
    /// `is_value`: a parameter or field value, where a bare host name (`localhost:6379`) is checked too.
    #[cfg(test)]
    pub fn detect(&self, value: &str, header: bool, is_value: bool) -> Option<Hit> {
        self.detect_in(value, Scan::of(value), header, is_value)
    }

    /// [`Ssrf::detect`] of a value whose scan is `scan` ([`Scan::of`] the value).
    pub(crate) fn detect_in(&self, value: &str, scan: Scan, header: bool, is_value: bool) -> Option<Hit> {
        // `needles` describes the lower-cased value, which `s` below is when it is known.
        let (bytes, needles) = (scan.bytes, scan.needles);
        if value.len() < 4 {
            return None;
        }
        // A value with no URL, scheme, callback domain or `//` in it: only a bare host name can be
        // found (in a parameter or field value), and that needs a `.`, a `:` or a loopback prefix.
        let urls = group::CALLBACK_DOMAIN
            | group::DANGEROUS_SCHEME
            | group::DANGEROUS_SCHEME_2
            | group::URL_SCHEME
            | group::DOUBLE_SLASH;
        if !needles.may(urls) {
            let start = value.trim_start().as_bytes();
            let loopback_prefix = ["localhost", "ip6-", "ipv6-"]
                .iter()
                .any(|p| start.len() >= p.len() && start[..p.len()].eq_ignore_ascii_case(p.as_bytes()));
            if !is_value || (!bytes.any(ByteSet::of_bytes(b".:")) && !loopback_prefix) {
                return None;
            }
        }
        if header && bytes.is_ascii() {
            // Only callback domains and dangerous schemes count here: when the value (ASCII, so
            // only its case would change) has neither, it needs no lower-cased copy.
            let callback =
                bytes.has(b'.') && needles.has(group::CALLBACK_DOMAIN, || ANY_CALLBACK_ANY_CASE.is_in(value));
            let scheme = bytes.has(b':')
                && (needles.has(group::DANGEROUS_SCHEME, || ANY_DANGEROUS_ANY_CASE.is_in(value))
                    || (self.paranoia >= 2
                        && needles.has(group::DANGEROUS_SCHEME_2, || {
                            ANY_DANGEROUS_2_ANY_CASE.is_in(value)
                        })));
            if !callback && !scheme {
                return None;
            }
        }
        // Folded and lower-cased; most values already are.
        let lower: Cow<str> = if bytes.is_ascii() && !bytes.any(ByteSet::UPPER) {
            Cow::Borrowed(value)
        } else {
            Cow::Owned(fold_unicode(value).to_ascii_lowercase())
        };
        let s: &str = &lower;
        // What `s` may contain: every callback domain has a `.`, every scheme a `:`.
        let set = bytes.lower_folded();
        let hit = |reason, at| {
            Some(Hit {
                reason,
                excerpt: excerpt(s, at, 96),
            })
        };
        if set.has(b'.') && needles.has(group::CALLBACK_DOMAIN, || ANY_CALLBACK.is_in(s)) {
            for domain in CALLBACK_DOMAINS {
                if let Some(p) = find_host_suffix(s, domain) {
                    return hit("out-of-band callback domain", p);
                }
            }
        }
        let schemes: &[&[&str]] = if self.paranoia >= 2 {
            &[DANGEROUS_SCHEMES, DANGEROUS_SCHEMES_2]
        } else {
            &[DANGEROUS_SCHEMES]
        };
        if set.has(b':')
            && (needles.has(group::DANGEROUS_SCHEME, || ANY_DANGEROUS.is_in(s))
                || (self.paranoia >= 2
                    && needles.has(group::DANGEROUS_SCHEME_2, || ANY_DANGEROUS_2.is_in(s))))
        {
            for scheme in schemes.iter().copied().flatten() {
                if let Some(p) = find_word_start(s, scheme) {
                    // `file:` needs a path (`file:///etc/passwd`, `file:/c:/`); `jar:` a URL.
                    let rest = &s[p + scheme.len()..];
                    if *scheme == "jar:" && !rest.starts_with("http") && !rest.starts_with("file") {
                        continue;
                    }
                    return hit("dangerous URL scheme", p);
                }
            }
        }
        if header {
            return None;
        }
        // URLs anywhere in the value.
        if set.has(b':') && needles.has(group::URL_SCHEME, || ANY_URL.is_in(s)) {
            for scheme in URL_SCHEMES {
                let mut from = 0;
                while let Some(p) = find_word_start(&s[from..], scheme).map(|p| from + p) {
                    let after = &s[p + scheme.len()..];
                    let authority_start = after.trim_start_matches(['/', '\\']);
                    let slashes = after.len() - authority_start.len();
                    // `http:0xa9fea9fe` (no slashes) is accepted by some clients too.
                    if let Some(reason) = self.authority(authority_start, slashes > 0 || *scheme != "file:") {
                        return hit(reason, p);
                    }
                    from = p + scheme.len();
                }
            }
        }
        // Scheme-relative and unknown schemes: `//127.0.0.1/`, `0://127.0.0.1:80`.
        let mut from = if needles.may(group::DOUBLE_SLASH) {
            0
        } else {
            s.len()
        };
        while let Some(p) = find_str(&s[from..], "//").map(|p| from + p) {
            let preceded_by_known = URL_SCHEMES.iter().any(|sch| s[..p].ends_with(sch));
            if !preceded_by_known && (p == 0 || s[..p].ends_with(':')) {
                if let Some(reason) = self.authority(&s[p + 2..], true) {
                    return hit(reason, p);
                }
            }
            from = p + 2;
        }
        // A bare host, with an optional port and path: `localhost/`, `169.254.169.254/latest`.
        let trimmed = s.trim();
        // Up to the first blank; in ASCII text blanks are single bytes, found without decoding.
        let token_end = if bytes.is_ascii() {
            trimmed
                .bytes()
                .position(|b| matches!(b, b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r' | b' '))
        } else {
            trimmed.find(char::is_whitespace)
        };
        let token = &trimmed[..token_end.unwrap_or(trimmed.len())];
        if is_value
            && !token.is_empty()
            && !contains_str(token, "://")
            && (token.len() == trimmed.len() || token.ends_with(':'))
        {
            // ASCII bytes, found byte by byte in any text.
            let host_end = position_of(token.as_bytes(), |b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
                .unwrap_or(token.len());
            let host = strip_port(&token[..host_end]);
            // A single word ("metadata") is a word, not a host.
            let qualified = host.contains('.')
                || host.contains(':')
                || host.starts_with("localhost")
                || host.starts_with("ip6-")
                || host.starts_with("ipv6-");
            if let Some(reason) = qualified.then(|| self.host(host, false)).flatten() {
                return hit(reason, 0);
            }
        }
        None
    }

    /// Checks every host-looking piece of an authority (`user@host:port`, and the confusions
    /// between `\`, `@` and `#` that parsers disagree on).
    fn authority(&self, rest: &str, numeric_ok: bool) -> Option<&'static str> {
        let end = rest
            .find(|c: char| matches!(c, '/' | '?' | ';' | ',' | '"' | '\'' | '<' | '>') || c.is_control())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.is_empty() {
            return None;
        }
        // Backslashes between letters (`\l\o\c\a\l\h\o\s\t`) are dropped by some clients.
        if authority.matches('\\').count() > 2 {
            let joined: String = authority.chars().filter(|c| *c != '\\').collect();
            let host = strip_port(joined.split(['@', '#', ' ']).next().unwrap_or(""));
            if let Some(r) = self.host(host, numeric_ok) {
                return Some(r);
            }
            // Whatever it names, a host spelled this way is there to get past a filter.
            if host.contains('.')
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            {
                return Some("host name obfuscated with backslashes");
            }
        }
        // `http://1.1.1.1&@2.2.2.2#@3.3.3.3/`: a delimiter right before `@` makes parsers disagree
        // on which host is meant.
        if authority.contains("&@") || authority.contains("#@") || authority.contains("\\@") {
            return Some("URL parser confusion");
        }
        authority
            .split(['@', '\\', ' ', '&', '#'])
            .filter(|p| !p.is_empty())
            .find_map(|piece| self.host(strip_port(piece), numeric_ok))
    }

    /// Why a host name or address is internal, if it is.
    fn host(&self, host: &str, numeric_ok: bool) -> Option<&'static str> {
        let host = host.trim_end_matches('.');
        if host.is_empty() || host.len() > 253 {
            return None;
        }
        if self.allow_hosts.iter().any(|a| {
            host == a
                || host
                    .strip_suffix(a.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        }) {
            return None;
        }
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let v6 = v6.split('%').next().unwrap_or(v6);
            let addr = v6.parse::<Ipv6Addr>().ok()?;
            return self
                .ipv6(addr)
                .or_else(|| unassigned_v6(addr).then_some("unassigned IPv6 address"));
        }
        if host.contains(':') {
            return host.parse::<Ipv6Addr>().ok().and_then(|a| self.ipv6(a));
        }
        if let Some(addr) = parse_ipv4(host, numeric_ok) {
            // `http://3232235521/`, `http://0xc0a80014/`, `0300.0250.0.1`: a private address in a
            // spelling no one uses except to get past a filter (URLs, or with `0x`).
            let canonical = host.split('.').count() == 4
                && host.split('.').all(|p| {
                    !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_digit())
                        && (p == "0" || !p.starts_with('0'))
                });
            let evasive = !canonical && (numeric_ok || host.contains("0x"));
            // Any address as one large number or with hex or octal parts (`http:123456789`,
            // `http://0x5db8d822/`): browsers and people write dotted quads; this spelling is
            // there to get past a filter, whatever it points to.
            let obfuscated = numeric_ok
                && ((!host.contains('.') && u32::from(addr) >= 1 << 24)
                    || host
                        .split('.')
                        .any(|p| p.starts_with("0x") || (p.len() > 1 && p.starts_with('0'))));
            return self.ipv4(addr, numeric_ok).or_else(|| {
                if evasive && is_private_v4(addr) {
                    Some("private address in an evasive spelling")
                } else {
                    obfuscated.then_some("address in an evasive spelling")
                }
            });
        }
        match host {
            "localhost"
            | "localhost.localdomain"
            | "localhost4"
            | "localhost6"
            | "localhost4.localdomain4"
            | "localhost6.localdomain6"
            | "ip6-localhost"
            | "ip6-loopback"
            | "ipv6-localhost"
            | "ipv6-loopback"
            | "localtest.me"
            | "lvh.me"
            | "vcap.me" => return Some("loopback host name"),
            "metadata"
            | "metadata.google.internal"
            | "instance-data"
            | "metadata.azure.com"
            | "metadata.packet.net"
            | "metadata.platformequinix.com"
            | "metadata.tencentyun.com" => return Some("cloud metadata host"),
            "kubernetes.default" | "kubernetes.default.svc" | "kubernetes.default.svc.cluster.local" => {
                return Some("Kubernetes API server")
            }
            _ => {}
        }
        if host.ends_with(".localhost") || host.ends_with(".localtest.me") || host.ends_with(".lvh.me") {
            return Some("loopback host name");
        }
        if host.ends_with(".internal") && !host.contains(' ') {
            return Some("internal host name");
        }
        // `example.com.127.0.0.1`: a name whose last labels are an address (more than four labels:
        // the text after the fourth dot from the end).
        // (Byte by byte: a search for each dot costs more on a host name's few dozen bytes.)
        let fourth_dot_from_end = host.bytes().enumerate().rev().filter(|&(_, b)| b == b'.').nth(3);
        if let Some((dot, _)) = fourth_dot_from_end {
            if let Some(addr) = parse_ipv4(&host[dot + 1..], false) {
                if let Some(r) = self.ipv4(addr, false) {
                    return Some(r);
                }
            }
        }
        // Wildcard DNS that resolves a name to the address inside it: 127.0.0.1.nip.io, 10-0-0-1.sslip.io.
        for service in [".nip.io", ".xip.io", ".sslip.io", ".nip.direct", ".traefik.me"] {
            if let Some(prefix) = host.strip_suffix(service) {
                let label = prefix.rsplit('.').next().unwrap_or(prefix);
                let dotted = if prefix.matches('.').count() >= 3 {
                    prefix
                        .rsplitn(5, '.')
                        .take(4)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join(".")
                } else {
                    label.replace('-', ".")
                };
                if let Some(addr) = parse_ipv4(&dotted, false) {
                    return self.ipv4(addr, false).or(Some("wildcard DNS to an address"));
                }
                // These services exist to turn a name into an address (xip.io also reads base-36
                // labels: `1ynrnhl.xip.io`); a name under them is a pointer to some address.
                if !label.is_empty() && !prefix.contains(' ') {
                    return Some("wildcard DNS to an address");
                }
            }
        }
        if self.paranoia >= 2
            && (host.ends_with(".local")
                || host.ends_with(".svc")
                || host.ends_with(".cluster.local")
                || host.starts_with("kubernetes.default"))
        {
            return Some("cluster-internal host name");
        }
        None
    }

    fn ipv4(&self, a: Ipv4Addr, numeric_ok: bool) -> Option<&'static str> {
        let o = a.octets();
        match o {
            [169, 254, 169, 254] | [100, 100, 100, 200] | [192, 0, 0, 192] | [169, 254, 170, 2] => {
                Some("cloud metadata address")
            }
            [127, ..] => Some("loopback address"),
            [169, 254, ..] => Some("link-local address"),
            [0, 0, 0, 0] => Some("unspecified address"),
            [0, ..] if numeric_ok => Some("unspecified address"),
            _ if self.paranoia >= 2 && is_private_v4(a) => Some("private address"),
            _ => None,
        }
    }

    fn ipv6(&self, a: Ipv6Addr) -> Option<&'static str> {
        if a.is_loopback() {
            return Some("loopback address");
        }
        if a.is_unspecified() {
            return Some("unspecified address");
        }
        let seg = a.segments();
        if seg == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
            return Some("cloud metadata address");
        }
        // IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and NAT64 (64:ff9b::a.b.c.d).
        let embedded = match seg {
            [0, 0, 0, 0, 0, 0xffff, hi, lo]
            | [0, 0, 0, 0, 0, 0, hi, lo]
            | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(Ipv4Addr::from(((hi as u32) << 16) | lo as u32)),
            _ => None,
        };
        if let Some(v4) = embedded {
            return self.ipv4(v4, true);
        }
        if (seg[0] & 0xffc0) == 0xfe80 {
            return Some("link-local address");
        }
        if self.paranoia >= 2 && (seg[0] & 0xfe00) == 0xfc00 {
            return Some("private address");
        }
        None
    }
}

/// An IPv6 address outside every range in use: global unicast (2000::/3), unique local
/// (fc00::/7), link-local (fe80::/10), multicast (ff00::/8), and the special forms at `::/8`
/// that [`Ssrf::ipv6`] reads (loopback, IPv4-mapped and -compatible). No server has such an
/// address (`http://[a::b]/`); a URL to one probes how the application parses and filters hosts.
fn unassigned_v6(a: Ipv6Addr) -> bool {
    let s0 = a.segments()[0];
    let in_use = (s0 & 0xe000) == 0x2000
        || (s0 & 0xfe00) == 0xfc00
        || (s0 & 0xffc0) == 0xfe80
        || (s0 & 0xff00) == 0xff00
        || (s0 == 0 && a.segments()[1..5] == [0, 0, 0, 0])
        || s0 == 0x64;
    !in_use
}

/// RFC 1918 and shared (CGNAT, 100.64.0.0/10) addresses.
fn is_private_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
}

/// `host:port` without the port (not for bracketed or bare IPv6).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |e| &host[..=e]);
    }
    if host.matches(':').count() == 1 {
        return host.split(':').next().unwrap_or(host);
    }
    host
}

/// Parses IPv4 the way `inet_aton` does: 1 to 4 parts, each decimal, `0x` hex or `0` octal, the
/// last one filling the remaining bytes (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.01`).
/// Without `numeric_ok` only the four-part form is accepted (a bare `10.5` is a number).
fn parse_ipv4(host: &str, numeric_ok: bool) -> Option<Ipv4Addr> {
    // Each part is decimal, octal or `0x` hex (`from_str_radix` also takes a leading `+`): a byte
    // outside these fails its part, and the whole. Most host names stop at their first letter
    // after `f`, before being split.
    if !host
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b'x' | b'+'))
    {
        return None;
    }
    let mut parts = [""; 4];
    let mut count = 0;
    for part in host.split('.') {
        if count == parts.len() {
            return None;
        }
        parts[count] = part;
        count += 1;
    }
    if count == 0 || (!numeric_ok && count != 4) {
        return None;
    }
    let mut values = [0u64; 4];
    for (p, slot) in parts[..count].iter().zip(values.iter_mut()) {
        let v = if let Some(hex) = p.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(p, 8).ok()?
        } else {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 10 {
                return None;
            }
            p.parse::<u64>().ok()?
        };
        *slot = v;
    }
    let (last, init) = values[..count].split_last()?;
    if init.iter().any(|v| *v > 255) {
        return None;
    }
    // One number past 32 bits: some parsers keep the low 32 bits (`http://7147006462/`).
    if init.is_empty() && *last > u64::from(u32::MAX) {
        return Some(Ipv4Addr::from((*last & 0xffff_ffff) as u32));
    }
    let remaining_bits = 8 * (4 - init.len() as u32);
    if *last >= 1u64 << remaining_bits {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, v) in init.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    addr |= last;
    Some(Ipv4Addr::from(addr as u32))
}

/// `needle` at the start of `s` or after a character that cannot be part of a scheme name.
fn find_word_start(s: &str, needle: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = find_str(&s[from..], needle).map(|p| from + p) {
        if p == 0 || !s.as_bytes()[p - 1].is_ascii_alphanumeric() {
            return Some(p);
        }
        from = p + 1;
    }
    None
}

/// `domain` as the end of a host name: preceded by `.` or a non-host character, followed by
/// something that ends a host.
fn find_host_suffix(s: &str, domain: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = find_str(&s[from..], domain).map(|p| from + p) {
        let before_ok = p == 0 || matches!(b[p - 1], b'.' | b'/' | b'@' | b' ' | b'=' | b':');
        let after = b.get(p + domain.len());
        let after_ok = after.is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'-'));
        if before_ok && after_ok {
            return Some(p);
        }
        from = p + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_targets_in_all_spellings() {
        let d = Ssrf::new(1, vec![]);
        for attack in [
            "http://127.0.0.1/admin",
            "https://localhost:8443/",
            "http://169.254.169.254/latest/meta-data/iam/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[0:0:0:0:0:ffff:7f00:1]/",
            "http://[fd00:ec2::254]/latest/",
            "http://evil.example@127.0.0.1/",
            "http:0xa9fea9fe",
            "http:\\\\127.0.0.1\\x",
            "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
            "http://127.0.0.1.nip.io/",
            "gopher://10.0.0.5:6379/_INFO",
            "dict://example.com:11211/stats",
            "file:///etc/passwd",
            "localhost:6379",
            "169.254.169.254/latest/user-data",
            "//127.0.0.1/x",
            "http://x.oastify.com/",
            "http://0.0.0.0:8080/",
            "http://7147006462/",
            "http://google.com:80 &@127.88.23.245:22/",
            "http://\\l\\o\\c\\a\\l\\h\\o\\s\\t/",
            "https://kubernetes.default.svc/api/v1/secrets",
            "http://example.com.127.0.0.1/",
        ] {
            assert!(d.detect(attack, false, true).is_some(), "missed {attack:?}");
        }
    }

    #[test]
    fn filter_evasions_whatever_the_target() {
        let d = Ssrf::new(1, vec![]);
        for attack in [
            "http:123456789",
            "http://1572395042/",
            // A public address too: only filter evasion spells it so.
            "http://134744072/",
            "http://0x5db8d822/",
            "http://0135.0270.0330.042/",
            "http://\\g\\o\\o\\g\\l\\e.\\c\\o\\m/",
            "http://[a::]/",
            "http://[a::b]/",
            "http://[dead:beef:dead::beef:dead:beef:dead]/",
        ] {
            assert!(d.detect(attack, false, true).is_some(), "missed {attack:?}");
        }
        for ok in [
            "http://93.184.215.14/",
            "http://example.com:8080/",
            "http://[2001:db8::1]/",
            "http://[2606:4700::1111]/",
            "a::b",
            "dead::beef",
            "http://example.com/a\\b\\c\\d",
            "http://1.5/",
            "order 123456789",
            "file:\\\\server\\share",
        ] {
            assert!(d.detect(ok, false, true).is_none(), "false positive on {ok:?}");
        }
    }

    #[test]
    fn public_and_benign_values() {
        let d = Ssrf::new(1, vec!["localhost".into()]);
        assert!(d.detect("http://localhost/", false, true).is_none(), "allowHosts");
        let d = Ssrf::new(1, vec![]);
        for ok in [
            "https://example.com/a?b=c",
            "http://10.0.0.1/",
            "1.2.3",
            "127",
            "0.5",
            "version 10.5.1",
            "http://8.8.8.8/",
            "mailto:someone@example.com",
            "https://internal.example.com/",
            "the file: report.pdf",
            "see localhost docs",
            "metadata",
        ] {
            assert!(
                d.detect(ok, false, true).is_none(),
                "false positive on {ok:?}: {:?}",
                d.detect(ok, false, true)
            );
        }
        assert!(
            d.detect("http://localhost:3000/page", true, true).is_none(),
            "Referer from local dev"
        );
        let d2 = Ssrf::new(2, vec![]);
        assert!(d2.detect("http://10.0.0.1/", false, true).is_some());
        assert!(d2
            .detect("http://svc.ns.svc.cluster.local/", false, true)
            .is_some());
    }

    #[test]
    fn evasive_private_addresses_wildcard_dns_and_parser_confusion() {
        let s = Ssrf::new(1, vec![]);
        for attack in [
            "http://3232235521/",
            "http://0xc0a80014/",
            "http://0300.0250.0.1/",
            "http://10.1/",
            "http://1ynrnhl.xip.io/",
            "anything.nip.io",
            "http://1.1.1.1&@2.2.2.2#@3.3.3.3/",
        ] {
            assert!(s.detect(attack, false, true).is_some(), "missed {attack:?}");
        }
        for ok in [
            "http://192.168.1.1/",
            "192.168.0.20",
            "10.01.02.03",
            "http://8.8.8.8/",
            "nip.io",
            "https://user:p&ss@example.com/",
            "http://example.com/#@top",
        ] {
            assert!(
                s.detect(ok, false, true).is_none(),
                "false positive on {ok:?}: {:?}",
                s.detect(ok, false, true)
            );
        }
    }

    #[test]
    fn ipv4_forms() {
        assert_eq!(parse_ipv4("127.1", true), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(parse_ipv4("0x7f.0.0.1", true), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            parse_ipv4("3232235521", true),
            Some(Ipv4Addr::new(192, 168, 0, 1))
        );
        assert_eq!(parse_ipv4("256.1.1.1", true), None);
        assert_eq!(parse_ipv4("127.1", false), None);
    }
}
