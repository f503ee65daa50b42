//! Plain HTTP/1.1 requests, relayed without hyper's machinery.
//!
//! Most traffic through a gateway is keep-alive HTTP/1.1 with a small body or none. For those
//! requests the caller's connection task parses the head itself (`httparse`), decides, writes
//! the request to a kept connection to the instance and copies the response back, driving both
//! connections from one task: no hand-over between tasks, no header maps, one read and one
//! write each way for a small exchange. Anything else (HTTP/2, an upgrade, a chunked request
//! body, `Expect`, HTTP/1.0, an absolute target, a head this parser refuses) hands the
//! connection, with the bytes read so far, to hyper, which serves it from there on.
//!
//! Responses are relayed as they arrive (length-delimited, chunked or until the instance
//! closes), so streamed responses reach the caller chunk by chunk.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use greyrouter_client::{Decision, Report, RouteRequest};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::resolve::{self, Head};
use crate::upstream::PlainConnection;
use crate::{Body, Gateway, Peer, Refused, RouteHeaders, problem, refusal};

/// The route headers of one decision, written as they are (no header values made).
struct RouteLabels<'d>([&'d str; 3]);

impl<'d> RouteLabels<'d> {
    fn of(decision: &'d Decision) -> RouteLabels<'d> {
        RouteLabels([
            decision.version(),
            decision.instance_id(),
            decision.source(),
        ])
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for (name, value) in RouteHeaders::NAMES.iter().zip(self.0) {
            // Names the routers checked; anything that could not be a header value is left out.
            if !value.is_empty() && value.bytes().all(|byte| (0x21..0x7f).contains(&byte)) {
                put_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
    }
}

/// Most headers in a request or response head taken on this path (hyper takes the rest).
const MAX_HEADERS: usize = 100;
/// Longest a caller's unread bytes are drained after an answer that closes its connection.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes drained then.
const LINGER_BYTES: usize = 1024 * 1024;
/// Buffers grown past this by one large message are not kept for the next.
const KEPT_BUFFER: usize = 64 * 1024;
/// Bodies up to this size are written with their request head, in one write.
const INLINE_BODY: usize = 16 * 1024;

/// How a caller's connection ended on this path.
pub(crate) enum Ended {
    /// Closed by either side.
    Closed,
    /// A request this path does not relay: hyper serves the connection from here, starting
    /// with these bytes (already read from it).
    HandOver(Bytes),
}

/// Where the name and value of one header are in a head.
type HeaderAt = (Range<usize>, Range<usize>);

/// A request head parsed from the caller's bytes.
struct RequestHead {
    raw: Bytes,
    method: Range<usize>,
    path: Range<usize>,
    query: Option<Range<usize>>,
    headers: Vec<HeaderAt>,
    content_length: u64,
    /// The caller sent a Content-Length.
    declared_length: bool,
    close: bool,
}

impl RequestHead {
    fn method(&self) -> &[u8] {
        &self.raw[self.method.clone()]
    }

    fn target(&self) -> &[u8] {
        let end = self.query.as_ref().map_or(self.path.end, |query| query.end);
        &self.raw[self.path.start..end]
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (&self.raw[name.clone()], &self.raw[value.clone()]))
    }

    fn is_retryable(&self, retry_post: bool) -> bool {
        matches!(
            self.method(),
            b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS"
        ) || (retry_post && self.method() == b"POST")
    }
}

impl Head for RequestHead {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.headers()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name.as_str().as_bytes()))
            .map(|(_, value)| value)
    }

    fn path(&self) -> &str {
        // The target was checked to be ASCII when parsed.
        std::str::from_utf8(&self.raw[self.path.clone()]).unwrap_or("/")
    }

    fn query(&self) -> Option<&str> {
        let query = self.query.clone()?;
        std::str::from_utf8(&self.raw[query]).ok()
    }

    fn target_host(&self) -> Option<&str> {
        None
    }
}

/// What the parser made of the bytes at the start of the buffer.
enum Parsed {
    /// A head this path relays, `len` bytes long.
    Relay(RequestHead, usize),
    /// More bytes are needed.
    Partial,
    /// Not for this path (hyper takes the connection).
    Other,
}

fn eq(name: &[u8], known: &str) -> bool {
    name.eq_ignore_ascii_case(known.as_bytes())
}

/// A `Content-Length` value: digits only (no sign, no list), surrounding blanks allowed.
fn content_length_of(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether a comma-separated header value lists `token`.
fn lists(value: &[u8], token: &str) -> bool {
    lists_bytes(value, token.as_bytes())
}

fn lists_bytes(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether header `name` belongs to this hop only: a hop-by-hop header, or one the
/// `Connection` header names (`connections`: its values).
fn is_for_this_hop(name: &[u8], connections: &[&[u8]]) -> bool {
    is_hop_by_hop(name)
        || connections
            .iter()
            .any(|connection| lists_bytes(connection, name))
}

fn parse_request(buf: &[u8], headers_at: &mut Vec<HeaderAt>) -> Parsed {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Other;
    };
    if method == "CONNECT" || !target.starts_with('/') || !target.is_ascii() {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    headers_at.clear();
    let mut content_length: Option<u64> = None;
    let mut close = false;
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if eq(name, "transfer-encoding") || eq(name, "upgrade") || eq(name, "expect") {
            return Parsed::Other;
        }
        if eq(name, "content-length") {
            let Some(length) = content_length_of(header.value)
                .filter(|length| content_length.is_none_or(|earlier| earlier == *length))
            else {
                return Parsed::Other;
            };
            content_length = Some(length);
        }
        if eq(name, "connection") && lists(header.value, "close") {
            close = true;
        }
        headers_at.push((at(header.name.as_bytes()), at(header.value)));
    }
    let target_at = at(target.as_bytes());
    let (path, query) = match target.find('?') {
        Some(mark) => (
            target_at.start..target_at.start + mark,
            Some(target_at.start + mark + 1..target_at.end),
        ),
        None => (target_at, None),
    };
    let head = RequestHead {
        raw: Bytes::new(),
        method: at(method.as_bytes()),
        path,
        query,
        headers: std::mem::take(headers_at),
        content_length: content_length.unwrap_or(0),
        declared_length: content_length.is_some(),
        close,
    };
    Parsed::Relay(head, len)
}

/// How an instance's response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked, relayed as it is.
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// An instance's response head, rewritten for the caller.
struct ResponseHead {
    status: u16,
    framing: Framing,
    /// The instance keeps the connection open after this response.
    reusable: bool,
}

enum ParsedResponse {
    Complete(ResponseHead, usize),
    /// An informational response (`100 Continue`, `103 Early Hints`) of this many bytes.
    Informational(usize),
    Partial,
    Invalid(&'static str),
}

/// Parses an instance's response head and writes it, rewritten for the caller, to `out`.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    route_headers: &RouteLabels<'_>,
    close_caller: bool,
    out: &mut Vec<u8>,
) -> ParsedResponse {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return ParsedResponse::Partial,
        Err(_) => return ParsedResponse::Invalid("the instance's response head is not HTTP/1.1"),
    };
    let (Some(code), Some(version)) = (response.code, response.version) else {
        return ParsedResponse::Invalid("the instance's response head is not HTTP/1.1");
    };
    if code == 101 {
        return ParsedResponse::Invalid("the instance switched protocols unasked");
    }
    if (100..200).contains(&code) {
        return ParsedResponse::Informational(len);
    }
    let mut content_length: Option<u64> = None;
    // The transfer codings in order, over every Transfer-Encoding header.
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut keep_alive = version == 1;
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        if eq(name, "content-length") {
            match content_length_of(header.value) {
                Some(length) if content_length.is_none_or(|earlier| earlier == length) => {
                    content_length = Some(length);
                }
                _ => return ParsedResponse::Invalid("the instance's content-length is not valid"),
            }
        } else if eq(name, "transfer-encoding") {
            codings.push(header.value);
        } else if eq(name, "connection") {
            if lists(header.value, "close") {
                keep_alive = false;
            } else if lists(header.value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    // The last coding named (empty list elements do not count, RFC 9110 5.6.1).
    let chunked = codings
        .iter()
        .rev()
        .flat_map(|value| value.rsplit(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .find(|coding| !coding.is_empty())
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
    // RFC 9112, 6.3: no body for HEAD, 204 and 304; a transfer coding wins over a length; a
    // coding that does not end in chunked, or neither, runs until the instance closes.
    let framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let (true, Some(length)) = (codings.is_empty(), content_length) {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    let reason = response
        .reason
        .filter(|reason| !reason.is_empty())
        .or_else(|| {
            StatusCode::from_u16(code)
                .ok()
                .and_then(|status| status.canonical_reason())
        })
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let connections: Vec<&[u8]> = response
        .headers
        .iter()
        .filter(|header| eq(header.name.as_bytes(), "connection"))
        .map(|header| header.value)
        .collect();
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        // The framing headers are the relay's own (written below from the framing), so that
        // no header list can make the caller frame the body otherwise.
        if eq(name, "content-length") {
            // A HEAD or 304 answer says the length of the body it has not (never for 204).
            if framing == Framing::Empty && code != 204 {
                put_header(out, name, header.value);
            }
            continue;
        }
        if is_for_this_hop(name, &connections) || is_route_header(name) {
            continue;
        }
        put_header(out, name, header.value);
    }
    match framing {
        Framing::Length(length) => {
            put_length(out, length);
        }
        Framing::Chunked => put_header(out, b"transfer-encoding", &codings.join(&b", "[..])),
        Framing::Empty | Framing::UntilClose => {}
    }
    route_headers.write_to(out);
    if close_caller || framing == Framing::UntilClose {
        put_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    // A coding beside a length, or in an HTTP/1.0 response, is framing to distrust: the
    // connection is not used again (RFC 9112 6.1, 6.3).
    let suspect = !codings.is_empty() && (content_length.is_some() || version == 0);
    let head = ResponseHead {
        status: code,
        framing,
        reusable: keep_alive && framing != Framing::UntilClose && !suspect,
    };
    ParsedResponse::Complete(head, len)
}

/// A status code's three digits.
fn itoa3(code: u16) -> [u8; 3] {
    let code = code.min(999);
    [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

/// A `content-length` line, the number written in place.
fn put_length(out: &mut Vec<u8>, length: u64) {
    use std::io::Write as _;
    // Writing to a vector cannot fail.
    let _ = write!(out, "content-length: {length}\r\n");
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    crate::HOP_BY_HOP
        .iter()
        .any(|known| eq(name, known.as_str()))
}

fn is_route_header(name: &[u8]) -> bool {
    RouteHeaders::NAMES
        .iter()
        .any(|known| eq(name, known.as_str()))
}

/// Finds where a chunked body ends (RFC 9112, 7.1) in the bytes relayed as they are.
#[derive(Debug, Default)]
struct ChunkedEnd {
    state: ChunkState,
    size: u64,
    digits: usize,
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

/// `Ok` when `byte` is the one the framing requires here.
fn expect(byte: u8, wanted: u8, otherwise: &'static str) -> Result<(), &'static str> {
    if byte == wanted {
        Ok(())
    } else {
        Err(otherwise)
    }
}

/// A control character other than a tab (a bare line feed among them), never in a chunk
/// extension or a trailer.
fn is_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// Longest chunk-size line (with extensions) and trailer section taken.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

impl ChunkedEnd {
    /// Scans `bytes` (the body's next bytes): `Ok(Some(n))` when the body ends after the first
    /// `n` of them, `Ok(None)` when all of them belong to it.
    fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            match self.state {
                ChunkState::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    at += take;
                    continue;
                }
                ChunkState::Size => match (byte as char).to_digit(16) {
                    Some(digit) => {
                        if self.digits >= 15 {
                            return Err("a chunk size is too large");
                        }
                        self.size = self.size * 16 + u64::from(digit);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => return Err("a chunk size is missing"),
                    None if byte == b'\r' => self.state = ChunkState::SizeLf,
                    None if byte == b';' || byte == b' ' || byte == b'\t' => {
                        self.state = ChunkState::Extension;
                        self.line = self.digits;
                    }
                    None => return Err("a chunk size is not valid"),
                },
                ChunkState::Extension => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err("a chunk extension is too long");
                    }
                    if byte == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if is_control(byte) {
                        return Err("a chunk extension holds a control character");
                    }
                }
                ChunkState::SizeLf => {
                    expect(byte, b'\n', "a chunk size line does not end")?;
                    self.state = if self.size == 0 {
                        self.line = 0;
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data(self.size)
                    };
                    self.size = 0;
                    self.digits = 0;
                }
                ChunkState::DataCr => {
                    expect(byte, b'\r', "a chunk does not end with CRLF")?;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    expect(byte, b'\n', "a chunk does not end with CRLF")?;
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart | ChunkState::Trailer => {
                    self.line += 1;
                    if self.line > MAX_TRAILERS {
                        return Err("the trailers are too long");
                    }
                    if byte != b'\r' && is_control(byte) {
                        return Err("a trailer holds a control character");
                    }
                    self.state = match (self.state, byte) {
                        (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                        (_, b'\r') => ChunkState::TrailerLf,
                        _ => ChunkState::Trailer,
                    };
                }
                ChunkState::TrailerLf => {
                    expect(byte, b'\n', "a trailer line does not end")?;
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    expect(byte, b'\n', "the chunked body does not end")?;
                    return Ok(Some(at + 1));
                }
            }
            at += 1;
        }
        Ok(None)
    }
}

/// A caller's connection on this path: its unread bytes and buffers reused request to request.
struct Caller<'s> {
    stream: &'s mut TcpStream,
    buf: BytesMut,
    headers: Vec<HeaderAt>,
    /// The request as sent to the instance.
    request: Vec<u8>,
    /// What goes back to the caller.
    out: Vec<u8>,
    /// The request being answered is a HEAD (its answers have no body).
    head_request: bool,
    /// Longest pause of a write to the caller (a caller that stops reading is closed).
    idle: Duration,
}

impl Caller<'_> {
    /// Reads more of the caller's bytes; `Ok(0)` when it closed.
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(8192);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads until `length` bytes are buffered; false when the caller closes first or takes
    /// longer than `within`.
    async fn fill(&mut self, length: usize, within: Duration) -> bool {
        if self.buf.len() >= length {
            return true;
        }
        self.buf.reserve(length - self.buf.len());
        let read = tokio::time::timeout(within, async {
            while self.buf.len() < length {
                if self.read_more().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
        matches!(read, Ok(Ok(())))
    }

    /// Writes an answer of the gateway's own (small, its body complete).
    async fn answer(&mut self, response: Response<Body>, close: bool) -> io::Result<()> {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out
            .extend_from_slice(itoa3(parts.status.as_u16()).as_slice());
        self.out.push(b' ');
        self.out
            .extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        self.out.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            put_header(&mut self.out, name.as_str().as_bytes(), value.as_bytes());
        }
        put_header(
            &mut self.out,
            b"content-length",
            body.len().to_string().as_bytes(),
        );
        if close {
            put_header(&mut self.out, b"connection", b"close");
        }
        self.out.extend_from_slice(b"\r\n");
        if !self.head_request {
            self.out.extend_from_slice(&body);
        }
        paced(self.idle, self.stream.write_all(&self.out)).await
    }

    /// Answers and closes: the caller's unsent bytes (a refused body) are read and dropped for
    /// a moment first, so that closing does not reset the connection before it reads the answer.
    async fn answer_and_close(&mut self, response: Response<Body>) -> Ended {
        if self.answer(response, true).await.is_ok() && self.stream.shutdown().await.is_ok() {
            let mut drained = 0;
            let mut scratch = [0_u8; 8192];
            let deadline = tokio::time::Instant::now() + LINGER;
            while drained < LINGER_BYTES {
                match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                    Ok(Ok(read)) if read > 0 => drained += read,
                    _ => break,
                }
            }
        }
        Ended::Closed
    }

    /// Keeps buffers grown by one large message from staying that large.
    fn trim(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEPT_BUFFER {
            self.buf = BytesMut::with_capacity(8192);
        }
        if self.out.capacity() > KEPT_BUFFER {
            self.out = Vec::with_capacity(8192);
        }
    }
}

/// How one attempt on an instance went.
enum Attempt {
    /// The instance answered: its head is in the caller's `out`, its connection holds the rest.
    Answered(ResponseHead, PlainConnection),
    /// No answer: the connection could not be made or failed before a response head.
    Failed(crate::UpstreamError),
}

impl Gateway {
    /// Serves a caller's connection: plain HTTP/1.1 requests here, anything else in hyper.
    pub(crate) async fn serve_plain(&self, stream: &mut TcpStream, peer: &Peer) -> Ended {
        let mut caller = Caller {
            stream,
            buf: BytesMut::with_capacity(8192),
            headers: Vec::new(),
            request: Vec::with_capacity(1024),
            out: Vec::with_capacity(8192),
            head_request: false,
            idle: self.settings.idle_timeout,
        };
        loop {
            caller.trim();
            let read = tokio::time::timeout(
                self.settings.header_read_timeout,
                self.read_request(&mut caller),
            )
            .await;
            let head = match read {
                Ok(Read::Head(head)) => head,
                Ok(Read::Other) => return Ended::HandOver(caller.buf.split().freeze()),
                Ok(Read::Closed) | Err(_) => return Ended::Closed,
                Ok(Read::TooLarge) => {
                    return caller
                        .answer_and_close(problem(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            &format!("request head over {} bytes", self.settings.max_header_bytes),
                        ))
                        .await;
                }
            };
            match self.relay(&mut caller, head, peer).await {
                Next::Request => {}
                Next::Close => return Ended::Closed,
                Next::CloseAfter(answer) => return caller.answer_and_close(answer).await,
            }
        }
    }

    async fn read_request(&self, caller: &mut Caller<'_>) -> Read {
        loop {
            if !caller.buf.is_empty() {
                match parse_request(&caller.buf, &mut caller.headers) {
                    Parsed::Relay(mut head, len) => {
                        head.raw = caller.buf.split_to(len).freeze();
                        return Read::Head(head);
                    }
                    Parsed::Other => return Read::Other,
                    Parsed::Partial if caller.buf.len() >= self.settings.max_header_bytes => {
                        return Read::TooLarge;
                    }
                    Parsed::Partial => {}
                }
            }
            match caller.read_more().await {
                Ok(0) | Err(_) => return Read::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Relays one request and its response.
    async fn relay(&self, caller: &mut Caller<'_>, mut head: RequestHead, peer: &Peer) -> Next {
        self.budget.request(self.budget.now_ms(self.epoch));
        caller.head_request = head.method() == b"HEAD";
        let mut request = std::mem::take(&mut caller.request);
        let outcome = self
            .route_plain(caller, &mut head, peer, &mut request)
            .await;
        // The buffers go back for the next request.
        caller.headers = std::mem::take(&mut head.headers);
        if !matches!(outcome, Next::CloseAfter(_)) {
            caller.head_request = false;
        }
        if request.capacity() <= KEPT_BUFFER {
            request.clear();
            caller.request = request;
        }
        outcome
    }

    async fn route_plain(
        &self,
        caller: &mut Caller<'_>,
        head: &mut RequestHead,
        peer: &Peer,
        request: &mut Vec<u8>,
    ) -> Next {
        let tenant = match self.tenant(&*head).await {
            Ok(tenant) => tenant,
            Err(Refused(answer)) => return self.refuse(caller, head, answer).await,
        };
        let Some((service, rewritten)) = resolve::service_of(&self.settings, &*head) else {
            let answer = problem(StatusCode::NOT_FOUND, "no service in the path");
            return self.refuse(caller, head, answer).await;
        };
        if head.content_length > self.settings.max_body_bytes {
            return Next::CloseAfter(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes", self.settings.max_body_bytes),
            ));
        }
        // A body up to the retry limit is read whole (and may be sent again); a larger one is
        // streamed to the one instance it goes to.
        let whole = head.content_length <= self.settings.max_retry_body_bytes as u64;
        let body = if whole {
            let length = head.content_length as usize;
            if !caller.fill(length, self.settings.request_timeout).await {
                return Next::Close;
            }
            Some(caller.buf.split_to(length).freeze())
        } else {
            None
        };
        let retryable = whole && head.is_retryable(self.settings.retry_post);
        let close_caller = head.close;
        let route = RouteRequest::new(&tenant, &service);
        let mut tried: Vec<String> = Vec::new();
        // A small body goes in the same write as the head.
        let inline = body
            .as_ref()
            .filter(|body| !body.is_empty() && body.len() <= INLINE_BODY);
        let empty = Bytes::new();
        loop {
            let decision = match self.router.route_avoiding(&route, &tried).await {
                Ok(decision) => decision,
                Err(err) => {
                    let answer = refusal(&err);
                    return self
                        .answer_after(caller, answer, body.is_some(), close_caller)
                        .await;
                }
            };
            let route_headers = RouteLabels::of(&decision);
            request.clear();
            write_request(request, head, rewritten.as_deref(), peer, &route_headers);
            if let Some(inline) = inline {
                request.extend_from_slice(inline);
            }
            let can_retry = retryable && tried.is_empty();
            let started = Instant::now();
            caller.out.clear();
            let attempt = tokio::time::timeout(
                self.settings.request_timeout,
                self.attempt(
                    caller,
                    decision.address(),
                    request,
                    if inline.is_some() {
                        Some(&empty)
                    } else {
                        body.as_ref()
                    },
                    head.content_length,
                    retryable,
                    head.method() == b"HEAD",
                    &route_headers,
                    close_caller,
                ),
            )
            .await;
            let latency = started.elapsed();
            match attempt {
                Ok(Attempt::Answered(response, connection)) => {
                    let status = response.status;
                    self.router.report(
                        &decision,
                        Report {
                            success: status < 500,
                            latency,
                            status_code: u32::from(status),
                        },
                    );
                    if matches!(status, 502..=504) && can_retry && self.budget.take() {
                        tried.push(decision.instance_id().to_owned());
                        continue;
                    }
                    return self
                        .relay_response(caller, &decision, response, connection, close_caller)
                        .await;
                }
                Ok(Attempt::Failed(err)) => {
                    self.router.report(&decision, Report::failure(latency));
                    if can_retry && self.budget.take() {
                        tried.push(decision.instance_id().to_owned());
                        continue;
                    }
                    tracing::debug!(%err, instance = decision.instance_id(), "gateway: forwarding failed");
                    let message = match err {
                        crate::UpstreamError::Connect(_) => {
                            format!("instance {} did not answer", decision.instance_id())
                        }
                        crate::UpstreamError::Request(_) | crate::UpstreamError::Relay(_) => {
                            format!("instance {} failed the request", decision.instance_id())
                        }
                    };
                    let answer = problem(StatusCode::BAD_GATEWAY, &message);
                    return self
                        .answer_after(caller, answer, body.is_some(), close_caller)
                        .await;
                }
                Err(_) => {
                    self.router.report(&decision, Report::failure(latency));
                    let answer = problem(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "instance {} did not answer within {} ms",
                            decision.instance_id(),
                            self.settings.request_timeout.as_millis()
                        ),
                    );
                    return self
                        .answer_after(caller, answer, body.is_some(), close_caller)
                        .await;
                }
            }
        }
    }

    /// Refuses a request before it reached an instance; its body, unread, is skipped (or the
    /// connection closed when it is large).
    async fn refuse(
        &self,
        caller: &mut Caller<'_>,
        head: &RequestHead,
        answer: Response<Body>,
    ) -> Next {
        let length = head.content_length;
        if length > self.settings.max_retry_body_bytes as u64 {
            return Next::CloseAfter(answer);
        }
        let length = length as usize;
        if !caller.fill(length, self.settings.request_timeout).await {
            return Next::Close;
        }
        caller.buf.advance(length);
        self.answer(caller, answer, head.close).await
    }

    /// Answers a request that reached no instance: on the connection when its body was read
    /// (`body_read`), else closing it (part of a streamed body may be unread or unsent).
    async fn answer_after(
        &self,
        caller: &mut Caller<'_>,
        answer: Response<Body>,
        body_read: bool,
        close: bool,
    ) -> Next {
        if body_read {
            self.answer(caller, answer, close).await
        } else {
            Next::CloseAfter(answer)
        }
    }

    async fn answer(&self, caller: &mut Caller<'_>, answer: Response<Body>, close: bool) -> Next {
        match caller.answer(answer, close).await {
            Ok(()) if !close => Next::Request,
            _ => Next::Close,
        }
    }

    /// Sends the request to `address` and reads the response head (written, rewritten, to the
    /// caller's `out`). A kept connection the instance closed meanwhile is replaced by a new one
    /// for a request that may be sent again.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        caller: &mut Caller<'_>,
        address: &str,
        request: &[u8],
        body: Option<&Bytes>,
        content_length: u64,
        retryable: bool,
        head_request: bool,
        route_headers: &RouteLabels<'_>,
        close_caller: bool,
    ) -> Attempt {
        let (mut connection, mut reused) = match self.upstream.take_plain(address) {
            Some(connection) => (connection, true),
            None => match self.upstream.connect_plain(address).await {
                Ok(connection) => (connection, false),
                Err(err) => return Attempt::Failed(err),
            },
        };
        loop {
            let sent = match body {
                Some(body) => send_whole(&mut connection, request, body).await,
                None => send_streamed(caller, &mut connection, request, content_length).await,
            };
            let outcome = match sent {
                Ok(()) => {
                    read_response_head(
                        &mut connection,
                        self.settings.max_header_bytes,
                        head_request,
                        route_headers,
                        close_caller,
                        &mut caller.out,
                    )
                    .await
                }
                Err(err) => Err((err.to_string(), true)),
            };
            match outcome {
                Ok(head) => return Attempt::Answered(head, connection),
                Err((reason, nothing_back)) => {
                    if reused && nothing_back && retryable && body.is_some() {
                        reused = false;
                        connection = match self.upstream.connect_plain(address).await {
                            Ok(connection) => connection,
                            Err(err) => return Attempt::Failed(err),
                        };
                        continue;
                    }
                    return Attempt::Failed(crate::UpstreamError::Relay(reason));
                }
            }
        }
    }

    /// Writes the response (its head is in the caller's `out`) and relays the body.
    async fn relay_response(
        &self,
        caller: &mut Caller<'_>,
        decision: &Decision,
        response: ResponseHead,
        mut connection: PlainConnection,
        close_caller: bool,
    ) -> Next {
        let idle = self.settings.idle_timeout;
        let relayed = match response.framing {
            Framing::Empty => paced(idle, caller.stream.write_all(&caller.out))
                .await
                .map(|()| true),
            Framing::Length(length) => relay_length(caller, &mut connection, length, idle).await,
            Framing::Chunked => relay_chunked(caller, &mut connection, idle).await,
            Framing::UntilClose => relay_until_close(caller, &mut connection, idle).await,
        };
        match relayed {
            Ok(complete) => {
                if complete && response.reusable && connection.buf.is_empty() {
                    self.upstream.keep_plain(decision.address(), connection);
                }
                if close_caller || response.framing == Framing::UntilClose || !complete {
                    Next::Close
                } else {
                    Next::Request
                }
            }
            Err(err) => {
                tracing::debug!(%err, instance = decision.instance_id(), "gateway: relaying a response failed");
                Next::Close
            }
        }
    }
}

/// What a read of a request head found.
enum Read {
    Head(RequestHead),
    Other,
    Closed,
    TooLarge,
}

/// What to do after a request.
enum Next {
    /// Read the next request.
    Request,
    /// Close the connection.
    Close,
    /// Answer this and close.
    CloseAfter(Response<Body>),
}

/// The request line and head for the instance: hop-by-hop headers and route headers the
/// caller sent are dropped, `X-Forwarded-For` extended, route headers added.
fn write_request(
    out: &mut Vec<u8>,
    head: &RequestHead,
    rewritten: Option<&str>,
    peer: &Peer,
    route_headers: &RouteLabels<'_>,
) {
    out.extend_from_slice(head.method());
    out.push(b' ');
    match rewritten {
        Some(target) => out.extend_from_slice(target.as_bytes()),
        None => out.extend_from_slice(head.target()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for = None;
    let connections: Vec<&[u8]> = head
        .headers()
        .filter(|(name, _)| eq(name, "connection"))
        .map(|(_, value)| value)
        .collect();
    for (name, value) in head.headers() {
        if eq(name, "x-forwarded-for") {
            forwarded_for.get_or_insert(value);
            continue;
        }
        // The length is the relay's own (written below), whatever Connection lists.
        if eq(name, "content-length")
            || is_for_this_hop(name, &connections)
            || is_route_header(name)
        {
            continue;
        }
        put_header(out, name, value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(earlier) = forwarded_for {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.forwarded_for.as_bytes());
    out.extend_from_slice(b"\r\n");
    if head.declared_length {
        put_length(out, head.content_length);
    }
    route_headers.write_to(out);
    out.extend_from_slice(b"\r\n");
}

async fn send_whole(
    connection: &mut PlainConnection,
    request: &[u8],
    body: &Bytes,
) -> io::Result<()> {
    connection.stream.write_all(request).await?;
    if !body.is_empty() {
        connection.stream.write_all(body).await?;
    }
    Ok(())
}

/// Writes the head, then copies `length` body bytes from the caller.
async fn send_streamed(
    caller: &mut Caller<'_>,
    connection: &mut PlainConnection,
    request: &[u8],
    length: u64,
) -> io::Result<()> {
    connection.stream.write_all(request).await?;
    let mut left = length;
    while left > 0 {
        if caller.buf.is_empty() && caller.read_more().await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(caller.buf.len());
        let chunk = caller.buf.split_to(take);
        connection.stream.write_all(&chunk).await?;
        left -= take as u64;
    }
    Ok(())
}

/// Reads the instance's response head (skipping informational ones). On failure, the reason
/// and whether the instance sent nothing at all.
async fn read_response_head(
    connection: &mut PlainConnection,
    max_header_bytes: usize,
    head_request: bool,
    route_headers: &RouteLabels<'_>,
    close_caller: bool,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, (String, bool)> {
    let mut received = false;
    loop {
        if !connection.buf.is_empty() {
            received = true;
            out.clear();
            match parse_response(
                &connection.buf,
                head_request,
                route_headers,
                close_caller,
                out,
            ) {
                ParsedResponse::Complete(head, len) => {
                    connection.buf.advance(len);
                    return Ok(head);
                }
                ParsedResponse::Informational(len) => {
                    connection.buf.advance(len);
                    continue;
                }
                ParsedResponse::Invalid(reason) => return Err((reason.to_owned(), false)),
                ParsedResponse::Partial if connection.buf.len() >= max_header_bytes => {
                    return Err((
                        format!("the instance's response head is over {max_header_bytes} bytes"),
                        false,
                    ));
                }
                ParsedResponse::Partial => {}
            }
        }
        match connection.read_more().await {
            Ok(0) => return Err(("the instance closed the connection".to_owned(), !received)),
            Ok(_) => {}
            Err(err) => return Err((err.to_string(), !received)),
        }
    }
}

/// Runs one read or write of a response relay, failing when it waits longer than `idle`
/// (an instance that stops sending, a caller that stops reading).
async fn paced<T>(idle: Duration, step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(idle, step)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Relays a body of `length` bytes; `Ok(false)` when the instance ended it early.
async fn relay_length(
    caller: &mut Caller<'_>,
    connection: &mut PlainConnection,
    length: u64,
    idle: Duration,
) -> io::Result<bool> {
    let take = usize::try_from(length)
        .unwrap_or(usize::MAX)
        .min(connection.buf.len());
    caller.out.extend_from_slice(&connection.buf[..take]);
    connection.buf.advance(take);
    paced(idle, caller.stream.write_all(&caller.out)).await?;
    let mut left = length - take as u64;
    while left > 0 {
        if paced(idle, connection.read_more()).await? == 0 {
            return Ok(false);
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(connection.buf.len());
        paced(idle, caller.stream.write_all(&connection.buf[..take])).await?;
        connection.buf.advance(take);
        left -= take as u64;
    }
    Ok(true)
}

/// Relays a chunked body as it is, chunk by chunk as the instance sends them.
async fn relay_chunked(
    caller: &mut Caller<'_>,
    connection: &mut PlainConnection,
    idle: Duration,
) -> io::Result<bool> {
    let mut end = ChunkedEnd::default();
    let mut first = true;
    loop {
        let found = end
            .scan(&connection.buf)
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        let take = found.unwrap_or(connection.buf.len());
        if first {
            caller.out.extend_from_slice(&connection.buf[..take]);
            paced(idle, caller.stream.write_all(&caller.out)).await?;
            first = false;
        } else if take > 0 {
            paced(idle, caller.stream.write_all(&connection.buf[..take])).await?;
        }
        connection.buf.advance(take);
        if found.is_some() {
            return Ok(true);
        }
        if paced(idle, connection.read_more()).await? == 0 {
            return Ok(false);
        }
    }
}

/// Relays a body that ends when the instance closes its connection.
async fn relay_until_close(
    caller: &mut Caller<'_>,
    connection: &mut PlainConnection,
    idle: Duration,
) -> io::Result<bool> {
    caller.out.extend_from_slice(&connection.buf);
    connection.buf.clear();
    paced(idle, caller.stream.write_all(&caller.out)).await?;
    loop {
        if paced(idle, connection.read_more()).await? == 0 {
            return Ok(true);
        }
        paced(idle, caller.stream.write_all(&connection.buf)).await?;
        connection.buf.clear();
    }
}

/// A caller's connection handed to hyper: the bytes already read come first.
pub(crate) struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl Rewind {
    pub(crate) fn new(read: Bytes, stream: TcpStream) -> Rewind {
        Rewind { read, stream }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let take = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..take]);
            self.read.advance(take);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], piece: usize) -> Result<Option<usize>, &'static str> {
        let mut end = ChunkedEnd::default();
        let mut offset = 0;
        for part in body.chunks(piece) {
            if let Some(at) = end.scan(part)? {
                return Ok(Some(offset + at));
            }
            offset += part.len();
        }
        Ok(None)
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_arrives() {
        let body = b"6\r\nfirst;\r\n6;ext=1\r\nsecond\r\n0\r\nx-checksum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for piece in [1, 2, 3, 7, body.len()] {
            assert_eq!(scan_all(body, piece), Ok(Some(end)), "pieces of {piece}");
        }
        assert_eq!(scan_all(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(scan_all(b"A\r\n0123456789\r\n", 4), Ok(None));
        assert!(scan_all(b"zz\r\n", 4).is_err());
        assert!(scan_all(b"3\r\nabcX\r\n", 4).is_err());
        assert!(scan_all(b"ffffffffffffffffff\r\n", 4).is_err());
        // A bare line feed would end the body early for a lenient reader downstream.
        assert!(scan_all(b"0\r\n\nHTTP/1.1 200 OK\r\n\r\n", 3).is_err());
        assert!(scan_all(b"1;x\nZ\r\n", 2).is_err());
        assert!(scan_all(b"0\r\nx: 1\x00\r\n\r\n", 5).is_err());
    }

    fn parse(bytes: &[u8]) -> Parsed {
        parse_request(bytes, &mut Vec::new())
    }

    #[test]
    fn plain_requests_are_relayed_and_the_rest_goes_to_hyper() {
        let Parsed::Relay(mut head, len) =
            parse(b"GET /api/items?page=2 HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: acme\r\nConnection: close\r\n\r\nrest")
        else {
            panic!("a plain request is relayed");
        };
        head.raw = Bytes::copy_from_slice(
            b"GET /api/items?page=2 HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: acme\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(len, head.raw.len());
        assert_eq!(head.path(), "/api/items");
        assert_eq!(head.query(), Some("page=2"));
        assert_eq!(head.target(), b"/api/items?page=2");
        assert_eq!(
            head.header(&http::HeaderName::from_static("x-tenant-id")),
            Some(&b"acme"[..])
        );
        assert!(head.close);
        assert!(matches!(
            parse(b"GET /api/items HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        for other in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"GET http://a/b HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert!(
                matches!(parse(other), Parsed::Other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    fn rewritten(response: &[u8]) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let ParsedResponse::Complete(head, _) = parse_response(
            response,
            false,
            &RouteLabels(["v1", "a1", "default"]),
            false,
            &mut out,
        ) else {
            panic!("a complete head");
        };
        (head, String::from_utf8_lossy(&out).to_ascii_lowercase())
    }

    #[test]
    fn the_relay_writes_the_framing_headers_itself() {
        // A header list cannot take the length away from the caller.
        let (head, text) = rewritten(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        // Codings over several headers are kept together; a length beside them is dropped.
        let (head, text) = rewritten(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
        );
        assert_eq!(head.framing, Framing::Chunked);
        assert!(
            text.contains("transfer-encoding: gzip, chunked\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
        let (head, _) = rewritten(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked ,\r\n\r\n");
        assert_eq!(
            head.framing,
            Framing::Chunked,
            "empty list elements do not count"
        );
        let (head, _) = rewritten(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.reusable, "a coding beside a length: not used again");
        let (head, text) = rewritten(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.framing, Framing::Empty);
        assert!(!text.contains("content-length"), "{text}");
        let (head, text) =
            rewritten(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");

        let raw = b"POST /api/x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 32\r\n\r\n";
        let Parsed::Relay(mut request, _) = parse(raw) else {
            panic!("a plain request");
        };
        request.raw = Bytes::copy_from_slice(raw);
        let mut out = Vec::new();
        let peer = Peer::new(std::net::IpAddr::from([10, 0, 0, 1]));
        write_request(
            &mut out,
            &request,
            None,
            &peer,
            &RouteLabels(["v1", "a1", "default"]),
        );
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(text.contains("content-length: 32\r\n"), "{text}");
        assert!(!text.contains("connection:"), "{text}");
        assert!(text.contains("x-forwarded-for: 10.0.0.1\r\n"), "{text}");
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert_eq!(content_length_of(b"42"), Some(42));
        assert_eq!(content_length_of(b" 7 "), Some(7));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"1,1",
            b"99999999999999999999",
            b"\xff",
        ] {
            assert_eq!(content_length_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn response_heads_are_rewritten_for_the_caller() {
        let route_headers = RouteLabels(["v2", "b1", "pin"]);
        let mut out = Vec::new();
        let ParsedResponse::Complete(head, _) = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Service-Version: forged\r\n\r\nhello",
            false,
            &route_headers,
            false,
            &mut out,
        ) else {
            panic!("a complete head");
        };
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.reusable);
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("x-service-version: v2\r\n"), "{text}");
        assert!(
            !text.contains("forged") && !text.contains("keep-alive"),
            "{text}"
        );

        out.clear();
        let ParsedResponse::Complete(head, _) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            &route_headers,
            true,
            &mut out,
        ) else {
            panic!("a complete head");
        };
        assert_eq!(head.framing, Framing::Chunked);
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");

        out.clear();
        let ParsedResponse::Complete(head, _) = parse_response(
            b"HTTP/1.0 200 OK\r\n\r\n",
            false,
            &route_headers,
            false,
            &mut out,
        ) else {
            panic!("a complete head");
        };
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(!head.reusable);
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 100 Continue\r\n\r\n",
                false,
                &route_headers,
                false,
                &mut out
            ),
            ParsedResponse::Informational(25)
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                &route_headers,
                false,
                &mut out
            ),
            ParsedResponse::Invalid(_)
        ));
    }
}
