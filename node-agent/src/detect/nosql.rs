//! NoSQL injection: MongoDB query operators where the application expects a scalar, and
//! JavaScript for MongoDB's `$where`. The same shapes hit the query languages built on MongoDB's
//! (Mongoose, sift, Feathers, NeDB, Sequelize's old `$` aliases).
//!
//! * A parameter name or JSON key that is an operator: `{"coupon_code": {"$ne": 1}}`,
//!   `user[$ne]=x` (Express's `qs`, PHP and Rails turn it into `{user: {$ne: "x"}}`),
//!   `$or[0][a]=b`, `{"$where": "…"}`.
//! * In a value: an operator in brackets (`[$regex]=.*`, not PHP's `$arr[$in]`), or an operator
//!   as the key of an object literal followed by a value (`{ $ne: 1 }`, `{"$gt": ""}`,
//!   `', $or: [ {}, {`, `true, $where: '1 == 1'`). GraphQL's `($where: UserWhere, $in: [ID])`
//!   declares variables with types, not values, and is not this shape.
//! * JavaScript after a break-out (`'`, `"`, a number or nothing, then `;`, `&&` or `||`):
//!   `' && this.password.match(/.*/)//`, `';sleep(5000);`, `0;return true`, `|| 1==1`; a
//!   busy-wait on the clock (`new Date` and `while(`); MongoDB shell calls
//!   (`db.users.insert(`, `db.getCollection(`).
//!
//! Operators are matched as MongoDB spells them (case and all): `$NE` is no operator to it.
//! `$`-keys of other conventions are never operators: JSON Schema (`$ref`, `$schema`, `$id`,
//! `$defs`), OData (`$filter`, `$top`, `$search`, `$count`), extended JSON (`$oid`, `$date`,
//! `$numberLong`), Json.NET (`$type`, `$values`), Feathers' paging (`$limit`, `$skip`,
//! `$sort`). `$comment` (also JSON Schema) and `$type` (also Json.NET) count only after a
//! break-out.

use super::decode::{excerpt, position_of, ByteSet};
use super::inputs::Source;
use super::scan::Scan;
use super::Hit;

/// How telling an operator is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strength {
    /// Query operators that change what a filter matches, or run JavaScript: reported at
    /// paranoia 1.
    Query,
    /// Update operators, aggregation stages, geospatial and bitwise operators, `$options`:
    /// paranoia 2 (or after a break-out).
    Extra,
    /// Operators that are also other conventions' keys: only after a break-out.
    Probe,
}

fn operator(name: &[u8]) -> Option<Strength> {
    Some(match name {
        b"eq" | b"ne" | b"gt" | b"gte" | b"lt" | b"lte" | b"in" | b"nin" | b"and" | b"or" | b"not"
        | b"nor" | b"exists" | b"regex" | b"where" | b"expr" | b"elemMatch" | b"all" | b"size" | b"mod"
        | b"text" | b"jsonSchema" | b"function" | b"accumulator" => Strength::Query,
        b"options" | b"set" | b"unset" | b"inc" | b"mul" | b"min" | b"max" | b"push" | b"pull"
        | b"pullAll" | b"pop" | b"addToSet" | b"rename" | b"setOnInsert" | b"currentDate" | b"match"
        | b"lookup" | b"graphLookup" | b"unionWith" | b"group" | b"project" | b"merge" | b"out"
        | b"geoWithin" | b"geoIntersects" | b"near" | b"nearSphere" | b"bitsAllSet" | b"bitsAnySet"
        | b"bitsAllClear" | b"bitsAnyClear" => Strength::Extra,
        b"comment" | b"type" => Strength::Probe,
        _ => return None,
    })
}

/// Whether an operator of this strength is reported.
fn counts(strength: Strength, paranoia: u8, after_break_out: bool) -> bool {
    match strength {
        Strength::Query => true,
        Strength::Extra => paranoia >= 2 || after_break_out,
        Strength::Probe => after_break_out,
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifier starting at `at` (possibly empty).
fn ident_at(b: &[u8], at: usize) -> &[u8] {
    let rest = b.get(at..).unwrap_or(&[]);
    let len = rest.iter().take_while(|&&c| is_ident(c)).count();
    &rest[..len]
}

fn skip_spaces(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(|c| c.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// The last non-space byte before `at`.
fn before_spaces(b: &[u8], at: usize) -> Option<u8> {
    b[..at].iter().rev().find(|c| !c.is_ascii_whitespace()).copied()
}

/// [`detect`] of a value whose scan is `scan` ([`Scan::of`] the value), from `source`. The first
/// test is inlined into the caller's loop over the values: most stop there, without a call.
#[inline]
pub(crate) fn detect_in(value: &str, scan: Scan, paranoia: u8, source: Source) -> Option<Hit> {
    // Every shape needs one of these: most values stop here, on one test of the scan.
    if !scan.bytes.any(ByteSet::of_bytes(b"$;&|(")) {
        return None;
    }
    analyse(value, scan.bytes, paranoia, source)
}

/// [`detect_in`] past its first test.
#[inline(never)]
fn analyse(value: &str, bytes: ByteSet, paranoia: u8, source: Source) -> Option<Hit> {
    let dollar = bytes.has(b'$');
    let name = matches!(source, Source::QueryName | Source::BodyName);
    if name {
        // A name holds no JavaScript: only operators.
        return if dollar {
            operator_name(value, paranoia)
        } else {
            None
        };
    }
    if dollar {
        if let Some(hit) = operator_in_value(value, paranoia) {
            return Some(hit);
        }
    }
    // JavaScript needs a separator, a call or a property.
    let js_break = bytes.has(b';') || bytes.has(b'&') || bytes.has(b'|');
    if js_break || bytes.has(b'(') {
        return javascript(value, js_break);
    }
    None
}

/// A parameter name or key that is an operator, alone or as a bracket segment (`user[$ne]`,
/// `$or[0][a]`, `a[b][$gt]`).
fn operator_name(name: &str, paranoia: u8) -> Option<Hit> {
    for segment in name.split(['[', ']']) {
        let Some(op) = segment.strip_prefix('$') else {
            continue;
        };
        if operator(op.as_bytes()).is_some_and(|s| counts(s, paranoia, false)) {
            return Some(Hit {
                reason: "query operator as a name",
                excerpt: excerpt(name, 0, 120),
            });
        }
    }
    None
}

/// An operator in brackets or as the key of an object literal with a value, in a value.
fn operator_in_value(value: &str, paranoia: u8) -> Option<Hit> {
    let b = value.as_bytes();
    let mut from = 0;
    while let Some(p) = value[from..].find('$').map(|p| from + p) {
        from = p + 1;
        let prev = p.checked_sub(1).map(|i| b[i]);
        if prev.is_some_and(|c| is_ident(c) || c == b'$') {
            continue;
        }
        let name = ident_at(b, p + 1);
        let Some(strength) = operator(name) else {
            continue;
        };
        let end = p + 1 + name.len();
        // `[$ne]`, unless it indexes a PHP or Perl variable (`$arr[$in]`, `$this->x[$size]`).
        if prev == Some(b'[') && b.get(end) == Some(&b']') {
            if counts(strength, paranoia, false) && !indexes_a_variable(b, p - 1) {
                return Some(Hit {
                    reason: "query operator in brackets",
                    excerpt: excerpt(value, p, 120),
                });
            }
            continue;
        }
        // `$op: value`, `"$op": value`, `'$op': value`, in key position.
        let (key_start, after) = match prev {
            Some(q @ (b'"' | b'\'')) if b.get(end) == Some(&q) => (p - 1, end + 1),
            Some(b'"' | b'\'') => continue,
            _ => (p, end),
        };
        let colon = skip_spaces(b, after);
        if b.get(colon) != Some(&b':') {
            continue;
        }
        if !matches!(before_spaces(b, key_start), None | Some(b'{' | b',')) {
            continue;
        }
        // Unquoted keys are JavaScript (the shell's syntax), not JSON text.
        let break_out = key_start == p && after_break_out(b, key_start);
        if !counts(strength, paranoia, break_out) {
            continue;
        }
        if starts_a_value(b, skip_spaces(b, colon + 1)) {
            return Some(Hit {
                reason: "query operator object",
                excerpt: excerpt(value, p, 120),
            });
        }
    }
    None
}

/// Whether the key at `key` follows a closed string, and maybe closed objects and arrays, and a
/// comma: `' } ], $comment:`, `x'}, $set:`. The application's string ended early.
fn after_break_out(b: &[u8], key: usize) -> bool {
    let Some(comma) = b[..key].iter().rposition(|c| !c.is_ascii_whitespace()) else {
        return false;
    };
    if b[comma] != b',' {
        return false;
    }
    b[..comma]
        .iter()
        .rev()
        .find(|c| !(c.is_ascii_whitespace() || matches!(c, b'}' | b']' | b')')))
        .is_some_and(|c| matches!(c, b'\'' | b'"'))
}

/// Whether the `[` at `open` indexes a variable: the token before it starts with `$` or `@`, or
/// has `->` or `::` in it.
fn indexes_a_variable(b: &[u8], open: usize) -> bool {
    let start = b[..open]
        .iter()
        .rposition(|c| c.is_ascii_whitespace() || matches!(c, b'=' | b'&' | b'?' | b'(' | b',' | b';'))
        .map_or(0, |i| i + 1);
    let token = &b[start..open];
    token.first().is_some_and(|c| matches!(c, b'$' | b'@'))
        || token.windows(2).any(|w| w == b"->" || w == b"::")
}

/// Whether a value (a literal MongoDB would take) starts at `at`: a string, a number, a regex,
/// an object with keys, an array of values, `true`/`false`/`null`, a function, `new Date(`.
/// GraphQL's variable types (`Int`, `[ID!]`, `UserWhere`) are no values.
fn starts_a_value(b: &[u8], at: usize) -> bool {
    let Some(&c) = b.get(at) else {
        return false;
    };
    match c {
        b'\'' | b'"' | b'/' | b'-' | b'0'..=b'9' => true,
        b'{' => {
            let i = skip_spaces(b, at + 1);
            match b.get(i) {
                Some(b'$' | b'"' | b'\'' | b'}') => true,
                Some(&c) if is_ident(c) => {
                    let key = ident_at(b, i);
                    b.get(skip_spaces(b, i + key.len())) == Some(&b':')
                }
                _ => false,
            }
        }
        b'[' => {
            let i = skip_spaces(b, at + 1);
            match b.get(i) {
                Some(b'{' | b'\'' | b'"' | b']' | b'/' | b'-' | b'0'..=b'9') => true,
                Some(_) => is_word(b, i, &[b"true", b"false", b"null"]),
                None => false,
            }
        }
        _ => is_word(b, at, &[b"true", b"false", b"null", b"function", b"new", b"this"]),
    }
}

/// Whether one of `words` is at `at`, as a whole word.
fn is_word(b: &[u8], at: usize, words: &[&[u8]]) -> bool {
    let word = ident_at(b, at);
    words.contains(&word)
}

/// MongoDB shell methods of a collection (`db.users.find(`).
const COLLECTION_METHODS: &[&[u8]] = &[
    b"find",
    b"findOne",
    b"findOneAndUpdate",
    b"findOneAndDelete",
    b"findOneAndReplace",
    b"findAndModify",
    b"insert",
    b"insertOne",
    b"insertMany",
    b"update",
    b"updateOne",
    b"updateMany",
    b"replaceOne",
    b"remove",
    b"deleteOne",
    b"deleteMany",
    b"drop",
    b"mapReduce",
    b"aggregate",
    b"count",
    b"countDocuments",
    b"distinct",
    b"save",
    b"bulkWrite",
    b"renameCollection",
    b"createIndex",
    b"dropIndex",
    b"dropIndexes",
];

/// MongoDB shell methods of the database (`db.getCollection(`).
const DATABASE_METHODS: &[&[u8]] = &[
    b"getCollection",
    b"getCollectionNames",
    b"getSiblingDB",
    b"getMongo",
    b"eval",
    b"runCommand",
    b"adminCommand",
    b"dropDatabase",
    b"createCollection",
    b"createUser",
    b"dropUser",
    b"getUsers",
    b"shutdownServer",
    b"copyDatabase",
    b"loadServerScripts",
];

/// JavaScript for `$where` and the shell: after a break-out, a busy-wait, a shell call.
fn javascript(value: &str, js_break: bool) -> Option<Hit> {
    let b = value.as_bytes();
    if js_break {
        if let Some(p) = javascript_after_break_out(b) {
            return Some(Hit {
                reason: "JavaScript after break-out",
                excerpt: excerpt(value, p, 120),
            });
        }
    }
    // One pass over the calls: what is called decides.
    let mut from = 0;
    while let Some(open) = value[from..].find('(').map(|p| from + p) {
        from = open + 1;
        let name_end = b[..open].trim_ascii_end().len();
        let name = ident_before(b, name_end);
        let name_start = name_end - name.len();
        if name == b"while" {
            // `do { t = new Date(); } while (t - start < 5000)`: a time delay in `$where`.
            if value.contains("new Date") {
                return Some(Hit {
                    reason: "JavaScript busy-wait",
                    excerpt: excerpt(value, name_start, 120),
                });
            }
        } else if name_end == open {
            if let Some(p) = shell_call(b, name, name_start) {
                return Some(Hit {
                    reason: "MongoDB shell call",
                    excerpt: excerpt(value, p, 120),
                });
            }
        }
    }
    None
}

/// The identifier that ends at `end` (possibly empty).
fn ident_before(b: &[u8], end: usize) -> &[u8] {
    let start = b[..end].iter().rposition(|&c| !is_ident(c)).map_or(0, |i| i + 1);
    &b[start..end]
}

/// A `;`, `&&` or `||` after a break-out (nothing, a quote or a number before it), followed by
/// JavaScript: `return <value>`, `sleep(<n>)`, `this.<field>`, `var x =`, a loop, or a
/// comparison of constants (`1==1`, `'a'=='a`).
fn javascript_after_break_out(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = position_of(&b[from..], |c| matches!(c, b';' | b'&' | b'|')).map(|p| from + p) {
        let len = match b[p] {
            b';' => 1,
            c if b.get(p + 1) == Some(&c) => 2,
            _ => {
                from = p + 1;
                continue;
            }
        };
        from = p + len;
        let before = b[..p].trim_ascii_end();
        let break_out = match before.last() {
            None | Some(b'\'' | b'"') => true,
            Some(c) if c.is_ascii_digit() => before.iter().all(u8::is_ascii_digit),
            _ => false,
        };
        if break_out && javascript_statement(b, skip_spaces(b, p + len)) {
            return Some(p);
        }
    }
    None
}

fn javascript_statement(b: &[u8], at: usize) -> bool {
    let word = ident_at(b, at);
    let next = at + word.len();
    match word {
        b"return" => {
            let v = skip_spaces(b, next);
            (v > next || b.get(v) == Some(&b'('))
                && (b.get(v).is_some_and(|c| matches!(c, b'(' | b'!'))
                    || starts_a_value(b, v) && b.get(v) != Some(&b'/'))
        }
        b"sleep" => {
            b.get(next) == Some(&b'(') && b.get(skip_spaces(b, next + 1)).is_some_and(u8::is_ascii_digit)
        }
        b"this" => b.get(next) == Some(&b'.') && b.get(next + 1).is_some_and(|&c| is_ident(c)),
        b"var" | b"let" | b"const" => {
            let name_at = skip_spaces(b, next);
            let name = ident_at(b, name_at);
            name_at > next && !name.is_empty() && b.get(skip_spaces(b, name_at + name.len())) == Some(&b'=')
        }
        // `do (1=1)` is MySQL's DO statement; JavaScript's `do` takes a block.
        b"while" => b.get(skip_spaces(b, next)) == Some(&b'('),
        b"do" => b.get(skip_spaces(b, next)) == Some(&b'{'),
        _ => constant_comparison(b, at),
    }
}

/// `1==1`, `'a'=='a'`, `"x" != "`: a constant, an equality operator and another constant (the
/// last one may be left open for the application's quote).
fn constant_comparison(b: &[u8], at: usize) -> bool {
    let Some(end) = constant_end(b, at) else {
        return false;
    };
    let op = skip_spaces(b, end);
    let rest = b.get(op..).unwrap_or(&[]);
    let len = [&b"==="[..], b"!==", b"==", b"!="]
        .iter()
        .find(|o| rest.starts_with(o))
        .map_or(0, |o| o.len());
    len > 0
        && b.get(skip_spaces(b, op + len))
            .is_some_and(|c| matches!(c, b'\'' | b'"') || c.is_ascii_digit())
}

/// The end of a number or a quoted string at `at`.
fn constant_end(b: &[u8], at: usize) -> Option<usize> {
    match *b.get(at)? {
        q @ (b'\'' | b'"') => b.get(at + 1..)?.iter().position(|&c| c == q).map(|e| at + 2 + e),
        c if c.is_ascii_digit() => Some(at + b[at..].iter().take_while(|c| c.is_ascii_digit()).count()),
        _ => None,
    }
}

/// `db.<collection>.<method>(` or `db.<method>(`, with `db` not part of a longer name: where
/// it starts, for the call of `method`, which starts at `at`.
fn shell_call(b: &[u8], method: &[u8], at: usize) -> Option<usize> {
    let dot = at.checked_sub(1).filter(|&d| b[d] == b'.')?;
    let receiver = ident_before(b, dot);
    let db_end = if receiver == b"db" && DATABASE_METHODS.contains(&method) {
        dot
    } else if COLLECTION_METHODS.contains(&method) && !receiver.is_empty() {
        let dot = (dot - receiver.len()).checked_sub(1).filter(|&d| b[d] == b'.')?;
        (ident_before(b, dot) == b"db").then_some(dot)?
    } else {
        return None;
    };
    let db = db_end - 2;
    let bounded = db == 0 || !(is_ident(b[db - 1]) || b[db - 1] == b'.');
    bounded.then_some(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: &str, paranoia: u8) -> Option<Hit> {
        detect_in(v, Scan::of(v), paranoia, Source::QueryValue)
    }

    fn name(n: &str, paranoia: u8) -> Option<Hit> {
        detect_in(n, Scan::of(n), paranoia, Source::QueryName)
    }

    #[test]
    fn operators_as_names() {
        for n in [
            "user[$ne]",
            "password[$regex]",
            "u_id[$gt]",
            "$or[0][name]",
            "a[b][$nin][]",
            "$where",
            "$elemMatch",
        ] {
            assert!(name(n, 1).is_some(), "missed {n}");
        }
        // Update operators at paranoia 2 only.
        assert!(name("user[$set]", 1).is_none());
        assert!(name("user[$set]", 2).is_some());
    }

    #[test]
    fn other_conventions_dollar_names_pass() {
        for n in [
            "$filter",
            "$top",
            "$skip",
            "$select",
            "$expand",
            "$orderby",
            "$count",
            "$search",
            "$format",
            "$ref",
            "$schema",
            "$id",
            "$defs",
            "$comment",
            "$type",
            "$values",
            "$oid",
            "$date",
            "$numberLong",
            "$limit",
            "$sort",
            "$NE",
            "$existsor",
            "$nested",
            "user[name]",
            "price$",
            "a[$]",
        ] {
            for p in [1, 2] {
                assert!(name(n, p).is_none(), "false positive on {n} at {p}");
            }
        }
    }

    #[test]
    fn operators_in_values() {
        for v in [
            "{ $ne: 1 }",
            "{$gt: ''}",
            r#"{"$gt": ""}"#,
            r#"{"username": {"$ne": null}, "password": {"$ne": null}}"#,
            "[$ne]=1",
            "[$lte]x",
            "u_id[$regex]",
            "true, $where: '1 == 1'",
            "$where: '1 == 1'",
            "', $or: [ {}, { 'a':'a",
            "' } ], $comment:'successful MongoDB injection'",
            "x'}, $set: {role: 'admin'}, {'a':'",
            "{$where: function() { return true }}",
            "{'$regex': /^adm/}",
            "{ $in: [ 'admin', 'root' ] }",
            "{ $not: { $size: 0 } }",
        ] {
            assert!(value(v, 1).is_some(), "missed {v}");
        }
    }

    #[test]
    fn dollar_values_of_other_kinds_pass() {
        for v in [
            // GraphQL variable definitions and uses.
            "query Users($where: UserWhereInput, $in: [ID!], $size: Int = 10) { users(where: $where, first: $size) { id } }",
            "mutation ($text: String!) { post(text: $text) { id } }",
            // PHP and Perl code.
            "$rows[$in] = $data[$type]; echo $this->cache[$size];",
            "$x = $flag ? $in : 'default';",
            "@list[$all]",
            // JSON Schema, OpenAPI and Json.NET documents as text.
            r##"{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "$comment": "c", "properties": {"a": {"$ref": "#/$defs/a"}}}"##,
            r#"{"$type": "Shop.Models.Order, Shop", "$values": [1, 2]}"#,
            // Extended JSON, OData, prices, shell, Svelte.
            r#"{"_id": {"$oid": "5f0c4b7e2a1d4c3e9f5a8b7c"}, "at": {"$date": "2024-01-01T00:00:00Z"}}"#,
            "Price gt 5 and Name ne 'x'",
            "costs $5, or $10 with tax: $in stock",
            "echo $in: ok",
            "$: doubled = count * 2",
            "a$ne: 1",
            "{ $NE: 1 }",
            "{ $set: { a: 1 } }",
            "{ $type: 2 }",
        ] {
            let hit = value(v, 1);
            assert!(hit.is_none(), "false positive on {v:?}: {hit:?}");
        }
        // Paranoia 2 reads update operators and stages, still not the conventions above.
        assert!(value("{ $set: { a: 1 } }", 2).is_some());
        assert!(value(r#"{"$schema": "s", "$comment": "c", "$type": "T, A"}"#, 2).is_none());
    }

    #[test]
    fn javascript_for_where_and_the_shell() {
        for v in [
            "' && this.password.match(/.*/)//\0",
            "admin' || this.role == 'admin",
            "';sleep(5000);",
            "';return 'a'=='a' && ''=='",
            "\";return(true);var xyz='a",
            "0;return true",
            "|| 1==1",
            "' || '1'=='1",
            ";var date = new Date(); do{curDate = new Date();}while(curDate-date",
            "';it=new Date();do{pt=new Date();}while(pt-it<5000);",
            "db.injection.insert({success:1});",
            "x'; db.getCollection('users').drop(); '",
            "1; db.users.find({})",
        ] {
            assert!(value(v, 1).is_some(), "missed {v:?}");
        }
    }

    #[test]
    fn javascript_look_alikes_pass() {
        for v in [
            "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
            "Order 12; return policy applies",
            "He said 'no'; return it tomorrow",
            "Tom && Jerry || Spike",
            "'fish' && 'chips'",
            "1;2;3;4",
            "a=1&b=2&&c",
            "I need more sleep(ing)",
            "while (stocks last)",
            "mongodb.example.com/db.users.find",
            "feedb.users.find(x)",
            "db.example.org",
            "sqldb.insert(",
            "'x' == 'y'",
            "this.value is fine; return this",
            "do it; while you can",
            "1;do (1=1)",
        ] {
            let hit = value(v, 1);
            assert!(hit.is_none(), "false positive on {v:?}: {hit:?}");
        }
    }
}
