//! Byte pipes between a stream and a socket (or any byte stream), or
//! between two streams: what is read goes into a stream as the chunks it
//! was read in, so QUIC keeps them without a second copy.
//!
//! Each direction ends on its own, as `tokio::io::copy_bidirectional`
//! does: when one side's reads end, the other side's writes are shut down
//! (a half-close) and the other direction carries on. An error in either
//! direction ends both. This module must not know what runs inside the
//! pipe.
//!
//! Tried and not kept (interleaved A/B, `benches/README.md`): handing
//! QUIC's received chunks on as they are, towards a socket (one write per
//! packet's payload: an agent's uploads cost 25 % more CPU) and towards
//! another stream (a relay's peer pipe: 7 % more CPU per GB, as quinn then
//! carries many packet-sized chunks). Reads from a stream are gathered
//! into one buffer first, a copy that costs less than either.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::stream::{StreamRecv, StreamSend};
use crate::Stream;

/// Pipes a stream and `io` into each other, reading at most `max` bytes
/// at a time; returns the bytes moved from the stream to `io` and from
/// `io` to the stream.
pub async fn stream_and_io(
    stream: Stream,
    io: impl AsyncRead + AsyncWrite + Unpin,
    max: usize,
) -> io::Result<(u64, u64)> {
    let (recv, send) = stream.into_split();
    let (io_recv, io_send) = tokio::io::split(io);
    tokio::try_join!(
        stream_to_io(recv, io_send, max),
        io_to_stream(io_recv, send, max)
    )
}

/// Pipes two streams into each other, gathering at most `max` bytes per
/// chunk; returns the bytes moved from `a` to `b` and from `b` to `a`.
pub async fn streams(a: Stream, b: Stream, max: usize) -> io::Result<(u64, u64)> {
    let (a_recv, a_send) = a.into_split();
    let (b_recv, b_send) = b.into_split();
    tokio::try_join!(
        io_to_stream(a_recv, b_send, max),
        io_to_stream(b_recv, a_send, max)
    )
}

/// The first read's size. A short call's answer fits; a bulk transfer
/// doubles it read by read up to the pipe's `max`. Starting at `max` cost
/// every short call a fresh buffer of `max` bytes, as the stream still
/// holds the last one until the peer acknowledges it.
const FIRST_READ: usize = 16 * 1024;

/// The next read's size after one of `want` bytes brought `got`: twice as
/// much when it came full, back down when it came mostly empty.
fn next_read(want: usize, got: usize, max: usize) -> usize {
    if got >= want {
        (want * 2).min(max)
    } else if got < want / 4 {
        (want / 2).max(FIRST_READ.min(max))
    } else {
        want
    }
}

async fn stream_to_io(
    from: StreamRecv,
    mut to: impl AsyncWrite + Unpin,
    max: usize,
) -> io::Result<u64> {
    let total = tokio::io::copy_buf(&mut BufReader::with_capacity(max, from), &mut to).await?;
    to.shutdown().await?;
    Ok(total)
}

async fn io_to_stream(
    mut from: impl AsyncRead + Unpin,
    mut to: StreamSend,
    max: usize,
) -> io::Result<u64> {
    let mut total = 0;
    let mut buf = bytes::BytesMut::new();
    let mut want = FIRST_READ.min(max);
    loop {
        // Reuses the allocation once the stream has let go of the last
        // chunks cut from it; a new one while it still holds them.
        buf.reserve(want);
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        want = next_read(want, n, max);
        to.write_chunk(buf.split().freeze()).await?;
    }
    to.shutdown().await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grow_while_they_come_full_and_shrink_when_they_come_mostly_empty() {
        let max = 256 * 1024;
        let mut want = FIRST_READ;
        for _ in 0..10 {
            want = next_read(want, want, max);
        }
        assert_eq!(want, max, "a bulk transfer reaches the largest read");
        want = next_read(want, 100, max);
        assert_eq!(want, max / 2);
        for _ in 0..10 {
            want = next_read(want, 100, max);
        }
        assert_eq!(
            want, FIRST_READ,
            "short answers bring it back to the first size"
        );
        assert_eq!(next_read(FIRST_READ, FIRST_READ / 2, max), FIRST_READ);
        assert_eq!(next_read(4096, 4096, 8192), 8192, "never past max");
    }
}
