//! The facts about the Docker Engine API that the relay and the agent
//! must agree on, written once: how an error body looks, which request
//! asks to hijack its connection, how a daemon's TCP address reads, and
//! where a path's API version ends.
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

/// Splits a leading API version off a Docker path as the daemon's router
/// reads one (`/v` then digits and dots): `/v1.41/containers/json` is
/// (`/v1.41`, `/containers/json`); a path without one is (``, path).
pub fn split_version(path: &str) -> (&str, &str) {
    let Some(after) = path.strip_prefix("/v") else {
        return ("", path);
    };
    let end = after.find('/').unwrap_or(after.len());
    let version = &after[..end];
    match !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') {
        true => path.split_at(end + 2),
        false => ("", path),
    }
}

/// `text` framed as a Docker stream of `content_type` frames what it
/// says to its reader, so that a client prints it as the stream's last
/// words: a stderr frame of a multiplexed stream (`logs`, `attach`
/// without a TTY), a line of a raw one (with a TTY), a JSON message with
/// an `error` of a JSON stream (`events`, `pull`). `None` for any other
/// body (an archive, a whole JSON document), which text would corrupt.
pub fn stream_notice(content_type: Option<&str>, text: &str) -> Option<Vec<u8>> {
    let kind = content_type?.split(';').next()?.trim();
    match kind {
        "application/vnd.docker.multiplexed-stream" => {
            let line = format!("{text}\n");
            let mut frame = vec![2, 0, 0, 0];
            frame.extend_from_slice(&u32::try_from(line.len()).ok()?.to_be_bytes());
            frame.extend_from_slice(line.as_bytes());
            Some(frame)
        }
        "application/vnd.docker.raw-stream" => Some(format!("\r\n{text}\r\n").into_bytes()),
        "application/json" | "application/x-json-stream" => {
            let message = serde_json::json!({"error": text, "errorDetail": {"message": text}});
            Some(format!("{message}\n").into_bytes())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_framed_as_its_stream_frames_text() {
        let muxed =
            stream_notice(Some("application/vnd.docker.multiplexed-stream"), "bye").unwrap();
        assert_eq!(muxed, [2, 0, 0, 0, 0, 0, 0, 4, b'b', b'y', b'e', b'\n']);
        let raw = stream_notice(Some("application/vnd.docker.raw-stream"), "bye").unwrap();
        assert_eq!(raw, b"\r\nbye\r\n");
        let json = stream_notice(Some("application/json; charset=utf-8"), "bye").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["errorDetail"]["message"], "bye");
        assert_eq!(stream_notice(Some("application/x-tar"), "bye"), None);
        assert_eq!(stream_notice(None, "bye"), None);
    }

    #[test]
    fn a_version_prefix_is_split_off_as_the_daemon_reads_it_and_nothing_else() {
        assert_eq!(
            split_version("/v1.41/containers/json"),
            ("/v1.41", "/containers/json")
        );
        assert_eq!(
            split_version("/v1/containers/json"),
            ("/v1", "/containers/json")
        );
        assert_eq!(split_version("/_ping"), ("", "/_ping"));
        assert_eq!(split_version("/v1.41"), ("/v1.41", ""));
        assert_eq!(split_version("/volumes"), ("", "/volumes"));
        assert_eq!(split_version("/version"), ("", "/version"));
    }

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
