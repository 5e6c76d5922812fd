//! Drives a `tunnelgate-proto` control machine over a [`Stream`]: read,
//! feed, poll, write, arm the timer; as quinn's connection driver does for
//! quinn-proto.

use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::control::{ControlError, Machine};
use tunnelgate_proto::frame;
use tunnelgate_proto::message::{ControlMessage, Message, MessageError, RefusalCode, Refused};

use crate::Stream;

/// How long one control write may wait for the peer to take it. Control
/// messages are small, so only a peer that stopped reading (or a dead
/// path with full buffers) makes a write wait this long.
pub const CONTROL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An action the owner runs on the machine between steps.
pub type Command<M> = Box<dyn FnOnce(&mut M) + Send>;

/// Why a control stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The machine ended the session (refusal, timeout, protocol error).
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The peer sent bytes that are not a control message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The stream failed.
    #[error("control stream failed: {}", crate::stream::with_causes(.0))]
    Io(#[from] std::io::Error),
    /// The peer closed the control stream.
    #[error("peer closed the control stream")]
    Closed,
    /// A write did not go out in time: the peer stopped reading.
    #[error("the peer took no control message for {0:?}; it is stuck or gone")]
    WriteTimeout(std::time::Duration),
    /// The peer closed the control stream inside a frame.
    #[error("peer closed the control stream inside a frame ({0} bytes of it arrived)")]
    Truncated(usize),
}

/// Runs `machine` over `stream` until the session ends or `cancel` fires.
///
/// `commands` lets the owner act on the machine between steps (e.g. queue a
/// node update or a drain); `on_event` receives every event. When `cancel`
/// fires, whatever the machine has queued is still written (a drain, say)
/// before this returns `Ok`.
pub async fn drive<M: Machine>(
    machine: &mut M,
    stream: &mut Stream,
    mut commands: mpsc::Receiver<Command<M>>,
    mut on_event: impl FnMut(M::Event),
    cancel: CancellationToken,
) -> Result<(), DriveError> {
    let max = frame::DEFAULT_MAX_FRAME;
    let mut inbuf = BytesMut::with_capacity(4096);
    let mut outbuf = BytesMut::new();
    let mut commands_open = true;
    loop {
        while let Some(msg) = machine.poll_transmit() {
            msg.encode_frame(max, &mut outbuf)?;
        }
        if !outbuf.is_empty() {
            let write = async {
                stream.write_all(&outbuf).await?;
                stream.flush().await
            };
            tokio::time::timeout(CONTROL_WRITE_TIMEOUT, write)
                .await
                .map_err(|_| DriveError::WriteTimeout(CONTROL_WRITE_TIMEOUT))??;
            outbuf.clear();
        }
        while let Some(event) = machine.poll_event() {
            on_event(event);
        }
        if cancel.is_cancelled() {
            return Ok(());
        }
        let deadline = machine.poll_timeout().map(tokio::time::Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Reads first: a message that has arrived counts before a
            // timer that fired at the same moment, as both do when this
            // task ran late (a starved process, a host that paused), so a
            // peer that spoke in time is never judged silent.
            biased;
            // `read_buf` is cancel-safe: bytes read are kept in `inbuf`.
            n = stream.read_buf(&mut inbuf) => {
                if n? == 0 {
                    if inbuf.is_empty() {
                        return Err(DriveError::Closed);
                    }
                    let err = DriveError::Truncated(inbuf.len());
                    refuse(stream, &err).await;
                    return Err(err);
                }
                loop {
                    let decoded = frame::decode(&mut inbuf, max)
                        .map_err(MessageError::from)
                        .and_then(|p| p.map(|p| ControlMessage::decode(&p)).transpose());
                    let msg = match decoded {
                        Ok(Some(msg)) => msg,
                        Ok(None) => break,
                        Err(e) => {
                            let err = DriveError::Message(e);
                            refuse(stream, &err).await;
                            return Err(err);
                        }
                    };
                    if let Err(e) = machine.handle_message(msg, Instant::now()) {
                        flush_queued(machine, stream).await;
                        return Err(e.into());
                    }
                }
            }
            () = sleep => {}
            cmd = commands.recv(), if commands_open => match cmd {
                Some(cmd) => cmd(machine),
                None => commands_open = false,
            },
            () = cancel.cancelled() => continue,
        }
        // Whatever woke this step, a timer that is due runs now: after
        // messages read in the same step, and even when the peer never
        // stops talking, so it cannot hold back this side's heartbeats.
        let due = machine
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .is_some_and(|d| d <= tokio::time::Instant::now());
        if due {
            if let Err(e) = machine.handle_timeout(Instant::now()) {
                flush_queued(machine, stream).await;
                return Err(e.into());
            }
        }
    }
}

/// Best effort: tells the peer that its bytes broke the protocol, and how.
async fn refuse(stream: &mut Stream, err: &DriveError) {
    let msg = ControlMessage::Refused(Refused::new(
        RefusalCode::ProtocolViolation,
        format!("protocol violation on the control stream: {err}"),
    ));
    let mut out = BytesMut::new();
    if msg.encode_frame(frame::DEFAULT_MAX_FRAME, &mut out).is_ok() {
        let write = async {
            stream.write_all(&out).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
    }
}

/// Best effort: a refusal tells the peer why before the session closes.
async fn flush_queued<M: Machine>(machine: &mut M, stream: &mut Stream) {
    let mut out = BytesMut::new();
    while let Some(msg) = machine.poll_transmit() {
        if msg
            .encode_frame(frame::DEFAULT_MAX_FRAME, &mut out)
            .is_err()
        {
            break;
        }
    }
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use tunnelgate_proto::message::HeartbeatAck;

    use super::*;

    /// Silent unless it heard from the peer by its deadline, which has
    /// already passed when the driver starts: as after a late wakeup.
    struct Watchdog {
        deadline: Option<Instant>,
        heard: bool,
        events: VecDeque<()>,
    }

    impl Machine for Watchdog {
        type Event = ();
        fn handle_message(&mut self, _: ControlMessage, _: Instant) -> Result<(), ControlError> {
            self.heard = true;
            self.events.push_back(());
            Ok(())
        }
        fn handle_timeout(&mut self, _: Instant) -> Result<(), ControlError> {
            self.deadline = None;
            match self.heard {
                true => Ok(()),
                false => Err(ControlError::PeerSilent(Duration::ZERO)),
            }
        }
        fn poll_transmit(&mut self) -> Option<ControlMessage> {
            None
        }
        fn poll_event(&mut self) -> Option<()> {
            self.events.pop_front()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.deadline
        }
    }

    #[tokio::test]
    async fn a_message_that_arrived_counts_before_a_timer_that_fired_with_it() {
        // Both are ready at the first step every time; with the branches
        // taken in random order half of these would end "silent".
        for _ in 0..32 {
            let (ours, mut theirs) = tokio::io::duplex(4096);
            let mut out = BytesMut::new();
            ControlMessage::HeartbeatAck(HeartbeatAck { seq: 1 })
                .encode_frame(frame::DEFAULT_MAX_FRAME, &mut out)
                .unwrap();
            theirs.write_all(&out).await.unwrap();
            let (recv, send) = tokio::io::split(ours);
            let mut stream = Stream::new(recv, send);
            let mut machine = Watchdog {
                deadline: Some(Instant::now() - Duration::from_secs(1)),
                heard: false,
                events: VecDeque::new(),
            };
            let cancel = CancellationToken::new();
            let (_tx, rx) = mpsc::channel(1);
            let stop = cancel.clone();
            let result = drive(&mut machine, &mut stream, rx, |()| stop.cancel(), cancel).await;
            assert!(result.is_ok(), "{result:?}");
            assert!(machine.deadline.is_none(), "the overdue timer ran too");
        }
    }
}
