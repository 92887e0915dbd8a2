//! Path templating: identifiers in paths become `{id}`, so an endpoint inventory stays small
//! however many objects (or random paths) clients touch.

/// Whether a path segment looks like an identifier rather than a fixed name.
pub fn is_identifier(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let all_digits = segment.bytes().all(|b| b.is_ascii_digit());
    let is_uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let hex_with_digit = segment.len() >= 8
        && segment.bytes().all(|b| b.is_ascii_hexdigit())
        && segment.bytes().any(|b| b.is_ascii_digit());
    // Long mixed tokens (base64url ids, hashes, random strings) are identifiers too.
    let long_random = segment.len() >= 20
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=');
    all_digits || is_uuid || hex_with_digit || long_random
}

/// `/users/42/orders/9f8e...?x=1` -> `/users/{id}/orders/{id}`. Query and fragment are dropped;
/// the result is cut at `max_segments` segments and 256 bytes so that it stays bounded.
pub fn template_path(target: &str) -> String {
    const MAX_SEGMENTS: usize = 16;
    const MAX_LEN: usize = 256;
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len().min(MAX_LEN));
    for (i, segment) in path.split('/').skip(1).enumerate() {
        if i >= MAX_SEGMENTS {
            out.push_str("/{...}");
            break;
        }
        out.push('/');
        if is_identifier(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    if out.len() > MAX_LEN {
        let mut cut = MAX_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_placeholders() {
        assert_eq!(template_path("/users/42"), "/users/{id}");
        assert_eq!(
            template_path("/users/42/orders/7?expand=1"),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(
            template_path("/o/123e4567-e89b-12d3-a456-426614174000"),
            "/o/{id}"
        );
        assert_eq!(template_path("/blob/deadbeef01"), "/blob/{id}");
        assert_eq!(template_path("/t/aZ09aZ09aZ09aZ09aZ09x"), "/t/{id}");
        assert_eq!(template_path("/api/v1/health"), "/api/v1/health");
        assert_eq!(template_path("/search?q=1"), "/search");
        assert_eq!(template_path(""), "/");
        assert_eq!(template_path("/"), "/");
    }

    #[test]
    fn templates_are_bounded() {
        let deep = "/a".repeat(100);
        assert!(template_path(&deep).ends_with("/{...}"));
        let long = format!("/{}", "x".repeat(1000));
        assert!(template_path(&long).len() <= 256);
    }
}
