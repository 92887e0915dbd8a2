//! The chunked decoder on its own.

use super::super::chunked::*;

fn decode(parts: &[&[u8]]) -> (Vec<u8>, Result<Progress, ChunkError>) {
    let mut d = ChunkedDecoder::new();
    let mut body = vec![];
    let mut last = Ok(Progress::NeedMore);
    for p in parts {
        last = d.feed(p, 1024, &mut |b: &[u8]| body.extend_from_slice(b));
        if !matches!(last, Ok(Progress::NeedMore)) {
            break;
        }
    }
    (body, last)
}

#[test]
fn decodes_chunks_with_extensions_and_trailers_in_one_piece() {
    let wire = b"4;name=value\r\nWiki\r\n5 ; ext\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\nX-Sum: 9\r\n\r\nNEXT";
    let (body, r) = decode(&[wire]);
    assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
    let Ok(Progress::Done { used, trailers }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(&wire[used..], b"NEXT");
    assert_eq!(
        trailers,
        [("Expires", "never"), ("X-Sum", "9")]
            .into_iter()
            .collect::<crate::http::HeaderFields>()
    );
}

#[test]
fn decodes_byte_by_byte_and_accepts_bare_lf() {
    let wire = b"3\nabc\n10\r\n0123456789abcdef\r\n0\n\nX";
    let parts: Vec<&[u8]> = wire.chunks(1).collect();
    let (body, r) = decode(&parts);
    assert_eq!(body, b"abc0123456789abcdef");
    assert_eq!(
        r,
        Ok(Progress::Done {
            used: 1,
            trailers: crate::http::HeaderFields::new()
        }),
        "the last piece is the final LF"
    );
}

#[test]
fn rejects_bad_sizes_and_framing() {
    assert_eq!(decode(&[b"zz\r\n"]).1, Err(ChunkError::Framing));
    assert_eq!(decode(&[b"\r\n"]).1, Err(ChunkError::Framing), "empty size");
    assert_eq!(
        decode(&[b"ffffffffffffffffff\r\n"]).1,
        Err(ChunkError::SizeTooLarge)
    );
    assert_eq!(decode(&[b"10000000001\r\n"]).1, Err(ChunkError::SizeTooLarge));
    assert_eq!(
        decode(&[b"3\r\nabcX"]).1,
        Err(ChunkError::Framing),
        "no CRLF after data"
    );
    assert_eq!(
        decode(&[b"3 4\r\n"]).1,
        Err(ChunkError::Framing),
        "digits after whitespace"
    );
    let mut long = b"1;".to_vec();
    long.extend(std::iter::repeat_n(b'x', 5000));
    assert_eq!(decode(&[&long]).1, Err(ChunkError::LineTooLong));
    let mut big_trailer = b"0\r\n".to_vec();
    big_trailer.extend(std::iter::repeat_n(b'x', 2000));
    assert_eq!(decode(&[&big_trailer]).1, Err(ChunkError::TrailersTooLarge));
    assert_eq!(
        decode(&[b"0\r\nbad header\r\n\r\n"]).1,
        Err(ChunkError::BadTrailers)
    );
}

#[test]
fn gaps_inside_data_are_skipped_and_elsewhere_lose_sync() {
    let mut d = ChunkedDecoder::new();
    let mut body = vec![];
    let mut sink = |b: &[u8]| body.extend_from_slice(b);
    assert_eq!(d.feed(b"a\r\n01", 64, &mut sink), Ok(Progress::NeedMore));
    assert_eq!(d.missing(3), Gap::Skipped);
    assert_eq!(d.missing(5), Gap::Skipped, "exactly to the end of the chunk");
    assert_eq!(
        d.feed(b"\r\n0\r\n\r\n", 64, &mut sink),
        Ok(Progress::Done {
            used: 7,
            trailers: crate::http::HeaderFields::new()
        })
    );
    assert_eq!(body, b"01");
    let mut d = ChunkedDecoder::new();
    assert_eq!(d.feed(b"4\r\nab", 64, &mut |_: &[u8]| {}), Ok(Progress::NeedMore));
    assert_eq!(d.missing(10), Gap::LostSync { in_data: 2 });
    let mut d = ChunkedDecoder::new();
    assert_eq!(d.missing(1), Gap::LostSync { in_data: 0 });
}
