//! RESP2, the Redis serialization protocol, as far as a server of the node's KV API
//! needs it: commands in (arrays of bulk strings, as every Redis client sends them,
//! and inline commands, as a person types them into `telnet`), replies out (simple
//! strings, errors, integers, bulk strings, nulls, arrays).
//!
//! [`take_command`] parses from the front of a connection's read buffer and returns
//! the arguments as zero-copy slices of it. It never panics on any input, allocates
//! no more than the bounds in [`Limits`] allow before the bytes have arrived, and
//! tells an incomplete command (wait for more bytes) from a malformed one (answer
//! with the error and close: after a framing error nothing later on the connection
//! can be trusted to start a command).

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds on a command, checked before anything is buffered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one command, the command's name included.
    pub max_args: usize,
    /// Longest argument (a key or a value), bytes.
    pub max_arg_len: usize,
    /// Longest inline command line, bytes.
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_args: 1024,
            max_arg_len: 512 * 1024 * 1024,
            max_inline: 64 * 1024,
        }
    }
}

/// Why a command could not be read; the connection is answered with
/// [`RespError::reply`] and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// The bytes are not RESP.
    #[error("Protocol error: {0}")]
    Malformed(&'static str),
    /// More arguments than [`Limits::max_args`].
    #[error("Protocol error: {count} arguments, at most {max} are accepted")]
    TooManyArgs {
        /// Arguments announced.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An argument longer than [`Limits::max_arg_len`].
    #[error("Protocol error: an argument of {len} bytes, at most {max} are accepted")]
    ArgTooLong {
        /// Length announced.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl RespError {
    /// The error reply to send before closing the connection.
    pub fn reply(&self, out: &mut BytesMut) {
        error(out, &format!("ERR {self}"));
    }
}

/// One command: its arguments, the name first, each a slice of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The arguments; never empty.
    pub args: Vec<Bytes>,
}

impl Command {
    /// The command's name, as sent (Redis matches names without regard to case).
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }
}

/// Takes the first complete command off the front of `buf`: `Ok(None)` when more
/// bytes are needed (nothing is consumed), an error when the bytes cannot start a
/// command. Empty inline lines are skipped, as Redis does.
pub fn take_command(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Command>, RespError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let parsed = if first == b'*' {
            multibulk(buf, limits)?
        } else {
            inline(buf, limits)?
        };
        match parsed {
            Parsed::Incomplete => return Ok(None),
            Parsed::Empty(consumed) => {
                let _ = buf.split_to(consumed);
            }
            Parsed::Complete { spans, consumed } => {
                let frame = buf.split_to(consumed).freeze();
                let args = spans
                    .into_iter()
                    .map(|(start, len)| frame.slice(start..start + len))
                    .collect();
                return Ok(Some(Command { args }));
            }
        }
    }
}

/// What parsing the front of the buffer found.
enum Parsed {
    /// Not all of the command has arrived.
    Incomplete,
    /// A line with no arguments (or an empty array): skipped.
    Empty(usize),
    /// A command: each argument's offset and length, and the bytes it spans.
    Complete {
        spans: Vec<(usize, usize)>,
        consumed: usize,
    },
}

/// The longest length line (`*N` or `$N`) a command may hold: a sign, 20 digits.
const MAX_LENGTH_LINE: usize = 24;

/// `*N\r\n` followed by N bulk strings `$len\r\n<bytes>\r\n`.
fn multibulk(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    let Some((count, mut at)) = length_line(buf, 0, b'*')? else {
        return Ok(Parsed::Incomplete);
    };
    let count = match count {
        None | Some(0) => return Ok(Parsed::Empty(at)),
        Some(n) if n > limits.max_args => {
            return Err(RespError::TooManyArgs {
                count: n,
                max: limits.max_args,
            })
        }
        Some(n) => n,
    };
    // Bounded by max_args, and only as many as have arrived are kept.
    let mut spans = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(Parsed::Incomplete);
        }
        let Some((len, start)) = length_line(buf, at, b'$')? else {
            return Ok(Parsed::Incomplete);
        };
        let Some(len) = len else {
            return Err(RespError::Malformed(
                "a null bulk string is not an argument",
            ));
        };
        if len > limits.max_arg_len {
            return Err(RespError::ArgTooLong {
                len,
                max: limits.max_arg_len,
            });
        }
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(RespError::Malformed("a bulk string does not end with CRLF"));
        }
        spans.push((start, len));
        at = end + 2;
    }
    Ok(Parsed::Complete {
        spans,
        consumed: at,
    })
}

/// A length line at `at` starting with `marker`: the length (`None` for `-1`) and
/// where the line's next byte is; `Ok(None)` until the line has arrived.
fn length_line(
    buf: &[u8],
    at: usize,
    marker: u8,
) -> Result<Option<(Option<usize>, usize)>, RespError> {
    if buf[at] != marker {
        return Err(RespError::Malformed(if marker == b'$' {
            "expected '$' before an argument"
        } else {
            "expected '*'"
        }));
    }
    let window = &buf[at + 1..buf.len().min(at + 1 + MAX_LENGTH_LINE)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() == MAX_LENGTH_LINE {
            return Err(RespError::Malformed("a length line is too long"));
        }
        return Ok(None);
    };
    let digits = &window[..cr];
    let Some(&lf) = buf.get(at + 1 + cr + 1) else {
        return Ok(None);
    };
    if lf != b'\n' {
        return Err(RespError::Malformed("a length line does not end with CRLF"));
    }
    let next = at + 1 + cr + 2;
    if digits == b"-1" {
        return Ok(Some((None, next)));
    }
    let len = parse_len(digits).ok_or(RespError::Malformed("invalid length"))?;
    Ok(Some((Some(len), next)))
}

/// A length in decimal digits, without sign or leading `+`; `None` when it is not
/// one or does not fit.
fn parse_len(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// An inline command: one line, arguments separated by spaces or tabs, ending with
/// LF (a CR before it is dropped).
fn inline(buf: &[u8], limits: &Limits) -> Result<Parsed, RespError> {
    let window = &buf[..buf.len().min(limits.max_inline + 1)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if window.len() > limits.max_inline {
            return Err(RespError::Malformed("an inline command is too long"));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = &buf[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &b) in line.iter().chain(std::iter::once(&b' ')).enumerate() {
        let blank = b == b' ' || b == b'\t';
        match (start, blank) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                if spans.len() == limits.max_args {
                    return Err(RespError::TooManyArgs {
                        count: spans.len() + 1,
                        max: limits.max_args,
                    });
                }
                spans.push((s, i - s));
                start = None;
            }
            _ => {}
        }
    }
    let consumed = lf + 1;
    if spans.is_empty() {
        return Ok(Parsed::Empty(consumed));
    }
    Ok(Parsed::Complete { spans, consumed })
}

/// Appends a simple string reply (`+OK`). `s` must not hold CR or LF.
pub fn simple(out: &mut BytesMut, s: &str) {
    line(out, b'+', s);
}

/// Appends an error reply (`-ERR ...`, the first word its kind). CR and LF in `s`
/// become spaces, so the reply stays one line.
pub fn error(out: &mut BytesMut, s: &str) {
    line(out, b'-', s);
}

fn line(out: &mut BytesMut, marker: u8, s: &str) {
    out.reserve(s.len() + 3);
    out.put_u8(marker);
    out.extend(
        s.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

/// Appends an integer reply (`:n`).
pub fn integer(out: &mut BytesMut, n: i64) {
    out.put_u8(b':');
    decimal(out, n);
    out.put_slice(b"\r\n");
}

/// Appends a bulk string reply: its length line, the bytes and the final CRLF.
pub fn bulk(out: &mut BytesMut, bytes: &[u8]) {
    bulk_head(out, bytes.len());
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// Appends only the length line of a bulk string reply of `len` bytes: the caller
/// sends the bytes themselves (without copying a large value into `out`) and then
/// [`BULK_END`].
pub fn bulk_head(out: &mut BytesMut, len: usize) {
    out.put_u8(b'$');
    decimal(out, len as i64);
    out.put_slice(b"\r\n");
}

/// What ends a bulk string reply after its bytes.
pub const BULK_END: &[u8] = b"\r\n";

/// Appends the null reply (`$-1`): no such key.
pub fn null(out: &mut BytesMut) {
    out.put_slice(b"$-1\r\n");
}

/// Appends the head of an array reply of `len` elements; the elements follow.
pub fn array_head(out: &mut BytesMut, len: usize) {
    out.put_u8(b'*');
    decimal(out, len as i64);
    out.put_slice(b"\r\n");
}

fn decimal(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(crate::codec::decimal(n.unsigned_abs(), &mut [0; 20]));
}

/// Appends `args` as a command, as a client sends it: an array of bulk strings.
pub fn command(out: &mut BytesMut, args: &[&[u8]]) {
    array_head(out, args.len());
    for arg in args {
        bulk(out, arg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn take(bytes: &[u8]) -> Result<Option<Command>, RespError> {
        take_command(&mut BytesMut::from(bytes), &Limits::default())
    }

    fn args(c: &Command) -> Vec<&[u8]> {
        c.args.iter().map(|a| a.as_ref()).collect()
    }

    #[test]
    fn a_client_command_is_read_and_consumed() {
        let mut buf = BytesMut::from(
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n"[..],
        );
        let c = take_command(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(args(&c), [&b"SET"[..], b"k", b"hello"]);
        let c = take_command(&mut buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(args(&c), [&b"PING"[..]]);
        assert!(buf.is_empty());
        assert_eq!(take_command(&mut buf, &Limits::default()), Ok(None));
    }

    #[test]
    fn values_may_hold_any_bytes() {
        let c = take(b"*2\r\n$3\r\nGET\r\n$4\r\n\r\n\0\xff\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(args(&c), [&b"GET"[..], b"\r\n\0\xff"]);
    }

    #[test]
    fn inline_commands_split_on_blanks() {
        let c = take(b"  set  k\tv \r\n").unwrap().unwrap();
        assert_eq!(args(&c), [&b"set"[..], b"k", b"v"]);
        let c = take(b"PING\n").unwrap().unwrap();
        assert_eq!(args(&c), [&b"PING"[..]]);
    }

    #[test]
    fn empty_lines_and_arrays_are_skipped() {
        let c = take(b"\r\n\n*0\r\n*-1\r\nPING\r\n").unwrap().unwrap();
        assert_eq!(args(&c), [&b"PING"[..]]);
    }

    #[test]
    fn malformed_framing_is_an_error() {
        for bad in [
            &b"*1\r\n+PING\r\n"[..],
            b"*1\r\n$4\r\nPINGxx",
            b"*x\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$+4\r\nPING\r\n",
            b"*1\n$4\r\nPING\r\n",
            b"*99999999999999999999999\r\n",
            b"*1\r\n$4444444444444444444444444444\r\n",
        ] {
            assert!(
                matches!(
                    take(bad),
                    Err(RespError::Malformed(_)) | Err(RespError::TooManyArgs { .. })
                ),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                take(bad)
            );
        }
    }

    #[test]
    fn limits_are_checked_before_the_bytes_arrive() {
        let limits = Limits {
            max_args: 3,
            max_arg_len: 10,
            max_inline: 8,
        };
        let mut buf = BytesMut::from(&b"*4\r\n"[..]);
        assert_eq!(
            take_command(&mut buf, &limits),
            Err(RespError::TooManyArgs { count: 4, max: 3 })
        );
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$11\r\n"[..]);
        assert_eq!(
            take_command(&mut buf, &limits),
            Err(RespError::ArgTooLong { len: 11, max: 10 })
        );
        let mut buf = BytesMut::from(&b"a b c d\n"[..]);
        assert!(matches!(
            take_command(&mut buf, &limits),
            Err(RespError::TooManyArgs { .. })
        ));
        let mut buf = BytesMut::from(&b"aaaaaaaaa"[..]);
        assert!(matches!(
            take_command(&mut buf, &limits),
            Err(RespError::Malformed(_))
        ));
    }

    #[test]
    fn replies_are_framed() {
        let mut out = BytesMut::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR two\r\nlines");
        integer(&mut out, -12);
        integer(&mut out, 0);
        bulk(&mut out, b"v");
        null(&mut out);
        array_head(&mut out, 2);
        assert_eq!(
            &out[..],
            b"+OK\r\n-ERR two  lines\r\n:-12\r\n:0\r\n$1\r\nv\r\n$-1\r\n*2\r\n"
        );
    }

    proptest! {
        /// Any command a client encodes is read back as sent, however the bytes are
        /// split across reads, and an incomplete one consumes nothing.
        #[test]
        fn encoded_commands_are_read_back_across_any_split(
            commands in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
                1..5,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = BytesMut::new();
            for c in &commands {
                let refs: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
                command(&mut wire, &refs);
            }
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(c) = take_command(&mut buf, &Limits::default()).unwrap() {
                got.push(c.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(c) = take_command(&mut buf, &Limits::default()).unwrap() {
                got.push(c.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, commands);
        }

        /// Arbitrary bytes never panic, and a command taken consumed bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let limits = Limits { max_args: 8, max_arg_len: 64, max_inline: 64 };
            let mut buf = BytesMut::from(&bytes[..]);
            let mut before = buf.len();
            while let Ok(Some(c)) = take_command(&mut buf, &limits) {
                prop_assert!(!c.args.is_empty() && c.args.len() <= 8);
                prop_assert!(buf.len() < before);
                before = buf.len();
            }
        }
    }
}
