//! Checking an attachment the way the server means its digest.
//!
//! CouchDB 3 stores attachments of compressible types (`[attachments]
//! compressible_types`: `text/*`, JSON, JavaScript, XML by default)
//! gzip-encoded, and a stub's `digest` is the MD5 of the **encoded** bytes.
//! A plain GET returns the identity bytes, whose MD5 is something else; a
//! GET with `Accept-Encoding: gzip` returns the stored encoding as is, with
//! `Content-Encoding: gzip`. So a backup asks for gzip and checks the bytes
//! exactly as they arrive against the digest, then keeps the identity bytes
//! (which deduplicate across documents and days, and are what a restore
//! sends). Binary types are stored as is: their digest is of the bytes.
//!
//! A proxy in between may gzip an identity attachment on the fly: then the
//! decoded bytes, not the encoded ones, match the digest. Anything else is
//! damage, and is named.

use std::io::Read;

use bytes::Bytes;

use crate::format::md5_digest;

/// An attachment's bytes, checked against its stub.
#[derive(Debug, PartialEq, Eq)]
pub struct Checked {
    /// The identity bytes (the answer itself when it was not encoded).
    pub data: Bytes,
    /// `Some("gzip")` when the server holds the gzip encoding (its digest
    /// is of that encoding, not of `data`).
    pub encoding: Option<&'static str>,
}

/// Checks an attachment answer: `body` as it arrived (`gzip`: it came with
/// `Content-Encoding: gzip`) against the stub's `digest` and identity
/// `length`. Decodes at most `max_len` bytes. Returns why it does not match.
pub fn check(
    body: Bytes,
    gzip: bool,
    digest: &str,
    length: Option<u64>,
    max_len: u64,
) -> Result<Checked, String> {
    let checked = if gzip {
        let limit = length.unwrap_or(max_len).min(max_len);
        let data = Bytes::from(
            gunzip(&body, limit).map_err(|e| format!("its gzip encoding does not decode ({e})"))?,
        );
        if md5_digest(&body) == digest {
            Checked {
                data,
                encoding: Some("gzip"),
            }
        } else {
            let decoded = md5_digest(&data);
            if decoded != digest {
                return Err(format!(
                    "its gzip-encoded bytes have digest {}, and decoded {decoded}; the document \
                     says {digest}",
                    md5_digest(&body)
                ));
            }
            Checked {
                data,
                encoding: None,
            }
        }
    } else {
        let got = md5_digest(&body);
        if got != digest {
            return Err(format!(
                "its bytes have digest {got}, the document says {digest}"
            ));
        }
        Checked {
            data: body,
            encoding: None,
        }
    };
    match length {
        Some(len) if checked.data.len() as u64 != len => Err(format!(
            "it is {} bytes, the document says {len}",
            checked.data.len()
        )),
        _ => Ok(checked),
    }
}

/// Decodes a gzip stream (every member of it) of at most `limit` bytes (a
/// bomb is refused as soon as it passes the limit, not after).
fn gunzip(encoded: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(encoded).take(limit.saturating_add(1));
    decoder.read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it decodes to more than {limit} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(8));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    const MAX: u64 = 1 << 20;

    #[test]
    fn identity_attachments_match_their_bytes() {
        let digest = md5_digest(b"hello");
        let got = check(Bytes::from_static(b"hello"), false, &digest, Some(5), MAX).unwrap();
        assert_eq!(&got.data[..], b"hello");
        assert_eq!(got.encoding, None);
        let err = check(Bytes::from_static(b"hellO"), false, &digest, Some(5), MAX).unwrap_err();
        assert!(err.contains(&digest), "{err}");
    }

    #[test]
    fn gzip_stored_attachments_match_their_encoding_and_keep_identity_bytes() {
        let data = b"{\"a\":1}".repeat(100);
        let encoded = gzip(&data);
        let digest = md5_digest(&encoded);
        let got = check(
            Bytes::from(encoded.clone()),
            true,
            &digest,
            Some(data.len() as u64),
            MAX,
        )
        .unwrap();
        assert_eq!(&got.data[..], &data[..]);
        assert_eq!(got.encoding, Some("gzip"));
        // The plain GET of such an attachment: identity bytes, another md5.
        let err = check(
            Bytes::from(data.clone()),
            false,
            &digest,
            Some(data.len() as u64),
            MAX,
        )
        .unwrap_err();
        assert!(err.contains("the document says"), "{err}");
    }

    #[test]
    fn an_identity_attachment_gzipped_on_the_way_matches_once_decoded() {
        let data = b"plain text".repeat(10);
        let got = check(
            Bytes::from(gzip(&data)),
            true,
            &md5_digest(&data),
            None,
            MAX,
        )
        .unwrap();
        assert_eq!((&got.data[..], got.encoding), (&data[..], None));
    }

    #[test]
    fn damaged_encodings_and_wrong_lengths_are_named() {
        let data = b"some text that compresses ".repeat(50);
        let encoded = gzip(&data);
        let digest = md5_digest(&encoded);
        // Other content, well encoded: neither digest matches.
        let other = gzip(&b"some text that compresses!".repeat(50));
        let err = check(Bytes::from(other), true, &digest, None, MAX).unwrap_err();
        assert!(err.contains("gzip-encoded bytes have digest"), "{err}");
        // A flipped byte in the deflate stream: it fails to decode or to match.
        let mut flipped = encoded.clone();
        flipped[20] ^= 0x55;
        assert!(check(Bytes::from(flipped), true, &digest, None, MAX).is_err());
        // Truncated.
        let err = check(
            Bytes::copy_from_slice(&encoded[..encoded.len() - 9]),
            true,
            &digest,
            None,
            MAX,
        )
        .unwrap_err();
        assert!(err.contains("does not decode"), "{err}");
        // The length the stub claims.
        let err = check(Bytes::from(encoded.clone()), true, &digest, Some(3), MAX).unwrap_err();
        assert!(
            err.contains("does not decode") || err.contains("bytes"),
            "{err}"
        );
        let err = check(
            Bytes::from_static(b"hello"),
            false,
            &md5_digest(b"hello"),
            Some(6),
            MAX,
        )
        .unwrap_err();
        assert!(err.contains("the document says 6"), "{err}");
    }

    #[test]
    fn every_member_of_a_gzip_stream_is_decoded() {
        let mut two = gzip(b"first half, ");
        two.extend(gzip(b"second half"));
        let got = check(
            Bytes::from(two.clone()),
            true,
            &md5_digest(&two),
            Some(23),
            MAX,
        )
        .unwrap();
        assert_eq!(&got.data[..], b"first half, second half");
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        let err = check(
            Bytes::from(bomb.clone()),
            true,
            &md5_digest(&bomb),
            None,
            1 << 20,
        )
        .unwrap_err();
        assert!(err.contains("more than 1048576 bytes"), "{err}");
    }
}
