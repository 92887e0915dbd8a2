//! One pass over a value, shared by the injection detectors: which ASCII bytes it has ([`ByteSet`]) and
//! which of the substrings the detectors search for are in it ([`Needles`]). A detector skips a
//! search (or a whole analysis) when the pass says that what it looks for is not there; when the
//! pass says it may be, the detector searches as it always did. So the scan decides how much
//! work is done, never what is found.

use super::decode::{ByteSet, ByteSetBuilder};
use super::{cmdi, sqli, ssrf, traversal, xss};
use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{dfa::DFA, Anchored};
use std::sync::LazyLock;

/// What one pass found in a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    pub bytes: ByteSet,
    pub needles: Needles,
}

impl Scan {
    pub fn of(value: &str) -> Scan {
        let Some(finder) = FINDER.as_ref() else {
            return Scan::bytes_of(value);
        };
        let (bytes, groups) = finder.bytes_and_groups_in(value);
        // Known only for ASCII values without NUL bytes (see [`Needles`]).
        let needles = if bytes.is_ascii() && !bytes.has(0) {
            Needles(Some(groups))
        } else {
            Needles::UNKNOWN
        };
        Scan { bytes, needles }
    }

    /// The bytes only (cheaper; every substring "may" be there).
    pub fn bytes_of(value: &str) -> Scan {
        Scan {
            bytes: ByteSet::of(value),
            needles: Needles::UNKNOWN,
        }
    }
}

/// Groups of substrings, one bit each. A group is in a value when one of its substrings is, in
/// any ASCII case: the same as being in the value's lower-cased form.
pub mod group {
    /// sqlInjection's keywords (`union`, ` or `, `sys`…).
    pub const SQL_KEYWORD: u32 = 1 << 0;
    /// `--`, `/*`.
    pub const SQL_COMMENT: u32 = 1 << 1;
    /// Calls of functions that run commands (`system(`…).
    pub const RUNNER: u32 = 1 << 2;
    pub const DEV: u32 = 1 << 3;
    /// `${ifs`, `$ifs$`.
    pub const IFS: u32 = 1 << 4;
    pub const COMSPEC: u32 = 1 << 5;
    pub const FOR: u32 = 1 << 6;
    pub const IF: u32 = 1 << 7;
    pub const DOLLAR_BRACE: u32 = 1 << 8;
    pub const DOLLAR_BRACKET: u32 = 1 << 9;
    pub const ARITHMETIC: u32 = 1 << 10;
    pub const BIN: u32 = 1 << 11;
    pub const CALLBACK_DOMAIN: u32 = 1 << 12;
    pub const DANGEROUS_SCHEME: u32 = 1 << 13;
    /// Dangerous schemes at paranoia 2.
    pub const DANGEROUS_SCHEME_2: u32 = 1 << 14;
    pub const URL_SCHEME: u32 = 1 << 15;
    pub const DOUBLE_SLASH: u32 = 1 << 16;
    pub const DOT_DOT: u32 = 1 << 17;
    pub const SENSITIVE_FILE: u32 = 1 << 18;
    pub const ZERO_X: u32 = 1 << 19;
    /// `etc/`, `proc/`.
    pub const ETC_PROC: u32 = 1 << 20;
    /// `c:/`, `~/`, `~root/`.
    pub const ABSOLUTE_PATH: u32 = 1 << 21;
    pub const PERCENT_24: u32 = 1 << 22;
    /// `&#`, `&dollar`.
    pub const AMP_REFERENCE: u32 = 1 << 23;
    /// `\u`, `\x`.
    pub const BACKSLASH_ESCAPE: u32 = 1 << 24;
    pub const JNDI: u32 = 1 << 25;
    /// Functions an XSS payload calls (`alert`…).
    pub const SCRIPT_CALL: u32 = 1 << 26;
    /// `expression`, `script`, `document`… (see xss.rs).
    pub const COMPACT_WORD: u32 = 1 << 27;
    /// `data:`, `binding`, `behavio` (see xss.rs).
    pub const COLON_WORD: u32 = 1 << 28;
}

/// The substrings of each group (lower case).
fn groups() -> Vec<(u32, &'static [&'static str])> {
    use group::*;
    vec![
        (SQL_KEYWORD, sqli::KEYWORDS),
        (SQL_COMMENT, &["--", "/*"]),
        (RUNNER, cmdi::RUNNERS),
        (DEV, &["/dev/"]),
        (IFS, &["${ifs", "$ifs$"]),
        (COMSPEC, &["%comspec%"]),
        (FOR, &["for "]),
        (IF, &["if "]),
        (DOLLAR_BRACE, &["${"]),
        (DOLLAR_BRACKET, &["$["]),
        (ARITHMETIC, &["$(("]),
        (BIN, &["bin/"]),
        (CALLBACK_DOMAIN, ssrf::CALLBACK_DOMAINS),
        (DANGEROUS_SCHEME, ssrf::DANGEROUS_SCHEMES),
        (DANGEROUS_SCHEME_2, ssrf::DANGEROUS_SCHEMES_2),
        (URL_SCHEME, ssrf::URL_SCHEMES),
        (DOUBLE_SLASH, &["//"]),
        (DOT_DOT, &[".."]),
        (SENSITIVE_FILE, traversal::SENSITIVE),
        (ZERO_X, &["0x"]),
        (ETC_PROC, &["etc/", "proc/"]),
        (ABSOLUTE_PATH, &["c:/", "~/", "~root/"]),
        (PERCENT_24, &["%24"]),
        (AMP_REFERENCE, &["&#", "&dollar"]),
        (BACKSLASH_ESCAPE, &["\\u", "\\x"]),
        (JNDI, &["jndi"]),
        (SCRIPT_CALL, xss::SCRIPT_CALLS),
        (COMPACT_WORD, xss::COMPACT_WORDS),
        (COLON_WORD, xss::COLON_WORDS),
    ]
}

/// All the substrings in one automaton (a DFA, ASCII case ignored), and the group of each.
struct Finder {
    dfa: DFA,
    start: StateID,
    group_of: Vec<u32>,
}

impl Finder {
    /// The bytes of `value`, and the groups found in it: one DFA transition per byte. Every state
    /// where substrings end lists all of them (those ending inside longer ones too), as an
    /// overlapping search reports them. The byte set is built in the same loop: its work fits
    /// in the time each transition waits for the one before.
    fn bytes_and_groups_in(&self, value: &str) -> (ByteSet, u32) {
        let mut bytes = ByteSetBuilder::default();
        let mut found = 0;
        let mut sid = self.start;
        for &b in value.as_bytes() {
            bytes.add(b);
            sid = self.dfa.next_state(Anchored::No, sid, b.to_ascii_lowercase());
            if self.dfa.is_special(sid) {
                found |= self.groups_ending_at(sid);
            }
        }
        (bytes.finish(), found)
    }

    /// The groups of the substrings that end at state `sid`. Out of the loop above, which then
    /// keeps all it needs in registers.
    #[cold]
    #[inline(never)]
    fn groups_ending_at(&self, sid: StateID) -> u32 {
        let mut found = 0;
        if self.dfa.is_match(sid) {
            for i in 0..self.dfa.match_len(sid) {
                let pattern = self.dfa.match_pattern(sid, i).as_usize();
                found |= self.group_of.get(pattern).copied().unwrap_or(u32::MAX);
            }
        }
        found
    }
}

static FINDER: LazyLock<Option<Finder>> = LazyLock::new(|| {
    let mut needles: Vec<String> = vec![];
    let mut group_of = vec![];
    for (group, list) in groups() {
        for needle in list {
            needles.push(needle.to_ascii_lowercase());
            group_of.push(group);
        }
    }
    // Lower-case needles, and the value lower-cased byte by byte as it is read
    // ([`Finder::groups_in`]): the same matches as a DFA that ignores ASCII case, with half the
    // byte classes (`A` and `a` are one), so half the transition table to keep in cache.
    let dfa = DFA::builder().prefilter(false).build(&needles).ok()?;
    let start = dfa.start_state(Anchored::No).ok()?;
    Some(Finder { dfa, start, group_of })
});

/// Which groups of substrings are in a value. Known only for ASCII values without NUL bytes
/// (which the detectors' lower-casing and folding do not change but for case); for others every
/// group "may" be there and the detectors search as usual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needles(Option<u32>);

impl Needles {
    /// Nothing known: every group may be there.
    pub const UNKNOWN: Needles = Needles(None);

    /// Whether a substring of one of `groups` may be in the value (in any ASCII case): false only
    /// when none is.
    pub fn may(self, groups: u32) -> bool {
        self.0.is_none_or(|found| found & groups != 0)
    }

    /// Whether a substring of `group` is in the value's lower-cased form: known, or found by
    /// `search`, which looks for the same substrings in it.
    pub fn has(self, group: u32, search: impl FnOnce() -> bool) -> bool {
        match self.0 {
            Some(found) => found & group != 0,
            None => search(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_in_any_case_and_only_for_plain_values() {
        let scan = Scan::of("Mozilla/5.0 (X11; Linux) UNION Select");
        assert!(scan.needles.may(group::SQL_KEYWORD));
        assert!(!scan
            .needles
            .may(group::DOUBLE_SLASH | group::DOT_DOT | group::RUNNER));
        let url = Scan::of("HTTPS://a.OASTIFY.com/x");
        assert!(url.needles.may(group::URL_SCHEME));
        assert!(url.needles.may(group::CALLBACK_DOMAIN));
        assert!(url.needles.may(group::DOUBLE_SLASH));
        // Look-alikes and NUL bytes fold into ASCII later: nothing is known.
        assert_eq!(Scan::of("ⓛocalhost").needles, Needles::UNKNOWN);
        assert_eq!(Scan::of("un\0ion").needles, Needles::UNKNOWN);
        assert!(Scan::of("ⓛ").needles.may(group::JNDI));
    }
}
