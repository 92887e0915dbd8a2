//! SQL injection: the value is tokenised as SQL (strings, numbers, words, operators, comments),
//! three times, as if it were pasted into a numeric context, into a `'...'` string and into a
//! `"..."` string. An injection is a token sequence that changes the query's shape from there:
//! a quote break-out followed by boolean logic or a comment, a UNION SELECT, a stacked statement,
//! a time-delay or file function, a tautology inside a conditional, a system-catalog read.
//!
//! MySQL's executable comments (`/*!50000 UNION*/`) are read as code, other comments as
//! whitespace, so `UNION/**/SELECT` and `'/**/OR/**/1=1` are the same as their plain forms.

use super::decode::{contains_str, excerpt, AnyOf, ByteSet};
use super::scan::{group, Scan};
use super::Hit;
use std::sync::LazyLock;

mod shapes;

/// Tokens read from one value (a longer value is read up to here).
const MAX_TOKENS: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Num,
    Word,
    Var,
    Op,
    LParen,
    RParen,
    Comma,
    Semi,
    Dot,
    Comment,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Tok<'a> {
    kind: Kind,
    text: &'a str,
    start: usize,
    /// For strings: the closing quote was found.
    closed: bool,
}

impl<'a> Tok<'a> {
    fn is(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.text == word
    }

    fn is_any(&self, words: &[&str]) -> bool {
        // The length and the first byte first: most words differ there, without a call to memcmp.
        let text = self.text.as_bytes();
        self.kind == Kind::Word
            && words.iter().any(|w| {
                w.len() == text.len() && w.as_bytes().first() == text.first() && w.as_bytes() == text
            })
    }

    fn is_op(&self, op: &str) -> bool {
        self.kind == Kind::Op && self.text == op
    }

    fn is_logic(&self) -> bool {
        match self.kind {
            Kind::Word => matches!(self.text.as_bytes(), b"and" | b"or" | b"xor"),
            Kind::Op => matches!(self.text.as_bytes(), b"||" | b"&&"),
            _ => false,
        }
    }

    fn is_cmp(&self) -> bool {
        (self.kind == Kind::Op && self.text.bytes().any(|b| matches!(b, b'=' | b'<' | b'>')))
            || self.is_any(&[
                "like", "rlike", "regexp", "is", "in", "between", "sounds", "glob", "similar",
            ])
    }

    fn is_literal(&self) -> bool {
        matches!(self.kind, Kind::Num | Kind::Var)
            || (self.kind == Kind::Str && self.closed)
            || self.is_any(&["true", "false", "null"])
    }

    fn end(&self) -> usize {
        self.start + self.text.len()
    }
}

fn is_word_byte(b: u8) -> bool {
    WORD_BYTES[usize::from(b)]
}

/// [`is_word_byte`] as a table: the tokeniser asks it of most bytes.
const WORD_BYTES: [bool; 256] = super::decode::word_byte_table(b"_$", true);

fn is_op_byte(b: u8) -> bool {
    matches!(
        b,
        b'=' | b'<' | b'>' | b'!' | b'|' | b'&' | b'^' | b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b':'
    )
}

/// Splits lower-cased text into SQL tokens.
fn tokenize<'a>(s: &'a str) -> Vec<Tok<'a>> {
    let b = s.as_bytes();
    // About one token per four bytes of text; growing the vector costs more than the guess.
    let mut out = Vec::with_capacity((b.len() / 4 + 4).min(MAX_TOKENS));
    let mut i = 0;
    let slice = |a: usize, z: usize| -> &'a str { s.get(a..z).unwrap_or("") };
    while i < b.len() && out.len() < MAX_TOKENS {
        let c = b[i];
        let start = i;
        let push = |out: &mut Vec<Tok<'a>>, kind, z: usize| {
            out.push(Tok {
                kind,
                text: slice(start, z),
                start,
                closed: true,
            })
        };
        // Words first, the most common tokens: no other token starts with a word byte but a
        // number, and no blank or comment does.
        if is_word_byte(c) && !c.is_ascii_digit() {
            let mut j = i + 1;
            while j < b.len() && is_word_byte(b[j]) {
                j += 1;
            }
            push(&mut out, Kind::Word, j);
            i = j;
            continue;
        }
        if c.is_ascii_whitespace() || c == 0x0b || c == 0 {
            i += 1;
            continue;
        }
        // Comments.
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            if b.get(i + 2) == Some(&b'!') {
                // MySQL executable comment: its content is code.
                i += 3;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                continue;
            }
            let end = s[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            push(&mut out, Kind::Comment, end);
            i = end;
            continue;
        }
        // The end of an executable comment, or a stray `*/` left by nested-comment tricks
        // (`union/*/**/*/select`).
        if c == b'*' && b.get(i + 1) == Some(&b'/') {
            i += 2;
            continue;
        }
        if (c == b'-' && b.get(i + 1) == Some(&b'-')) || c == b'#' {
            let end = s[i..].find('\n').map_or(b.len(), |p| i + p);
            push(&mut out, Kind::Comment, end);
            i = end;
            continue;
        }
        match c {
            b'\'' | b'"' => {
                let mut j = i + 1;
                let mut closed = false;
                while j < b.len() {
                    if b[j] == b'\\' {
                        j += 2;
                        continue;
                    }
                    if b[j] == c {
                        if b.get(j + 1) == Some(&c) {
                            j += 2;
                            continue;
                        }
                        closed = true;
                        j += 1;
                        break;
                    }
                    j += 1;
                }
                let j = j.min(b.len());
                out.push(Tok {
                    kind: Kind::Str,
                    text: slice(i, j),
                    start: i,
                    closed,
                });
                i = j;
            }
            b'`' => {
                // Quoted identifier.
                let end = s[i + 1..].find('`').map_or(b.len(), |p| i + 1 + p + 1);
                push(&mut out, Kind::Word, end);
                i = end;
            }
            b'0'..=b'9' => {
                let mut j = i + 1;
                if c == b'0' && matches!(b.get(j), Some(b'x') | Some(b'b')) {
                    j += 1;
                    while j < b.len() && b[j].is_ascii_hexdigit() {
                        j += 1;
                    }
                } else {
                    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                        j += 1;
                    }
                    if j < b.len() && b[j] == b'e' {
                        let mut k = j + 1;
                        if k < b.len() && (b[k] == b'+' || b[k] == b'-') {
                            k += 1;
                        }
                        if k < b.len() && b[k].is_ascii_digit() {
                            while k < b.len() && b[k].is_ascii_digit() {
                                k += 1;
                            }
                            j = k;
                        }
                    }
                }
                push(&mut out, Kind::Num, j);
                i = j;
            }
            b'.' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                push(&mut out, Kind::Num, j);
                i = j;
            }
            b'@' => {
                let mut j = i + 1;
                while j < b.len() && b[j] == b'@' {
                    j += 1;
                }
                while j < b.len() && (is_word_byte(b[j]) || b[j] == b'.') {
                    j += 1;
                }
                push(&mut out, Kind::Var, j);
                i = j;
            }
            b'(' | b'{' => {
                push(&mut out, Kind::LParen, i + 1);
                i += 1;
            }
            b')' | b'}' => {
                push(&mut out, Kind::RParen, i + 1);
                i += 1;
            }
            b',' => {
                push(&mut out, Kind::Comma, i + 1);
                i += 1;
            }
            b';' => {
                push(&mut out, Kind::Semi, i + 1);
                i += 1;
            }
            b'.' => {
                push(&mut out, Kind::Dot, i + 1);
                i += 1;
            }
            _ if is_op_byte(c) => {
                const MULTI: &[&str] = &[
                    "<=>", "->>", "<>", "!=", "<=", ">=", "==", "||", "&&", "::", ":=", "<<", ">>", "->",
                ];
                // Most operator bytes (`/` in a path) start none of them: compare the first byte first.
                let len = MULTI
                    .iter()
                    .find(|m| m.as_bytes()[0] == c && b[i..].starts_with(m.as_bytes()))
                    .map_or(1, |m| m.len());
                push(&mut out, Kind::Op, i + len);
                i += len;
            }
            _ if is_word_byte(c) => {
                let mut j = i + 1;
                while j < b.len() && is_word_byte(b[j]) {
                    j += 1;
                }
                push(&mut out, Kind::Word, j);
                i = j;
            }
            _ => {
                let len = match c {
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf7 => 4,
                    _ => 1,
                };
                let j = (i + len).min(b.len());
                push(&mut out, Kind::Other, j);
                i = j;
            }
        }
    }
    out
}

/// Functions whose call is an injection on its own: time delays, file and network access,
/// XML error-based extraction, stored procedures that run commands.
const DANGER_FUNCS: &[&str] = &[
    "pg_sleep",
    "extractvalue",
    "updatexml",
    "load_file",
    "sys_eval",
    "sys_exec",
    "sp_executesql",
    "sp_oacreate",
    "sp_makewebtask",
    "name_const",
    "randomblob",
    "pg_read_file",
    "pg_ls_dir",
    "lo_import",
    "lo_export",
    "httpuritype",
    "dbms_xmlgen",
    "make_set",
    "geometrycollection",
    "multipoint",
    "multilinestring",
    "gtid_subset",
    "json_keys",
    "exp",
];

/// Delay functions: a call with a numeric or computed argument.
const DELAY_FUNCS: &[&str] = &["sleep", "benchmark", "pg_sleep", "sleep_for", "dbms_lock"];

/// System catalogs and tables that only schema enumeration reads.
const CATALOGS: &[&str] = &[
    "information_schema",
    "sysobjects",
    "syscolumns",
    "sysusers",
    "sysdatabases",
    "sysprocesses",
    "msysobjects",
    "msysaccessobjects",
    "pg_catalog",
    "pg_shadow",
    "pg_user",
    "pg_database",
    "pg_tables",
    "pg_namespace",
    "sqlite_master",
    "sqlite_schema",
    "sqlite_temp_master",
    "all_tables",
    "all_tab_columns",
    "user_tables",
    "user_tab_columns",
    "dba_users",
    "all_users",
    "v$version",
    "rdb$database",
    "sysibm",
    "syscat",
];

struct Tokens<'a> {
    /// Without comments, when there are comments (else the same as `raw`: see [`Tokens::sig`]).
    without_comments: Option<Vec<Tok<'a>>>,
    /// With comments.
    raw: Vec<Tok<'a>>,
}

impl<'a> Tokens<'a> {
    fn new(s: &'a str) -> Self {
        let raw = tokenize(s);
        let without_comments = raw
            .iter()
            .any(|t| t.kind == Kind::Comment)
            .then(|| raw.iter().copied().filter(|t| t.kind != Kind::Comment).collect());
        Tokens {
            without_comments,
            raw,
        }
    }

    /// The tokens without comments.
    fn sig(&self) -> &[Tok<'a>] {
        self.without_comments.as_deref().unwrap_or(&self.raw)
    }
}

/// Token `i` is immediately followed by `(`, without a space (how built-in functions are called).
fn call_at(v: &[Tok], i: usize) -> bool {
    v.get(i).is_some_and(|t| t.kind == Kind::Word)
        && v.get(i + 1)
            .is_some_and(|p| p.kind == Kind::LParen && p.start == v[i].end())
}

fn get<'t, 'a>(v: &'t [Tok<'a>], i: usize) -> Option<&'t Tok<'a>> {
    v.get(i)
}

/// After a boolean operator at `i`: does an expression follow that is a condition an attacker
/// controls (a comparison, a function call, a sub-select, a bare literal before a comment)?
fn logic_tail(v: &[Tok], i: usize, strict: bool) -> bool {
    let mut j = i + 1;
    // NOT and opening parentheses do not change the shape.
    while get(v, j).is_some_and(|t| t.is("not") || t.kind == Kind::LParen || t.is_op("!")) {
        j += 1;
    }
    let Some(first) = get(v, j) else {
        return false;
    };
    if first.is("select")
        || first.is("exists")
        || DELAY_FUNCS.contains(&first.text) && first.kind == Kind::Word
    {
        return true;
    }
    if call_at(v, j) {
        return true;
    }
    let after = get(v, j + 1);
    // `or(1)group by`, `and 1 union`: a condition closed by a clause.
    if first.is_literal() {
        let mut k = j + 1;
        while get(v, k).is_some_and(|t| t.kind == Kind::RParen) {
            k += 1;
        }
        if get(v, k)
            .is_some_and(|t| t.is_any(&["group", "order", "having", "limit", "union", "procedure", "into"]))
        {
            return true;
        }
    }
    if first.is_literal() {
        // `OR 1--`, `OR 'a'#`, `OR true;`
        if after.is_none_or(|a| a.kind == Kind::Semi) && !strict {
            return true;
        }
    }
    // A comparison before the next boolean operator.
    let mut k = j;
    while let Some(t) = get(v, k) {
        if k > j && (t.is_logic() || t.kind == Kind::Semi) || k - j > 12 {
            break;
        }
        let is_null_test = t.is("is") && get(v, k + 1).is_some_and(|n| n.is("null") || n.is("not"));
        // `or name like '%'`: a pattern match against a string literal.
        let pattern_test = t.is_any(&["like", "rlike", "regexp", "glob"])
            && get(v, k + 1).is_some_and(|n| n.kind == Kind::Str && n.closed);
        if t.is_cmp() && k > j && (!strict || t.kind == Kind::Op || is_null_test || pattern_test) {
            let lhs = &v[k - 1];
            let rhs = get(v, k + 1);
            let literal_side = lhs.is_literal()
                || lhs.kind == Kind::RParen
                || rhs.is_some_and(|r| r.is_literal() || r.kind == Kind::LParen || call_at(v, k + 1));
            if !strict || literal_side || is_null_test || pattern_test {
                return true;
            }
        }
        k += 1;
    }
    false
}

/// A comment that cuts off the rest of a query: `--` followed by nothing, a space, `-` or `+`;
/// `#` with nothing after it; `/*`. (`--infant` and `#2` are search syntax and numbers.)
fn truncating(t: &Tok) -> bool {
    if t.kind != Kind::Comment {
        return false;
    }
    let text = t.text;
    if let Some(rest) = text.strip_prefix("--") {
        return rest.is_empty() || rest.starts_with([' ', '\t', '-', '+', '\r']);
    }
    if let Some(rest) = text.strip_prefix('#') {
        return rest.trim().is_empty();
    }
    text.starts_with("/*")
}

/// The comment right after position `from` in the raw stream (`admin'--`, `1)#`).
fn comment_follows(raw: &[Tok], from: usize) -> bool {
    let Some(first) = raw.iter().position(|t| t.start >= from) else {
        return false;
    };
    let mut r = first;
    while raw.get(r).is_some_and(|t| t.kind == Kind::RParen) {
        r += 1;
    }
    if raw.get(r).is_some_and(|t| t.kind == Kind::Semi) {
        r += 1;
    }
    raw.get(r).is_some_and(truncating)
}

/// Words that only SQL strings together (boolean, comparison and clause keywords).
const SQL_WORDS: &[&str] = &[
    "or",
    "and",
    "xor",
    "not",
    "null",
    "notnull",
    "isnull",
    "is",
    "like",
    "ilike",
    "rlike",
    "regexp",
    "glob",
    "collate",
    "union",
    "select",
    "from",
    "where",
    "having",
    "order",
    "group",
    "limit",
    "offset",
    "exists",
    "between",
    "sounds",
    "case",
    "when",
    "then",
    "div",
    "mod",
    "binary",
    "escape",
    "procedure",
    "into",
];

/// The value ends with a short truncating comment, and what lies between `from` and it reads as
/// SQL: `' collate nocase--`, `' or email notnull--`, `1 or (1 or 1)--`.
fn sql_then_trailing_comment(toks: &Tokens, from: usize) -> bool {
    let Some(last) = toks.raw.last() else {
        return false;
    };
    if !truncating(last) || last.text.trim_end().len() > 6 {
        return false;
    }
    let body: Vec<&Tok> = toks
        .sig()
        .iter()
        .filter(|t| t.start >= from && t.start < last.start)
        .collect();
    !body.is_empty()
        && body.len() <= 60
        && body.iter().enumerate().any(|(k, t)| {
            t.is_any(SQL_WORDS)
                || t.is_logic()
                || (t.is_cmp() && t.kind == Kind::Op)
                || (t.kind == Kind::Word && body.get(k + 1).is_some_and(|n| n.kind == Kind::LParen))
        })
}

/// After a quote: an operator or a SQL keyword, a comparison or boolean operator somewhere, and
/// an unclosed string at the end that the application's own closing quote completes:
/// `aa'^0+0='0`, `1'*null or '1`, `a' IS NOT NULL or '1`.
fn expression_to_open_string(toks: &Tokens) -> bool {
    let v = toks.sig();
    let mut i = 0;
    while get(v, i).is_some_and(|t| t.kind == Kind::RParen) {
        i += 1;
    }
    let Some(first) = get(v, i) else {
        return false;
    };
    let cmp_op =
        |t: &Tok| t.kind == Kind::Op && matches!(t.text, "=" | "!=" | "<>" | "<=>" | "<=" | ">=" | "==");
    let ends_open = v.last().is_some_and(|t| t.kind == Kind::Str && !t.closed);
    if !ends_open || v.len() > 40 {
        return false;
    }
    let tail = &v[i..];
    // An operator right before the open string: `or '1`, `&&'1`, `^ -'1`, `like '0`
    // (`cats' toys` and `or admins' rights` end with a word before it).
    // The open string is a short operand (`'1`, `'-1 `), not the rest of a text (`36" x 48" frame`,
    // `href="/apps/">…`).
    let short_open = v.last().is_some_and(|t| {
        let content = t.text.get(1..).unwrap_or("").trim();
        content.len() <= 8
            && content
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    let operator_before_open = short_open
        && tail.len() >= 3
        && tail.len() <= 16
        && get(v, v.len() - 2).is_some_and(|t| {
            (t.kind == Kind::Op && !matches!(t.text, "<" | ">"))
                || t.is_logic()
                || t.is_any(&["like", "rlike", "regexp"])
        });
    if first.kind == Kind::Op && !matches!(first.text, "<" | ">") {
        // `">` and `"<` are markup, not SQL.
        return operator_before_open
            || tail
                .iter()
                .any(|t| t.is_logic() || cmp_op(t) || t.is_op("<") || t.is_op(">"));
    }
    first.is_any(SQL_WORDS) && (operator_before_open || tail.iter().any(cmp_op))
}

/// Does a SELECT at `j` have the shape of a query rather than of English? `strict`: only shapes
/// that plain SQL text (a query typed into a search box) would not have either.
fn select_shape(v: &[Tok], j: usize, strict: bool) -> bool {
    let mut k = j + 1;
    while get(v, k)
        .is_some_and(|t| t.is_any(&["all", "distinct", "top"]) || (k > j + 1 && t.kind == Kind::Num))
    {
        k += 1;
    }
    let Some(first) = get(v, k) else {
        return false;
    };
    let ends_item = |t: Option<&Tok>| {
        t.is_none_or(|t| {
            matches!(t.kind, Kind::Comma | Kind::RParen | Kind::Semi)
                || t.is_any(&["from", "union", "into", "limit", "where", "as"])
        })
    };
    match first.kind {
        Kind::Op if first.text == "*" => return true,
        Kind::Var | Kind::LParen => return true,
        Kind::Word if call_at(v, k) => return true,
        Kind::Num | Kind::Str if !strict => return ends_item(get(v, k + 1)),
        Kind::Word if first.is("null") && !strict => return ends_item(get(v, k + 1)),
        _ => {}
    }
    // A column list up to FROM: `select a, b from t`, `select -'1', sin(id) from t`,
    // `select a from t where ...`.
    let mut m = k;
    let mut sql_list = false;
    while let Some(t) = get(v, m) {
        if t.is("from") || m - k > 40 {
            break;
        }
        if matches!(
            t.kind,
            Kind::LParen | Kind::Comma | Kind::Num | Kind::Str | Kind::Var
        ) || t.kind == Kind::Op
        {
            sql_list = true;
        }
        if t.kind == Kind::Semi || t.is("select") {
            return false;
        }
        m += 1;
    }
    if !get(v, m).is_some_and(|t| t.is("from")) {
        return false;
    }
    let Some(table) = get(v, m + 1) else {
        return false;
    };
    if table.kind == Kind::LParen || CATALOGS.contains(&table.text) {
        return true;
    }
    // `select id from users where id=…`: a WHERE clause comparing a column, as only SQL writes it.
    let where_compares = get(v, m + 2).is_some_and(|t| t.is("where"))
        && get(v, m + 3).is_some_and(|t| t.kind == Kind::Word)
        && get(v, m + 4).is_some_and(|t| t.kind == Kind::Op && t.is_cmp());
    if strict && !sql_list && !where_compares {
        return false;
    }
    let table_end = get(v, m + 2).is_none_or(|t| {
        matches!(t.kind, Kind::Dot | Kind::RParen | Kind::Semi | Kind::Comma)
            || t.is_any(&[
                "where", "limit", "order", "group", "union", "join", "having", "into",
            ])
    });
    table.kind == Kind::Word && (table_end || sql_list)
}

/// A statement keyword at `j` that starts a real statement (after `;`, at the start).
fn statement_at(v: &[Tok], j: usize) -> bool {
    let Some(t) = get(v, j) else {
        return false;
    };
    let next = get(v, j + 1);
    let next_is = |words: &[&str]| next.is_some_and(|n| n.is_any(words));
    match t.text {
        _ if t.kind != Kind::Word => false,
        "select" => select_shape(v, j, false),
        "insert" | "replace" => next_is(&["into"]),
        "update" => get(v, j + 2).is_some_and(|s| s.is("set")),
        "delete" => {
            next_is(&["from"])
                || (next_is(&["low_priority", "quick", "ignore"])
                    && get(v, j + 2).is_some_and(|n| n.is("from") || n.is_any(&["quick", "ignore"])))
        }
        "drop" | "create" | "alter" | "truncate" | "rename" => next_is(&[
            "table",
            "database",
            "schema",
            "procedure",
            "function",
            "view",
            "user",
            "index",
            "trigger",
            "login",
            "role",
            "or",
        ]),
        "exec" | "execute" => next.is_some_and(|n| {
            matches!(n.kind, Kind::Var | Kind::LParen)
                || n.text.starts_with("xp_")
                || n.text.starts_with("sp_")
                || n.is_any(&["master", "immediate", "sys"])
        }),
        "declare" => next.is_some_and(|n| n.kind == Kind::Var),
        "set" => next.is_some_and(|n| n.kind == Kind::Var),
        "waitfor" => next_is(&["delay", "time"]),
        "shutdown" => next.is_none_or(|n| n.is("with")),
        "if" | "while" => {
            next.is_some_and(|n| n.kind == Kind::LParen)
                || (next_is(&["exists", "not"])
                    && get(v, j + 2).is_some_and(|n| n.kind == Kind::LParen || n.is("exists")))
                || (next.is_some_and(Tok::is_literal)
                    && get(v, j + 2).is_some_and(Tok::is_cmp)
                    && get(v, j + 3).is_some_and(Tok::is_literal))
        }
        "copy" => next.is_some_and(|n| n.kind == Kind::LParen || n.kind == Kind::Word),
        "grant" | "revoke" => next_is(&["all", "select", "insert", "update", "delete", "execute"]),
        "load" => next_is(&["data", "xml"]),
        "call" => next.is_some_and(|n| n.kind == Kind::Word) && call_at(v, j + 1),
        _ => false,
    }
}

/// A data-changing statement in strict SQL grammar at `j` (a value that is a whole statement):
/// `create table t (`, `alter table t add`, `drop table t`, `insert into t values`,
/// `delete from t where`, `update t set c =`.
fn ddl_dml_at(v: &[Tok], j: usize) -> bool {
    let w = |k: usize| get(v, j + k);
    let is = |k: usize, word: &str| w(k).is_some_and(|t| t.is(word));
    let word = |k: usize| w(k).is_some_and(|t| t.kind == Kind::Word);
    let objects = [
        "table",
        "function",
        "procedure",
        "view",
        "trigger",
        "database",
        "user",
    ];
    match w(0).map(|t| t.text) {
        Some("create") => {
            w(1).is_some_and(|t| t.is_any(&objects))
                && word(2)
                && w(3).is_some_and(|t| t.kind == Kind::LParen)
        }
        Some("alter") => {
            is(1, "table")
                && word(2)
                && w(3).is_some_and(|t| t.is_any(&["add", "drop", "change", "modify", "rename", "alter"]))
        }
        Some("drop") => {
            w(1).is_some_and(|t| t.is_any(&objects))
                && ((is(2, "if") && is(3, "exists"))
                    || (word(2) && w(3).is_some_and(|t| t.kind == Kind::Semi)))
        }
        Some("insert") => {
            is(1, "into")
                && word(2)
                && w(3).is_some_and(|t| t.kind == Kind::LParen || t.is_any(&["values", "select"]))
        }
        Some("delete") => {
            is(1, "from") && word(2) && w(3).is_none_or(|t| t.is("where") || t.kind == Kind::Semi)
        }
        Some("update") => word(1) && is(2, "set") && word(3) && w(4).is_some_and(|t| t.is_op("=")),
        _ => false,
    }
}

/// Shapes that are injections wherever they appear in the token stream.
fn anywhere(v: &[Tok], paranoia: u8) -> Option<&'static str> {
    for i in 0..v.len() {
        let t = &v[i];
        match t.kind {
            Kind::Word if i == 0 && ddl_dml_at(v, 0) => return Some("SQL statement"),
            Kind::Word => {}
            Kind::Semi if statement_at(v, i + 1) => return Some("stacked query"),
            Kind::LParen
                if get(v, i + 1).is_some_and(|s| s.is("select")) && select_shape(v, i + 1, false) =>
            {
                return Some("sub-select")
            }
            Kind::Var if t.text.starts_with("@@") && t.text.len() > 3 => return Some("server variable"),
            _ => continue,
        }
        // Every arm below but the last two needs one of the words of [`ANYWHERE_WORDS`], and the
        // one before last a call: other words (most of them) are passed over without comparing
        // them with each arm and list.
        if !may_be_anywhere_word(t.text) && !call_at(v, i) {
            continue;
        }
        match t.text {
            "union" => {
                let mut j = i + 1;
                while get(v, j).is_some_and(|n| n.is_any(&["all", "distinct"]) || n.kind == Kind::LParen) {
                    j += 1;
                }
                if get(v, j).is_some_and(|n| n.is("select") || n.is("values")) {
                    return Some("union select");
                }
            }
            "waitfor" if get(v, i + 1).is_some_and(|n| n.is_any(&["delay", "time"])) => {
                return Some("time delay")
            }
            "declare" if get(v, i + 1).is_some_and(|n| n.kind == Kind::Var) => {
                return Some("declare variable")
            }
            "exec" | "execute"
                if i == 0
                    && statement_at(v, i)
                    && (get(v, 1).is_some_and(|n| n.kind != Kind::LParen)
                        || get(v, 2).is_some_and(|n| matches!(n.kind, Kind::Str | Kind::Var))) =>
            {
                return Some("exec")
            }
            // `case when 1=1 then`, `case when 's' then`
            "case"
                if get(v, i + 1).is_some_and(|n| n.is("when"))
                    && get(v, i + 2).is_some_and(Tok::is_literal)
                    && (get(v, i + 3).is_some_and(|n| n.is("then"))
                        || (get(v, i + 3).is_some_and(Tok::is_cmp)
                            && get(v, i + 4).is_some_and(Tok::is_literal))) =>
            {
                return Some("conditional probe")
            }
            "into" if get(v, i + 1).is_some_and(|n| n.is_any(&["outfile", "dumpfile"])) => {
                return Some("into outfile")
            }
            "select" if i == 0 && select_shape(v, 0, paranoia < 2) => return Some("select statement"),
            w if CATALOGS.contains(&w) => {
                let qualified = get(v, i + 1).is_some_and(|n| n.kind == Kind::Dot)
                    || (i > 0 && (v[i - 1].kind == Kind::Dot || v[i - 1].is_any(&["from", "join"])));
                if qualified || paranoia >= 2 {
                    return Some("system catalog");
                }
            }
            w if w.starts_with("xp_") && w.len() > 4 => return Some("extended procedure"),
            w if (w.starts_with("dbms_") || w.starts_with("utl_") || w == "sys")
                && get(v, i + 1).is_some_and(|n| n.kind == Kind::Dot)
                && get(v, i + 3).is_some_and(|n| n.kind == Kind::LParen) =>
            {
                return Some("database package call")
            }
            w if DELAY_FUNCS.contains(&w) => {
                let paren = get(v, i + 1).is_some_and(|n| n.kind == Kind::LParen);
                let arg = get(v, i + 2).is_some_and(|a| {
                    matches!(
                        a.kind,
                        Kind::Num | Kind::LParen | Kind::Var | Kind::Op | Kind::Str
                    ) || call_at(v, i + 2)
                });
                if paren && (arg || paranoia >= 2) {
                    return Some("time delay");
                }
            }
            // `exp(` is common in maths; only `exp(~(` is the overflow trick.
            w if DANGER_FUNCS.contains(&w)
                && call_at(v, i)
                && (w != "exp" || get(v, i + 2).is_some_and(|n| n.is_op("~"))) =>
            {
                return Some("dangerous function")
            }
            "ascii" | "ord" | "unicode" | "hex" | "length" | "len" | "bin"
                if get(v, i + 1).is_some_and(|n| n.kind == Kind::LParen)
                    && get(v, i + 2).is_some_and(|n| {
                        n.is_any(&["substring", "substr", "mid", "left", "right", "substring_index"])
                    })
                    && get(v, i + 3).is_some_and(|n| n.kind == Kind::LParen) =>
            {
                return Some("blind extraction")
            }
            "version" | "database" | "user" | "current_user" | "session_user" | "system_user" | "schema"
            | "connection_id" | "db_name" | "last_insert_id"
                if call_at(v, i)
                    && get(v, i + 2).is_some_and(|n| n.kind == Kind::RParen)
                    && (i == 0 || v[i - 1].kind != Kind::Dot) =>
            {
                return Some("database fingerprint function")
            }
            "char" | "chr" | "nchar" if call_at(v, i) => {
                // char(113)||char(113) and concat(char(..), ...): building strings from codes.
                let close = (i + 2..v.len().min(i + 40)).find(|&k| v[k].kind == Kind::RParen);
                if let Some(c) = close {
                    let op = get(v, c + 1);
                    if op.is_some_and(|o| o.is_op("||") || o.is_op("+") || o.kind == Kind::Comma)
                        && get(v, c + 2).is_some_and(|n| n.is_any(&["char", "chr", "nchar"]))
                    {
                        return Some("char() concatenation");
                    }
                }
            }
            _ if call_at(v, i) => {
                // A literal comparison as first argument: if(1=1,..), elt(3=3,..), iif('a'='a',..).
                let mut j = i + 2;
                while get(v, j).is_some_and(|n| n.kind == Kind::LParen) {
                    j += 1;
                }
                if get(v, j).is_some_and(Tok::is_literal)
                    && get(v, j + 1).is_some_and(|c| c.is_cmp() && c.kind == Kind::Op)
                    && get(v, j + 2).is_some_and(Tok::is_literal)
                    && get(v, j + 3).is_some_and(|n| matches!(n.kind, Kind::Comma | Kind::RParen))
                    && v[i].text != "in"
                {
                    return Some("conditional probe");
                }
            }
            _ => {}
        }
    }
    shapes::anywhere(v)
}

/// The words the arms of [`anywhere`] compare a word with, and the prefixes they look for.
const ANYWHERE_WORDS: &[&[&str]] = &[
    &[
        "union", "waitfor", "declare", "exec", "execute", "case", "into", "select", "sys",
    ],
    CATALOGS,
    DELAY_FUNCS,
    DANGER_FUNCS,
    &["ascii", "ord", "unicode", "hex", "length", "len", "bin"],
    &[
        "version",
        "database",
        "user",
        "current_user",
        "session_user",
        "system_user",
        "schema",
        "connection_id",
        "db_name",
        "last_insert_id",
    ],
    &["char", "chr", "nchar"],
];
const ANYWHERE_PREFIXES: &[&str] = &["xp_", "dbms_", "utl_"];

/// Where the lengths of words starting with `a`, `b` (0 for a one-byte word) are in
/// [`ANYWHERE_LENGTHS`]: the low five bits of each (so digits share a row with some letters).
const fn anywhere_row(a: u8, b: u8) -> usize {
    (a as usize & 31) << 5 | (b as usize & 31)
}

/// By first two bytes ([`anywhere_row`]): the lengths of the words of [`ANYWHERE_WORDS`] (bit 63
/// for 63 or more), and every length from a prefix's on for [`ANYWHERE_PREFIXES`].
const ANYWHERE_LENGTHS: [u64; 1024] = {
    let mut table = [0u64; 1024];
    let mut l = 0;
    while l < ANYWHERE_WORDS.len() {
        let mut w = 0;
        while w < ANYWHERE_WORDS[l].len() {
            let word = ANYWHERE_WORDS[l][w].as_bytes();
            let len = if word.len() < 63 { word.len() } else { 63 };
            table[anywhere_row(word[0], if word.len() > 1 { word[1] } else { 0 })] |= 1u64 << len;
            w += 1;
        }
        l += 1;
    }
    let mut p = 0;
    while p < ANYWHERE_PREFIXES.len() {
        let prefix = ANYWHERE_PREFIXES[p].as_bytes();
        table[anywhere_row(prefix[0], prefix[1])] |= u64::MAX << prefix.len();
        p += 1;
    }
    table
};

/// Whether `word` may be one of [`ANYWHERE_WORDS`] or start with one of [`ANYWHERE_PREFIXES`]
/// (false only when it is none).
fn may_be_anywhere_word(word: &str) -> bool {
    let w = word.as_bytes();
    w.first().is_some_and(|&a| {
        let row = anywhere_row(a, w.get(1).copied().unwrap_or(0));
        ANYWHERE_LENGTHS[row] & (1u64 << w.len().min(63)) != 0
    })
}

/// What follows a quote that closed the application's string (or a leading number in a numeric
/// context), skipping closing parentheses.
fn after_breakout(v: &[Tok], start: usize, strict: bool) -> Option<&'static str> {
    let mut i = start;
    while get(v, i).is_some_and(|t| t.kind == Kind::RParen) {
        i += 1;
    }
    let t = get(v, i)?;
    if t.is_logic() && logic_tail(v, i, strict) {
        return Some("boolean condition after break-out");
    }
    if !strict && t.kind == Kind::Op && matches!(t.text, "=" | "<>" | "!=" | "<=>" | "==") {
        let rhs = get(v, i + 1)?;
        let after = get(v, i + 2);
        if matches!(rhs.kind, Kind::Str | Kind::Num | Kind::Word | Kind::Var)
            && after.is_none_or(|a| a.is_logic() || matches!(a.kind, Kind::Semi | Kind::RParen))
        {
            return Some("comparison after break-out");
        }
    }
    if t.kind == Kind::Semi && statement_at(v, i + 1) {
        return Some("stacked query");
    }
    let next = get(v, i + 1);
    match t.text {
        _ if t.kind != Kind::Word => {}
        "union" => return anywhere(&v[i..], 1),
        "where" | "having" if (i + 1..v.len().min(i + 10)).any(|k| v[k].is_cmp()) => {
            return Some("where clause after break-out")
        }
        "order" | "group" if next.is_some_and(|n| n.is("by")) => {
            let operand = get(v, i + 2)?;
            let after = get(v, i + 3);
            if operand.kind == Kind::Num
                || call_at(v, i + 2)
                || (operand.kind == Kind::Word
                    && after
                        .is_none_or(|a| a.kind == Kind::Semi || a.is_any(&["having", "limit", "procedure"])))
            {
                return Some("order by after break-out");
            }
        }
        "limit" if next.is_some_and(|n| n.kind == Kind::Num) => return Some("limit after break-out"),
        "from"
            if next.is_some_and(|n| n.kind == Kind::Word)
                && get(v, i + 2)
                    .is_some_and(|n| n.is_any(&["where", "limit", "union", "order", "group"])) =>
        {
            return Some("from clause after break-out")
        }
        "procedure" if next.is_some_and(|n| n.is("analyse")) => return Some("procedure analyse"),
        "into" if next.is_some_and(|n| n.is_any(&["outfile", "dumpfile"]) || n.kind == Kind::Var) => {
            return Some("into after break-out")
        }
        "as" if get(v, i + 2).is_some_and(|n| n.is_any(&["where", "from"])) => {
            return Some("alias after break-out")
        }
        _ => {}
    }
    // 'x'||(select ...)||' and '+sleep(5)+'
    if t.kind == Kind::Op && !strict && !t.is_cmp() {
        if let Some(n) = next {
            if (n.kind == Kind::LParen && get(v, i + 2).is_some_and(|s| s.is("select")))
                || (call_at(v, i + 1) && (DELAY_FUNCS.contains(&n.text) || DANGER_FUNCS.contains(&n.text)))
            {
                return Some("expression after break-out");
            }
        }
    }
    None
}

/// Looks for SQL injection in one decoded value.
#[cfg(test)]
pub fn detect(value: &str, paranoia: u8) -> Option<Hit> {
    detect_in(value, Scan::of(value), paranoia)
}

/// [`detect`] of a value whose scan is `scan` ([`Scan::of`] the value). The prefilter is inlined
/// into the caller's loop over the values: most stop there, without a call.
#[inline]
pub(crate) fn detect_in(value: &str, scan: Scan, paranoia: u8) -> Option<Hit> {
    if scan.bytes.is_ascii() && !prefilter(value, scan) {
        return None;
    }
    analyse(value, scan, paranoia)
}

/// [`detect_in`] past the prefilter.
#[inline(never)]
fn analyse(value: &str, scan: Scan, paranoia: u8) -> Option<Hit> {
    let lower = super::decode::lower_folded_cow(value, scan.bytes);
    if let Some((reason, at)) = detect_lower(&lower, paranoia) {
        return Some(Hit {
            reason,
            excerpt: excerpt(&lower, at, 96),
        });
    }
    // Quote look-alikes: a database converting text to a narrower character set turns them into
    // `'` (MySQL's "best fit"), so `’ or ’1’=’1` is the classic injection once stored.
    let quoted = (!scan.bytes.is_ascii())
        .then(|| {
            lower
                .contains(QUOTE_LOOKALIKES)
                .then(|| lower.replace(QUOTE_LOOKALIKES, "'"))
        })
        .flatten()?;
    let (reason, at) = detect_lower(&quoted, paranoia)?;
    Some(Hit {
        reason,
        excerpt: excerpt(&quoted, at, 96),
    })
}

/// Characters that character-set conversions map to `'`: curly quotes, the acute accent, the
/// modifier-letter apostrophe.
const QUOTE_LOOKALIKES: [char; 5] = ['\u{2018}', '\u{2019}', '\u{00b4}', '\u{02bc}', '\u{2032}'];

/// The reason and the byte offset where the injection starts.
fn detect_lower(s: &str, paranoia: u8) -> Option<(&'static str, usize)> {
    // Numeric context: the value as it is.
    let bare = Tokens::new(s);
    if shapes::log_hiding_comment(&bare.raw) {
        return Some(("log-hiding comment", 0));
    }
    if let Some(r) = anywhere(bare.sig(), paranoia) {
        return Some((r, 0));
    }
    let v = bare.sig();
    // A number, possibly inside an arithmetic expression (`-9-(2) or 1=1`, `((1))*x and 8=3`).
    let mut i = 0;
    let mut numbers = 0;
    while let Some(t) = get(v, i) {
        let arith = t.kind == Kind::Op && !t.is_cmp() && !t.is_logic();
        if t.kind == Kind::Num {
            numbers += 1;
        } else if !(arith || matches!(t.kind, Kind::LParen | Kind::RParen | Kind::Comma) || call_at(v, i)) {
            break;
        }
        i += 1;
        if i > 24 {
            break;
        }
    }
    if numbers > 0 && i < v.len() {
        if let Some(r) = after_breakout(v, i, true) {
            return Some((r, 0));
        }
        if v[i].is_logic() && sql_then_trailing_comment(&bare, v[i].start) {
            return Some(("comment truncation after a number", 0));
        }
        if shapes::hidden_union(&bare, i) {
            return Some(("union hidden by comments", 0));
        }
    }
    if get(v, 0).is_some_and(|t| t.is_any(&["and", "or", "xor"])) && logic_tail(v, 0, true) {
        return Some(("boolean condition", 0));
    }
    // Both look only at what follows a boolean operator: one pass says whether there is one.
    let condition = || literal_condition(v).or_else(|| shapes::keyword_condition(v));
    if let Some(p) = v.iter().any(Tok::is_logic).then(condition).flatten() {
        return Some(("constant condition", p));
    }
    if expression_then_comment(&bare) {
        return Some(("expression then comment", 0));
    }
    if paranoia >= 2 && numbers > 0 && bare.raw.last().is_some_and(truncating) && v.len() <= 4 {
        return Some(("number then comment", 0));
    }
    if paranoia >= 2 && get(v, 0).is_some_and(|t| t.kind == Kind::Word) {
        if let Some(r) = after_breakout(v, 1, true) {
            return Some((r, 0));
        }
    }

    // String contexts: everything after the first quote is SQL.
    for quote in ['\'', '"'] {
        let Some(q) = s.find(quote) else {
            continue;
        };
        let rest = &s[q + 1..];
        let toks = Tokens::new(rest);
        if comment_follows(&toks.raw, 0) {
            return Some(("comment after quote", q));
        }
        if let Some(r) = after_breakout(toks.sig(), 0, false) {
            return Some((r, q));
        }
        if let Some(r) = anywhere(toks.sig(), paranoia) {
            return Some((r, q));
        }
        if sql_then_trailing_comment(&toks, 0) {
            return Some(("comment truncation after break-out", q));
        }
        if expression_to_open_string(&toks) || operator_to_open_string(toks.sig(), quote) {
            return Some(("expression after break-out", q));
        }
        if shapes::log_hiding_comment(&toks.raw) {
            return Some(("log-hiding comment", q));
        }
        if let Some(p) = literal_condition(toks.sig()) {
            return Some(("constant condition after quote", q + 1 + p));
        }
        if shapes::statement_end(&s[..q], rest) {
            return Some(("statement end after quote", q));
        }
        if shapes::operator_between_quotes(toks.sig(), &s[..q], quote) {
            return Some(("operator between quotes", q));
        }
        if shapes::operator_then_comment(&toks) {
            return Some(("comment truncation after break-out", q));
        }
    }
    if paranoia >= 2 {
        if let Some(p) = sql_function_call(bare.sig()) {
            return Some(("SQL function call", p));
        }
    }
    None
}

/// A boolean operator followed by a comparison of two constants (`and 8=3`, `or 'a'='a'`,
/// `&& cos(pi())=-1`): a condition whose value the attacker knows, the core of boolean probes.
fn literal_condition(v: &[Tok]) -> Option<usize> {
    // A constant operand: a literal, `-literal`, a call, in any parentheses. Returns the index after it.
    let operand = |mut k: usize| -> Option<usize> {
        let mut depth = 0;
        while get(v, k).is_some_and(|t| t.kind == Kind::LParen) {
            depth += 1;
            k += 1;
        }
        if get(v, k).is_some_and(|t| t.is_op("-") || t.is_op("+")) {
            k += 1;
        }
        let t = get(v, k)?;
        if call_at(v, k) {
            // Skip to the matching parenthesis.
            let mut d = 0;
            let mut m = k + 1;
            while let Some(x) = get(v, m).filter(|_| m < k + 64) {
                match x.kind {
                    Kind::LParen => d += 1,
                    Kind::RParen => {
                        d -= 1;
                        if d == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                m += 1;
            }
            k = m + 1;
        } else if t.is_literal() && t.kind != Kind::Var {
            k += 1;
        } else {
            return None;
        }
        // Arithmetic on constants: `1+2=3+4`.
        while get(v, k).is_some_and(|t| t.kind == Kind::Op && matches!(t.text, "+" | "-" | "*" | "/"))
            && get(v, k + 1).is_some_and(|t| t.kind == Kind::Num)
        {
            k += 2;
        }
        while depth > 0 && get(v, k).is_some_and(|t| t.kind == Kind::RParen) {
            depth -= 1;
            k += 1;
        }
        Some(k)
    };
    for i in 0..v.len() {
        if !v[i].is_logic() {
            continue;
        }
        let Some(after_lhs) = operand(i + 1) else {
            continue;
        };
        let Some(cmp) = get(v, after_lhs) else {
            continue;
        };
        // `or '1'='1`: the application's own closing quote completes the last string.
        let open_string_last = after_lhs + 2 == v.len()
            && v[after_lhs + 1].kind == Kind::Str
            && !v[after_lhs + 1].closed
            && v[after_lhs + 1].text.len() <= 16;
        if cmp.kind == Kind::Op
            && matches!(
                cmp.text,
                "=" | "!=" | "<>" | "<" | ">" | "<=" | ">=" | "<=>" | "=="
            )
            && (operand(after_lhs + 1).is_some() || open_string_last)
        {
            return Some(v[i].start);
        }
    }
    None
}

/// After a quote, one operator and an opening string that the application's quote closes:
/// `x' and 'y`, `x' ^ 'y`, `x' not regexp 'y` (MySQL compares and converts the two strings).
fn operator_to_open_string(v: &[Tok], quote: char) -> bool {
    let Some((last, ops)) = v.split_last() else {
        return false;
    };
    // The application's own quote closes it: same quote, a short alphanumeric operand (`'B`).
    let content = last.text.get(1..).unwrap_or("");
    let short_open = last.kind == Kind::Str
        && !last.closed
        && last.text.starts_with(quote)
        && !content.is_empty()
        && content.len() <= 24
        && content.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let op_words = [
        "and", "or", "xor", "div", "mod", "like", "rlike", "regexp", "not", "sounds",
    ];
    // `<` and `>` count with blanks around them (`a' > 'b`); `'>` and `'<` are markup.
    let spaced = |t: &Tok| t.start > 0 && last.start > t.end();
    let ops_ok = !ops.is_empty()
        && ops.len() <= 2
        && ops.iter().all(|t| {
            (t.kind == Kind::Op && (!matches!(t.text, "<" | ">") || spaced(t))) || t.is_any(&op_words)
        });
    short_open && ops_ok
}

/// A value that is only a SQL expression (parentheses, literals, operators, SQL keywords and
/// function calls, no plain words) ended by a truncating comment: `( (1) ) --`, `(cos(1) or 'b')--`.
fn expression_then_comment(toks: &Tokens) -> bool {
    let Some(last) = toks.raw.last() else {
        return false;
    };
    if !truncating(last) || last.text.trim_end().len() > 6 {
        return false;
    }
    let body: Vec<&Tok> = toks.sig().iter().filter(|t| t.start < last.start).collect();
    let structure = body.iter().any(|t| matches!(t.kind, Kind::LParen | Kind::Op));
    let all_sql = body.iter().enumerate().all(|(k, t)| match t.kind {
        Kind::Word => {
            t.is_any(SQL_WORDS)
                || t.is_any(&["true", "false", "null"])
                || body.get(k + 1).is_some_and(|n| n.kind == Kind::LParen)
        }
        Kind::Other | Kind::Semi => false,
        _ => true,
    });
    body.len() >= 3 && structure && all_sql
}

/// SQL-only functions called anywhere (paranoia 2): `database()`, `benchmark(`, `group_concat(`.
fn sql_function_call(v: &[Tok]) -> Option<usize> {
    const FUNCS: &[&str] = &[
        "database",
        "db_name",
        "current_user",
        "session_user",
        "system_user",
        "schema",
        "version",
        "benchmark",
        "sleep",
        "pg_sleep",
        "load_file",
        "group_concat",
        "concat_ws",
        "concat",
        "xmltype",
        "sysdate",
        "substring",
        "substr",
        "ascii",
        "char",
        "chr",
        "unhex",
        "hex",
        "ifnull",
        "isnull",
        "coalesce",
        "connection_id",
        "last_insert_id",
        "row_count",
        "found_rows",
        "lo_get",
        "pg_read_file",
    ];
    (0..v.len())
        .find(|&i| v[i].is_any(FUNCS) && get(v, i + 1).is_some_and(|n| n.kind == Kind::LParen))
        .map(|i| v[i].start)
}

/// Cheap test that a value could hold SQL at all: a quote, a statement separator, a comment, a
/// parenthesis, an operator, or a SQL keyword.
fn prefilter(value: &str, scan: Scan) -> bool {
    let (bytes, needles) = (scan.bytes, scan.needles);
    let b = value.as_bytes();
    if b.len() < 3 {
        return false;
    }
    // `bytes` is exact for an ASCII value.
    let comment = needles.may(group::SQL_COMMENT);
    if bytes.any(ByteSet::of_bytes(b"'\";(=#@<>|&"))
        || (bytes.has(b':') && contains_str(value, "::"))
        || (comment && bytes.has(b'-') && contains_str(value, "--"))
        || (comment && bytes.has(b'/') && contains_str(value, "/*"))
    {
        return true;
    }
    // Keywords, for `1 union select 2` and `1 or 1 like 1` (all but `@@`, found above, have letters).
    bytes.any(ByteSet::LETTERS) && needles.has(group::SQL_KEYWORD, || ANY_KEYWORD.is_in(value))
}

/// Whether one of [`KEYWORDS`] is in a value.
static ANY_KEYWORD: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::ignoring_ascii_case(KEYWORDS));

/// Words that make a value without SQL punctuation worth tokenising (ASCII case ignored).
pub(super) const KEYWORDS: &[&str] = &[
    "union",
    "select",
    " or ",
    " and ",
    " xor ",
    "waitfor",
    "like",
    "between",
    "order",
    "declare",
    "exec",
    "information_schema",
    "pg_",
    "sys",
    "sqlite",
    "@@",
    "drop",
    "create",
    "alter",
    "insert",
    "delete",
    "update",
    "case ",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anywhere_filter_lets_every_word_and_prefix_through() {
        for word in ANYWHERE_WORDS.iter().copied().flatten() {
            assert!(may_be_anywhere_word(word), "{word}");
        }
        for prefix in ANYWHERE_PREFIXES {
            assert!(may_be_anywhere_word(prefix), "{prefix}");
            assert!(may_be_anywhere_word(&format!("{prefix}cmdshell")), "{prefix}");
        }
        assert!(!may_be_anywhere_word("com") && !may_be_anywhere_word("x"));
    }

    fn hit(s: &str) -> bool {
        detect(s, 1).is_some()
    }

    #[test]
    fn classic_injections() {
        for attack in [
            "' or '1'='1",
            "admin'--",
            "admin' #",
            "x') or ('a'='a",
            "1 or 1=1",
            "1) and (2=2",
            "-5 union all select username, password from accounts",
            "1; drop table accounts",
            "1'; exec master..xp_cmdshell 'dir'--",
            "1 and sleep(10)",
            "x' and benchmark(9000000,md5(now()))#",
            "1; waitfor delay '0:0:9'--",
            "1' || pg_sleep(7)--",
            "abc\" or \"\"=\"",
            "(select pass from admins limit 1)",
            "x' and extractvalue(rand(),concat(0x3a,version()))--",
            "1 and if(7=7,sleep(3),0)",
            "1' order by 4--",
            "2 procedure analyse()",
            "0' having 2>1 --",
            "' group by col having 1=1--",
            "1 and ascii(substring((select top 1 name from sysobjects),1,1))>64",
            "select @@version",
            "1' and (select count(*) from information_schema.columns)>0 and '1",
            "1 and char(65)||char(66)=char(65)||char(66)",
            "1'; declare @q varchar(99); set @q='x'; exec(@q)--",
        ] {
            assert!(hit(attack), "missed {attack:?}");
        }
    }

    #[test]
    fn evasions() {
        for attack in [
            "1/**/UNION/**/SELECT/**/1,2",
            "1 /*!50000union*/ /*!50000select*/ 1,2",
            "1 UnIoN SeLeCt 1",
            "'/**/or/**/1=1#",
            "1\tor\t2>1",
            "1%0aor%0a1=1".replace("%0a", "\n").as_str(),
            "ＵＮＩＯＮ ＳＥＬＥＣＴ 1,2",
            "1 union(select(1),(2))",
            "' OR 'x' LIKE 'x",
            "1'||'a'='a",
            "x' or 1 in (1)-- -",
            "HOPE AND 8=3",
            "x' ^ 'y",
            "( (select cos(1)) ) --",
            "name) AND 4499=8923#",
            "x && cos(pi())=-1",
            "1001 union/*/**/*/select a from b",
            "1 || user_id is not null",
            "length(version())",
            "CREATE FUNCTION f (s CHAR(20)) RETURNS CHAR(50)",
            "update users set role = 'admin'",
            "drop table sessions;--",
            "DROP TABLE IF EXISTS sessions",
        ] {
            assert!(hit(attack), "missed {attack:?}");
        }
    }

    #[test]
    fn benign_text() {
        for ok in [
            "O'Brien",
            "Rock 'n' roll",
            "it's 5 o'clock and time to go",
            "Dogs' and cats' toys",
            "\"Hello\" and \"goodbye\"",
            "80% cotton and 20% wool",
            "select your size",
            "Please select one from the list below",
            "terms & conditions; see section 5",
            "Tom & Jerry",
            "a-b-c -- d",
            "what is 1+1?",
            "x = y",
            "union square, new york",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)",
            "price between 10 and 20",
            "john.doe@example.com",
            "C# and F# for .NET",
            "order by date",
            "sleep (for 8 hours)",
            "1, 2, 3",
            "3-4 days",
            "#hashtag",
            "drop me a line; select a time",
            "(555) 123-4567",
            "I'd like to update my order; delete my old address",
            "2 for 1 and 3=free",
            "app.version()",
            "kids 8 and up",
            "(see note 1) --",
            "it's - 'quoted'",
            "\"*\"",
            "'countdown calendar\" and \"disney:",
            "create table for 4 people",
            "drop table lamp",
            "update my profile settings",
        ] {
            assert!(
                detect(ok, 1).is_none(),
                "false positive on {ok:?}: {:?}",
                detect(ok, 1)
            );
        }
    }

    #[test]
    fn tokenizer_reads_exec_comments_and_strings() {
        let t = tokenize("/*!12345select*/ 'a''b' 0x1f 1.5e3 @@version -- x");
        let kinds: Vec<Kind> = t.iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Word,
                Kind::Str,
                Kind::Num,
                Kind::Num,
                Kind::Var,
                Kind::Comment
            ]
        );
        assert_eq!(t[1].text, "'a''b'");
    }
}
