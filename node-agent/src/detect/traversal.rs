//! Path traversal and local file inclusion: `..` path segments (after URL decoding, backslashes
//! as separators, overlong UTF-8, `0x2e`-style spellings), and references to files that only an
//! attacker asks a web application for (`/etc/passwd`, `win.ini`, `.aws/credentials`,
//! a Kubernetes service-account token).

use super::decode::{contains_str, decode_layers, excerpt, find_str, lower_folded_cow, AnyOf, ByteSet};
use super::scan::{group, Scan};
use super::{Detection, Hit};
use std::sync::LazyLock;

/// Files and directories whose path in a parameter is an attack (matched after a `/` or at the
/// start of the value, and before a non-name character).
pub(super) const SENSITIVE: &[&str] = &[
    "etc/passwd",
    "etc/shadow",
    "etc/group",
    "etc/hosts",
    "etc/issue",
    "etc/sudoers",
    "etc/crontab",
    "etc/master.passwd",
    "etc/security/passwd",
    "etc/pwd.db",
    "proc/self/",
    "proc/version",
    "proc/1/",
    "proc/sys/",
    "proc/net/",
    "proc/cmdline",
    "proc/mounts",
    "proc/cpuinfo",
    "sys/class/",
    "sys/kernel/",
    "etc/apache2/",
    "etc/nginx/",
    "etc/ssh/",
    "etc/mysql/",
    "etc/ssl/private",
    ".docker/",
    "boot.ini",
    "win.ini",
    "system.ini",
    "windows/system32/",
    "winnt/system32/",
    "web-inf/web.xml",
    "web-inf/classes/",
    ".htpasswd",
    ".htaccess",
    ".ssh/",
    "id_rsa",
    "id_ed25519",
    ".aws/credentials",
    ".aws/config",
    ".git/config",
    ".git/head",
    ".gitconfig",
    ".bash_history",
    ".zsh_history",
    ".kube/config",
    "var/run/secrets/kubernetes.io/",
    "inetpub/wwwroot/",
    "global.asa",
    "wp-config.php",
    ".env",
    ".npmrc",
    "c$/",
    "admin$/",
    "ntuser.dat",
    ".pgpass",
    ".my.cnf",
];

/// Whether any of [`SENSITIVE`] is in a value (lower-cased, or in any ASCII case).
static ANY_SENSITIVE: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::new(SENSITIVE));
static ANY_SENSITIVE_ANY_CASE: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::ignoring_ascii_case(SENSITIVE));

/// Rewrites the spellings of `.`, `/` and `\` that traversal payload lists use and some decoders
/// accept, and unifies separators.
fn normalize(value: &str, bytes: ByteSet) -> String {
    let lower = lower_folded_cow(value, bytes);
    let mut s = if lower.contains('\\') {
        lower.replace('\\', "/")
    } else {
        lower.into_owned()
    };
    if contains_str(&s, "0x") {
        s = s.replace("0x2e", ".").replace("0x2f", "/").replace("0x5c", "/");
    }
    s
}

/// A `..` segment (also `....`, `...` at paranoia 2, and `..` followed by a NUL or `;`).
fn dotdot_at(s: &str, paranoia: u8) -> Option<usize> {
    // A segment of dots, trimmed only at its ends, has two of them side by side.
    if !contains_str(s, "..") {
        return None;
    }
    let mut offset = 0;
    for seg in s.split(['/', '=', '&', '?', ';', '\0']) {
        let trimmed = seg.trim_matches([' ', '\t', '%']);
        let dots = matches!(trimmed.len(), 2 | 4) || (trimmed.len() == 3 && paranoia >= 2);
        if dots && trimmed.bytes().all(|b| b == b'.') {
            return Some(offset);
        }
        offset += seg.len() + 1;
    }
    None
}

fn sensitive_at(s: &str) -> Option<usize> {
    if !ANY_SENSITIVE.is_in(s) {
        return None;
    }
    let b = s.as_bytes();
    for file in SENSITIVE {
        let mut from = 0;
        while let Some(p) = find_str(&s[from..], file).map(|p| from + p) {
            let before_ok = p == 0
                || if file.starts_with('.') {
                    matches!(b[p - 1], b'/' | b'~' | b'=' | b' ' | b':')
                } else {
                    matches!(b[p - 1], b'/' | b'.' | b' ' | b'=' | b':' | b'~')
                };
            let end = p + file.len();
            let after_ok = file.ends_with('/')
                || b.get(end)
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'));
            if before_ok && after_ok {
                return Some(p);
            }
            from = p + 1;
        }
    }
    None
}

/// Looks for traversal in one decoded value.
pub fn detect(value: &str, paranoia: u8) -> Option<Hit> {
    detect_in(value, Scan::of(value), paranoia)
}

/// [`detect`] of a value whose scan is `scan` ([`Scan::of`] the value). The quick tests are
/// inlined into the caller's loop over the values: most stop there, without a call.
#[inline]
pub(crate) fn detect_in(value: &str, scan: Scan, paranoia: u8) -> Option<Hit> {
    let (bytes, needles) = (scan.bytes, scan.needles);
    let quick = (bytes.has(b'.') && value.as_bytes().contains(&b'.'))
        || (needles.may(group::ZERO_X) && bytes.has(b'x') && contains_str(value, "0x"))
        || (needles.may(group::ETC_PROC)
            && bytes.has(b'/')
            && (contains_str(value, "etc/") || contains_str(value, "proc/")));
    if !quick {
        return None;
    }
    analyse(value, scan, paranoia)
}

/// [`detect_in`] past its quick tests.
#[inline(never)]
fn analyse(value: &str, scan: Scan, paranoia: u8) -> Option<Hit> {
    let (bytes, needles) = (scan.bytes, scan.needles);
    // An ASCII value without NUL, `\\` or `0x` normalises to its lower-case form: when it has no
    // `..`, no sensitive file in any case (and, at paranoia 2, no `~` and no `c:/`), nothing below
    // can match, and the copy is not needed.
    let plain = bytes.is_ascii()
        && !bytes.any(ByteSet::of_bytes(b"\\\0"))
        && !(needles.may(group::ZERO_X)
            && bytes.any(ByteSet::of_bytes(b"xX"))
            && (contains_str(value, "0x") || contains_str(value, "0X")));
    if plain
        && !(needles.may(group::DOT_DOT) && contains_str(value, ".."))
        && !needles.has(group::SENSITIVE_FILE, || ANY_SENSITIVE_ANY_CASE.is_in(value))
        && (paranoia < 2
            || !(needles.may(group::ABSOLUTE_PATH)
                && (bytes.has(b'~') || contains_str(value, "c:/") || contains_str(value, "C:/"))))
    {
        return None;
    }
    let s = normalize(value, bytes);
    if let Some(p) = dotdot_at(&s, paranoia) {
        return Some(Hit {
            reason: "dot-dot path segment",
            excerpt: excerpt(&s, p, 120),
        });
    }
    if let Some(p) = sensitive_at(&s) {
        return Some(Hit {
            reason: "sensitive file",
            excerpt: excerpt(&s, p, 120),
        });
    }
    if paranoia >= 2 {
        // Absolute Windows paths and home directories.
        for needle in ["c:/", "~/", "~root/"] {
            if let Some(p) = find_str(&s, needle) {
                return Some(Hit {
                    reason: "absolute path",
                    excerpt: excerpt(&s, p, 120),
                });
            }
        }
    }
    None
}

/// Path traversal in a request target: a `..` segment (or a sensitive file) in the decoded path
/// or in any decoded query value. The evidence is the decoded target.
pub fn path_traversal(target: &str) -> Option<Detection> {
    let decoded = decode_layers(target);
    detect(&decoded, 1).map(|_| Detection { evidence: decoded })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_list_spellings() {
        for attack in [
            "....//....//etc/hosts",
            "..;/..;/admin",
            "0x2e0x2e0x5c0x2e0x2e0x5cboot.ini",
            "../../../../etc/passwd%00.png",
            "/var/www/../../etc/shadow",
            "..\\..\\windows\\win.ini",
            "file=/etc/passwd",
            "/proc/self/environ",
            "C:/Windows/System32/drivers/etc/hosts",
            "/home/app/.aws/credentials",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/.git/config",
            "/.env",
            "..%u2215..%u2215etc/hosts",
            "%uff0e%uff0e%u2216boot.ini",
            "\\\\10.0.0.1\\c$\\users",
        ] {
            let v = decode_layers(attack);
            assert!(detect(&v, 1).is_some(), "missed {attack:?}");
        }
    }

    #[test]
    fn benign_names() {
        for ok in [
            "report..pdf",
            "v1.2.3",
            "what..ever",
            "/etc/passwords-policy.html",
            "the environment",
            "my.env.example.com",
            "...",
            "a . b",
        ] {
            let hit = detect(ok, 1);
            assert!(hit.is_none(), "false positive on {ok:?}: {hit:?}");
        }
    }
}
