//! Reads the hashes of many tenants over a connection of its own, parsing the replies where they
//! land: the load path of a large state.
//!
//! A load reads two hashes per tenant: 2M `HGETALL` replies for a million tenants. Through the
//! client library each reply becomes a frame, then a value per field, then the caller's strings;
//! the state keeps none of them (a pin is two numbers). Here the commands are written in
//! pipelines on a plain connection to the server the client is connected to (a standalone
//! server, or the master Sentinel named), and each reply is parsed from the read buffer into
//! borrowed `(field, value)` pairs that go straight into the state. A Cluster, or a server that
//! refuses the connection, is read through the client instead.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use greyrouter_store::StoreError;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: Option<u8>,
    pub timeout: Duration,
}

/// Longest bulk string accepted in a reply (a field or value of a tenant's hash).
const MAX_BULK: usize = 64 << 20;
/// Most fields of one hash accepted in a reply.
const MAX_FIELDS: usize = 1 << 20;
/// Tenants whose commands are written before their replies are read.
const AHEAD: usize = 2;

/// A connection that reads hashes in pipelines.
pub(crate) struct BulkReader {
    stream: TcpStream,
    buffer: BytesMut,
    timeout: Duration,
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {what}"))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("redis reply: {what}"))
}

/// Appends a command in RESP.
fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// What parsing a reply found.
enum Parsed<T> {
    /// The reply and the bytes it took.
    Done(T, usize),
    /// The reply is not all in the buffer yet.
    Incomplete,
}

/// Reads a `\r\n`-terminated line at `at`; returns it and the position after it.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(text: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| corrupt("a length that is not a number"))
}

/// Parses a simple reply (`+OK`) or an error.
fn parse_status(buf: &[u8]) -> Result<Parsed<()>, StoreError> {
    let Some((text, used)) = line(buf, 0) else {
        return Ok(Parsed::Incomplete);
    };
    match text.first() {
        Some(b'+') => Ok(Parsed::Done((), used)),
        Some(b'-') => Err(unavailable(String::from_utf8_lossy(&text[1..]))),
        _ => Err(corrupt("expected a status")),
    }
}

/// Walks one `HGETALL` reply at `at`, handing each field and value to `each` (`false` for a
/// field, `true` for its value); returns the position after the reply.
fn walk_hash<'a>(
    buf: &'a [u8],
    at: usize,
    mut each: impl FnMut(&'a [u8], bool) -> Result<(), StoreError>,
) -> Result<Parsed<()>, StoreError> {
    let Some((head, mut at)) = line(buf, at) else {
        return Ok(Parsed::Incomplete);
    };
    match head.first() {
        Some(b'*') => {}
        Some(b'-') => return Err(unavailable(String::from_utf8_lossy(&head[1..]))),
        _ => return Err(corrupt("expected an array")),
    }
    let count = number(&head[1..])?;
    let count = usize::try_from(count).map_err(|_| corrupt("a negative array length"))?;
    if count % 2 != 0 || count / 2 > MAX_FIELDS {
        return Err(corrupt("a hash of odd or excessive length"));
    }
    for i in 0..count {
        let Some((head, start)) = line(buf, at) else {
            return Ok(Parsed::Incomplete);
        };
        if head.first() != Some(&b'$') {
            return Err(corrupt("expected a bulk string"));
        }
        let len = usize::try_from(number(&head[1..])?)
            .ok()
            .filter(|len| *len <= MAX_BULK)
            .ok_or_else(|| corrupt("a bulk string of bad length"))?;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(corrupt("a bulk string without its end"));
        }
        each(&buf[start..end], i % 2 == 1)?;
        at = end + 2;
    }
    Ok(Parsed::Done((), at))
}

/// Parses one `HGETALL` reply at `at` into borrowed pairs; returns them and the position after.
fn parse_hash(buf: &[u8], at: usize) -> Result<Parsed<Vec<(&str, &str)>>, StoreError> {
    let mut pairs = Vec::new();
    let mut field = "";
    let walked = walk_hash(buf, at, |bytes, value| {
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("a field is not UTF-8"))?;
        if value {
            pairs.push((field, text));
        } else {
            field = text;
        }
        Ok(())
    })?;
    Ok(match walked {
        Parsed::Done((), end) => Parsed::Done(pairs, end),
        Parsed::Incomplete => Parsed::Incomplete,
    })
}

/// Where the next `count` replies end, if all are in the buffer (their lengths only are read).
fn replies_end(buf: &[u8], count: usize) -> Result<Option<usize>, StoreError> {
    let mut at = 0;
    for _ in 0..count {
        match walk_hash(buf, at, |_, _| Ok(()))? {
            Parsed::Done((), end) => at = end,
            Parsed::Incomplete => return Ok(None),
        }
    }
    Ok(Some(at))
}

impl BulkReader {
    /// Connects, authenticates and selects the database.
    pub(crate) async fn connect(target: &Target) -> Result<BulkReader, StoreError> {
        let connect = TcpStream::connect((target.host.as_str(), target.port));
        let stream = tokio::time::timeout(target.timeout, connect)
            .await
            .map_err(|_| unavailable("no bulk connection in time"))?
            .map_err(|e| unavailable(format!("bulk connection: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| unavailable(format!("bulk connection: {e}")))?;
        let mut reader = BulkReader {
            stream,
            buffer: BytesMut::with_capacity(1 << 20),
            timeout: target.timeout,
        };
        let mut hello = Vec::new();
        let mut replies = 0;
        if let Some(password) = &target.password {
            match &target.username {
                Some(user) => command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            replies += 1;
        }
        if let Some(database) = target.database {
            command(&mut hello, &[b"SELECT", database.to_string().as_bytes()]);
            replies += 1;
        }
        if replies > 0 {
            reader.write(&hello).await?;
            for _ in 0..replies {
                loop {
                    match parse_status(&reader.buffer)? {
                        Parsed::Done((), used) => {
                            reader.buffer.advance(used);
                            break;
                        }
                        Parsed::Incomplete => reader.fill().await?,
                    }
                }
            }
        }
        Ok(reader)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| unavailable("bulk write timed out"))?
            .map_err(|e| unavailable(format!("bulk write: {e}")))
    }

    /// Reads more bytes into the buffer.
    async fn fill(&mut self) -> Result<(), StoreError> {
        self.buffer.reserve(256 * 1024);
        let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buffer))
            .await
            .map_err(|_| unavailable("bulk read timed out"))?
            .map_err(|e| unavailable(format!("bulk read: {e}")))?;
        if read == 0 {
            return Err(unavailable("the bulk connection closed"));
        }
        Ok(())
    }

    /// Reads the hashes `keys(item)` names for every item, `per_item` hashes each, in chunks of
    /// `chunk` items, and hands each item with its hashes (as borrowed pairs) to `take`.
    pub(crate) async fn read_hashes<T>(
        &mut self,
        items: &[T],
        chunk: usize,
        per_item: usize,
        keys: impl Fn(&T) -> Vec<String>,
        mut take: impl FnMut(&T, &[Vec<(&str, &str)>]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let chunks: Vec<&[T]> = items.chunks(chunk.max(1)).collect();
        let mut written = 0;
        for index in 0..chunks.len() {
            // Commands of the next chunks go out before this one's replies are read, so Redis
            // works while the replies are parsed.
            while written < chunks.len() && written <= index + AHEAD {
                let mut out = Vec::with_capacity(chunks[written].len() * per_item * 64);
                for item in chunks[written] {
                    for key in keys(item) {
                        command(&mut out, &[b"HGETALL", key.as_bytes()]);
                    }
                }
                self.write(&out).await?;
                written += 1;
            }
            for item in chunks[index] {
                let used = loop {
                    match replies_end(&self.buffer, per_item)? {
                        Some(used) => break used,
                        None => self.fill().await?,
                    }
                };
                // Parsed once they are all there; the pairs borrow the buffer, handed over and
                // then let go.
                let mut hashes = Vec::with_capacity(per_item);
                let mut at = 0;
                for _ in 0..per_item {
                    match parse_hash(&self.buffer[..used], at)? {
                        Parsed::Done(pairs, end) => {
                            hashes.push(pairs);
                            at = end;
                        }
                        Parsed::Incomplete => return Err(corrupt("a reply cut short")),
                    }
                }
                take(item, &hashes)?;
                drop(hashes);
                self.buffer.advance(used);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", pairs.len() * 2).into_bytes();
        for (field, value) in pairs {
            for text in [field, value] {
                out.extend_from_slice(format!("${}\r\n{text}\r\n", text.len()).as_bytes());
            }
        }
        out
    }

    #[test]
    fn a_hash_reply_parses_into_borrowed_pairs_however_it_is_cut() {
        let mut reply = hash(&[("name", "Acme"), ("labels", "{}"), ("empty", "")]);
        reply.extend_from_slice(&hash(&[]));
        for cut in 0..reply.len() {
            let parsed = parse_hash(&reply[..cut], 0).expect("no error");
            let whole = hash(&[("name", "Acme"), ("labels", "{}"), ("empty", "")]).len();
            match parsed {
                Parsed::Done(_, used) => assert!(cut >= whole && used == whole),
                Parsed::Incomplete => assert!(cut < whole, "cut at {cut}"),
            }
        }
        let Ok(Parsed::Done(pairs, used)) = parse_hash(&reply, 0) else {
            panic!("parses");
        };
        assert_eq!(pairs, [("name", "Acme"), ("labels", "{}"), ("empty", "")]);
        let Ok(Parsed::Done(rest, end)) = parse_hash(&reply, used) else {
            panic!("parses");
        };
        assert!(rest.is_empty());
        assert_eq!(end, reply.len());
    }

    #[test]
    fn malformed_replies_are_refused() {
        for bad in [
            &b"$3\r\nabc\r\n"[..],
            b"*1\r\n$1\r\na\r\n",
            b"*2\r\n:1\r\n:2\r\n",
            b"*2\r\n$1\r\nab\r\n$1\r\nb\r\n",
            b"*2\r\n$x\r\na\r\n",
            b"*2\r\n$2\r\n\xff\xfe\r\n$1\r\nb\r\n",
        ] {
            assert!(parse_hash(bad, 0).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_hash(b"-WRONGTYPE not a hash\r\n", 0),
            Err(StoreError::Unavailable(message)) if message.contains("WRONGTYPE")
        ));
        assert!(matches!(parse_status(b"+OK\r\n"), Ok(Parsed::Done((), 5))));
        assert!(parse_status(b"-NOAUTH\r\n").is_err());
    }
}
