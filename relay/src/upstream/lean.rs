//! A lean HTTP/1.1 exchange for the relay's own long-lived event streams
//! (the fleet view follows one per node): the request head is written by
//! hand, the response head parsed with `httparse`, and the body decoded
//! (chunked, by length, or to the stream's end) as it is read, by the
//! body itself, with no task of its own.
//!
//! Why not hyper's client: a connection of it keeps about 28 KB whatever
//! it carries (an 8 KB write buffer, an 8 KB read buffer, its dispatch
//! channel and its task). Over 10,000 idle event streams that is more
//! than the fleet view they keep current. This keeps the stream, and
//! between events nothing else.
//!
//! It is for those streams only: one GET without a body per stream, never
//! reused, never upgraded. A stream that breaks in the middle of a body
//! ends the body (logged at debug), since [`hyper::Error`] cannot be made
//! here: the event reader takes every end as a gap and lists the node
//! again. Client calls always go through hyper.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

/// Marks a request as one of the relay's own event streams, to be carried
/// by [`get`] rather than by an HTTP client connection.
#[derive(Debug, Clone, Copy)]
pub struct Watch;

/// A stream [`get`] can use.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How much room a read is given: an event line is a few hundred bytes.
/// The body reads into this much of its stack, and keeps only what is
/// left over.
const READ: usize = 2048;
/// The longest response head taken.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers taken.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size line or trailer line taken.
const MAX_LINE: usize = 4096;

/// Why [`get`] got no response head.
#[derive(Debug, thiserror::Error)]
pub enum LeanError {
    /// The stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The stream ended first.
    #[error("the stream closed before the response head")]
    Closed,
    /// What came is no HTTP/1.1 response head.
    #[error("the response head is not HTTP/1.1: {0}")]
    Parse(#[from] httparse::Error),
    /// The head did not end within [`MAX_HEAD`] bytes.
    #[error("the response head is longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    /// The head says something a response cannot.
    #[error("the response head is invalid: {0}")]
    Invalid(&'static str),
}

/// Sends the request `head` (a GET, without a body) over `io` and reads
/// the response head; its body reads from `io` as it is polled.
pub async fn get<S: Io + 'static>(
    mut io: S,
    head: &http::request::Parts,
) -> Result<Response<LeanBody>, LeanError> {
    io.write_all(&request_head(head)).await?;
    io.flush().await?;
    let mut buf = BytesMut::with_capacity(READ);
    loop {
        if let Some((len, status, headers)) = parse_head(&buf)? {
            buf.advance(len);
            // An interim answer (100 Continue) comes before the real one.
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            let decoder = Decoder::for_response(status, &headers)?;
            let mut resp = Response::new(LeanBody {
                io: SyncWrapper::new(Box::new(io)),
                buf,
                decoder,
                done: false,
            });
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            return Ok(resp);
        }
        if buf.len() >= MAX_HEAD {
            return Err(LeanError::HeadTooLong);
        }
        buf.reserve(READ);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(LeanError::Closed);
        }
    }
}

/// `GET <path> HTTP/1.1` and the request's headers.
fn request_head(head: &http::request::Parts) -> Vec<u8> {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The response head at the start of `buf`, with its length, once whole.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, StatusCode, HeaderMap)>, LeanError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(len) = parsed.parse(buf)? else {
        return Ok(None);
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(LeanError::Invalid("no valid status code"))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| LeanError::Invalid("a header name is not a token"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| LeanError::Invalid("a header value holds control bytes"))?;
        headers.append(name, value);
    }
    Ok(Some((len, status, headers)))
}

/// How the body is framed, and how far it has been read.
#[derive(Debug, PartialEq, Eq)]
enum Decoder {
    /// This many bytes are left.
    Length(u64),
    /// Until the stream ends.
    Close,
    Chunked(Chunked),
}

#[derive(Debug, PartialEq, Eq)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// This many bytes of the chunk are left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// One step of decoding what is buffered.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    More,
    End,
    Bad(&'static str),
}

impl Decoder {
    /// As RFC 9112 section 6.3 frames a response to a GET.
    fn for_response(status: StatusCode, headers: &HeaderMap) -> Result<Self, LeanError> {
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Self::Length(0));
        }
        if let Some(te) = headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            let last = te.to_str().unwrap_or_default().rsplit(',').next();
            return Ok(match last.map(str::trim) {
                Some(c) if c.eq_ignore_ascii_case("chunked") => Self::Chunked(Chunked::Size),
                _ => Self::Close,
            });
        }
        let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
        let Some(first) = lengths.next() else {
            return Ok(Self::Close);
        };
        if lengths.any(|other| other != first) {
            return Err(LeanError::Invalid(
                "Content-Length given twice, differently",
            ));
        }
        first
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Self::Length)
            .ok_or(LeanError::Invalid("Content-Length is not a number"))
    }

    /// Takes the next piece of body out of `buf`.
    fn step(&mut self, buf: &mut BytesMut) -> Step {
        loop {
            match self {
                Self::Length(0) => return Step::End,
                Self::Length(left) => return take(buf, left),
                Self::Close if buf.is_empty() => return Step::More,
                Self::Close => return Step::Data(buf.split().freeze()),
                Self::Chunked(state) => match state {
                    Chunked::Size => {
                        let Some(line) = line(buf) else {
                            return too_long(buf, "a chunk-size line is too long");
                        };
                        match chunk_size(&line) {
                            Some(0) => *state = Chunked::Trailers,
                            Some(n) => *state = Chunked::Data(n),
                            None => return Step::Bad("a chunk size is not hexadecimal"),
                        }
                    }
                    Chunked::Data(left) => {
                        let step = take(buf, left);
                        if *left == 0 {
                            *state = Chunked::DataEnd;
                        }
                        return step;
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Step::More;
                        }
                        if &buf[..2] != b"\r\n" {
                            return Step::Bad("a chunk's data is longer than its size");
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        let Some(line) = line(buf) else {
                            return too_long(buf, "a trailer line is too long");
                        };
                        if line.is_empty() {
                            *self = Self::Length(0);
                        }
                    }
                },
            }
        }
    }
}

/// Up to `left` bytes of `buf`.
fn take(buf: &mut BytesMut, left: &mut u64) -> Step {
    if buf.is_empty() {
        return Step::More;
    }
    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
    *left -= n as u64;
    Step::Data(buf.split_to(n).freeze())
}

/// The line at the start of `buf`, without its CRLF, taken out of it.
fn line(buf: &mut BytesMut) -> Option<BytesMut> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = buf.split_to(end);
    buf.advance(2);
    Some(line)
}

/// No whole line yet: wait for more, unless it is already too long.
fn too_long(buf: &BytesMut, why: &'static str) -> Step {
    match buf.len() > MAX_LINE {
        true => Step::Bad(why),
        false => Step::More,
    }
}

/// A chunk-size line's size, its extensions (`;name=value`) ignored.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|b| *b == b';').next()?;
    let digits = std::str::from_utf8(digits).ok()?.trim_matches([' ', '\t']);
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// A response body read off its stream as it is polled.
pub struct LeanBody {
    io: SyncWrapper<Box<dyn Io>>,
    buf: BytesMut,
    decoder: Decoder,
    done: bool,
}

impl std::fmt::Debug for LeanBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanBody")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl LeanBody {
    fn end(&mut self, why: Option<&str>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(why) = why {
            debug!(
                why,
                "an event stream's body ended early; its reader starts again"
            );
        }
        self.done = true;
        self.buf = BytesMut::new();
        Poll::Ready(None)
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.step(&mut this.buf) {
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::End => return this.end(None),
                Step::Bad(why) => return this.end(Some(why)),
                Step::More => {}
            }
            // Read into room on the stack, so that a body waiting for its
            // next event holds no buffer at all.
            if this.buf.is_empty() {
                this.buf = BytesMut::new();
            }
            let mut room = [0u8; READ];
            let mut read = ReadBuf::new(&mut room);
            match ready!(Pin::new(this.io.get_mut()).poll_read(cx, &mut read)) {
                Ok(()) if read.filled().is_empty() => {
                    return match this.decoder {
                        Decoder::Close => this.end(None),
                        _ => this.end(Some("the stream closed inside the body")),
                    };
                }
                Ok(()) => this.buf.extend_from_slice(read.filled()),
                Err(e) => return this.end(Some(&e.to_string())),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

/// A node's response body: through hyper's client, or [`get`]'s.
#[derive(Debug)]
pub enum NodeBody {
    Http(Incoming),
    Lean(LeanBody),
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Http(b) => Pin::new(b).poll_frame(cx),
            Self::Lean(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http(b) => b.is_end_stream(),
            Self::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http(b) => b.size_hint(),
            Self::Lean(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{duplex, DuplexStream};

    fn get_events() -> http::request::Parts {
        let mut req = http::Request::get("/events?since=12").body(()).unwrap();
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("docker"));
        req.into_parts().0
    }

    /// Answers `wire` to the request on the other end of a pipe, `step`
    /// bytes at a time, then closes; the request it read comes back.
    fn daemon(
        wire: &'static [u8],
        step: usize,
    ) -> (DuplexStream, tokio::task::JoinHandle<Vec<u8>>) {
        let (ours, mut theirs) = duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut asked = Vec::new();
            while !asked.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                theirs.read_exact(&mut byte).await.unwrap();
                asked.push(byte[0]);
            }
            for piece in wire.chunks(step) {
                // A body read to its length drops the reader first.
                if theirs.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            asked
        });
        (ours, task)
    }

    /// The status, and the body as collected, of `wire` read `step` bytes
    /// at a time.
    async fn exchange(wire: &'static [u8], step: usize) -> (StatusCode, Vec<u8>) {
        let (io, daemon) = daemon(wire, step);
        let resp = get(io, &get_events()).await.unwrap();
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        daemon.await.unwrap();
        (status, body)
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        1a;ext=1\r\n{\"Type\":\"container\",\"n\":1}\r\n\
        3 \r\n\n{}\r\n\
        0\r\nX-Trailer: yes\r\n\r\n";

    #[tokio::test]
    async fn the_request_head_is_the_callers() {
        let (io, daemon) = daemon(b"HTTP/1.1 204 No Content\r\n\r\n", 64);
        let resp = get(io, &get_events()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            daemon.await.unwrap(),
            b"GET /events?since=12 HTTP/1.1\r\nhost: docker\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_chunked_body_reads_whole_however_it_is_split() {
        let want = b"{\"Type\":\"container\",\"n\":1}\n{}".to_vec();
        for step in [1, 2, 3, 7, 1024] {
            let (status, body) = exchange(CHUNKED, step).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, want, "read {step} bytes at a time");
        }
    }

    #[tokio::test]
    async fn a_body_by_length_stops_at_its_length_and_one_by_close_at_the_end() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello and more";
        assert_eq!(exchange(by_length, 2).await.1, b"hello");
        let by_close = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(exchange(by_close, 4).await.1, b"until the end");
    }

    #[tokio::test]
    async fn an_interim_answer_is_passed_over() {
        let wire =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            exchange(wire, 5).await,
            (StatusCode::NOT_FOUND, b"{}".to_vec())
        );
    }

    #[tokio::test]
    async fn a_broken_body_ends_with_what_came_before_the_break() {
        // A chunk size that is no number, data longer than its size, a
        // stream closed inside a chunk: each ends the body there.
        for (wire, kept) in [
            (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\nabc\r\n"[..], &b"ab"[..]),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY1\r\nc\r\n0\r\n\r\n", b"ab"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", b"ab"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", b"abc"),
        ] {
            let (io, daemon) = daemon(wire, 3);
            let resp = get(io, &get_events()).await.unwrap();
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(frame) = body.frame().await {
                got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
            assert!(body.is_end_stream());
            assert_eq!(got, kept, "{}", String::from_utf8_lossy(wire));
            daemon.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_head_that_is_not_one_is_refused_saying_why() {
        let cases: [(&'static [u8], &str); 4] = [
            (b"", "closed before the response head"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP/1.1"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "given twice",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "not a number",
            ),
        ];
        for (wire, says) in cases {
            let (io, _daemon) = daemon(wire, 8);
            let e = get(io, &get_events()).await.unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() <= MAX_HEAD {
            long.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let (io, _daemon) = daemon(long.leak(), 4096);
        let e = get(io, &get_events()).await.unwrap_err();
        assert!(
            matches!(e, LeanError::HeadTooLong | LeanError::Parse(_)),
            "{e}"
        );
    }

    #[test]
    fn chunk_sizes_are_hexadecimal_with_their_extensions_ignored() {
        assert_eq!(chunk_size(b"1A"), Some(26));
        assert_eq!(chunk_size(b"ff;name=value"), Some(255));
        assert_eq!(chunk_size(b" 0 "), Some(0));
        for bad in [&b""[..], b"g", b"-1", b"1234567890abcdef0", b";x"] {
            assert_eq!(chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
