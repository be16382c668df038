//! Percent-encoding of keys, the one spelling shared by the KV API's paths, the
//! `Fanz-Depends-On` header, the near-cache watch and the client: every byte but
//! the unreserved characters (`A-Z a-z 0-9 - . _ ~`) is written `%XX`, so any byte
//! string survives a URL path or a header.

/// `bytes` percent-encoded.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bytes `text` spells; a `%` not followed by two hex digits is an error.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in {text:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encoding_round_trips_and_is_path_safe(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded = encode(&key);
            prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            prop_assert_eq!(decode(&encoded).unwrap(), key);
        }

        #[test]
        fn any_text_decodes_or_errs_without_panicking(text in ".{0,40}") {
            let _ = decode(&text);
        }
    }

    #[test]
    fn bad_escapes_are_errors() {
        assert_eq!(decode("a%2Fb").unwrap(), b"a/b");
        assert!(decode("bad%zz").is_err());
        assert!(decode("cut%2").is_err());
        assert!(decode("%").is_err());
    }
}
