//! More SQL shapes, each one a way real injections change a query that the core passes of
//! `sqli.rs` do not read: PostgreSQL type casts used to leak data through conversion errors,
//! operators on JSON literals (the JSON-syntax bypass of 2022), complete `CASE` expressions,
//! constant conditions with keyword comparators (`1 and 1 not between 0 and 1`), the break-out
//! that only ends the statement (`admin';`), an operator between two quotes (`'-'`, `' or '`,
//! the login-bypass strings), an operator then a column then a comment (`x'-email--`), and a
//! `UNION` hidden behind comments after a number (`-1#\nunion`).
//!
//! Each shape needs SQL punctuation or SQL grammar around its words, so prose with apostrophes
//! and words such as "case", "like" or "union" does not take these shapes.

use super::{call_at, get, truncating, Kind, Tok, Tokens};

/// PostgreSQL types that a value is cast to (`::int`).
const CAST_TYPES: &[&str] = &[
    "int",
    "int2",
    "int4",
    "int8",
    "integer",
    "bigint",
    "smallint",
    "numeric",
    "decimal",
    "float",
    "float4",
    "float8",
    "real",
    "double",
    "text",
    "varchar",
    "char",
    "bpchar",
    "json",
    "jsonb",
    "bool",
    "boolean",
    "bytea",
    "date",
    "timestamp",
    "regclass",
    "oid",
    "xml",
    "money",
    "inet",
];

/// Numeric types: casting a text column to one of these is the error-based extraction trick
/// (`password::int` fails with the column's value in the error message).
const NUMERIC_TYPES: &[&str] = &[
    "int", "int2", "int4", "int8", "integer", "bigint", "smallint", "numeric", "decimal", "float", "float4",
    "float8", "real", "double",
];

/// A PostgreSQL cast at `i` (`::`): of a call's result or a string to any type
/// (`encode(lo_get(16400),'base64')::int`, `'{"a":1}'::jsonb`), or of a column to a number
/// (`password::int`). `std::string`, `Foo::Text` and IPv6's `fe80::1` are not casts of this shape.
fn cast_at(v: &[Tok], i: usize) -> bool {
    if !v[i].is_op("::") || i == 0 {
        return false;
    }
    let Some(ty) = get(v, i + 1).filter(|t| t.kind == Kind::Word) else {
        return false;
    };
    let before = &v[i - 1];
    let after_ok = get(v, i + 2).is_none_or(|n| {
        matches!(
            n.kind,
            Kind::Op | Kind::RParen | Kind::Comma | Kind::Semi | Kind::Other
        ) || n.is_logic()
            || n.is("precision")
    });
    if !after_ok {
        return false;
    }
    match before.kind {
        Kind::RParen => CAST_TYPES.contains(&ty.text),
        Kind::Str => before.closed && CAST_TYPES.contains(&ty.text),
        Kind::Word => NUMERIC_TYPES.contains(&ty.text) && before.text.len() > 1,
        _ => false,
    }
}

/// A string literal that holds JSON (`'{"a":1}'`, `'[1,2]'`).
fn json_literal(t: &Tok) -> bool {
    if t.kind != Kind::Str || !t.closed || t.text.len() < 4 {
        return false;
    }
    let inner = t.text[1..t.text.len() - 1].trim_start().as_bytes();
    match inner {
        [b'{', rest @ ..] => rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'"'),
        [b'[', rest @ ..] => rest
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'"' | b'{' | b'[') || b.is_ascii_digit()),
        _ => false,
    }
}

/// A JSON literal followed by a JSON operator (`'{"a":"b"}' ? 'a'`, `@>`, `->>`): how JSON-aware
/// databases are queried in an injected condition that WAFs did not parse.
fn json_operator_at(v: &[Tok], i: usize) -> bool {
    if !json_literal(&v[i]) {
        return false;
    }
    let Some(op) = get(v, i + 1) else {
        return false;
    };
    let next_is_str = get(v, i + 2).is_some_and(|n| n.kind == Kind::Str);
    (op.kind == Kind::Other && op.text == "?" && next_is_str)
        || (op.kind == Kind::Op && matches!(op.text, "->" | "->>" | "<@") && next_is_str)
        || (op.kind == Kind::Var && op.text == "@" && get(v, i + 2).is_some_and(|n| n.is_op(">")))
}

/// `case [x] when y then z [else w] end`: the whole skeleton of a CASE expression, with SQL
/// operands (a literal, a call, a comparison) after CASE or WHEN.
fn case_expression_at(v: &[Tok], i: usize) -> bool {
    if !v[i].is("case") {
        return false;
    }
    // A literal, a call, `binary x`, `not x`, `(…`, or a column compared (`a=1`).
    let operand = |k: usize| {
        get(v, k).is_some_and(|t| {
            t.is_literal()
                || call_at(v, k)
                || t.is_any(&["binary", "not"])
                || t.kind == Kind::LParen
                || (t.kind == Kind::Word && get(v, k + 1).is_some_and(|c| c.kind == Kind::Op && c.is_cmp()))
        })
    };
    if !operand(i + 1) && !get(v, i + 1).is_some_and(|t| t.is("when")) {
        return false;
    }
    let window = &v[i + 1..v.len().min(i + 24)];
    let pos = |word: &str, from: usize| {
        window
            .iter()
            .skip(from)
            .position(|t| t.is(word))
            .map(|p| p + from)
    };
    let Some(when) = pos("when", 0) else {
        return false;
    };
    if !operand(i + 1 + when + 1) {
        return false;
    }
    let Some(then) = pos("then", when + 1) else {
        return false;
    };
    pos("end", then + 1).is_some()
}

/// Shapes found anywhere in the token stream (all contexts).
pub(super) fn anywhere(v: &[Tok]) -> Option<&'static str> {
    for i in 0..v.len() {
        if cast_at(v, i) {
            return Some("type cast");
        }
        if json_operator_at(v, i) {
            return Some("JSON operator on a literal");
        }
        if case_expression_at(v, i) {
            return Some("case expression");
        }
    }
    None
}

/// After a boolean operator at `i`, a constant, a keyword comparator and a constant:
/// `and 1 not between 0 and 1`, `and 1 sounds like 1`, `or 1 rlike 0`.
pub(super) fn keyword_condition(v: &[Tok]) -> Option<usize> {
    let constant = |t: Option<&Tok>| t.is_some_and(|t| t.is_literal() && t.kind != Kind::Var);
    for i in 0..v.len() {
        if !v[i].is_logic() || !constant(get(v, i + 1)) {
            continue;
        }
        let mut k = i + 2;
        if get(v, k).is_some_and(|t| t.is("not")) {
            k += 1;
        }
        let Some(cmp) = get(v, k) else {
            continue;
        };
        let ok = match cmp.text {
            _ if cmp.kind != Kind::Word => false,
            "like" | "rlike" | "regexp" => constant(get(v, k + 1)),
            "sounds" => get(v, k + 1).is_some_and(|t| t.is("like")) && constant(get(v, k + 2)),
            "between" => {
                constant(get(v, k + 1))
                    && get(v, k + 2).is_some_and(|t| t.is("and"))
                    && constant(get(v, k + 3))
            }
            _ => false,
        };
        if ok {
            return Some(v[i].start);
        }
    }
    None
}

/// After a quote, only `;` (and blanks): the break-out ends the statement, so that what the
/// application appends is a statement of its own or fails (`admin@example.com';`). A digit
/// before the quote makes it feet or minutes (`hat 18';`).
pub(super) fn statement_end(before: &str, rest: &str) -> bool {
    rest.trim_end() == ";" && !before.ends_with(|c: char| c.is_ascii_digit())
}

/// The whole value is a single quote, an operator and a single quote (`'-'`, `' or '`, `'not like'`): the
/// application's string becomes `''-''`, a comparison true for most rows (the login-bypass
/// strings). `v` is what follows the first quote, `before` what precedes it.
/// (Double quotes are left out: `"*"` is how search syntax asks for a literal.)
pub(super) fn operator_between_quotes(v: &[Tok], before: &str, quote: char) -> bool {
    let Some((last, ops)) = v.split_last() else {
        return false;
    };
    let op_words = [
        "and", "or", "xor", "div", "mod", "like", "rlike", "regexp", "not", "sounds",
    ];
    quote == '\''
        && before.trim().is_empty()
        && last.kind == Kind::Str
        && !last.closed
        && last.text.len() == 1
        && !ops.is_empty()
        && ops.len() <= 2
        && ops.iter().all(|t| t.kind == Kind::Op || t.is_any(&op_words))
}

/// After a quote: an arithmetic or bitwise operator, an operand and a truncating comment
/// (`x'-email--`, `x'|id#`): the rest of the query is cut off after an expression.
pub(super) fn operator_then_comment(toks: &Tokens) -> bool {
    let Some(last) = toks.raw.last() else {
        return false;
    };
    if !truncating(last) || last.text.trim_end().len() > 6 {
        return false;
    }
    let body: Vec<&Tok> = toks.sig().iter().filter(|t| t.start < last.start).collect();
    let first_is_op = body
        .first()
        .is_some_and(|t| t.kind == Kind::Op && !matches!(t.text, "<" | ">" | "-" | "--"));
    let dash_op = body.first().is_some_and(|t| t.is_op("-")) && body.len() == 2;
    (first_is_op || dash_op)
        && (2..=6).contains(&body.len())
        && body[1..]
            .iter()
            .all(|t| matches!(t.kind, Kind::Word | Kind::Num | Kind::Op | Kind::Dot))
}

/// In a numeric context, a UNION with comments before it (`-1#\nunion`, `1/1/**/union#--`):
/// comments inside a number's expression are there to hide what follows.
pub(super) fn hidden_union(toks: &Tokens, at: usize) -> bool {
    let v = toks.sig();
    let Some(u) = get(v, at).filter(|t| t.is("union")) else {
        return false;
    };
    let rest_is_union_or_end = v[at + 1..].iter().all(|t| t.is("union"));
    rest_is_union_or_end
        && toks
            .raw
            .iter()
            .any(|t| t.kind == Kind::Comment && t.start < u.start)
}

/// A comment naming `sp_password`: SQL Server leaves statements that mention it out of its trace
/// log, so injections append it (`1'--sp_password`) to hide themselves: right after the
/// break-out, a number or a closing parenthesis.
pub(super) fn log_hiding_comment(raw: &[Tok]) -> bool {
    raw.iter().enumerate().any(|(k, t)| {
        t.kind == Kind::Comment
            && t.text.contains("sp_password")
            && (k == 0 || matches!(raw[k - 1].kind, Kind::Num | Kind::Str | Kind::RParen))
    })
}

#[cfg(test)]
mod tests {
    use super::super::detect;

    fn check(attacks: &[&str], benign: &[&str]) {
        for a in attacks {
            assert!(detect(a, 1).is_some(), "missed {a:?}");
        }
        for b in benign {
            assert!(
                detect(b, 1).is_none(),
                "false positive on {b:?}: {:?}",
                detect(b, 1)
            );
        }
    }

    #[test]
    fn type_casts() {
        check(
            &[
                "encode(lo_get(16400),'base64')::int",
                "password::int",
                "1+current_user::int",
                "function(foo)::double precision",
                "'[1, 2]'::jsonb || '3'::jsonb",
                "overlay(password placing '' from 1 for 0)::int",
            ],
            &[
                "std::string",
                "Pod::Text",
                "fe80::1",
                "10:30::45",
                "a::b c",
                "Vec::new()",
                "app::int_value",
            ],
        );
    }

    #[test]
    fn json_operators() {
        check(
            &[
                "OR '{\"a\":\"b\"}' ? 'a'",
                "'{\"a\":1}'::jsonb #> '{a,b}' ? 'c'",
                "x' or '[1,2]' ? '1",
            ],
            &[
                "{\"a\": \"b\"}",
                "'{\"a\":1}' is the payload, ok?",
                "what is '[x]' ? nothing",
                "is '[1,2]' ? a list",
            ],
        );
    }

    #[test]
    fn case_expressions() {
        check(
            &[
                "case 1 when 2 then 2 end",
                "case when 2 then 3 end",
                "case when a=1 then b else c end",
                "case sin(1) when 2 then 2 end",
                "CASE WHEN BINARY TRUE THEN TRUE END IS NOT UNKNOWN",
            ],
            &[
                "in case when you arrive then just wait until the end",
                "phone case when dropped then cracked end of story",
                "case study: when to scale, then what, the end",
            ],
        );
    }

    #[test]
    fn keyword_conditions() {
        check(
            &[
                "1 and 1 not between 0 and 1",
                "1 AND 1 SOUNDS LIKE 1",
                "1 AND 1 NOT LIKE 0",
                "1 or name like '%'",
            ],
            &[
                "price between 10 and 20",
                "kids 8 and 9 like it",
                "1 and 2 between friends",
                "2 or more like this",
            ],
        );
    }

    #[test]
    fn quote_shapes() {
        check(
            &[
                "admin@example.com';",
                "x';",
                "'-'",
                "' or '",
                "'not like'",
                "' ^ '",
                "x'-email--",
                "x'|email--",
                "x'/email--",
                "A' > 'B",
            ],
            &[
                "O'Brien;",
                "dress with hat 18';",
                "it's fine; thanks",
                "'quoted'",
                "Rock 'n' roll",
                "the 'or' operator",
                "5' - 6'",
                "it's - 'quoted'",
                "Dogs' and cats' toys",
                "x'><b>",
            ],
        );
    }

    #[test]
    fn quote_lookalikes() {
        check(
            &["1’ OR ’1’=’x’--", "’ OR ’1’=’1", "1´ OR ´1´=´x´#"],
            &[
                "it’s 5 o’clock",
                "Dogs’ and cats’ toys",
                "the ‘or’ operator",
                "O’Brien",
            ],
        );
    }

    #[test]
    fn unions_hidden_by_comments() {
        check(
            &[
                "-1#\r\n\r\nunion",
                "1/1/**/union#--",
                "-1#union ##\r\n--\r\nunion",
            ],
            &["1 # union", "apt 1 -- union street", "-1 union"],
        );
    }

    #[test]
    fn log_hiding_comments() {
        check(
            &["1'--sp_password", "1-- foo sp_password"],
            &["reset sp_password", "my -- sp_password notes"],
        );
    }

    #[test]
    fn open_string_completions() {
        check(
            &[
                "'1' OR '1'='1",
                "aa' LIKE md5(1) or '1",
                "aa' or column&&'1",
                "1' OR '1' XOR '0",
                "4' MOD 2 like '0",
                "1'*column-0-'0",
                "aa' / +1 < '3",
                "'-(-1 or -1) and 1=0 union",
            ],
            &[
                "Dogs' and cats' toys",
                "users' or admins' rights",
                "it's not like 'that",
                "5'-6'",
                "men's and women's",
                "'Tis or 'twas",
                "/search?q=36\" x 48\" frame&view=gallery",
                "<a href=\"/apps/\">galerie d'applications</a>!",
            ],
        );
    }

    #[test]
    fn select_with_where() {
        check(
            &["SELECT id FROM users WHERE id=1"],
            &[
                "select one from the list where it fits",
                "select items from cart where price is low",
            ],
        );
    }
}
