//! QUIC endpoints tuned for bulk Docker traffic and cheap idle sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

/// A session that has sent nothing for this long sends a keep-alive, so a
/// NAT keeps its UDP binding (commonly for 30 s). The control stream's
/// heartbeats normally keep sessions busier than this: a shorter
/// keep-alive fired between heartbeats and doubled the relay's CPU per
/// idle agent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(25);
/// Keep-alive on a connection that waits for one answer (an enrolment, an
/// errand): more often than [`IDLE_TIMEOUT`], so an answer that takes
/// longer (enrolment writes queued in a storm) is not cut off by the
/// silence before it. Such connections last seconds, so this costs
/// nothing at idle.
pub const ANSWER_KEEP_ALIVE: Duration = Duration::from_secs(2);
/// The shortest idle timeout: a session silent this long is dead, and the
/// calls it carried fail. The relay's is [`idle_timeout`] of its heartbeat
/// interval.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);
/// The agent's own idle timeout is long, so the relay's (the lower of the
/// two applies) decides.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The relay's idle timeout for a heartbeat interval: two heartbeats
/// missed, and never under [`IDLE_TIMEOUT`].
pub fn idle_timeout(heartbeat: Duration) -> Duration {
    IDLE_TIMEOUT.max(heartbeat.saturating_mul(2))
}

/// Streams the relay may have open to an agent at once (calls in flight);
/// the relay's per-node limit may not exceed it. quinn sets up state for
/// each of them when a connection starts: at 1,024 that cost each agent
/// ~150 KB and a load tester's thousands of agents most of their
/// handshake CPU in hash-table growth.
pub const MAX_STREAMS_TO_AGENT: u32 = 256;
/// Streams an agent may open to the relay: only its control stream, with
/// room to spare. quinn sets up state for every stream the peer may open
/// when the connection starts, so this bounds the relay's memory per
/// idle agent.
const MAX_STREAMS_FROM_AGENT: u32 = 4;

/// UDP socket buffer size asked of the kernel (it caps the request at
/// `net.core.rmem_max`/`wmem_max`). The 208 KiB default drops packets as
/// soon as a bulk transfer outruns the reader for a moment, and QUIC reads
/// every drop as congestion.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Largest UDP payload MTU discovery may climb to, and the largest an
/// endpoint may be set to accept. On an Ethernet or internet path discovery settles
/// at the path's MTU (about 1,452 bytes) after a handful of lost probes;
/// on loopback, between relays on one host or on a jumbo-frame network it
/// climbs here, and a bulk transfer then costs the relay about 40 % less
/// CPU per GB, since quinn's cost is mostly per packet. Not higher: quinn
/// hands the kernel up to ten packets per GSO send, and one send is one
/// UDP datagram of at most 64 KiB, so the kernel refuses every full batch
/// of larger packets and quinn reads that as loss (8,952 bytes measured
/// 0.03 Gbit/s). quinn sizes each endpoint's receive buffer as this × 64
/// GRO segments × 32 per batch: 13 MB of address space, touched only as
/// far as datagrams fill it. Relay-to-relay links and agents use it; the
/// relay's agent listener uses [`ETHERNET_MTU`] unless told otherwise,
/// since every discovery step is a padded probe the receiver parses byte
/// by byte, and on a path that carries them all the way up that doubled
/// the relay's CPU per agent handshake.
pub const MTU_CEILING: u16 = 6_500;

/// quinn's own discovery ceiling: a 1,500-byte Ethernet frame less IPv6
/// and UDP headers.
pub const ETHERNET_MTU: u16 = 1_452;

/// The smallest UDP payload every QUIC path must carry.
pub const INITIAL_MTU: u16 = 1_200;

fn transport(peer_may_open: u32, idle_timeout: Duration, mtu: u16) -> Arc<TransportConfig> {
    Arc::new(transport_config(peer_may_open, idle_timeout, mtu))
}

fn transport_config(
    peer_may_open: u32,
    idle_timeout: Duration,
    mtu_ceiling: u16,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    // Windows sized for a high bandwidth-delay product on one stream; they
    // cap memory use per session but are not allocated up front, so idle
    // sessions stay cheap.
    t.stream_receive_window(VarInt::from_u32(8 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(32 * 1024 * 1024));
    t.send_window(32 * 1024 * 1024);
    t.max_concurrent_bidi_streams(VarInt::from_u32(peer_may_open));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(mtu_ceiling);
    t.mtu_discovery_config(Some(mtu));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(idle_timeout.min(Duration::from_secs(3600)))
            .expect("an hour fits in a varint"),
    ));
    t
}

/// A QUIC endpoint listening on `addr` with the relay's TLS configuration,
/// ending sessions silent for `idle_timeout`. Its stateless resets are
/// keyed by `reset_key`: an endpoint started again with the same key
/// answers packets of the connections its predecessor held with resets
/// their peers recognise, so they reconnect at once instead of waiting
/// for a timeout. `mtu_ceiling` bounds path-MTU discovery both ways: the
/// relay's own, and the agent's, which stops at the largest payload the
/// endpoint says it accepts.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    idle_timeout: Duration,
    reset_key: &[u8; 32],
    mtu_ceiling: u16,
) -> std::io::Result<quinn::Endpoint> {
    let transport = transport(MAX_STREAMS_FROM_AGENT, idle_timeout, mtu_ceiling);
    listening_endpoint(addr, tls, transport, reset_key, mtu_ceiling)
}

/// Calls one relay may have in flight at once towards one peer relay.
pub const MAX_PEER_STREAMS: u32 = 4096;
/// How long a relay-to-relay connection outlives its last packet. Short:
/// a relay that died must be noticed in seconds, so calls go to the
/// node's other holder; a relay has few peers, so the keep-alive within
/// it costs nothing that matters.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a kept relay-to-relay connection proves it is alive.
const PEER_KEEP_ALIVE: Duration = Duration::from_millis(750);

fn peer_transport(peer_may_open: u32) -> Arc<TransportConfig> {
    let mut t = transport_config(peer_may_open, PEER_IDLE_TIMEOUT, MTU_CEILING);
    t.keep_alive_interval(Some(PEER_KEEP_ALIVE));
    Arc::new(t)
}

/// The relay-to-relay endpoint on `addr`: it accepts peers with the
/// server configuration `tls` and dials them with [`peer_client_config`];
/// resets are keyed as for [`server_endpoint`].
pub fn peer_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    reset_key: &[u8; 32],
) -> std::io::Result<quinn::Endpoint> {
    let transport = peer_transport(MAX_PEER_STREAMS);
    listening_endpoint(addr, tls, transport, reset_key, MTU_CEILING)
}

/// A QUIC client configuration for dialling a peer relay.
pub fn peer_client_config(tls: rustls::ClientConfig) -> std::io::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    // The dialled peer never opens streams towards the dialling relay.
    config.transport_config(peer_transport(0));
    Ok(config)
}

fn listening_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    transport: Arc<TransportConfig>,
    reset_key: &[u8; 32],
    max_udp_payload: u16,
) -> std::io::Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    // quinn only answers with a reset for a connection id that passes its
    // generator's check, and the default generator's key is new at every
    // start: key it from the reset key too (one way, so connection ids on
    // the wire tell nothing of the reset key).
    let tag = ring::hmac::sign(&key, b"tunnelgate connection ids");
    let cid_key = u64::from_le_bytes(
        tag.as_ref()[..8]
            .try_into()
            .expect("an HMAC-SHA256 tag has 32 bytes"),
    );
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(key));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // A reset is always smaller than the packet that caused it, so it
    // cannot amplify; quinn's default of one reset per 20 ms for the whole
    // endpoint would take minutes to tell a fleet that a crashed relay is
    // back.
    endpoint_config.min_reset_interval(Duration::ZERO);
    endpoint(addr, Some(config), endpoint_config, max_udp_payload)
}

/// A QUIC client configuration from the agent's TLS configuration.
pub fn client_config(tls: rustls::ClientConfig) -> std::io::Result<quinn::ClientConfig> {
    agent_client_config(tls, KEEP_ALIVE)
}

/// [`client_config`] for a connection that waits for one answer: it keeps
/// itself alive every [`ANSWER_KEEP_ALIVE`] while it waits.
pub fn answer_client_config(tls: rustls::ClientConfig) -> std::io::Result<quinn::ClientConfig> {
    agent_client_config(tls, ANSWER_KEEP_ALIVE)
}

fn agent_client_config(
    tls: rustls::ClientConfig,
    keep_alive: Duration,
) -> std::io::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = transport_config(MAX_STREAMS_TO_AGENT, CLIENT_IDLE_TIMEOUT, MTU_CEILING);
    t.keep_alive_interval(Some(keep_alive));
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    endpoint(bind, None, quinn::EndpointConfig::default(), MTU_CEILING)
}

/// An endpoint on a UDP socket with enlarged kernel buffers.
fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    mut config: quinn::EndpointConfig,
    max_udp_payload: u16,
) -> std::io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        // Accept v4-mapped peers too, as std's bind would on most systems.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a kernel that refuses larger buffers still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    tokio::runtime::Handle::try_current()
        .map_err(|_| std::io::Error::other("QUIC needs a tokio runtime"))?;
    let runtime = Arc::new(crate::udp::ShortReadRuntime);
    config
        .max_udp_payload_size(max_udp_payload.clamp(INITIAL_MTU, MTU_CEILING))
        .expect("a payload between 1,200 and 6,500 bytes is valid");
    quinn::Endpoint::new(config, server, socket.into(), runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_idle_timeout_outlasts_two_heartbeats() {
        assert_eq!(idle_timeout(Duration::from_secs(1)), IDLE_TIMEOUT);
        assert_eq!(
            idle_timeout(Duration::from_secs(5)),
            Duration::from_secs(10)
        );
        assert_eq!(
            idle_timeout(Duration::from_secs(30)),
            Duration::from_secs(60)
        );
        assert!(
            KEEP_ALIVE > Duration::from_secs(5),
            "heartbeats, not keep-alives, keep sessions busy"
        );
        assert!(
            ANSWER_KEEP_ALIVE < IDLE_TIMEOUT / 2,
            "a connection waiting for an answer outlives the relay's idle timeout"
        );
    }
}
