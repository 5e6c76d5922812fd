//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against a hard limit before any buffer is sized
//! for it, so a hostile peer cannot make us allocate by announcing a huge
//! frame. Decoding tells "need more bytes" ([`Ok(None)`]) apart from
//! "invalid" ([`Err`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// The default hard limit on a frame's payload: control messages and stream
/// headers are small; the largest is an enrolment answer carrying two
/// certificates.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// A frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The peer announced (or we tried to send) a frame over the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The peer announced an empty frame, which no message encodes to.
    #[error("empty frame")]
    Empty,
}

impl FrameError {
    /// Whether the peer sent or asked for more than the limit allows.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// Reads the payload length from a frame header, checking it against `max`.
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Takes one whole frame's payload off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame; nothing is
/// consumed then, so the caller reads more and calls again.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let header: [u8; HEADER_LEN] = header.try_into().expect("slice has HEADER_LEN bytes");
    let len = payload_len(header, max)?;
    if buf.len() < HEADER_LEN + len {
        // Reserve only what the checked length needs, never more.
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Appends `payload` as one frame to `dst`.
pub fn encode(payload: &[u8], max: usize, dst: &mut impl BufMut) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    if payload.len() > max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max,
        });
    }
    dst.put_u32(payload.len() as u32);
    dst.put_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partial_frames_need_more_bytes() {
        let mut out = BytesMut::new();
        encode(b"hello", 64, &mut out).unwrap();
        let mut partial = BytesMut::from(&out[..6]);
        assert_eq!(decode(&mut partial, 64), Ok(None));
        assert_eq!(partial.len(), 6, "a partial frame is not consumed");
        partial.extend_from_slice(&out[6..]);
        assert_eq!(decode(&mut partial, 64).unwrap().unwrap(), &b"hello"[..]);
        assert!(partial.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let cap_before = buf.capacity();
        let err = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(err.is_too_large());
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn empty_frames_are_invalid() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf, 64), Err(FrameError::Empty));
        assert_eq!(
            encode(b"", 64, &mut BytesMut::new()),
            Err(FrameError::Empty)
        );
    }

    proptest! {
        #[test]
        fn round_trip(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8)) {
            let mut wire = BytesMut::new();
            for p in &payloads {
                encode(p, 300, &mut wire).unwrap();
            }
            for p in &payloads {
                let got = decode(&mut wire, 300).unwrap().unwrap();
                prop_assert_eq!(&got[..], &p[..]);
            }
            prop_assert!(wire.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_or_over_allocate(bytes in prop::collection::vec(any::<u8>(), 0..512), max in 1usize..1024) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = decode(&mut buf, max) {
                prop_assert!(frame.len() <= max);
            }
            // Whatever was announced, the buffer never grows past one
            // maximal frame plus its header.
            prop_assert!(buf.capacity() <= bytes.len().max(HEADER_LEN + max) + HEADER_LEN + max);
        }
    }
}
