//! Arbitrary bytes from the network: the frame decoder, every message
//! decoder and the relay's control machine must never panic, and the
//! decoder never hands out a frame over the limit or grows its buffer past
//! one maximal frame.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tunnelgate_proto::control::{Machine, RelayControl};
use tunnelgate_proto::frame::{self, HEADER_LEN};
use tunnelgate_proto::message::{ControlMessage, Message, StreamHeader, StreamReply};
use tunnelgate_proto::NodeId;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::new();
    let now = Instant::now();
    let mut relay = RelayControl::new(NodeId::new("fuzz").unwrap(), "relay".into(), Duration::from_secs(5), now);
    // Feed in two pieces, as a network would.
    let (a, b) = data.split_at(data.len() / 2);
    for piece in [a, b] {
        buf.extend_from_slice(piece);
        loop {
            match frame::decode(&mut buf, MAX) {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= MAX);
                    let _ = StreamHeader::decode(&payload);
                    let _ = StreamReply::decode(&payload);
                    if let Ok(msg) = ControlMessage::decode(&payload) {
                        if relay.handle_message(msg, now).is_err() {
                            return;
                        }
                        while relay.poll_transmit().is_some() {}
                        while relay.poll_event().is_some() {}
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        assert!(buf.capacity() <= data.len() + HEADER_LEN + MAX + 64);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<tunnelgate_proto::token::JoinToken>();
    }
});
