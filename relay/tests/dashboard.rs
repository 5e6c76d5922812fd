//! The dashboard in a real headless Chromium (through chromedriver),
//! against a real relay with two real agents: it lists both nodes live,
//! turns a stopped agent's row offline without a reload, filters by
//! label, shows a node's containers, makes an install command, and reads
//! on a phone. Screenshots go to `target/tmp/` as artefacts.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// chromedriver's start is awaited before the runtime does anything else.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::{docker_endpoint, which, AgentCmd, Docker, Proc, Relay};

/// chromedriver on a free loopback port.
fn chromedriver() -> (Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(which("chromedriver"))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = Proc::new(child, "chromedriver");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (proc, format!("http://{addr}"))
}

async fn browser(webdriver: &str) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": which("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(webdriver)
        .await
        .unwrap()
}

/// Waits until `js` (an expression) is true in the page; `what` says what
/// was awaited when it never is, with the page's text.
async fn wait_true(page: &Client, what: &str, js: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = page
            .execute(&format!("return !!({js});"), vec![])
            .await
            .unwrap();
        if now == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let text = page
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap();
            panic!(
                "the dashboard never showed {what}; it shows:\n{}",
                text.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js_string(page: &Client, js: &str) -> String {
    let v = page
        .execute(&format!("return {js};"), vec![])
        .await
        .unwrap();
    v.as_str().unwrap_or_default().to_owned()
}

fn artefact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn status_of(node: &str) -> String {
    format!("(document.querySelector(\"tr[data-node='{node}'] .status\") || {{}}).textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_live_and_a_nodes_containers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay")).unwrap();
    let token = relay.token().unwrap();
    let agent = |node: &str, labels: &str| {
        AgentCmd::new(
            &relay,
            node,
            &docker_endpoint(),
            &dir.path().join(node),
            Some(&token),
        )
        .arg("--label")
        .arg(labels)
        .spawn()
        .unwrap()
    };
    let _agent_a = agent("dash-a", "role=web");
    let mut agent_b = agent("dash-b", "role=db");
    relay.wait_for_node("dash-a").unwrap();
    relay.wait_for_node("dash-b").unwrap();
    let container = format!("dash-{}", std::process::id());
    Docker::new(relay.docker_host("dash-a"))
        .ok(&[
            "create",
            "--network",
            "none",
            "--name",
            &container,
            "busybox",
            "true",
        ])
        .unwrap();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Docker::direct().ok(&["rm", "-f", &self.0]);
        }
    }
    let _remove = Remove(container.clone());

    let (_driver, webdriver) = chromedriver();
    let page = browser(&webdriver).await;
    page.goto(&format!("http://{}/ui/", relay.api))
        .await
        .unwrap();
    wait_true(
        &page,
        "both nodes connected",
        &format!(
            "{} === 'connected' && {} === 'connected'",
            status_of("dash-a"),
            status_of("dash-b")
        ),
    )
    .await;
    let host = js_string(
        &page,
        "document.querySelector(\"tr[data-node='dash-a'] td[data-label='Docker']\").textContent",
    )
    .await;
    assert!(!host.is_empty() && host != "–", "no Docker version shown");

    // Filtering by a label leaves that node's row only.
    page.find(Locator::Css("#filter"))
        .await
        .unwrap()
        .send_keys("role=db")
        .await
        .unwrap();
    wait_true(
        &page,
        "only dash-b under the filter role=db",
        "document.querySelectorAll('#nodes tbody tr').length === 1 && document.querySelector(\"tr[data-node='dash-b']\")",
    )
    .await;
    page.find(Locator::Css("#filter"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    page.execute("document.querySelector('#filter').dispatchEvent(new Event('input')); window.__not_reloaded = true;", vec![])
        .await
        .unwrap();

    // A stopped agent's row turns offline live, without a reload.
    agent_b.kill();
    wait_true(
        &page,
        "dash-b offline",
        &format!("{} === 'offline'", status_of("dash-b")),
    )
    .await;
    assert_eq!(
        page.execute("return window.__not_reloaded === true;", vec![])
            .await
            .unwrap(),
        Value::Bool(true),
        "the page reloaded"
    );
    assert!(js_string(
        &page,
        "document.querySelector(\"tr[data-node='dash-b']\").className"
    )
    .await
    .contains("offline"));
    let shot = artefact("dashboard.png");
    std::fs::write(&shot, page.screenshot().await.unwrap()).unwrap();
    println!("screenshot: {}", shot.display());

    // The node page lists the container the test made, through the relay.
    page.find(Locator::Css("tr[data-node='dash-a'] a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_true(
        &page,
        &format!("container {container} on dash-a's page"),
        &format!("document.querySelector(\"#containers tr[data-container='{container}']\")"),
    )
    .await;
    let image = js_string(
        &page,
        &format!("document.querySelector(\"#containers tr[data-container='{container}'] td[data-label='Image']\").textContent"),
    )
    .await;
    assert_eq!(image, "busybox");
    std::fs::write(
        artefact("dashboard-node.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // The local caller of a loopback-open relay is its tenant's admin.
    wait_true(
        &page,
        "the caller's role shown",
        "document.querySelector('#whoami').textContent === 'default · admin'",
    )
    .await;

    // Add a node: a join token and the one-line install that uses it.
    page.find(Locator::Css("#add-node"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_true(
        &page,
        "an install command",
        "document.querySelector('#install-command').textContent.includes('install.sh')",
    )
    .await;
    let command = js_string(
        &page,
        "document.querySelector('#install-command').textContent",
    )
    .await;
    let token = command
        .split_whitespace()
        .skip_while(|w| *w != "--token")
        .nth(1)
        .unwrap();
    assert!(token.starts_with("tgjoin"), "{command}");
    assert!(relay.cli(&["token", "list"]).unwrap().contains("dashboard"));

    // On a phone: no sideways scrolling, an offline node still plain.
    page.goto(&format!("http://{}/ui/", relay.api))
        .await
        .unwrap();
    page.set_window_size(390, 844).await.unwrap();
    wait_true(
        &page,
        "dash-b offline on a phone",
        &format!("{} === 'offline'", status_of("dash-b")),
    )
    .await;
    assert_eq!(
        page.execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![]
        )
        .await
        .unwrap(),
        Value::Bool(true),
        "the page scrolls sideways on a phone"
    );
    std::fs::write(
        artefact("dashboard-phone.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // A viewer's tab: its role shown, the nodes listed, no Add a node.
    let viewer = relay
        .cli_last_line(&[
            "api-key", "create", "--tenant", "default", "--role", "viewer",
        ])
        .unwrap();
    relay.wait_for_key(&viewer).unwrap();
    page.execute(
        &format!("sessionStorage.setItem('tunnelgate-key', '{viewer}'); location.reload();"),
        vec![],
    )
    .await
    .unwrap();
    wait_true(
        &page,
        "a viewer's role shown, its nodes listed and no Add a node",
        &format!(
            "document.querySelector('#whoami').textContent === 'default · viewer' \
             && document.querySelector('#add-node').hidden && {} === 'offline'",
            status_of("dash-b")
        ),
    )
    .await;

    // A viewer scoped to `role=web`: its scope shown, dash-b not there.
    let scoped = relay
        .cli_last_line(&[
            "api-key", "create", "--tenant", "default", "--role", "viewer", "--scope", "role=web",
        ])
        .unwrap();
    relay.wait_for_key(&scoped).unwrap();
    page.execute(
        &format!("sessionStorage.setItem('tunnelgate-key', '{scoped}'); location.reload();"),
        vec![],
    )
    .await
    .unwrap();
    wait_true(
        &page,
        "a scoped viewer's scope shown and only its node listed",
        &format!(
            "document.querySelector('#whoami').textContent === 'default · viewer · nodes role=web' \
             && {} === 'connected' && !document.querySelector(\"tr[data-node='dash-b']\")",
            status_of("dash-a")
        ),
    )
    .await;
    page.close().await.unwrap();
}
