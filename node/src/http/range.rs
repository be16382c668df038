//! Byte ranges (RFC 9110 §14) answered from a complete stored object (a proxied
//! response or a KV value): a single range
//! (suffix and open-ended ones included) gets 206 with `Content-Range`, an
//! unsatisfiable one 416. Anything else (several ranges, another unit, a malformed
//! header, an `If-Range` that does not match) gets the whole object with 200, as RFC
//! 9110 §14.2 allows a server to ignore `Range`: we answer several ranges this way
//! rather than with `multipart/byteranges`. Partial (206) responses from an origin
//! are passed through and never stored (see `policy`).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};

/// What to send for a request's `Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole object (200).
    Whole,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// Nothing of it (416).
    Unsatisfiable,
}

/// Decides the answer for a request with `headers` and an object of `len` bytes whose
/// validator is `etag`.
pub fn answer(request: &HeaderMap, len: u64, etag: Option<&str>) -> RangeAnswer {
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAnswer::Whole;
    };
    if let Some(if_range) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        // Only a strong ETag match counts; a date or a weak tag means "send it all".
        let strong_match = etag.is_some_and(|e| !e.starts_with("W/") && e == if_range.trim());
        if !strong_match {
            return RangeAnswer::Whole;
        }
    }
    let Some(spec) = range
        .trim()
        .strip_prefix("bytes=")
        .or_else(|| range.trim().strip_prefix("BYTES="))
    else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                start: len - n.min(len),
                end: len - 1,
            },
            None => RangeAnswer::Whole,
        },
        (first, "") => match number(first) {
            Some(start) if start < len => RangeAnswer::Partial {
                start,
                end: len - 1,
            },
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (first, last) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start > end => RangeAnswer::Whole,
            (Some(start), Some(_)) if start >= len => RangeAnswer::Unsatisfiable,
            (Some(start), Some(end)) => RangeAnswer::Partial {
                start,
                end: end.min(len - 1),
            },
            _ => RangeAnswer::Whole,
        },
    }
}

/// Answers a request's `Range` over `body` (a whole object that a 200 would send,
/// whose validator is `etag`): the status, the bytes to send and, for a 206 or a
/// 416, the `Content-Range` to send with them.
pub fn apply(
    request: &HeaderMap,
    body: &Bytes,
    etag: Option<&str>,
) -> (StatusCode, Bytes, Option<HeaderValue>) {
    let total = body.len();
    let content_range = |v: String| HeaderValue::from_str(&v).ok();
    match answer(request, total as u64, etag) {
        RangeAnswer::Whole => (StatusCode::OK, body.clone(), None),
        RangeAnswer::Partial { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            body.slice(start as usize..=end as usize),
            content_range(format!("bytes {start}-{end}/{total}")),
        ),
        RangeAnswer::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Bytes::new(),
            content_range(format!("bytes */{total}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ask(range: &str, len: u64) -> RangeAnswer {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
        answer(&h, len, Some("\"a\""))
    }

    #[test]
    fn single_ranges() {
        assert_eq!(
            ask("bytes=0-9", 100),
            RangeAnswer::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            ask("bytes=90-200", 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            ask("bytes=95-", 100),
            RangeAnswer::Partial { start: 95, end: 99 }
        );
        assert_eq!(
            ask("bytes=-10", 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            ask("bytes=-500", 100),
            RangeAnswer::Partial { start: 0, end: 99 }
        );
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(ask("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=200-300", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=-0", 100), RangeAnswer::Unsatisfiable);
        for ignored in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=x-1",
            "bytes=1",
        ] {
            assert_eq!(ask(ignored, 100), RangeAnswer::Whole, "{ignored}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-0"));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"a\""));
        assert_eq!(
            answer(&h, 10, Some("\"a\"")),
            RangeAnswer::Partial { start: 0, end: 0 }
        );
        assert_eq!(answer(&h, 10, Some("\"b\"")), RangeAnswer::Whole);
        assert_eq!(answer(&h, 10, Some("W/\"a\"")), RangeAnswer::Whole);
    }
}
