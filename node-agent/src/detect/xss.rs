//! Cross-site scripting: markup and script that a browser would run if the value were reflected
//! into a page, after undoing the encodings a browser undoes (character references, JavaScript
//! escapes, NUL bytes, tabs and newlines inside a URL scheme, CSS comments).

use super::decode::{
    contains_str, excerpt, html_decode, lower_folded, lower_folded_cow, unescape_backslash, ByteSet,
};
use super::scan::{group, Needles, Scan};
use super::Hit;
use regex::Regex;
use std::borrow::Cow;

/// Functions whose call is a "script call" below: at paranoia 1, a `(` is only worth the text
/// patterns when one of them is in the value (every other text pattern needs `<`, `=`, `` ` ``,
/// `[` or `+`).
pub(super) const SCRIPT_CALLS: &[&str] = &[
    "alert",
    "prompt",
    "confirm",
    "eval",
    "settimeout",
    "setinterval",
    "execscript",
    "msgbox",
];

/// Words of which each compact pattern without an `@` needs one, or one of [`COLON_WORDS`] and a `:`.
pub(super) const COMPACT_WORDS: &[&str] = &["expression", "script", "fromcharcode", "document", "innerhtml"];

/// The words of the compact patterns that need a `:` and none of [`COMPACT_WORDS`]: `data:` URLs,
/// `-moz-binding:`, `behavior: url` and `binding: url`.
pub(super) const COLON_WORDS: &[&str] = &["data:", "binding", "behavio"];

/// Compiled patterns for one paranoia level.
pub struct Xss {
    paranoia: u8,
    /// Patterns matched on the decoded, lower-cased value.
    text: Vec<(Regex, &'static str)>,
    /// Patterns matched on the compacted value (tabs, newlines and CSS comments removed).
    compact: Vec<(Regex, &'static str)>,
    /// All text patterns in one automaton: most values match none, and one scan says so.
    any_text: Regex,
    /// All compact patterns in one automaton.
    any_compact: Regex,
    /// The same without word boundaries ([`without_word_boundaries`]), checked first.
    may_text: Regex,
    may_compact: Regex,
}

/// `pattern` without its `\b` assertions: it matches wherever `pattern` does (and sometimes
/// more). Unicode word boundaries stop the regex crate's lazy DFA on non-ASCII text, which then
/// falls back to an engine a hundred times slower (100 µs for a 300-byte French sentence); this
/// form keeps the DFA on any text, so it serves as a quick "no" in front of the exact one.
fn without_word_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('b') if !in_class => {}
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            '[' => {
                in_class = true;
                out.push(c);
            }
            ']' => {
                in_class = false;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

const SEP: &str = r#"[\s/"'`;]"#;

fn as_ref<'a>(v: &'a [(String, &'static str)]) -> Vec<(&'a str, &'static str)> {
    v.iter().map(|(p, r)| (p.as_str(), *r)).collect()
}

fn build(list: &[(&str, &'static str)]) -> Result<Vec<(Regex, &'static str)>, String> {
    list.iter()
        .map(|(p, reason)| {
            regex::RegexBuilder::new(p)
                .size_limit(1 << 22)
                .build()
                .map(|r| (r, *reason))
                .map_err(|e| format!("xss pattern {p:?}: {e}"))
        })
        .collect()
}

impl Xss {
    pub fn new(paranoia: u8) -> Result<Xss, String> {
        let tag = format!(r#"<[a-z][\w:.-]*(?:{SEP}[^>]*?)?{SEP}on[a-z]{{3,}}\s*="#);
        let breakout = r#"["'`](?:[^<>"'`]{0,40}?[\s/])?on[a-z]{3,}\s*="#.to_string();
        let mut text: Vec<(String, &'static str)> = vec![
            (
                // With an optional XML namespace prefix (`<v:vmlframe`, `<svg:script`).
                r"</?(?:[a-z]+:)?(?:script|iframe|frame|frameset|object|embed|applet|meta|base|link|svg|math|xml|import|isindex|bgsound|i?layer|vmlframe|xss|style|template|portal|handler|listener)\b".into(),
                "script-capable tag",
            ),
            (
                r"<\?(?:import|xml:namespace)\b|<xsl:stylesheet|\bdataformatas\s*=|<set\b[^>]*\battributename\s*=".into(),
                "script-capable markup",
            ),
            (tag, "event handler in a tag"),
            (breakout, "event handler after attribute break-out"),
            (
                r#"(?:^|[^\w$.])(?:\(\s*)?(?:alert|prompt|confirm|eval|settimeout|setinterval|execscript|msgbox)(?:\s*\))?(?:\?\.)?(?:\.(?:call|apply|bind))?(?:\(|`)"#.into(),
                "script call",
            ),
            (r"\.(?:call|apply|bind)\s*`".into(), "tagged template call"),
            (r"\(!\[\]\+\[\]\)|\[\+!\+\[\]\]|!\+\[\]\+!\+\[\]".into(), "JSFuck"),
            (
                r#"(?:window|self|top|parent|frames|globalthis|document)\s*\[\s*["'`]|\(\s*document\s*\)\s*\["#.into(),
                "script gadget",
            ),
            (r"\+adw-[a-z/!]".into(), "UTF-7 markup"),
            (
                r#"\b(?:href|src|action|formaction|data|background|dynsrc|lowsrc|poster|codebase|xlink:href)\s*=\s*["'`]?\s*(?:java|vb|live)script:"#.into(),
                "script URL in an attribute",
            ),
        ];
        let mut compact: Vec<(String, &'static str)> = vec![
            (
                r#"(?:^|\W)javascript:\s*(?:[\w$.]+\s*[(`=\[]|[^\w\s]|$)|(?:^|\W)(?:vb|live)script:"#.into(),
                "script URL",
            ),
            (
                r"data:(?:text/html|image/svg\+xml|application/(?:x-)?(?:java|ecma)script|text/(?:x-)?(?:java|ecma)script)".into(),
                "data URL with markup",
            ),
            (r"[:=(]\s*expression\s*\(".into(), "CSS expression"),
            (
                r"-moz-binding\s*:|\b(?:behaviou?r|binding)\s*:\s*url|@import\b".into(),
                "CSS code loading",
            ),
            (
                r#"url\s*\(\s*["']?\s*(?:javascript|vbscript|livescript)\b"#.into(),
                "script URL in CSS",
            ),
            (
                r"document\s*\??\.\s*(?:cookie|domain|write(?:ln)?\s*\()|fromcharcode\s*\(|\.innerhtml\s*=".into(),
                "DOM access",
            ),
        ];
        if paranoia >= 2 {
            text.push((
                r"<(?:body|html|input|button|form|textarea|details|marquee|video|audio|source|img|image|keygen|noscript|title|plaintext|xmp|comment|animate|set|foreignobject|a\s+href)\b".into(),
                "HTML tag",
            ));
            text.push((r#"(?:^|[\s;"'/])on[a-z]{3,}\s*="#.into(), "event handler"));
            text.push((r"\+ad[w4]-".into(), "UTF-7 markup"));
            text.push((
                r"\bnew\s+function\s*\(|\b(?:atob|btoa)\s*\(".into(),
                "script gadget",
            ));
            text.push((
                r#"\[\s*["'][a-z]+["']\s*(?:\+\s*["'][a-z]+["']\s*)*\]\s*\(|constructor\s*\(|window\s*\.\s*(?:location|open)|location\s*(?:\.\s*href\s*)?="#.into(),
                "script gadget",
            ));
            compact.push((r"(?:java|vb|live)script:".into(), "script URL"));
        }
        let union = |v: &[(String, &'static str)]| -> Result<Regex, String> {
            let joined = v
                .iter()
                .map(|(p, _)| format!("(?:{p})"))
                .collect::<Vec<_>>()
                .join("|");
            regex::RegexBuilder::new(&joined)
                .size_limit(1 << 24)
                .build()
                .map_err(|e| format!("xss patterns: {e}"))
        };
        let relaxed_union = |v: &[(String, &'static str)]| -> Result<Regex, String> {
            let joined = v
                .iter()
                .map(|(p, _)| format!("(?:{})", without_word_boundaries(p)))
                .collect::<Vec<_>>()
                .join("|");
            regex::RegexBuilder::new(&joined)
                .size_limit(1 << 24)
                .build()
                .map_err(|e| format!("xss patterns: {e}"))
        };
        Ok(Xss {
            paranoia,
            any_text: union(&text)?,
            any_compact: union(&compact)?,
            may_text: relaxed_union(&text)?,
            may_compact: relaxed_union(&compact)?,
            text: build(&as_ref(&text))?,
            compact: build(&as_ref(&compact))?,
        })
    }

    #[cfg(test)]
    pub fn detect(&self, value: &str) -> Option<Hit> {
        self.detect_in(value, Scan::of(value))
    }

    /// [`Xss::detect`] of a value whose scan is `scan` ([`Scan::of`] the value). The first tests
    /// are inlined into the caller's loop over the values: most stop there, without a call.
    #[inline]
    pub(crate) fn detect_in(&self, value: &str, scan: Scan) -> Option<Hit> {
        let bytes = scan.bytes;
        if !bytes.contains_any_of(value, ByteSet::of_bytes(b"<:=(`&\\+.")) {
            return None;
        }
        if bytes.is_ascii()
            && !bytes.any(ByteSet::of_bytes(b"\\&"))
            && self.nothing_to_read(bytes, scan.needles)
        {
            return None;
        }
        self.read(value, scan)
    }

    /// [`Xss::detect_in`] past its first tests.
    #[inline(never)]
    fn read(&self, value: &str, scan: Scan) -> Option<Hit> {
        let bytes = scan.bytes;
        // `s`, what the patterns read, and what is known of its bytes and substrings.
        let (s, set, needles): (Cow<str>, ByteSet, Needles) = if bytes.any(ByteSet::of_bytes(b"\\&")) {
            let unescaped = unescape_backslash(value);
            let once = html_decode(&unescaped);
            let twice = html_decode(&once);
            let s = lower_folded(&twice);
            let set = ByteSet::of(&s);
            (Cow::Owned(s), set, Needles::UNKNOWN)
        } else {
            // No escapes, no references: nothing to decode, `s` is the lower-cased value.
            (lower_folded_cow(value, bytes), bytes.lower_folded(), scan.needles)
        };
        // Script calls and DOM names count where script can start: at the start of the value or
        // after a character that ends an attribute, a string or a tag.
        let breakout = s
            .bytes()
            .any(|b| matches!(b, b'\'' | b'"' | b'<' | b'>' | b';' | b'`' | b'}'));
        let allowed = |reason: &str, text: &str, at: usize| {
            !matches!(reason, "script call" | "DOM access") || breakout || text[..at].trim().is_empty()
        };
        let find = |patterns: &[(Regex, &'static str)], text: &str| {
            patterns.iter().find_map(|(re, reason)| {
                re.find_iter(text)
                    .find(|m| allowed(reason, text, m.start()))
                    .map(|m| Hit {
                        reason,
                        excerpt: excerpt(text, m.start(), 96),
                    })
            })
        };
        // The relaxed check first only where word boundaries would slow the exact one down.
        let any_text = |t: &str| (t.is_ascii() || self.may_text.is_match(t)) && self.any_text.is_match(t);
        // At paranoia 1 every text pattern needs one of these, or a `(` after a script call.
        let text_may = self.paranoia >= 2
            || set.any(ByteSet::of_bytes(b"<=`[+"))
            || (set.has(b'(') && needles.may(group::SCRIPT_CALL));
        if text_may && any_text(&s) {
            if let Some(hit) = find(&self.text, &s) {
                return Some(hit);
            }
        }
        let compact = compact(&s);
        // When nothing was taken out, the compact patterns need what [`compact_may`] says.
        let compact_may = match &compact {
            Cow::Borrowed(_) => compact_may(set, needles),
            Cow::Owned(_) => true,
        };
        if compact_may
            && (compact.is_ascii() || self.may_compact.is_match(&compact))
            && self.any_compact.is_match(&compact)
        {
            if let Some(hit) = find(&self.compact, &compact) {
                return Some(hit);
            }
        }
        // Sanitisers that delete unknown tags turn `o<x>nfocus=alert<x>(1)` into a handler.
        if s.contains('<') {
            let stripped = strip_short_tags(&s);
            if stripped != s && any_text(&stripped) {
                return find(&self.text, &stripped);
            }
        }
        None
    }
}

impl Xss {
    /// For an ASCII value without `\` and `&` (`s` below is then the value lower-cased, and
    /// `bytes` exact): whether the three steps of [`Xss::detect_in`] would all be skipped, which
    /// is known without the lower-cased copy. Text patterns need what `text_may` needs; the
    /// compacted value is the value itself without control bytes and `/*`, and then compact
    /// patterns need what [`compact_may`] says; short tags need a `<`.
    fn nothing_to_read(&self, bytes: ByteSet, needles: Needles) -> bool {
        const CONTROL: ByteSet = ByteSet::of_bytes(&[
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
            27, 28, 29, 30, 31, 127,
        ]);
        let set = bytes.lower_folded();
        let text_may = self.paranoia >= 2
            || set.any(ByteSet::of_bytes(b"<=`[+"))
            || (set.has(b'(') && needles.may(group::SCRIPT_CALL));
        let compact_is_value = !set.any(CONTROL) && !set.may_contain("/*");
        !text_may && compact_is_value && !compact_may(set, needles) && !set.has(b'<')
    }
}

/// Whether a compact pattern may match text whose bytes are `set` and whose substrings are
/// `needles`: each needs an `@`, a compact word, or a `:` and a colon word.
fn compact_may(set: ByteSet, needles: Needles) -> bool {
    set.has(b'@') || needles.may(group::COMPACT_WORD) || (set.has(b':') && needles.may(group::COLON_WORD))
}

/// Removes `<x>`-like tags of at most 8 characters.
fn strip_short_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('<') {
        out.push_str(&rest[..p]);
        // Only a `>` within the next few bytes can close a short tag (keeps this linear).
        let window = &rest.as_bytes()[p..rest.len().min(p + 10)];
        match window.iter().position(|&c| c == b'>') {
            Some(e)
                if e <= 9
                    && rest[p + 1..p + e]
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'/') =>
            {
                rest = &rest[p + e + 1..];
            }
            _ => {
                out.push('<');
                rest = &rest[p + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Decodes CSS escapes (`\28` is `(`, `\0075` is `u`).
fn css_unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let mut j = i + 1;
            while j < b.len() && j - i <= 6 && b[j].is_ascii_hexdigit() {
                j += 1;
            }
            if j > i + 1 {
                let code = u32::from_str_radix(&s[i + 1..j], 16)
                    .ok()
                    .and_then(char::from_u32);
                if let Some(c) = code {
                    out.push(c);
                    i = if b.get(j) == Some(&b' ') { j + 1 } else { j };
                    continue;
                }
            }
        }
        let end = (i + 1..=b.len())
            .find(|&e| s.is_char_boundary(e))
            .unwrap_or(b.len());
        out.push_str(&s[i..end]);
        i = end;
    }
    out
}

/// Removes what browsers ignore inside URL schemes and CSS: tabs, newlines, control characters,
/// and `/* ... */` comments.
fn compact(s: &str) -> Cow<'_, str> {
    if !contains_str(s, "/*") && !s.contains('\\') && !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find("*/") {
            Some(end) => rest = &rest[start + 2 + end + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out.retain(|c| !c.is_control());
    Cow::Owned(css_unescape(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_script() {
        let x = Xss::new(1).unwrap();
        for attack in [
            "<script>alert(1)</script>",
            "<ScRiPt src=//evil.example/x.js>",
            "<img src=x onerror=alert(document.domain)>",
            "<svg/onload=confirm(1)>",
            "\"><img src=1 onerror=print()>",
            "\" autofocus onfocus=\"fetch('//x')",
            "' onmouseover='go()' x='",
            "<a href=\"javascript:void(0)\">x</a>",
            "<a href=\"jav&#x09;ascript:alert(1)\">x</a>",
            "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">",
            "&lt;iframe src=//x&gt;",
            "\\u003cscript\\u003e",
            "<div style=\"width: expr/**/ession(alert(1))\">",
            "<div style=\"background:url(javascript:alert(1))\">",
            "';alert(String.fromCharCode(88))//",
            "\"-confirm`1`-\"",
            "<object data=\"data:text/html;base64,PHNjcmlwdD4=\">",
            "<scr\0ipt>",
            "<details open ontoggle=x()>",
            "<a href=\"vbscript:MsgBox+1\">",
            "<v:vmlframe src=x>",
            "(alert)(1)",
            "alert?.(document?.cookie)",
            "\\\"autof<x>ocus o<x>nfocus=alert<x>(1)//",
            "<div style=\"x:expression\\28 write(1)\\29\">",
            "<div style=\"behaviour: url(x.htc)\">",
            "self[\"alert\"](1)",
            "[].sort.call`${alert}1`",
            "+ADw-script+AD4-",
        ] {
            assert!(x.detect(attack).is_some(), "missed {attack:?}");
        }
    }

    #[test]
    fn relaxed_patterns_drop_only_word_boundaries() {
        assert_eq!(
            without_word_boundaries(r"<script\b|\bsrc\s*="),
            r"<script|src\s*="
        );
        assert_eq!(without_word_boundaries(r"[\b\w]\\b"), r"[\b\w]\\b");
        // Non-ASCII text with no markup is judged without the slow engine, and still judged.
        let x = Xss::new(1).unwrap();
        assert!(x
            .detect("C’est simple : si les feux sont au vert, l’assistance peut intervenir.")
            .is_none());
        assert!(x.detect("é<script>alert(1)</script>").is_some());
    }

    #[test]
    fn benign_text() {
        let x = Xss::new(1).unwrap();
        for ok in [
            "a < b and c > d",
            "<b>bold</b> and <i>italic</i>",
            "JavaScript: The Good Parts",
            "see https://example.com/a?b=c&d=e",
            "price: 5 (excl. VAT)",
            "regular expression (regex)",
            "tom & jerry",
            "online=true",
            "x=\"one\" y='two'",
            "The fire alarm (alert) rang",
            "email me: me@example.com",
            "/docs/javascript-manual/document.cookie",
            "/api/eval(",
        ] {
            assert!(
                x.detect(ok).is_none(),
                "false positive on {ok:?}: {:?}",
                x.detect(ok)
            );
        }
    }
}
