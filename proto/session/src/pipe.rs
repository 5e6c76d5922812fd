//! The byte pipe between a stream and a socket (or any byte stream): what
//! the socket sends goes into the stream as the chunks it was read in, so
//! QUIC keeps them without a second copy.
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
//! into one buffer first.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

async fn stream_to_io(
    mut from: StreamRecv,
    mut to: impl AsyncWrite + Unpin,
    max: usize,
) -> io::Result<u64> {
    let mut total = 0;
    let mut buf = vec![0u8; max];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        to.write_all(&buf[..n]).await?;
    }
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
    loop {
        // Reuses the allocation once the stream has let go of the last
        // chunks cut from it; a new one while it still holds them.
        buf.reserve(max);
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        to.write_chunk(buf.split().freeze()).await?;
    }
    to.shutdown().await?;
    Ok(total)
}
