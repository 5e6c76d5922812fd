//! Identity and tenants end to end, against real relay and agent processes
//! and the real dockerd: control-plane authentication (client
//! certificates, API keys), tenant isolation, join-token and node
//! lifecycle, certificate renewal, the agent's read-only policy, the audit
//! log, and secrets kept out of logs.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{agent_bin, docker_endpoint, AgentCmd, ApiClient, Docker, Relay, Tunnel};

/// Runs an agent that is expected to stop by itself (a refused
/// enrolment); returns its output. Killed after a minute.
fn agent_until_exit(relay: &Relay, node: &str, state: &Path, token: &str) -> Output {
    let cmd = AgentCmd::new(relay, node, &docker_endpoint(), state, Some(token));
    let mut child = Command::new(agent_bin())
        .args(cmd.args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("agent with a bad token kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Runs an agent for `node` until it is up through `relay`, then stops it.
fn enrols(relay: &Relay, node: &str, state: &Path, token: &str) {
    let mut agent = AgentCmd::new(relay, node, &docker_endpoint(), state, Some(token))
        .spawn()
        .unwrap();
    relay.wait_for_node(node).unwrap();
    agent.terminate();
}

/// A join token of `relay` for one enrolment.
fn single_use_token(relay: &Relay) -> String {
    relay
        .cli_last_line(&["token", "create", "--uses", "1"])
        .unwrap()
}

/// A relay in a temp dir, and a join token for one enrolment.
fn relay_with_single_use_token() -> (tempfile::TempDir, Relay, String) {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();
    let once = single_use_token(&relay);
    (dir, relay, once)
}

fn secure_relay(dir: &Path) -> Relay {
    Relay::start_with(&dir.join("relay"), &["--api-tls", "--api-auth", "required"]).unwrap()
}

fn docker_tls(relay: &Relay, node: &str, cert_dir: &Path) -> Command {
    let mut c = Docker::new(relay.docker_host(node)).cmd(Vec::<&str>::new());
    c.env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", cert_dir);
    c
}

fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args).output().unwrap()
}

#[test]
fn the_api_needs_credentials_and_shows_each_tenant_only_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = secure_relay(dir.path());
    let acme_token = relay
        .cli_last_line(&["token", "create", "--tenant", "acme"])
        .unwrap();
    let globex_token = relay
        .cli_last_line(&["token", "create", "--tenant", "globex"])
        .unwrap();
    let _web = AgentCmd::new(
        &relay,
        "web",
        &docker_endpoint(),
        &dir.path().join("web"),
        Some(&acme_token),
    )
    .spawn()
    .unwrap();
    let _db = AgentCmd::new(
        &relay,
        "db",
        &docker_endpoint(),
        &dir.path().join("db"),
        Some(&globex_token),
    )
    .spawn()
    .unwrap();

    let acme_certs = dir.path().join("acme-certs");
    relay.client_cert("acme", "ci", &acme_certs).unwrap();
    let key = relay
        .cli_last_line(&["api-key", "create", "--tenant", "globex", "--name", "ops"])
        .unwrap();
    let ca_only = dir.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(acme_certs.join("ca.pem"), ca_only.join("ca.pem")).unwrap();

    let acme = ApiClient::new(relay.api, &acme_certs).unwrap();
    let globex = ApiClient::new(relay.api, &ca_only)
        .unwrap()
        .with_bearer(&key);
    let anonymous = ApiClient::new(relay.api, &ca_only).unwrap();
    acme.wait_for_node("web").unwrap();
    globex.wait_for_node("db").unwrap();

    // No credentials: 401 saying how to authenticate, on every path.
    for path in ["/v1/nodes", "/nodes/web/_ping", "/nodes/db/_ping"] {
        let (status, body) = anonymous.get(path).unwrap();
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("authentication required"), "{body}");
    }
    let (status, body) = ApiClient::new(relay.api, &ca_only)
        .unwrap()
        .with_bearer("tgkey1.nope.0123456789abcdef0123")
        .get("/v1/nodes")
        .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("not known"), "{body}");

    // Each tenant lists only its own nodes.
    let (_, list) = acme.get("/v1/nodes").unwrap();
    assert!(
        list.contains("\"web\"") && !list.contains("\"db\""),
        "{list}"
    );
    let (_, list) = globex.get("/v1/nodes").unwrap();
    assert!(
        list.contains("\"db\"") && !list.contains("\"web\""),
        "{list}"
    );

    // Another tenant's node answers exactly as a node that does not exist.
    for (client, theirs) in [(&acme, "db"), (&globex, "web")] {
        for path in [
            "/nodes/{}/_ping",
            "/v1/nodes/{}",
            "/nodes/{}/v1.45/containers/json",
        ] {
            let (s1, b1) = client.get(&path.replace("{}", theirs)).unwrap();
            let (s2, b2) = client.get(&path.replace("{}", "zz")).unwrap();
            assert_eq!(s1, 404, "{path} of {theirs}: {b1}");
            assert_eq!(
                (s1, b1.replace(theirs, "<node>")),
                (s2, b2.replace("zz", "<node>")),
                "{path}"
            );
        }
    }

    // The real docker CLI over mTLS with the client certificate.
    let out = run(docker_tls(&relay, "web", &acme_certs), &["ps"]);
    assert!(
        out.status.success(),
        "docker ps with a client cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(docker_tls(&relay, "db", &acme_certs), &["ps"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ... and with the API key in the CLI's HttpHeaders.
    let config_dir = dir.path().join("docker-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.json"),
        serde_json::json!({ "HttpHeaders": { "Authorization": format!("Bearer {key}") } })
            .to_string(),
    )
    .unwrap();
    let with_key = |node: &str| {
        let mut c = docker_tls(&relay, node, &ca_only);
        c.env("DOCKER_CONFIG", &config_dir);
        c
    };
    let out = run(with_key("db"), &["ps"]);
    assert!(
        out.status.success(),
        "docker ps with an API key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(docker_tls(&relay, "db", &ca_only), &["ps"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The fleet view and the events fan-in show a tenant only its nodes,
    // though both nodes here serve the same daemon.
    let name = format!("tenants-fleet-{}", std::process::id());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let out = run(
        docker_tls(&relay, "web", &acme_certs),
        &[
            "create",
            "--network",
            "none",
            "--name",
            &name,
            "busybox",
            "true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fleet = |mut c: Command| {
        c.env("DOCKER_HOST", format!("tcp://{}/fleet", relay.api));
        c
    };
    let out = run(
        fleet(docker_tls(&relay, "web", &acme_certs)),
        &["ps", "-a", "--format", "{{.Names}}"],
    );
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(names.lines().any(|l| l == format!("web/{name}")), "{names}");
    assert!(names.lines().all(|l| l.starts_with("web/")), "{names}");
    let out = run(fleet(with_key("db")), &["info"]);
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        info.contains(" db: online") && !info.contains(" web:"),
        "{info}"
    );
    // Placement sees only the tenant's nodes: another tenant's node
    // cannot be named, and counts for nothing.
    let out = run(
        fleet(with_key("db")),
        &[
            "create",
            "--network",
            "none",
            "-e",
            "constraint:node==web",
            "busybox",
            "true",
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("Of 1 node(s)") && said.contains("constraint ruled out 1: db"),
        "{said}"
    );
    let placed = format!("{name}-placed");
    let out = run(
        fleet(with_key("db")),
        &[
            "create",
            "--network",
            "none",
            "--name",
            &placed,
            "busybox",
            "true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        fleet(with_key("db")),
        &["inspect", "--format", "{{.Node.ID}}", &placed],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "db");
    let _ = Docker::direct().ok(&["rm", "-f", &placed]);
    let (status, events) = acme
        .get(&format!("/v1/events?since={since}&until={}", since + 4))
        .unwrap();
    assert_eq!(status, 200, "{events}");
    assert!(events.contains(&format!("\"name\":\"{name}\"")), "{events}");
    assert!(events.contains("\"node\":\"web\""), "{events}");
    assert!(!events.contains("\"node\":\"db\""), "{events}");
    let _ = Docker::direct().ok(&["rm", "-f", &name]);

    // The command line lists a tenant's nodes with the docker CLI's kinds
    // of credentials, and nothing without them.
    let url = format!("https://{}", relay.api);
    let ls = |args: &[&str]| {
        Command::new(support::relay_bin())
            .args(["nodes", "ls", "--url", &url])
            .args(args)
            .env_remove("DOCKER_CERT_PATH")
            .output()
            .unwrap()
    };
    let out = ls(&["--cert-path", acme_certs.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("NODE") && table.lines().any(|l| l.starts_with("web ")),
        "{table}"
    );
    assert!(!table.lines().any(|l| l.starts_with("db ")), "{table}");
    let out = ls(&[
        "--cert-path",
        ca_only.to_str().unwrap(),
        "--api-key",
        &key,
        "-o",
        "json",
    ]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["node_id"], "db");
    let out = ls(&["--cert-path", ca_only.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A revoked API key stops working while the relay serves.
    let key_id = key.split('.').nth(1).unwrap();
    relay.cli(&["api-key", "revoke", key_id]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = globex.get("/v1/nodes").unwrap();
        if status == 401 {
            break body;
        }
        assert!(Instant::now() < deadline, "revoked key still accepted");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("revoked"), "{body}");

    // One audit line per call, naming who did what; no secret in any log.
    let log = relay.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tunnelgate::audit"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("tenant=acme")
            && l.contains("principal=cert:ci")
            && l.contains("node=web")
            && l.contains("status=200")),
        "no audit line for acme's docker ps in:\n{}",
        audit.join("\n")
    );
    assert!(audit
        .iter()
        .any(|l| l.contains(&format!("principal=api-key:{key_id}")) && l.contains("node=db")));
    assert!(audit.iter().any(|l| l.contains("status=401")));
    let secret = key.rsplit('.').next().unwrap();
    for (what, token) in [
        ("API key", secret),
        ("acme token", acme_token.rsplit('.').next().unwrap()),
    ] {
        assert!(
            !log.contains(token),
            "the {what} secret is in the relay's log"
        );
    }
    let listed = relay.cli(&["api-key", "list"]).unwrap();
    assert!(listed.contains(key_id) && listed.contains("revoked") && !listed.contains(secret));
}

#[test]
fn join_tokens_say_whether_they_expired_were_revoked_or_are_used_up() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();

    // A lifetime of zero has run out the moment it is made: no sleep.
    let expired = relay
        .cli_last_line(&["token", "create", "--ttl", "0s"])
        .unwrap();
    let revoked = relay.cli_last_line(&["token", "create"]).unwrap();
    relay
        .cli(&["token", "revoke", revoked.split('.').nth(2).unwrap()])
        .unwrap();
    let once = single_use_token(&relay);

    enrols(&relay, "first", &dir.path().join("first"), &once);

    for (token, node, why) in [
        (&expired, "late", "expired"),
        (&revoked, "unlucky", "revoked"),
        (&once, "second", "used up"),
    ] {
        let out = agent_until_exit(&relay, node, &dir.path().join(node), token);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{node} enrolled with a bad token");
        assert!(
            stderr.contains("enrolment refused") && stderr.contains(why),
            "{node}: expected a refusal saying {why:?}:\n{stderr}"
        );
        let secret = token.rsplit('.').next().unwrap();
        assert!(
            !stderr.contains(secret),
            "the agent logged the token secret"
        );
    }
    let list = relay.cli(&["token", "list"]).unwrap();
    for state in ["expired", "revoked", "used up"] {
        assert!(list.contains(state), "{state} missing in:\n{list}");
    }
}

#[test]
fn an_agent_that_lost_its_enrolment_enrols_again_with_its_single_use_token() {
    let (dir, relay, once) = relay_with_single_use_token();

    // ca.pem is a directory with something in it: the relay enrols the
    // node and spends the token's one use, and the agent cannot keep the
    // answer, as if it had crashed or its disk had filled up just then.
    let state = dir.path().join("web");
    std::fs::create_dir_all(state.join("ca.pem").join("in-the-way")).unwrap();
    let out = agent_until_exit(&relay, "web", &state, &once);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the agent ran without its certificate"
    );
    assert!(
        stderr.contains("the relay enrolled node web") && stderr.contains("start the agent again"),
        "the agent should say the node is enrolled and what to do:\n{stderr}"
    );
    assert!(relay.cli(&["token", "list"]).unwrap().contains("used up"));

    // Fixed and started again: it asks with the same key, and the used-up
    // token answers it once more.
    std::fs::remove_dir_all(state.join("ca.pem")).unwrap();
    enrols(&relay, "web", &state, &once);
    assert!(
        !state.join("enrol-key.pem").exists(),
        "the pending key outlived the enrolment"
    );

    // Another host with the same token is still refused: the token was
    // spent once, on web.
    let out = agent_until_exit(&relay, "web-2", &dir.path().join("web-2"), &once);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("used up"),
        "a second host enrolled with a spent token:\n{stderr}"
    );
}

#[test]
fn an_enrolment_the_relay_answers_after_its_idle_timeout_is_not_cut_off() {
    let (dir, relay, once) = relay_with_single_use_token();
    // The state dir's lock, held here for longer than the relay's QUIC
    // idle timeout (10 s): the relay cannot record the enrolment until it
    // is let go, as when enrolment writes queue in a storm.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(relay.state.join("state.lock"))
        .unwrap();
    lock.lock().unwrap();
    let log = dir.path().join("web.log");
    let mut web = AgentCmd::new(
        &relay,
        "web",
        &docker_endpoint(),
        &dir.path().join("web"),
        Some(&once),
    )
    .arg("--transport")
    .arg("quic")
    .spawn_logged(&log)
    .unwrap();
    std::thread::sleep(Duration::from_secs(14));
    lock.unlock().unwrap();
    relay.wait_for_node("web").unwrap();
    web.terminate();
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !agent_log.contains("enrolment interrupted"),
        "the slow answer was cut off:\n{agent_log}"
    );
    assert_eq!(
        relay.log().matches("node enrolled").count(),
        1,
        "the relay enrolled the node more than once:\n{}",
        relay.log()
    );
}

#[test]
fn an_unreadable_certificate_request_spends_no_use_of_the_token() {
    use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
    use tunnelgate_proto::message::{ControlMessage, Enroll};
    use tunnelgate_proto::token::JoinToken;
    use tunnelgate_proto::{NodeId, ProtocolVersion};
    use tunnelgate_session::tls::{client_config, Trust};

    let (dir, relay, once) = relay_with_single_use_token();
    let token: JoinToken = once.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(async {
        let tls = client_config(Trust::Fingerprint(token.ca_fingerprint), None).unwrap();
        let mux = tunnelgate_session::tcp::connect(relay.agent, "localhost", tls.into())
            .await
            .unwrap();
        let session = tunnelgate_session::Session::from_mux(mux);
        let mut control = session.open_stream().await.unwrap();
        let ask = ControlMessage::Enroll(Enroll {
            version: ProtocolVersion::CURRENT,
            token: once.clone(),
            node_id: NodeId::new("web").unwrap(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nbm9uc2Vuc2U=\n-----END CERTIFICATE REQUEST-----\n".into(),
        });
        control.write_message(&ask, DEFAULT_MAX_FRAME).await.unwrap();
        control
            .read_message::<ControlMessage>(DEFAULT_MAX_FRAME)
            .await
            .unwrap()
    });
    let ControlMessage::Refused(refused) = answer else {
        panic!("a nonsense certificate request was answered with {answer:?}");
    };
    assert!(
        refused
            .message
            .contains("cannot read the certificate request"),
        "{}",
        refused.message
    );

    // The token still has its one use: a real agent enrols with it.
    enrols(&relay, "web", &dir.path().join("web"), &once);
}

#[test]
fn a_revoked_client_certificate_is_refused_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let relay = secure_relay(dir.path());
    let token = relay.token().unwrap();
    let _agent = AgentCmd::new(
        &relay,
        "web",
        &docker_endpoint(),
        &dir.path().join("web"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    let certs = dir.path().join("certs");
    let made = relay.client_cert("default", "laptop", &certs).unwrap();
    let client = ApiClient::new(relay.api, &certs).unwrap();
    client.wait_for_node("web").unwrap();
    assert_eq!(client.get("/nodes/web/_ping").unwrap().0, 200);

    // The list shows it by serial, the serial `create` printed.
    let list = relay.cli(&["client-cert", "list"]).unwrap();
    let serial = list
        .lines()
        .find(|l| l.contains("laptop"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("laptop missing from the list:\n{list}"))
        .to_owned();
    assert!(made.contains(&serial), "{made}");
    relay.cli(&["client-cert", "revoke", &serial]).unwrap();
    let revoked = Instant::now();
    let body = loop {
        let (status, body) = client.get("/nodes/web/_ping").unwrap();
        if status == 401 {
            break body;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "a revoked client certificate still calls the API"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "revoked client certificate refused after {:?}",
        revoked.elapsed()
    );
    assert!(body.contains("revoked"), "{body}");
    let list = relay.cli(&["client-cert", "list"]).unwrap();
    assert!(list.contains("revoked"), "{list}");
}

#[test]
fn a_join_token_cannot_take_over_an_enrolled_node() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();
    let token = relay.token().unwrap();
    let mut owner = AgentCmd::new(
        &relay,
        "web",
        &docker_endpoint(),
        &dir.path().join("owner"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    relay.wait_for_node("web").unwrap();
    let owner_serial = cert_serial(&dir.path().join("owner"));

    // Another holder of a tenant token, on another host, same node id.
    let other = single_use_token(&relay);
    let out = agent_until_exit(&relay, "web", &dir.path().join("intruder"), &other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second host took over node web");
    assert!(
        stderr.contains("already enrolled")
            && stderr.contains("node revoke")
            && stderr.contains("--replace"),
        "the refusal must say how to move a node:\n{stderr}"
    );
    // The refusal cost the single-use token nothing: it still enrols a
    // node that is free.
    enrols(&relay, "free", &dir.path().join("free"), &other);
    // A token made for another node cannot enrol this one either.
    let bound = relay
        .cli_last_line(&["token", "create", "--node", "db"])
        .unwrap();
    let out = agent_until_exit(&relay, "web", &dir.path().join("bound"), &bound);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("for node db only"), "{stderr}");
    // The owner was never disturbed.
    relay.wait_for_node("web").unwrap();
    Docker::new(relay.docker_host("web")).ok(&["ps"]).unwrap();

    // Moving the node on purpose: a token made to replace it.
    owner.kill();
    let replace = relay
        .cli_last_line(&[
            "token",
            "create",
            "--node",
            "web",
            "--replace",
            "--uses",
            "1",
        ])
        .unwrap();
    let _mover = AgentCmd::new(
        &relay,
        "web",
        &docker_endpoint(),
        &dir.path().join("mover"),
        Some(&replace),
    )
    .spawn()
    .unwrap();
    let enrolled = dir.path().join("mover/node.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !enrolled.exists() {
        assert!(
            Instant::now() < deadline,
            "the replacing agent did not enrol"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(cert_serial(&dir.path().join("mover")), owner_serial);
    let moved = relay
        .wait_log("node enrolled", Duration::from_secs(10))
        .unwrap();
    assert!(moved.matches("node enrolled").count() >= 2, "{moved}");
    relay.wait_for_node("web").unwrap();
    Docker::new(relay.docker_host("web")).ok(&["ps"]).unwrap();
}

#[test]
fn a_revoked_node_is_dropped_at_once_and_cannot_come_back() {
    let tunnel = Tunnel::start("doomed").unwrap();
    let docker = tunnel.docker();
    docker.ok(&["ps"]).unwrap();

    let revoked_at = Instant::now();
    let out = tunnel
        .relay
        .cli(&["node", "revoke", "default/doomed"])
        .unwrap();
    assert!(out.contains("revoked"), "{out}");
    // Bounded wait, not a speed assertion: the figure is printed.
    let deadline = revoked_at + Duration::from_secs(10);
    loop {
        let (status, _) = support::http_get(tunnel.relay.api, "/v1/nodes/doomed").unwrap();
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "revoked node still connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("revoked node dropped after {:?}", revoked_at.elapsed());

    // The agent keeps trying; the relay keeps refusing it, saying why.
    let log = tunnel
        .relay
        .wait_log("agent certificate refused", Duration::from_secs(30))
        .unwrap();
    assert!(log.contains("closing its session"), "{log}");
    assert!(log.contains("was revoked"), "{log}");
    let (status, _) = support::http_get(tunnel.relay.api, "/v1/nodes/doomed").unwrap();
    assert_eq!(status, 404);
    let err = docker.cmd(["ps"]).output().unwrap();
    assert!(!err.status.success());
}

fn cert_serial(state: &Path) -> String {
    let pem = std::fs::read_to_string(state.join("node.pem")).unwrap();
    let cert = tunnelgate_session::tls::certs_from_pem(&pem).unwrap();
    tunnelgate_session::tls::subject(&cert[0]).unwrap().serial
}

#[test]
fn node_certificates_are_renewed_over_the_session_before_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&dir.path().join("relay"), &["--node-cert-ttl", "10s"]).unwrap();
    let token = relay.token().unwrap();
    let state = dir.path().join("agent");
    let mut agent = AgentCmd::new(&relay, "short", &docker_endpoint(), &state, Some(&token))
        .spawn()
        .unwrap();
    relay.wait_for_node("short").unwrap();
    let enrolled_at = Instant::now();
    let first = cert_serial(&state);

    let deadline = Instant::now() + Duration::from_secs(60);
    while cert_serial(&state) == first {
        assert!(
            Instant::now() < deadline,
            "the certificate was never renewed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(relay.log().contains("node certificate renewed"));

    // Past the first certificate's end, a restarted agent connects with
    // the renewed one from its state dir, without a token.
    while enrolled_at.elapsed() < Duration::from_secs(11) {
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.kill();
    let _again = AgentCmd::new(&relay, "short", &docker_endpoint(), &state, None)
        .spawn()
        .unwrap();
    relay.wait_for_node("short").unwrap();
    Docker::new(relay.docker_host("short")).ok(&["ps"]).unwrap();
}

#[test]
fn the_read_only_policy_lets_ps_through_and_refuses_run_naming_the_policy() {
    let tunnel = Tunnel::start_with("readonly", &["--policy", "read-only"]).unwrap();
    let docker = tunnel.docker();
    let ps = docker.ok(&["ps", "-a"]).unwrap();
    assert!(ps.contains("CONTAINER ID"), "{ps}");
    docker.ok(&["images"]).unwrap();

    let out = docker
        .cmd(["run", "--rm", "--network", "none", "busybox:latest", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "docker run passed a read-only policy"
    );
    assert!(
        stderr.contains("policy \"read-only\"") && stderr.contains("POST /containers/create"),
        "{stderr}"
    );
}
