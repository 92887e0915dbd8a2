//! Decoding and normalisation shared by the detectors: URL (percent, `%u`, overlong UTF-8, `+`),
//! backslash escapes (`\uXXXX`, `\xXX`), HTML/XML character references, and folding of Unicode
//! look-alikes (full-width and circled letters) to ASCII.

use std::borrow::Cow;

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` and `%uXXXX` escapes once. Overlong UTF-8 encodings of `.` `/` `\` (a classic
/// filter evasion, e.g. `%c0%ae`) decode to the character they stand for.
pub fn percent_decode_once(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if i + 5 < bytes.len() && (bytes[i + 1] == b'u' || bytes[i + 1] == b'U') {
                let code = (2..6).try_fold(0u32, |acc, k| hex_val(bytes[i + k]).map(|d| acc * 16 + d as u32));
                if let Some(c) = code.and_then(char::from_u32) {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 6;
                    continue;
                }
            }
            if i + 2 < bytes.len() {
                if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&fold_overlong(&out)).into_owned()
}

/// Overlong two- and three-byte encodings of ASCII (`c0 ae` is `.`), which lenient decoders accept.
fn fold_overlong(bytes: &[u8]) -> Cow<'_, [u8]> {
    if !bytes.iter().any(|b| matches!(b, 0xc0 | 0xc1 | 0xe0)) {
        return Cow::Borrowed(bytes);
    }
    let mut folded = Vec::with_capacity(bytes.len());
    let mut j = 0;
    while j < bytes.len() {
        if j + 1 < bytes.len()
            && (bytes[j] == 0xc0 || bytes[j] == 0xc1)
            && (0x80..0xc0).contains(&bytes[j + 1])
        {
            folded.push(((bytes[j] & 0x01) << 6) | (bytes[j + 1] & 0x3f));
            j += 2;
            continue;
        }
        if j + 2 < bytes.len()
            && bytes[j] == 0xe0
            && bytes[j + 1] == 0x80
            && (0x80..0xc0).contains(&bytes[j + 2])
        {
            folded.push(bytes[j + 2] & 0x3f);
            j += 3;
            continue;
        }
        folded.push(bytes[j]);
        j += 1;
    }
    Cow::Owned(folded)
}

/// Decodes up to three layers of percent-encoding (double encoding is a common evasion).
pub fn decode_layers(input: &str) -> String {
    decode_layers_cow(input).into_owned()
}

/// [`decode_layers`], borrowing the input when it has nothing to decode.
pub fn decode_layers_cow(input: &str) -> Cow<'_, str> {
    if !input.as_bytes().contains(&b'%') {
        return Cow::Borrowed(input);
    }
    let mut current = input.to_string();
    for _ in 0..3 {
        if !current.contains('%') {
            break;
        }
        let next = percent_decode_once(&current);
        if next == current {
            break;
        }
        current = next;
    }
    Cow::Owned(current)
}

/// A query-string or form value: `+` is a space in the first layer, then up to three layers of
/// percent-decoding.
pub fn form_decode(input: &str) -> String {
    form_decode_cow(input).into_owned()
}

/// [`form_decode`], borrowing the input when it has nothing to decode.
pub fn form_decode_cow(input: &str) -> Cow<'_, str> {
    if input.as_bytes().contains(&b'+') {
        Cow::Owned(decode_layers_cow(&input.replace('+', " ")).into_owned())
    } else {
        decode_layers_cow(input)
    }
}

/// Decodes `\uXXXX`, `\u{X..}` and `\xXX` escapes (JSON, JavaScript, Java); other backslashes stay.
pub fn unescape_backslash(input: &str) -> Cow<'_, str> {
    if !input.contains('\\') {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut changed = false;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            let (code, len) = match bytes[i + 1] {
                b'u' | b'U' if bytes.get(i + 2) == Some(&b'{') => {
                    let end = bytes[i + 3..].iter().position(|&b| b == b'}').map(|p| i + 3 + p);
                    match end {
                        Some(end) if end > i + 3 && end - (i + 3) <= 6 => (
                            bytes[i + 3..end]
                                .iter()
                                .try_fold(0u32, |acc, &b| hex_val(b).map(|d| acc * 16 + d as u32)),
                            end + 1 - i,
                        ),
                        _ => (None, 0),
                    }
                }
                b'u' | b'U' if i + 6 <= bytes.len() => (
                    bytes[i + 2..i + 6]
                        .iter()
                        .try_fold(0u32, |acc, &b| hex_val(b).map(|d| acc * 16 + d as u32)),
                    6,
                ),
                b'x' | b'X' if i + 4 <= bytes.len() => (
                    bytes[i + 2..i + 4]
                        .iter()
                        .try_fold(0u32, |acc, &b| hex_val(b).map(|d| acc * 16 + d as u32)),
                    4,
                ),
                _ => (None, 0),
            };
            if let Some(c) = code.and_then(char::from_u32) {
                out.push(c);
                i += len;
                changed = true;
                continue;
            }
        }
        // Copy one UTF-8 character.
        let ch_len = utf8_len(bytes[i]);
        let end = (i + ch_len).min(bytes.len());
        out.push_str(input.get(i..end).unwrap_or("\u{fffd}"));
        i = end;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(input)
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// Named character references that matter for injection (HTML5 spellings, case-insensitive).
fn named_entity(name: &str) -> Option<char> {
    Some(match name.to_ascii_lowercase().as_str() {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        "colon" => ':',
        "semi" => ';',
        "tab" => '\t',
        "newline" => '\n',
        "nbsp" => ' ',
        "lpar" => '(',
        "rpar" => ')',
        "lbrace" | "lcub" => '{',
        "rbrace" | "rcub" => '}',
        "lsqb" | "lbrack" => '[',
        "rsqb" | "rbrack" => ']',
        "dollar" => '$',
        "sol" => '/',
        "bsol" => '\\',
        "num" => '#',
        "excl" => '!',
        "equals" => '=',
        "period" => '.',
        "comma" => ',',
        "grave" => '`',
        "quest" => '?',
        "percnt" => '%',
        "plus" => '+',
        "ast" | "midast" => '*',
        "lowbar" => '_',
        "verbar" | "vert" => '|',
        "hyphen" | "dash" => '-',
        "commat" => '@',
        "hat" => '^',
        _ => return None,
    })
}

/// Decodes HTML/XML character references: `&#60;`, `&#x3c;` (any number of leading zeros, the
/// semicolon optional as browsers allow) and the named ones in [`named_entity`].
pub fn html_decode(input: &str) -> Cow<'_, str> {
    if !input.contains('&') {
        return Cow::Borrowed(input);
    }
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut changed = false;
    while i < bytes.len() {
        if bytes[i] == b'&' {
            if let Some((c, len)) = char_ref(&bytes[i + 1..]) {
                out.push(c);
                i += 1 + len;
                changed = true;
                continue;
            }
        }
        let end = (i + utf8_len(bytes[i])).min(bytes.len());
        out.push_str(input.get(i..end).unwrap_or("\u{fffd}"));
        i = end;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(input)
    }
}

/// Parses a character reference after `&`; returns the character and the bytes consumed.
fn char_ref(rest: &[u8]) -> Option<(char, usize)> {
    if rest.first() == Some(&b'#') {
        let (hex, start) = match rest.get(1) {
            Some(b'x') | Some(b'X') => (true, 2),
            _ => (false, 1),
        };
        let mut j = start;
        let mut code: u32 = 0;
        while j < rest.len() && j - start < 64 {
            let d = if hex {
                hex_val(rest[j]).map(u32::from)
            } else {
                (rest[j] as char).to_digit(10)
            };
            match d {
                Some(d) => code = code.saturating_mul(if hex { 16 } else { 10 }).saturating_add(d),
                None => break,
            }
            j += 1;
        }
        if j == start {
            return None;
        }
        if rest.get(j) == Some(&b';') {
            j += 1;
        }
        return char::from_u32(code).map(|c| (c, j));
    }
    let mut j = 0;
    while j < rest.len() && j < 10 && rest[j].is_ascii_alphanumeric() {
        j += 1;
    }
    if j == 0 {
        return None;
    }
    let name = std::str::from_utf8(&rest[..j]).ok()?;
    let c = named_entity(name)?;
    if rest.get(j) == Some(&b';') {
        Some((c, j + 1))
    } else if matches!(name.to_ascii_lowercase().as_str(), "lt" | "gt" | "amp" | "quot") {
        // Browsers accept these few without the semicolon.
        Some((c, j))
    } else {
        None
    }
}

/// Folds Unicode look-alikes that some back ends normalise (NFKC) to ASCII: full-width forms,
/// circled letters and digits. Other characters are kept.
pub fn fold_unicode(input: &str) -> Cow<'_, str> {
    if input.is_ascii() {
        return Cow::Borrowed(input);
    }
    let mut changed = false;
    let out: String = input
        .chars()
        .map(|c| {
            let u = c as u32;
            let folded = match u {
                0xff01..=0xff5e => char::from_u32(u - 0xff01 + 0x21),
                0x24b6..=0x24cf => char::from_u32(u - 0x24b6 + u32::from(b'a')),
                0x24d0..=0x24e9 => char::from_u32(u - 0x24d0 + u32::from(b'a')),
                0x2460..=0x2468 => char::from_u32(u - 0x2460 + u32::from(b'1')),
                0x24ea => Some('0'),
                0x3002 | 0xff61 => Some('.'),
                // Slash look-alikes that best-fit mappings turn into separators.
                0x2215 | 0x2044 | 0x29f8 | 0xefc8 | 0xf025 => Some('/'),
                0x2216 | 0x29f9 | 0xfe68 => Some('\\'),
                0x00a0 | 0x2000..=0x200a | 0x3000 => Some(' '),
                _ => None,
            };
            match folded {
                Some(f) => {
                    changed = true;
                    f
                }
                None => c,
            }
        })
        .collect();
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(input)
    }
}

/// The case-folded form most detectors work on: look-alikes folded, NUL bytes removed, ASCII
/// lower case.
pub fn lower_folded(input: &str) -> String {
    let folded = fold_unicode(input);
    let mut s: String = if folded.contains('\0') {
        folded.chars().filter(|&c| c != '\0').collect()
    } else {
        folded.into_owned()
    };
    s.make_ascii_lowercase();
    s
}

/// [`lower_folded`] of a value whose bytes are `bytes`, borrowing it when it is already folded
/// (ASCII, no upper case, no NUL): the common case, without an allocation.
pub fn lower_folded_cow(input: &str, bytes: ByteSet) -> Cow<'_, str> {
    if !bytes.is_ascii() {
        Cow::Owned(lower_folded(input))
    } else if !bytes.any(ByteSet::UPPER_OR_NUL) {
        Cow::Borrowed(input)
    } else if !bytes.has(0) {
        // ASCII without NUL: nothing to fold or remove, one pass that copies and lower-cases.
        Cow::Owned(input.to_ascii_lowercase())
    } else {
        Cow::Owned(lower_folded(input))
    }
}

/// Which ASCII bytes a value contains, from one pass over it, so that each detector can tell in a
/// few instructions whether the characters its shapes need are there at all (most values are
/// ids, numbers and words, and need no further work).
///
/// A non-ASCII byte also sets the bit of its low seven bits: the set may hold bytes the value
/// lacks, never the reverse. It answers "could it be there", never "it is there".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteSet {
    /// Bytes 0-63 and 64-127, a bit each: two words rather than a `u128`, whose 16-byte
    /// alignment pads the set, and each value's [`super::scan::Scan`], to half again its size.
    ascii: [u64; 2],
    non_ascii: bool,
}

impl ByteSet {
    /// Every ASCII byte: what a value may hold once Unicode look-alikes are folded to ASCII.
    pub const ALL: ByteSet = ByteSet::from_bits(u128::MAX, true);
    /// ASCII letters.
    pub const LETTERS: ByteSet = ByteSet::of_bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");
    /// ASCII upper-case letters.
    pub const UPPER: ByteSet = ByteSet::of_bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    const UPPER_OR_NUL: ByteSet = ByteSet::of_bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ\0");

    pub fn of(s: &str) -> ByteSet {
        let mut set = ByteSetBuilder::default();
        for &b in s.as_bytes() {
            set.add(b);
        }
        set.finish()
    }

    /// The set of the given bytes (for constants: `ByteSet::of_bytes(b"<>\"'")`).
    pub const fn of_bytes(bytes: &[u8]) -> ByteSet {
        let mut ascii = 0u128;
        let mut i = 0;
        while i < bytes.len() {
            ascii |= 1u128 << (bytes[i] & 0x7f);
            i += 1;
        }
        ByteSet::from_bits(ascii, false)
    }

    const fn from_bits(ascii: u128, non_ascii: bool) -> ByteSet {
        ByteSet {
            ascii: [ascii as u64, (ascii >> 64) as u64],
            non_ascii,
        }
    }

    const fn bits(self) -> u128 {
        self.ascii[0] as u128 | (self.ascii[1] as u128) << 64
    }

    /// Whether the value may contain `b` (an ASCII byte).
    pub fn has(self, b: u8) -> bool {
        self.bits() & (1u128 << (b & 0x7f)) != 0
    }

    /// Whether the value may contain any byte of `set`.
    pub fn any(self, set: ByteSet) -> bool {
        self.bits() & set.bits() != 0
    }

    /// Whether `s`, the value this set was made of, contains a byte of `set` (exact, and without
    /// looking at `s` unless it has non-ASCII characters).
    pub fn contains_any_of(self, s: &str, set: ByteSet) -> bool {
        self.any(set) && (!self.non_ascii || s.bytes().any(|b| b < 0x80 && set.has(b)))
    }

    /// Whether the value may contain `needle`: it has every byte of it.
    pub fn may_contain(self, needle: &str) -> bool {
        needle.bytes().all(|b| self.has(b))
    }

    /// Whether the value is ASCII (exact).
    pub fn is_ascii(self) -> bool {
        !self.non_ascii
    }

    /// The bytes [`lower_folded`] of the value may contain: upper case folded to lower case, or,
    /// when the value has non-ASCII characters (look-alikes fold to any ASCII byte), all of them.
    pub fn lower_folded(self) -> ByteSet {
        if self.non_ascii {
            return ByteSet::ALL;
        }
        let (bits, upper) = (self.bits(), ByteSet::UPPER.bits());
        ByteSet::from_bits((bits & !upper) | ((bits & upper) << 32), false)
    }
}

/// A [`ByteSet`] being built one byte at a time (for loops that read a value's bytes anyway).
#[derive(Clone, Copy, Default)]
pub struct ByteSetBuilder {
    low: u64,
    high: u64,
    all: u8,
}

impl ByteSetBuilder {
    /// Two 64-bit halves in registers (cheaper to update than one 128-bit word, and than an
    /// array indexed by the byte, which goes through memory on every byte): each byte's bit goes
    /// to the half its bit 6 selects, through masks, without a branch. The high bits of all bytes
    /// OR-ed together say whether one was not ASCII.
    #[inline(always)]
    pub fn add(&mut self, b: u8) {
        let bit = 1u64 << (b & 63);
        let upper_half = u64::from((b >> 6) & 1).wrapping_neg();
        self.low |= bit & !upper_half;
        self.high |= bit & upper_half;
        self.all |= b;
    }

    pub fn finish(self) -> ByteSet {
        ByteSet {
            ascii: [self.low, self.high],
            non_ascii: self.all >= 0x80,
        }
    }
}

/// The first occurrence of `needle` in `haystack`. For the short needles and values of the
/// detectors this is much cheaper than `str::find`, which prepares a searcher on every call: the
/// candidates are found with `memchr` (through `str::find` of a character) and compared in place.
pub fn find_str(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    let Some((&first, rest)) = n.split_first() else {
        return Some(0);
    };
    if !first.is_ascii() {
        return haystack.find(needle);
    }
    let mut from = 0;
    while let Some(p) = haystack[from..].find(first as char) {
        let at = from + p;
        if h.len() - at < n.len() {
            return None;
        }
        if &h[at + 1..at + n.len()] == rest {
            return Some(at);
        }
        // After an ASCII byte: a character boundary.
        from = at + 1;
    }
    None
}

/// A table indexed by byte, true for ASCII letters and digits, for the bytes of `extra`, and for
/// every byte from 0x80 when `non_ascii`: a word-byte test that hot loops ask of most bytes.
pub(crate) const fn word_byte_table(extra: &[u8], non_ascii: bool) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || (non_ascii && c >= 0x80);
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// The position of the first byte of `s` that `is` holds for. Each block of 16 bytes is first
/// tested whole, without an early exit, which the compiler turns into a few vector compares;
/// only the block with such a byte is then read byte by byte. For a rare byte in a long value
/// (a separator in a User-Agent) this is several times cheaper than `position`.
#[inline]
pub fn position_of(s: &[u8], is: impl Fn(u8) -> bool) -> Option<usize> {
    let mut offset = 0;
    for block in s.chunks(16) {
        if block.iter().fold(false, |any, &b| any | is(b)) {
            return block.iter().position(|&b| is(b)).map(|p| offset + p);
        }
        offset += block.len();
    }
    None
}

/// Whether any of a list of needles is in a value, in one pass (instead of one search per needle),
/// e.g. as a gate in front of the loops that look for each needle in turn.
pub struct AnyOf {
    automaton: Option<aho_corasick::AhoCorasick>,
    needles: &'static [&'static str],
    ignore_ascii_case: bool,
}

impl AnyOf {
    pub fn new(needles: &'static [&'static str]) -> AnyOf {
        AnyOf::build(needles, false)
    }

    /// Lower-case needles, compared without regard to ASCII case.
    pub fn ignoring_ascii_case(needles: &'static [&'static str]) -> AnyOf {
        AnyOf::build(needles, true)
    }

    fn build(needles: &'static [&'static str], ignore_ascii_case: bool) -> AnyOf {
        // A DFA without a prefilter: on the values seen here (text full of the needles' letters)
        // the prefilter's candidates cost three times what the plain DFA scan does.
        let automaton = aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(ignore_ascii_case)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .prefilter(false)
            .build(needles)
            .or_else(|_| {
                aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(ignore_ascii_case)
                    .build(needles)
            })
            .ok();
        AnyOf {
            automaton,
            needles,
            ignore_ascii_case,
        }
    }

    /// Whether one of the needles is in `s`.
    pub fn is_in(&self, s: &str) -> bool {
        match &self.automaton {
            Some(a) => a.is_match(s),
            // Never for the small lists here; the same answer, slower.
            None if self.ignore_ascii_case => {
                let lower = s.to_ascii_lowercase();
                self.needles.iter().any(|n| contains_str(&lower, n))
            }
            None => self.needles.iter().any(|n| contains_str(s, n)),
        }
    }
}

/// Whether `haystack` contains `needle` (see [`find_str`]).
pub fn contains_str(haystack: &str, needle: &str) -> bool {
    find_str(haystack, needle).is_some()
}

/// A short excerpt of `s` around byte offset `at`, on character boundaries.
pub fn excerpt(s: &str, at: usize, max: usize) -> String {
    let mut start = at.saturating_sub(max / 3).min(s.len());
    while start > 0 && !s.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + max).min(s.len());
    while end < s.len() && !s.is_char_boundary(end) {
        end += 1;
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.extend(
        s[start..end]
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c }),
    );
    if end < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_byte_tables_hold_letters_digits_and_the_extra_bytes() {
        let cmdi = word_byte_table(b"_./?*-~+[]", false);
        let sqli = word_byte_table(b"_$", true);
        for b in 0..=255u8 {
            let word = b.is_ascii_alphanumeric();
            assert_eq!(cmdi[usize::from(b)], word || b"_./?*-~+[]".contains(&b), "{b:#x}");
            assert_eq!(
                sqli[usize::from(b)],
                word || b == b'_' || b == b'$' || b >= 0x80,
                "{b:#x}"
            );
        }
    }

    #[test]
    fn position_of_finds_the_first_byte_in_any_block() {
        let is = |b: u8| matches!(b, b';' | b'|');
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100] {
            for at in (0..len).chain([len]) {
                let mut s = vec![b'a'; len];
                if at < len {
                    s[at] = b';';
                }
                assert_eq!(position_of(&s, is), s.iter().position(|&b| is(b)), "{len} {at}");
                if at + 1 < len {
                    s[at + 1] = b'|';
                    assert_eq!(position_of(&s, is), s.iter().position(|&b| is(b)), "{len} {at}");
                }
            }
        }
    }

    #[test]
    fn byte_sets_from_the_builder_and_constants_agree() {
        let s = "Az09;\u{7f}\0~";
        let set = ByteSet::of(s);
        assert_eq!(set, ByteSet::of_bytes(s.as_bytes()));
        assert!(set.has(b'z') && set.has(0) && set.has(0x7f) && !set.has(b'y'));
        assert!(!ByteSet::of("é").is_ascii() && ByteSet::of("e").is_ascii());
        assert!(ByteSet::of("AB").lower_folded().has(b'a') && !ByteSet::of("AB").lower_folded().has(b'A'));
    }

    #[test]
    fn percent_layers_and_plus() {
        assert_eq!(decode_layers("%252e%252e%252f"), "../");
        assert_eq!(decode_layers("%25252e"), ".");
        assert_eq!(form_decode("a+b%2Bc"), "a b+c");
        assert_eq!(decode_layers("%u003cscript%u003e"), "<script>");
        assert_eq!(decode_layers("%c0%ae%c0%ae%c0%af"), "../");
        assert_eq!(decode_layers("100%"), "100%");
        assert_eq!(decode_layers("%zz%4"), "%zz%4");
    }

    #[test]
    fn backslash_escapes() {
        assert_eq!(unescape_backslash(r"$\u007Bjndi"), "${jndi");
        assert_eq!(unescape_backslash(r"\x3cscript\x3e"), "<script>");
        assert_eq!(unescape_backslash(r"\u{3c}b"), "<b");
        assert_eq!(unescape_backslash(r"C:\temp\u00"), r"C:\temp\u00");
        assert_eq!(unescape_backslash("é\\u0041"), "éA");
    }

    #[test]
    fn html_references() {
        assert_eq!(html_decode("&lt;img&gt;"), "<img>");
        assert_eq!(html_decode("&#x6A;&#0000097;vascript&colon;"), "javascript:");
        assert_eq!(html_decode("&#106&#97"), "ja");
        assert_eq!(html_decode("$&LBRACE;x&rcub;"), "${x}");
        assert_eq!(html_decode("fish &chips; & more"), "fish &chips; & more");
        assert_eq!(html_decode("&#99999999999999;"), "&#99999999999999;");
    }

    #[test]
    fn unicode_look_alikes() {
        assert_eq!(fold_unicode("ⓛⓞⓒⓐⓛⓗⓞⓢⓣ"), "localhost");
        assert_eq!(fold_unicode("ＳＥＬＥＣＴ"), "SELECT");
        assert_eq!(fold_unicode("..\u{2215}..\u{2216}"), "../..\\");
        assert_eq!(lower_folded("Ａ\0B"), "ab");
        assert_eq!(excerpt("abcdef", 3, 4), "…cdef");
        assert_eq!(excerpt("abcdefghij", 3, 4), "…cdef…");
    }
}
