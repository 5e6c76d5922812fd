//! The facts about the Docker Engine API that the relay and the agent
//! must agree on, written once: how an error body looks, which request
//! asks to hijack its connection, and how a daemon's TCP address reads.
//!
//! Pure functions over bytes; this module knows no HTTP library.

/// The body of an error the `docker` CLI prints as one sentence:
/// Docker's own `{"message": "..."}`.
pub fn error_body(message: &str) -> String {
    serde_json::json!({ "message": message }).to_string()
}

/// Splits a daemon address after its scheme, `HOST:PORT` (IPv6 in
/// brackets, a trailing `/` allowed), into host (brackets off) and port;
/// `None` when either is missing. The agent checks the endpoints it
/// advertises with it, the relay parses them with it.
pub fn host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.trim_end_matches('/').rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host.is_empty(), port.parse()) {
        (false, Ok(port)) => Some((host, port)),
        _ => None,
    }
}

/// Whether a request asks to hijack its connection (attach, exec,
/// `run -i`): one of its `Connection` header values' comma-separated
/// tokens is `upgrade` (in any case), or it carries an `Upgrade` header at
/// all. HTTP asks for both (RFC 9110, 7.8), but dockerd answers 101 to an
/// `Upgrade` header alone, so a request with either is treated as one
/// that upgrades: the relay then keeps both headers for the daemon, and an
/// agent's policy never lets such a call pass as a plain one.
pub fn is_upgrade<'a>(
    connection: impl IntoIterator<Item = &'a [u8]>,
    has_upgrade_header: bool,
) -> bool {
    has_upgrade_header
        || connection.into_iter().any(|value| {
            value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_body_is_dockers_message_object() {
        let body: serde_json::Value =
            serde_json::from_str(&error_body("no \"such\" node")).unwrap();
        assert_eq!(body, serde_json::json!({"message": "no \"such\" node"}));
    }

    #[test]
    fn upgrade_is_a_connection_token_in_any_case_and_position_or_an_upgrade_header() {
        assert!(is_upgrade([b"Upgrade".as_slice()], false));
        assert!(is_upgrade([b"keep-alive, UPGRADE".as_slice()], false));
        assert!(is_upgrade(
            [b"close".as_slice(), b" upgrade ".as_slice()],
            false
        ));
        assert!(!is_upgrade([b"keep-alive".as_slice()], false));
        assert!(!is_upgrade([b"upgraded".as_slice()], false));
        assert!(!is_upgrade(std::iter::empty::<&[u8]>(), false));
        assert!(
            is_upgrade(std::iter::empty::<&[u8]>(), true),
            "dockerd hijacks on an Upgrade header alone"
        );
    }

    #[test]
    fn daemon_addresses_split_into_host_and_port() {
        assert_eq!(host_port("10.0.0.5:2376"), Some(("10.0.0.5", 2376)));
        assert_eq!(host_port("[fd00::5]:2376/"), Some(("fd00::5", 2376)));
        for bad in ["host", ":2376", "[]:2376", "h:x", "h:99999"] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
    }
}
