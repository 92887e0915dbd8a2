//! Path templating: identifiers in paths become `{id}`, so an endpoint inventory stays small
//! however many objects (or random paths) clients touch.

use std::borrow::Cow;

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

const MAX_SEGMENTS: usize = 16;
const MAX_LEN: usize = 256;

/// The segments of a path: what follows each `/`, as `path.split('/').skip(1)`. Split on the
/// byte, not the character (`str::split` with a `char` pattern runs a searcher: slower on short paths,
/// and this runs for every captured exchange).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.as_bytes()
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(move |(at, _)| {
            let rest = &path[at + 1..];
            let end = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
            &rest[..end]
        })
}

/// `/users/42/orders/9f8e...?x=1` -> `/users/{id}/orders/{id}`. Query and fragment are dropped;
/// the result is cut at `max_segments` segments and 256 bytes so that it stays bounded.
///
/// Borrows the path when it is its own template (no identifier, within the bounds), as most
/// requests' paths are: this runs for every captured exchange.
pub fn template_path(target: &str) -> Cow<'_, str> {
    let path_end = target.bytes().position(|b| b == b'?' || b == b'#');
    let path = path_end.map_or(target, |end| &target[..end]);
    if path.is_empty() {
        return Cow::Borrowed("/");
    }
    let own_template = path.starts_with('/')
        && path.len() <= MAX_LEN
        && path.bytes().filter(|b| *b == b'/').count() <= MAX_SEGMENTS
        && !segments(path).any(is_identifier);
    if own_template {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len().min(MAX_LEN));
    for (i, segment) in segments(path).enumerate() {
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
    Cow::Owned(out)
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

    #[test]
    fn paths_that_are_their_own_template_are_borrowed_unchanged() {
        for (target, template, borrowed) in [
            ("/api/v1/health?verbose=1", "/api/v1/health", true),
            ("//double//slash", "//double//slash", true),
            ("/", "/", true),
            ("/users/42", "/users/{id}", false),
            ("users/42", "/{id}", false),
            ("*", "/", false),
            ("http://example.com/a", "//example.com/a", false),
        ] {
            let t = template_path(target);
            assert_eq!(t, template, "{target}");
            assert_eq!(matches!(t, Cow::Borrowed(_)), borrowed, "{target}");
        }
        let sixteen = "/a".repeat(16);
        assert_eq!(template_path(&sixteen), sixteen);
        let seventeen = "/a".repeat(17);
        assert_eq!(template_path(&seventeen), format!("{sixteen}/{{...}}"));
    }
}
