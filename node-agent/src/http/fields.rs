//! Header fields of one message, stored compactly: every name and value in one string, and
//! where each ends. One allocation per typical message however many fields it has, instead of
//! two per field: the agent parses every captured message, and most of its per-request cost was
//! copying field names and values into strings of their own.

use smallvec::SmallVec;

/// Fields whose ends are kept inline: most API requests and responses have fewer (wrk 1, nginx
/// 5); a head with more spills the table to the heap.
const INLINE_FIELDS: usize = 8;

/// Header fields in order, names and values as text (values as lossy UTF-8).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderFields {
    /// `name0 value0 name1 value1 ...`, concatenated without separators.
    text: String,
    /// Per field, where its name ends and where its value ends in `text` (each field starts
    /// where the previous one ended).
    ends: SmallVec<[(u32, u32); INLINE_FIELDS]>,
}

impl HeaderFields {
    /// No fields.
    pub const fn new() -> Self {
        HeaderFields {
            text: String::new(),
            ends: SmallVec::new_const(),
        }
    }

    /// No fields, borrowed for as long as needed.
    pub fn empty() -> &'static HeaderFields {
        static EMPTY: HeaderFields = HeaderFields::new();
        &EMPTY
    }

    /// The fields `httparse` found. Names and values are copied into one buffer, which is then
    /// checked as UTF-8 once (heads almost always are); otherwise each value is taken on its own,
    /// lossily where it is not.
    pub(crate) fn from_httparse(headers: &[httparse::Header<'_>]) -> Self {
        let len: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
        if u32::try_from(len).is_err() {
            return Self::from_httparse_lossy(headers);
        }
        let mut text = Vec::with_capacity(len);
        let mut ends = SmallVec::with_capacity(headers.len());
        for h in headers {
            if h.name.is_empty() {
                // Never from httparse (a name is a token); the check below relies on ASCII
                // between values.
                return Self::from_httparse_lossy(headers);
            }
            text.extend_from_slice(h.name.as_bytes());
            let name_end = text.len() as u32;
            text.extend_from_slice(h.value);
            ends.push((name_end, text.len() as u32));
        }
        match String::from_utf8(text) {
            // Every name is a non-empty token (ASCII): each boundary has an ASCII byte on one
            // side or is the end, so it lies between characters, and the whole is UTF-8 exactly
            // when every value is.
            Ok(text) => HeaderFields { text, ends },
            Err(_) => Self::from_httparse_lossy(headers),
        }
    }

    /// [`Self::from_httparse`] for heads that are not UTF-8: value by value.
    fn from_httparse_lossy(headers: &[httparse::Header<'_>]) -> Self {
        let mut fields = HeaderFields::new();
        for h in headers {
            fields.push(h.name, &String::from_utf8_lossy(h.value));
        }
        fields
    }

    /// Appends a field.
    pub fn push(&mut self, name: &str, value: &str) {
        // Heads are bounded far below 4 GiB (max_head_bytes ≤ 64 KiB), trailers likewise.
        let fits = self.text.len() + name.len() + value.len() <= u32::MAX as usize;
        if !fits {
            return;
        }
        self.text.push_str(name);
        let name_end = self.text.len() as u32;
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len() as u32));
    }

    /// The fields in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let field = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            field
        })
    }

    /// The value of the first field named `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of the fields named `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes held on the heap, for memory accounting (the inline ends table is not).
    pub fn heap_bytes(&self) -> usize {
        let ends = if self.ends.spilled() {
            self.ends.capacity() * std::mem::size_of::<(u32, u32)>()
        } else {
            0
        };
        self.text.capacity() + ends
    }

    /// Appends every field of `other` (chunked trailers).
    pub fn extend(&mut self, other: &HeaderFields) {
        for (name, value) in other.iter() {
            self.push(name, value);
        }
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for HeaderFields {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        let mut fields = HeaderFields::new();
        for (name, value) in pairs {
            fields.push(name.as_ref(), value.as_ref());
        }
        fields
    }
}

impl std::fmt::Debug for HeaderFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_order_names_values_and_empty_values() {
        let f: HeaderFields = [("Host", "a"), ("X-Empty", ""), ("host", "b"), ("", "odd")]
            .into_iter()
            .collect();
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            vec![("Host", "a"), ("X-Empty", ""), ("host", "b"), ("", "odd")]
        );
        assert_eq!(f.len(), 4);
        assert_eq!(f.get("HOST"), Some("a"));
        assert_eq!(f.get_all("host").collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(f.get("missing"), None);
        let mut g = HeaderFields::new();
        assert!(g.is_empty());
        g.extend(&f);
        assert_eq!(g, f);
        assert_eq!(
            format!("{f:?}"),
            r#"[("Host", "a"), ("X-Empty", ""), ("host", "b"), ("", "odd")]"#
        );
    }

    #[test]
    fn heap_bytes_count_the_ends_table_only_once_it_spills() {
        let few: HeaderFields = (0..INLINE_FIELDS).map(|i| ("X", i.to_string())).collect();
        assert_eq!(few.heap_bytes(), few.text.capacity());
        let many: HeaderFields = (0..=INLINE_FIELDS).map(|i| ("X", i.to_string())).collect();
        assert!(many.ends.spilled());
        assert_eq!(
            many.heap_bytes(),
            many.text.capacity() + many.ends.capacity() * std::mem::size_of::<(u32, u32)>()
        );
    }

    #[test]
    fn values_that_are_not_utf8_are_kept_lossily() {
        let headers = [httparse::Header {
            name: "X-Bin",
            value: b"ok\xffok",
        }];
        let f = HeaderFields::from_httparse(&headers);
        assert_eq!(f.get("x-bin"), Some("ok\u{fffd}ok"));
    }

    #[test]
    fn values_are_utf8_checked_together_and_lossy_only_where_they_are_not() {
        for (head, other) in [
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: J\xc3\xbcrgen\r\nX-Empty:\r\n\r\n"[..],
                ("x-empty", ""),
            ),
            // Not UTF-8 as a whole: each value on its own, the bad one lossily.
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\nX-Bin: ok\xffok\r\nX-Name: J\xc3\xbcrgen\r\n\r\n"[..],
                ("x-bin", "ok\u{fffd}ok"),
            ),
        ] {
            let mut slots = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut slots);
            let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
                panic!("the test head parses");
            };
            let f = HeaderFields::from_httparse(req.headers);
            assert_eq!(f.len(), 3);
            assert_eq!(f.get("host"), Some("a"));
            assert_eq!(f.get("x-name"), Some("Jürgen"));
            assert_eq!(f.get(other.0), Some(other.1));
        }
    }
}
