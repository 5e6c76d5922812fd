//! The tunnelgate agent: runs on a Docker host, dials out to relays, and
//! serves the relays' streams into the host's Docker daemon.
//!
//! [`run`] keeps sessions up for as long as it is asked to: one per slot,
//! `--relay-sessions` of them in a cluster, each on the relay [`relays`]
//! picks for it. A slot enrols with a join token on first contact
//! ([`identity`]), connects with the node certificate after that, says
//! hello with the daemon's facts, heartbeats, serves each stream
//! ([`serve`]), moves make-before-break when its relay drains or the
//! membership picks another, and reconnects after any loss with
//! exponential backoff and jitter, forever.
//!
//! It must not reach anything but its configured Docker endpoint: the
//! relay chooses what to ask, never where the agent connects to Docker.

pub mod config;
pub mod daemon_tls;
pub mod docker;
pub mod errand;
pub mod error;
pub mod identity;
pub mod policy;
pub mod relays;
mod serve;
pub mod status;
pub mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use tunnelgate_proto::control::{AgentControl, AgentEvent};
use tunnelgate_proto::message::{DockerFacts, Hello};
use tunnelgate_proto::{ProtocolVersion, RelayId};
use tunnelgate_session::{driver, Session, Transport};

pub use config::AgentConfig;
pub use error::AgentError;

use config::TransportChoice;
use identity::NodeIdentity;
use relays::{Relays, Target};

/// This agent's release, reported to the relay.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// After a session lasted this long, the next reconnect starts from the
/// shortest backoff again.
const STABLE_SESSION: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A slot the membership moves to another relay waits a random moment
/// within the relay's spread, and at least this, so a fleet rebalancing
/// after a relay joins or dies does not arrive at once.
const MOVE_SPREAD: Duration = Duration::from_secs(2);

/// How a session ended without error.
#[derive(Debug)]
enum SessionEnd {
    Cancelled,
    /// The relay drained the session; reconnect at this moment.
    Drained(Instant),
    /// The membership picked another relay for the slot before its dial
    /// completed.
    Reassigned,
}

/// Runs the agent until `cancel` fires or a fatal error.
pub async fn run(config: AgentConfig, cancel: CancellationToken) -> Result<(), AgentError> {
    let config = Arc::new(config);
    let relays = Arc::new(Relays::new(
        config.node_id.clone(),
        config.relays.clone(),
        config.relay_sessions,
    ));
    let stop = cancel.child_token();
    let wanted = !config.direct_endpoints.is_empty() || config.daemon_tls.is_some();
    if wanted && !config.policy.is_full() {
        warn!(policy = %config.policy.name, "not advertising --direct-endpoint: calls straight to the daemon would bypass the policy, so they all go through this agent");
    }
    if let Some(dir) = config.daemon_tls.clone() {
        tokio::spawn(daemon_tls::keep_renewed(config.clone(), dir, stop.clone()));
    }
    let board = Arc::new(status::Board::new(
        config.status_file.clone(),
        config.node_id.as_str(),
        &config.docker.to_string(),
    ));
    tokio::spawn(board.clone().keep_fresh(stop.clone()));
    tokio::spawn(retry_passed_over(relays.clone(), stop.clone()));
    let mut slots = JoinSet::new();
    // Slot 0 alone first: it enrols if need be, and its welcome brings
    // the membership the other slots choose from.
    slots.spawn(run_slot(
        config.clone(),
        relays.clone(),
        board.clone(),
        0,
        stop.clone(),
    ));
    let mut welcomed = relays.welcomed_once();
    let mut others_started = false;
    loop {
        tokio::select! {
            ended = slots.join_next() => {
                let result = match ended {
                    None => return Ok(()),
                    Some(Ok(result)) => result,
                    Some(Err(e)) => Err(AgentError::session("a session task failed", e)),
                };
                if let Err(e) = result {
                    stop.cancel();
                    while slots.join_next().await.is_some() {}
                    return Err(e);
                }
                if stop.is_cancelled() && slots.is_empty() {
                    return Ok(());
                }
            }
            Ok(()) = welcomed.changed(), if !others_started => {
                if !*welcomed.borrow_and_update() {
                    continue;
                }
                others_started = true;
                for slot in 1..relays.slots() {
                    slots.spawn(run_slot(config.clone(), relays.clone(), board.clone(), slot, stop.clone()));
                }
            }
        }
    }
}

/// Chooses again each time a relay passed over (out of reach, or busy)
/// is due back. Without it, slots that all hold sessions (two on one
/// relay, the other passed over when they dialled) never looked again,
/// and the agent stayed on one relay for good.
async fn retry_passed_over(relays: Arc<Relays>, stop: CancellationToken) {
    let mut changes = relays.subscribe();
    loop {
        let due = relays.next_return();
        tokio::select! {
            () = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => relays.refresh(),
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Keeps slot `slot`'s session up until `cancel` or a fatal error.
async fn run_slot(
    config: Arc<AgentConfig>,
    relays: Arc<Relays>,
    board: Arc<status::Board>,
    slot: usize,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let mut attempt: u32 = 0;
    let mut changes = relays.subscribe();
    loop {
        let target = loop {
            if let Some(t) = relays.target(slot) {
                break t;
            }
            // Nothing to hold now (fewer live relays than slots): wait for
            // news, and look again now and then, as relays passed over
            // for being out of reach are tried again after a while.
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => relays.refresh(),
                () = cancel.cancelled() => return Ok(()),
            }
        };
        let started = Instant::now();
        let span = info_span!("session", node_id = %config.node_id, relay = %target.addr, slot);
        let target_relay = target.relay_id.clone();
        let end = connect_once(&config, &relays, &board, slot, target, &cancel)
            .instrument(span)
            .await;
        relays.lost(slot);
        board.disconnected(slot);
        if cancel.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() >= STABLE_SESSION {
            attempt = 0;
        }
        let delay = match end {
            Ok(SessionEnd::Cancelled) => return Ok(()),
            Ok(SessionEnd::Reassigned) => Duration::ZERO,
            Ok(SessionEnd::Drained(at)) => {
                let delay = at
                    .saturating_duration_since(Instant::now())
                    .max(jitter(BACKOFF_MIN * 2));
                info!(slot, reconnect_in = ?delay, "relay is draining; reconnecting");
                attempt = 0;
                delay
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(AgentError::Busy { message, hint }) => {
                // Pass the busy relay over until it asked to be tried
                // again; the slot's target moves to the next relay (the one
                // it named), tried at once, or, with none, after the wait.
                let retry_after = Duration::from_millis(hint.retry_after_ms);
                let busy = hint.relay_id.clone();
                relays.busy(hint);
                let elsewhere = relays
                    .target(slot)
                    .is_some_and(|t| t.relay_id.as_ref() != Some(&busy));
                let delay = match elsewhere {
                    true => jitter(BACKOFF_MIN),
                    false => jitter(retry_after.max(BACKOFF_MIN)),
                };
                info!(slot, relay = %busy, retry_in = ?delay, elsewhere, reason = %message, "relay busy");
                delay
            }
            Err(AgentError::RelayRestarted) => {
                // Recognised at once, not after missed heartbeats; the
                // shortest backoff, jittered, still spreads a fleet.
                let delay = jitter(BACKOFF_MIN);
                attempt = 0;
                info!(slot, retry_in = ?delay, "the relay restarted (its stateless reset was recognised); reconnecting at once");
                delay
            }
            Err(e) => {
                if let (true, Some(id)) = (e.is_unreachable(), &target_relay) {
                    relays.unreachable(id);
                }
                let delay = jitter(backoff(attempt));
                attempt = attempt.saturating_add(1);
                warn!(slot, error = %e, attempt, retry_in = ?delay, "relay session lost; reconnecting");
                delay
            }
        };
        // A new target (the membership dropped a dead relay) ends the wait.
        changes.borrow_and_update();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = changes.changed() => {}
            () = cancel.cancelled() => return Ok(()),
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX)
}

/// Spreads reconnects of many agents after a relay restart: a delay in
/// `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Resolves with the first answer `check` gives, asking again at every
/// change of the membership or of what the slots hold.
async fn when<T>(relays: &Relays, check: impl Fn(&Relays) -> Option<T>) -> T {
    let mut changes = relays.subscribe();
    loop {
        if let Some(answer) = check(relays) {
            return answer;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves once the relay welcomed `slot`'s session and the membership
/// gives the slot another relay: (the one it holds, the one to go to).
async fn reassigned_from_held(relays: &Relays, slot: usize) -> (RelayId, Target) {
    when(relays, |r| {
        let held = r.holding().get(slot).cloned().flatten()?;
        let t = r.target(slot)?;
        t.relay_id
            .as_ref()
            .is_some_and(|id| *id != held)
            .then_some((held, t))
    })
    .await
}

/// Resolves once the membership gives `slot` a relay other than `held`.
async fn reassigned(relays: &Relays, slot: usize, held: Option<RelayId>) -> Target {
    when(relays, |r| {
        let t = r.target(slot)?;
        (t.relay_id.is_some() && t.relay_id != held).then_some(t)
    })
    .await
}

/// Leaves the old session open this long after its last call ended, for a
/// call the relay routed to it just before it switched.
const RETIRE_QUIET: Duration = Duration::from_secs(2);

/// One session being served, as the run loop holds it.
struct Running {
    session: Session,
    stop: CancellationToken,
    streams: TaskTracker,
    /// When the relay asks this agent to move: the moment to move at.
    drain: watch::Receiver<Option<Instant>>,
    task: JoinHandle<Result<SessionEnd, AgentError>>,
}

impl Running {
    /// Serves `session` on a task of its own; the receiver fires once the
    /// relay has welcomed it.
    fn start(
        config: &Arc<AgentConfig>,
        place: Place,
        session: Session,
        cancel: &CancellationToken,
    ) -> (Self, oneshot::Receiver<()>) {
        let stop = cancel.child_token();
        let streams = TaskTracker::new();
        let (drain_tx, drain) = watch::channel(None);
        let (welcomed_tx, welcomed_rx) = oneshot::channel();
        let task = tokio::spawn(
            run_session(
                config.clone(),
                session.clone(),
                SessionLinks {
                    stop: stop.clone(),
                    streams: streams.clone(),
                    drain: drain_tx,
                    welcomed: welcomed_tx,
                    place,
                },
                cancel.clone(),
            )
            .in_current_span(),
        );
        (
            Self {
                session,
                stop,
                streams,
                drain,
                task,
            },
            welcomed_rx,
        )
    }

    /// Make-before-break: lets the calls in flight on this session finish,
    /// then closes it.
    fn retire(self) {
        tokio::spawn(
            async move {
                self.streams.close();
                loop {
                    self.streams.wait().await;
                    tokio::time::sleep(RETIRE_QUIET).await;
                    if self.streams.is_empty() {
                        break;
                    }
                }
                self.stop.cancel();
                self.session.close("moved to a new session");
                info!(transport = %self.session.transport(), "previous session closed after its calls finished");
            }
            .in_current_span(),
        );
    }
}

/// Where a session is: which slot, dialled at which target.
#[derive(Clone)]
struct Place {
    relays: Arc<Relays>,
    /// Where `tunnelgate-agent status` learns of the session.
    status: Arc<status::Board>,
    slot: usize,
    target: Target,
}

async fn connect_once(
    config: &Arc<AgentConfig>,
    relays: &Arc<Relays>,
    board: &Arc<status::Board>,
    slot: usize,
    target: Target,
    cancel: &CancellationToken,
) -> Result<SessionEnd, AgentError> {
    let identity = match NodeIdentity::load(&config.state_dir)? {
        Some(id) => id,
        None => identity::enrol(config, &target.addr).await?,
    };
    identity.check_node(&config.node_id)?;
    let creds = identity.credentials()?;
    let (session, why) = tokio::select! {
        dialled = transport::dial(config, &target.addr, &creds) => dialled?,
        // A relay that died may take a handshake timeout to fail; the
        // membership dropping it is news enough.
        _ = reassigned(relays, slot, target.relay_id.clone()), if target.relay_id.is_some() => {
            return Ok(SessionEnd::Reassigned)
        }
    };
    info!(transport = %session.transport(), reason = %why, "transport chosen");
    let place = |target: Target| Place {
        relays: relays.clone(),
        status: board.clone(),
        slot,
        target,
    };
    let (mut current, _) = Running::start(config, place(target.clone()), session, cancel);
    let mut current_target = target;
    loop {
        let probe_quic = current.session.transport() == Transport::Tcp
            && config.transport == TransportChoice::Auto;
        let addr = current_target.addr.clone();
        let upgrade = async {
            if !probe_quic {
                return std::future::pending().await;
            }
            loop {
                tokio::time::sleep(config.quic_probe_interval).await;
                match transport::dial_quic(config, &addr, &creds).await {
                    Ok(s) => return s,
                    Err(e) => debug!(error = %e, "QUIC still unavailable; staying on TLS/TCP"),
                }
            }
        };
        let drained = current.drain.clone();
        let moved = async {
            let next = reassigned_from_held(relays, slot).await;
            // A rebalance waits a random moment within the window the
            // relay asked for (at least MOVE_SPREAD); a relay that is
            // draining has spread its agents already.
            if drained.borrow().is_none() {
                let window = relays.spread().max(MOVE_SPREAD);
                tokio::time::sleep(window.mul_f64(rand::random::<f64>())).await;
            }
            next
        };
        tokio::select! {
            end = &mut current.task => {
                let end = end.unwrap_or_else(|e| Err(AgentError::session("the session task failed", e)));
                if matches!(end, Ok(SessionEnd::Cancelled)) {
                    current.session.close("agent shutting down");
                }
                return end;
            }
            quic = upgrade => {
                info!("QUIC answers again; opening a QUIC session before leaving TLS/TCP");
                if switch_to(&mut current, config, place(current_target.clone()), quic, cancel).await {
                    info!("moved to QUIC; the TLS/TCP session closes once its calls finish");
                }
            }
            () = move_time(current.drain.clone()) => {
                // Where the membership says to go; outside a cluster the
                // same address, where another relay may answer.
                let next = relays.target(slot).unwrap_or_else(|| current_target.clone());
                info!(to = %next.addr, "relay asks this agent to move; connecting anew before leaving");
                match transport::dial(config, &next.addr, &creds).await {
                    Ok((session, _)) => {
                        if switch_to(&mut current, config, place(next.clone()), session, cancel).await {
                            info!(to = %next.addr, "moved to a new session; the drained one closes once its calls finish");
                            current_target = next;
                        }
                    }
                    Err(e) => {
                        info!(error = %e, "no new session yet; the drained one serves its calls until the relay closes it");
                        tokio::time::sleep(jitter(BACKOFF_MIN * 4)).await;
                    }
                }
            }
            (held, next) = moved => {
                if relays.target(slot).as_ref() != Some(&next) {
                    continue;
                }
                info!(from = %held, to = %next.addr, "the cluster's membership picks another relay for this session; moving before leaving");
                match transport::dial(config, &next.addr, &creds).await {
                    Ok((session, _)) => {
                        if switch_to(&mut current, config, place(next.clone()), session, cancel).await {
                            info!(to = %next.addr, "moved; the previous session closes once its calls finish");
                            current_target = next;
                        }
                    }
                    Err(e) => {
                        info!(error = %e, to = %next.addr, "cannot reach the relay the membership picks; staying");
                        tokio::time::sleep(jitter(BACKOFF_MIN * 4)).await;
                    }
                }
            }
        }
    }
}

/// Resolves at the moment the relay's drain says to move (never, until
/// the relay drains this session).
async fn move_time(mut drain: watch::Receiver<Option<Instant>>) {
    let at = loop {
        if let Some(at) = *drain.borrow_and_update() {
            break at;
        }
        if drain.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    tokio::time::sleep_until(at.into()).await;
}

/// Make-before-break: starts `next`, and once the relay has welcomed it
/// retires `current` in its favour. Returns whether it switched.
async fn switch_to(
    current: &mut Running,
    config: &Arc<AgentConfig>,
    place: Place,
    next: Session,
    cancel: &CancellationToken,
) -> bool {
    let (mut next, welcomed) = Running::start(config, place, next, cancel);
    tokio::select! {
        Ok(()) = welcomed => {
            std::mem::replace(current, next).retire();
            true
        }
        end = &mut next.task => {
            debug!(?end, "the new session ended before the relay welcomed it; keeping the old one");
            false
        }
    }
}

/// What ties a session's task to the run loop.
struct SessionLinks {
    /// Ends the session (its calls in flight go on).
    stop: CancellationToken,
    /// The calls in flight.
    streams: TaskTracker,
    /// Set when the relay asks the agent to move: the moment to move at.
    drain: watch::Sender<Option<Instant>>,
    /// Fires once the relay welcomes the session.
    welcomed: oneshot::Sender<()>,
    /// Whose session it is, told of the relay's welcome and membership.
    place: Place,
}

async fn run_session(
    config: Arc<AgentConfig>,
    session: Session,
    links: SessionLinks,
    cancel: CancellationToken,
) -> Result<SessionEnd, AgentError> {
    let SessionLinks {
        stop: session_done,
        streams,
        drain,
        welcomed,
        place,
    } = links;
    let mut control = session
        .open_stream()
        .await
        .map_err(|e| AgentError::session("opening the control stream", e))?;
    let facts = config.docker.probe().await;
    report_daemon(&config.docker, None, &facts);
    place.status.daemon(&facts);
    let hello = Hello {
        version: ProtocolVersion::CURRENT,
        agent_version: VERSION.to_owned(),
        node_id: config.node_id.clone(),
        hostname: config.hostname.clone(),
        docker: facts.clone(),
        labels: config.labels.clone(),
        direct_endpoints: daemon_tls::advertised(&config),
        policy: config.policy.name.clone(),
    };
    let mut machine = AgentControl::new(hello, Instant::now());
    let (tx, rx) = mpsc::channel(8);
    let reprobe = Arc::new(Notify::new());
    let mut welcomed = Some(welcomed);

    tokio::spawn(
        serve::accept_streams(
            session.clone(),
            config.clone(),
            reprobe.clone(),
            streams,
            session_done.clone(),
        )
        .in_current_span(),
    );
    tokio::spawn(
        watch_daemon(
            config.clone(),
            place.status.clone(),
            facts,
            tx.clone(),
            reprobe,
            session_done.clone(),
        )
        .in_current_span(),
    );
    // The key waiting for its renewed certificate.
    let mut renewing: Option<String> = None;

    let transport = session.transport();
    let mut drained = None;
    let result = driver::drive(
        &mut machine,
        &mut control,
        rx,
        |event| match event {
            AgentEvent::Welcomed(w) => {
                info!(relay_id = %w.relay_id, %transport, remote = %session.remote_addr(),
                      members = w.members.len(), "connected to relay");
                place.status.connected(place.slot, w.relay_id.as_str(), &place.target.addr, transport.as_str());
                place.relays.welcomed(place.slot, &place.target, &w.relay_id, w.members);
                if let Some(tx) = welcomed.take() {
                    let _ = tx.send(());
                }
            }
            AgentEvent::Rtt(rtt) => debug!(?rtt, "heartbeat"),
            AgentEvent::Members(members, spread) => {
                debug!(members = members.len(), ?spread, "the cluster's membership changed");
                place.relays.members(members, spread);
            }
            AgentEvent::Drain(d) => {
                info!(reason = %d.reason, grace_ms = d.grace_ms, spread_ms = d.spread_ms, "relay asks this agent to move");
                // Keep serving (and heartbeating) until the run loop has a
                // new session or the relay closes this one: ending the
                // control stream now would cut the calls in flight.
                // A random moment within the relay's spread, so a fleet
                // drained at once does not arrive at once.
                let at = Instant::now() + Duration::from_millis(d.spread_ms).mul_f64(rand::random::<f64>());
                place.relays.members(d.members, Duration::ZERO);
                drained = Some(at);
                drain.send_replace(Some(at));
            }
            AgentEvent::RenewDue => match identity::renewal_request() {
                Ok((key_pem, csr_pem)) => {
                    info!("node certificate due for renewal; asking the relay");
                    renewing = Some(key_pem);
                    let cmd: driver::Command<AgentControl> = Box::new(move |m| m.renew_cert(csr_pem));
                    let _ = tx.try_send(cmd);
                }
                Err(e) => warn!(error = %e, "cannot make a key for renewal; will try again"),
            },
            AgentEvent::CertRenewed(cert_pem) => match renewing.take() {
                Some(key_pem) => match NodeIdentity::store(&config.state_dir, &cert_pem, &key_pem) {
                    Ok(()) => info!("node certificate renewed and stored"),
                    Err(e) => tracing::error!(error = %e, "cannot store the renewed node certificate; the current one stays in use until it expires"),
                },
                None => debug!("a certificate arrived that this agent did not ask for; ignored"),
            },
        },
        session_done.clone(),
    )
    .await;
    session_done.cancel();
    if cancel.is_cancelled() {
        return Ok(SessionEnd::Cancelled);
    }
    if let Some(at) = drained {
        return Ok(SessionEnd::Drained(at));
    }
    match result {
        Ok(()) => Err(AgentError::SessionEnded),
        // A refusal may be cured on the relay's side (an upgrade, a
        // restored node record), so the agent keeps trying, loudly.
        Err(driver::DriveError::Control(tunnelgate_proto::control::ControlError::Refused(r))) => {
            let refused = AgentError::from_refusal(r, AgentError::Refused);
            if let AgentError::Refused(reason) = &refused {
                tracing::error!(%reason, "the relay refused this agent's session");
            }
            Err(refused)
        }
        // A restarted relay that recognises the connection as one its
        // predecessor held answers with a stateless reset: say so, rather
        // than the bare "connection lost".
        Err(_) if session.end_reason().is_some_and(|r| r.is_stateless_reset()) => {
            Err(AgentError::RelayRestarted)
        }
        Err(e) => Err(AgentError::session("control stream", e)),
    }
}

/// Re-probes the daemon periodically, and at once when a stream could not
/// reach it, and tells the relay when reachability changes.
async fn watch_daemon(
    config: Arc<AgentConfig>,
    board: Arc<status::Board>,
    mut last: DockerFacts,
    control: mpsc::Sender<driver::Command<AgentControl>>,
    reprobe: Arc<Notify>,
    done: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.daemon_probe_interval) => {}
            () = reprobe.notified() => {}
            () = done.cancelled() => return,
        }
        let facts = config.docker.probe().await;
        if facts.reachable != last.reachable || facts.version != last.version {
            report_daemon(&config.docker, Some(&last), &facts);
            board.daemon(&facts);
            let update = facts.clone();
            let cmd: driver::Command<AgentControl> = Box::new(move |m| m.update_node(update));
            if control.send(cmd).await.is_err() {
                return;
            }
            last = facts;
        }
    }
}

fn report_daemon(
    endpoint: &docker::DockerEndpoint,
    before: Option<&DockerFacts>,
    now: &DockerFacts,
) {
    match (before.map(|b| b.reachable), now.reachable) {
        (_, false) => warn!(
            %endpoint, error = now.error.as_deref().unwrap_or(""),
            "Docker daemon unreachable; calls to this node fail with 502 until it is back; check that dockerd runs and --docker points at it"
        ),
        (Some(false), true) => {
            info!(%endpoint, version = now.version.as_deref().unwrap_or(""), "Docker daemon is back")
        }
        (_, true) => {
            info!(%endpoint, version = now.version.as_deref().unwrap_or(""), "Docker daemon reachable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_jitter_stays_within_half() {
        assert_eq!(backoff(0), BACKOFF_MIN);
        assert_eq!(backoff(1), BACKOFF_MIN * 2);
        assert_eq!(backoff(40), BACKOFF_MAX);
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slots_that_all_hold_sessions_look_again_when_a_passed_over_relay_is_due() {
        use tunnelgate_proto::NodeId;
        let node = NodeId::new("web-1").unwrap();
        let relays = Arc::new(Relays::new(node.clone(), vec!["lb:7443".into()], 2));
        let members = crate::relays::tests::three_members();
        let top = tunnelgate_proto::rendezvous::choose(node.as_str(), &members, 3);
        let seed = relays.target(0).unwrap();
        relays.welcomed(0, &seed, &top[0], members.clone());
        // The other two out of reach: slot 1 dials the only one left, the
        // relay slot 0 holds, and both hold sessions there.
        relays.unreachable(&top[1]);
        relays.unreachable(&top[2]);
        let only = relays.target(0).unwrap();
        relays.welcomed(1, &only, &top[0], vec![]);
        assert_eq!(relays.target(1), None, "nothing else to go to yet");

        let stop = CancellationToken::new();
        tokio::spawn(retry_passed_over(relays.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(11)).await;
        let back = relays.target(1).and_then(|t| t.relay_id);
        assert_eq!(
            back.as_ref(),
            Some(&top[1]),
            "slot 1 should move to the relay due back, not stay beside slot 0"
        );
        stop.cancel();
    }
}
