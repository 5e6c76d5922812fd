//! The fleet as one Docker host that runs containers: three real dockerd
//! instances (their own sockets, data roots and daemon `--label`s), each
//! with its own agent, behind one relay, driven by the real docker CLI on
//! `DOCKER_HOST=tcp://RELAY/fleet`. Where a container landed is read from
//! each node's own daemon, never from the relay.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::netns::NodeDockerd;
use support::{AgentCmd, Docker, Proc, Relay};

/// Three nodes: `n1` (region=eu, daemon label disk=ssd), `n2` (region=eu,
/// disk=hdd), `n3` (region=us, no disk label).
struct Three {
    relay: Relay,
    daemons: Vec<(String, NodeDockerd)>,
    agents: Vec<Proc>,
    /// Each agent's label, for starting it again on its state dir.
    labels: Vec<&'static str>,
    dir: tempfile::TempDir,
}

impl Three {
    fn start(relay_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start_with(&dir.path().join("relay"), relay_args).unwrap();
        let token = relay.token().unwrap();
        let specs = [
            ("n1", "region=eu", Some("disk=ssd")),
            ("n2", "region=eu", Some("disk=hdd")),
            ("n3", "region=us", None),
        ];
        let mut daemons = Vec::new();
        let mut agents = Vec::new();
        let mut labels = Vec::new();
        for (node, label, daemon_label) in specs {
            labels.push(label);
            let extra: Vec<String> = daemon_label
                .map(|l| vec![format!("--label={l}")])
                .unwrap_or_default();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let daemon =
                NodeDockerd::start_local_with(&dir.path().join(format!("dockerd-{node}")), &extra)
                    .unwrap();
            daemon.load_busybox().unwrap();
            let agent = AgentCmd::new(
                &relay,
                node,
                &daemon.socket(),
                &dir.path().join(format!("agent-{node}")),
                Some(&token),
            )
            .arg("--label")
            .arg(label)
            .spawn()
            .unwrap();
            agents.push(agent);
            daemons.push((node.to_owned(), daemon));
        }
        for (node, _) in &daemons {
            relay.wait_for_node(node).unwrap();
        }
        Self {
            relay,
            daemons,
            agents,
            labels,
            dir,
        }
    }

    /// Starts node `i`'s agent again, on its enrolled state dir.
    fn restart_agent(&mut self, i: usize) {
        let (node, daemon) = &self.daemons[i];
        self.agents[i] = AgentCmd::new(
            &self.relay,
            node,
            &daemon.socket(),
            &self.dir.path().join(format!("agent-{node}")),
            None,
        )
        .arg("--label")
        .arg(self.labels[i])
        .spawn()
        .unwrap();
    }

    fn fleet(&self) -> Docker {
        Docker::new(format!("tcp://{}/fleet", self.relay.api))
    }

    /// Each node's container names, from its own daemon.
    fn names(&self) -> BTreeMap<String, Vec<String>> {
        self.daemons
            .iter()
            .map(|(node, d)| {
                let out = d
                    .docker()
                    .ok(&["ps", "-a", "--format", "{{.Names}}"])
                    .unwrap();
                let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
                names.sort();
                (node.clone(), names)
            })
            .collect()
    }

    /// The node whose own daemon has container `name`.
    fn node_of(&self, name: &str) -> String {
        let names = self.names();
        let holders: Vec<&String> = names
            .iter()
            .filter(|(_, n)| n.iter().any(|n| n == name))
            .map(|(node, _)| node)
            .collect();
        assert_eq!(holders.len(), 1, "{name} is on {holders:?}: {names:?}");
        holders[0].clone()
    }

    /// Whether node `i`'s own daemon has `image`.
    fn has(&self, i: usize, image: &str) -> bool {
        self.daemons[i]
            .1
            .docker()
            .output_with_stdin(&["image", "inspect", image], b"")
            .unwrap()
            .status
            .success()
    }

    fn counts(&self) -> Vec<usize> {
        self.names().values().map(Vec::len).collect()
    }

    /// Removes every container from every node, directly.
    fn clear(&self) {
        for (_, d) in &self.daemons {
            let ids = d.docker().ok(&["ps", "-aq"]).unwrap();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                d.docker().ok(&args).unwrap();
            }
        }
        // The view hears of it by the nodes' events.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.fleet().ok(&["ps", "-aq"]).unwrap().trim().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the fleet still lists containers"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `docker create` on the fleet with these arguments before the image.
fn create(fleet: &Docker, name: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["create", "--network", "none", "--name", name];
    all.extend_from_slice(args);
    all.extend_from_slice(&["busybox", "sleep", "300"]);
    fleet.output_with_stdin(&all, b"").unwrap()
}

fn created(fleet: &Docker, name: &str, args: &[&str]) {
    let out = create(fleet, name, args);
    assert!(
        out.status.success(),
        "create {name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn constraints_and_spread_place_as_swarm_did_and_an_impossible_ask_creates_nothing() {
    let three = Three::start(&[]);
    let fleet = three.fleet();

    // Spread: six containers on three empty nodes, two each.
    for i in 0..6 {
        created(&fleet, &format!("spread-{i}"), &[]);
    }
    assert_eq!(three.counts(), [2, 2, 2], "{:?}", three.names());
    three.clear();

    // Constraints on agent labels, a daemon label, the node, != and a regex.
    let cases: [(&str, &[&str], &[&str]); 6] = [
        ("on-us", &["-e", "constraint:region==us"], &["n3"]),
        ("on-ssd", &["-e", "constraint:disk==ssd"], &["n1"]),
        ("on-n2", &["-e", "constraint:node==n2"], &["n2"]),
        ("not-eu", &["-e", "constraint:region!=eu"], &["n3"]),
        (
            "by-regex",
            &["-e", "constraint:node==/n[12]/"],
            &["n1", "n2"],
        ),
        (
            "by-label",
            &["--label", "com.docker.swarm.constraints=[\"disk==hdd\"]"],
            &["n2"],
        ),
    ];
    for (name, args, allowed) in cases {
        created(&fleet, name, args);
        let at = three.node_of(name);
        assert!(allowed.contains(&at.as_str()), "{name} landed on {at}");
    }
    // A soft constraint that matches nothing falls back, and says so.
    let soft = create(&fleet, "soft", &["-e", "constraint:region==~mars"]);
    assert!(
        soft.status.success(),
        "{}",
        String::from_utf8_lossy(&soft.stderr)
    );
    three.node_of("soft");
    // The constraint travels as Swarm's label, not in the environment.
    let env = fleet
        .ok(&["inspect", "--format", "{{json .Config.Env}}", "on-us"])
        .unwrap();
    assert!(!env.contains("constraint:"), "{env}");

    // Nothing fits: the error says filter by filter, and nothing is made.
    let before = three.counts();
    let refused = create(&fleet, "nowhere", &["-e", "constraint:region==mars"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        said.contains("nothing was created")
            && said.contains("constraint ruled out 3")
            && said.contains("wanted region==mars"),
        "{said}"
    );
    assert_eq!(three.counts(), before);
    assert_eq!(
        three
            .relay
            .metric("tunnelgate_fleet_placements_total{result=\"no_node\"}"),
        1
    );
    assert!(
        three
            .relay
            .metric("tunnelgate_fleet_placements_total{result=\"placed\"}")
            >= 13
    );

    // A name is the fleet's: a second "on-us" is refused as Docker would.
    let dup = create(&fleet, "on-us", &["-e", "constraint:node==n1"]);
    let said = String::from_utf8_lossy(&dup.stderr);
    assert!(!dup.status.success());
    assert!(
        said.contains("is already in use") && said.contains("on node n3"),
        "{said}"
    );
    assert_eq!(three.counts(), before);
    three.clear();
}

#[test]
fn binpack_fills_one_node_by_memory_before_the_next() {
    let three = Three::start(&["--fleet-strategy", "binpack"]);
    let fleet = three.fleet();
    let mem: u64 = fleet
        .ok(&["info", "--format", "{{.MemTotal}}"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Each node is this machine: a third of its memory per container
    // fits three times on a node (with the rounding), never four.
    let each = format!("{}m", mem / 3 / 3 / (1 << 20) - 1);
    for i in 0..4 {
        created(&fleet, &format!("pack-{i}"), &["-m", &each]);
    }
    let mut counts = three.counts();
    counts.sort_unstable();
    assert_eq!(counts, [0, 1, 3], "{:?}", three.names());
    three.clear();
}

#[test]
fn random_uses_every_node_over_thirty_creates() {
    let three = Three::start(&["--fleet-strategy", "random"]);
    let fleet = three.fleet();
    for i in 0..30 {
        created(&fleet, &format!("rand-{i}"), &[]);
    }
    let counts = three.counts();
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 30);
    three.clear();
}

#[test]
fn affinities_dependencies_and_host_ports_decide_the_node() {
    let three = Three::start(&[]);
    let fleet = three.fleet();
    let at = |name: &str| three.node_of(name);

    // An image only one node has.
    three.daemons[1]
        .1
        .docker()
        .ok(&["tag", "busybox", "only-on-n2:1"])
        .unwrap();
    let out = fleet
        .output_with_stdin(
            &[
                "create",
                "--network",
                "none",
                "--name",
                "by-image",
                "-e",
                "affinity:image==only-on-n2:1",
                "only-on-n2:1",
                "true",
            ],
            b"",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(at("by-image"), "n2");

    // A container, and a container label.
    created(&fleet, "anchor", &["-e", "constraint:node==n3"]);
    created(&fleet, "near-anchor", &["-e", "affinity:container==anchor"]);
    assert_eq!(at("near-anchor"), "n3");
    created(
        &fleet,
        "labelled",
        &["--label", "tier=db", "-e", "constraint:node==n1"],
    );
    created(&fleet, "near-db", &["-e", "affinity:tier==db"]);
    assert_eq!(at("near-db"), "n1");
    created(&fleet, "away-from-db", &["-e", "affinity:tier!=db"]);
    assert_ne!(at("away-from-db"), "n1");

    // Dependencies pull to their container's node; two on different
    // nodes cannot both be met.
    created(&fleet, "shares-volumes", &["--volumes-from", "anchor"]);
    assert_eq!(at("shares-volumes"), "n3");
    fleet.ok(&["start", "anchor"]).unwrap();
    let out = fleet
        .output_with_stdin(
            &[
                "create",
                "--name",
                "shares-net",
                "--net",
                "container:anchor",
                "busybox",
                "true",
            ],
            b"",
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(at("shares-net"), "n3");
    let before = three.counts();
    let both = create(
        &fleet,
        "both",
        &["--volumes-from", "anchor", "--volumes-from", "labelled"],
    );
    let said = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success());
    assert!(
        said.contains("dependency ruled out 3") && said.contains("no node has both"),
        "{said}"
    );
    assert_eq!(three.counts(), before);

    // A host port is taken once per node: three fit, the fourth is refused.
    for i in 0..3 {
        let name = format!("port-{i}");
        let out = fleet
            .output_with_stdin(
                &[
                    "run",
                    "-d",
                    "--network",
                    "host",
                    "--expose",
                    "7777",
                    "--name",
                    &name,
                    "busybox",
                    "sleep",
                    "300",
                ],
                b"",
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut port_nodes: Vec<String> = (0..3).map(|i| at(&format!("port-{i}"))).collect();
    port_nodes.sort();
    assert_eq!(port_nodes, ["n1", "n2", "n3"]);
    let fourth = fleet
        .output_with_stdin(
            &[
                "run",
                "-d",
                "--network",
                "host",
                "--expose",
                "7777",
                "--name",
                "port-3",
                "busybox",
                "sleep",
                "300",
            ],
            b"",
        )
        .unwrap();
    let said = String::from_utf8_lossy(&fourth.stderr);
    assert!(!fourth.status.success());
    assert!(
        said.contains("port ruled out 3") && said.contains("host port 7777/tcp is taken"),
        "{said}"
    );
    three.clear();
}

#[test]
fn a_containers_whole_life_runs_through_the_fleet_by_bare_name() {
    let three = Three::start(&[]);
    let fleet = three.fleet();
    // The CLI scenarios that run containers, each naming its container
    // bare: run, run -i, logs -f, exec -i and -it, cp both ways, rm.
    let wanted = [
        "run echo and late output",
        "run -i stdin round trip (20 MB)",
        "50 MB of stdout",
        "logs -f streams",
        "exec, exec -i, exec -it",
        "cp 10 MB in and out",
        "16 concurrent runs",
    ];
    for (name, scenario) in support::scenarios::ALL {
        if wanted.contains(name) {
            scenario(&fleet).unwrap_or_else(|e| panic!("{name} through the fleet: {e:#}"));
        }
    }

    // A container by an id prefix, stop and start, and the view's reads.
    let id = fleet
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "life",
            "busybox",
            "sleep",
            "300",
        ])
        .unwrap()
        .trim()
        .to_owned();
    let node = three.node_of("life");
    let listed = fleet
        .ok(&["ps", "--filter", "name=life", "--format", "{{.Names}}"])
        .unwrap();
    assert_eq!(listed.trim(), format!("{node}/life"), "read-your-writes");
    // Its status line is the daemon's, not the one cached at start.
    std::thread::sleep(Duration::from_secs(2));
    let i = three.daemons.iter().position(|(n, _)| *n == node).unwrap();
    let status = |d: &Docker| {
        d.ok(&["ps", "--filter", "name=life", "--format", "{{.Status}}"])
            .unwrap()
            .trim()
            .to_owned()
    };
    let same = (0..5).any(|_| {
        let (a, b) = (status(&fleet), status(&three.daemons[i].1.docker()));
        a == b || {
            std::thread::sleep(Duration::from_millis(300));
            false
        }
    });
    assert!(same, "fleet says {:?}", status(&fleet));
    fleet.ok(&["stop", "-t", "0", &id[..8]]).unwrap();
    let listed = fleet
        .ok(&[
            "ps",
            "-a",
            "--filter",
            "status=exited",
            "--format",
            "{{.Names}}",
        ])
        .unwrap();
    assert!(listed.contains("/life"), "{listed}");
    fleet.ok(&["start", "life"]).unwrap();
    let inspected = fleet
        .ok(&["inspect", "--format", "{{.State.Running}}", "life"])
        .unwrap();
    assert_eq!(inspected.trim(), "true");
    fleet.ok(&["rm", "-f", "life"]).unwrap();
    assert!(three
        .names()
        .values()
        .all(|n| !n.contains(&"life".to_owned())));
    let gone = fleet
        .output_with_stdin(&["container", "inspect", "life"], b"")
        .unwrap();
    let said = String::from_utf8_lossy(&gone.stderr);
    assert!(said.contains("No such container: life"), "{said}");

    // A container started on a node directly shows in the fleet's ps by
    // the node's events alone: nothing asks the node again. (How fast is
    // measured in benches/fleet-create.sh, not timed here; the bound is
    // only so the test ends.)
    let direct = &three.daemons[1].1;
    let listings_before = listings_of(&three.relay.log(), "n2");
    assert!(listings_before.0 >= 1, "the audit names no listing of n2");
    direct
        .docker()
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "made-on-n2",
            "busybox",
            "sleep",
            "300",
        ])
        .unwrap();
    let started = Instant::now();
    loop {
        let names = fleet.ok(&["ps", "--format", "{{.Names}}"]).unwrap();
        if names.contains("n2/made-on-n2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never seen: {names}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its event stream stayed open throughout: a stream that ended would
    // have had its audit line written and the node listed again.
    assert_eq!(
        listings_of(&three.relay.log(), "n2"),
        listings_before,
        "n2's events stream ended or n2 was listed again"
    );
    three.clear();
}

/// The audit lines in `log` of the fleet view's own `/info` and `/events`
/// calls to `node`: one of each per listing, the events line written when
/// its stream ends.
fn listings_of(log: &str, node: &str) -> (usize, usize) {
    let count = |path: &str| {
        log.lines()
            .filter(|l| l.contains("principal=relay:fleet-view"))
            .filter(|l| l.contains(&format!("node={node} ")))
            .filter(|l| l.contains(&format!("path={path} ")))
            .count()
    };
    (count("/info"), count("/events"))
}

/// Debian's `docker-registry` on a loopback port (dockerd pulls from
/// 127.0.0.0/8 over plain HTTP), stopped when dropped.
struct Registry {
    proc: Proc,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let proc = Proc::new(child, "registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// Pushes the suite's busybox as `<registry>/tools/bb:<tag>`.
    fn push(&self, tag: &str) -> String {
        let image = format!("{}/tools/bb:{tag}", self.addr);
        let local = Docker::direct();
        local.ok(&["tag", "busybox", &image]).unwrap();
        local.ok(&["push", &image]).unwrap();
        local.ok(&["rmi", &image]).unwrap();
        image
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

#[test]
fn pull_reaches_every_node_and_a_run_pulls_on_the_node_it_chose() {
    let three = Three::start(&[]);
    let registry = Registry::start();
    let fleet = three.fleet();
    let has = |i: usize, image: &str| three.has(i, image);

    let everywhere = registry.push("1");
    let out = fleet.ok(&["pull", &everywhere]).unwrap();
    for node in ["n1", "n2", "n3"] {
        assert!(out.contains(&format!("{node}: pulled")), "{out}");
    }
    assert!((0..3).all(|i| has(i, &everywhere)), "{out}");

    // tag and rmi reach every node that has the image.
    fleet.ok(&["tag", &everywhere, "retagged:1"]).unwrap();
    assert!((0..3).all(|i| has(i, "retagged:1")));
    let out = fleet.ok(&["rmi", "retagged:1"]).unwrap();
    assert!(out.contains("Untagged: retagged:1"), "{out}");
    assert!((0..3).all(|i| !has(i, "retagged:1")));
    let gone = fleet
        .output_with_stdin(&["rmi", "retagged:1"], b"")
        .unwrap();
    assert!(String::from_utf8_lossy(&gone.stderr).contains("No such image: retagged:1"));

    // The node the constraint names lacks the image: the relay pulls it
    // there, and only there, before the create.
    let one = registry.push("2");
    let out = fleet
        .ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-e",
            "constraint:node==n2",
            &one,
            "echo",
            "ran-on-n2",
        ])
        .unwrap();
    assert_eq!(out.trim(), "ran-on-n2");
    assert!(has(1, &one) && !has(0, &one) && !has(2, &one));

    // inspect says which node, as Swarm's did.
    created(&fleet, "where", &["-e", "constraint:node==n3"]);
    let node = fleet
        .ok(&["inspect", "--format", "{{.Node.ID}}", "where"])
        .unwrap();
    assert_eq!(node.trim(), "n3");
    three.clear();
}

#[test]
fn images_are_built_committed_saved_loaded_and_imported_where_the_fleet_says() {
    let three = Three::start(&[]);
    let fleet = three.fleet();
    let has = |i: usize, image: &str| three.has(i, image);
    let on = |image: &str| -> Vec<usize> { (0..3).filter(|i| has(*i, image)).collect() };
    // `docker images` on the fleet, as `node/repo:tag`, from the view.
    let listed = || -> Vec<String> {
        let out = fleet
            .ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .unwrap();
        out.lines().map(str::to_owned).collect()
    };
    let work = tempfile::tempdir().unwrap();

    // build: placed by the constraint given as a build arg, which the
    // node's builder never sees.
    let context = work.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM busybox\nRUN echo built > /built\n",
    )
    .unwrap();
    let out = fleet
        .output_with_stdin(
            &[
                "build",
                "--network",
                "none",
                "--build-arg",
                "constraint:node==n3",
                "-t",
                "made:1",
                context.to_str().unwrap(),
            ],
            b"",
        )
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("not consumed"), "{said}");
    assert_eq!(on("made:1"), [2], "{said}");
    let images = listed();
    assert!(images.contains(&"n3/made:1".to_owned()), "{images:?}");
    assert!(!images.contains(&"n1/made:1".to_owned()), "{images:?}");
    for node in ["n1", "n2", "n3"] {
        assert!(
            images.contains(&format!("{node}/busybox:latest")),
            "{images:?}"
        );
    }
    let nowhere = fleet
        .output_with_stdin(
            &[
                "build",
                "--build-arg",
                "constraint:node==n9",
                "-t",
                "no:1",
                context.to_str().unwrap(),
            ],
            b"",
        )
        .unwrap();
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        !nowhere.status.success() && said.contains("constraint"),
        "{said}"
    );

    // commit: on the container's node, and in the next `docker images`.
    fleet
        .ok(&[
            "run",
            "--network",
            "none",
            "--name",
            "to-commit",
            "-e",
            "constraint:node==n2",
            "busybox",
            "sh",
            "-c",
            "echo kept > /kept",
        ])
        .unwrap();
    fleet.ok(&["commit", "to-commit", "snap:1"]).unwrap();
    assert_eq!(on("snap:1"), [1]);
    assert!(listed().contains(&"n2/snap:1".to_owned()));
    let kept = fleet
        .ok(&["run", "--rm", "--network", "none", "snap:1", "cat", "/kept"])
        .unwrap();
    assert_eq!(kept.trim(), "kept");

    // save from the node that has it; load onto every node.
    let archive = work.path().join("made.tar");
    fleet
        .ok(&["save", "-o", archive.to_str().unwrap(), "made:1"])
        .unwrap();
    assert!(std::fs::metadata(&archive).unwrap().len() > 1024);
    let missing = fleet
        .output_with_stdin(
            &[
                "save",
                "-o",
                work.path().join("no.tar").to_str().unwrap(),
                "nosuch:1",
            ],
            b"",
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such image: nosuch:1"));
    let out = fleet
        .ok(&["load", "-i", archive.to_str().unwrap()])
        .unwrap();
    for node in ["n1", "n2", "n3"] {
        assert!(
            out.contains(&format!("{node}: Loaded image: made:1")),
            "{out}"
        );
    }
    assert_eq!(on("made:1"), [0, 1, 2]);

    // import: a file system archive, made into an image on every node.
    let rootfs = work.path().join("rootfs.tar");
    fleet
        .ok(&["export", "-o", rootfs.to_str().unwrap(), "to-commit"])
        .unwrap();
    let out = fleet
        .ok(&["import", rootfs.to_str().unwrap(), "imported:1"])
        .unwrap();
    assert!(out.contains("imported on 3 of 3 nodes"), "{out}");
    assert_eq!(on("imported:1"), [0, 1, 2]);
    three.clear();
}

#[test]
fn a_container_of_a_failed_node_is_rescheduled_and_its_stale_copy_removed() {
    let mut three = Three::start(&["--fleet-reschedule-grace", "2s"]);
    let fleet = three.fleet();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = fleet
        .ok(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            "phoenix",
            "-e",
            "reschedule:on-node-failure",
            "-e",
            "constraint:region==eu",
            "busybox",
            "sleep",
            "600",
        ])
        .unwrap();
    assert!(!out.trim().is_empty());
    // One that does not ask to be rescheduled stays where it was.
    created(&fleet, "stays", &["-e", "constraint:node==n1"]);
    let first = three.node_of("phoenix");
    let (lost, other) = match first.as_str() {
        "n1" => (0, 1),
        _ => (1, 0),
    };
    three.agents[lost].kill();
    let running_on = |three: &Three, i: usize| {
        three.daemons[i]
            .1
            .docker()
            .ok(&["ps", "--filter", "name=^phoenix$", "--format", "{{.Names}}"])
            .unwrap()
            .trim()
            == "phoenix"
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !running_on(&three, other) {
        assert!(
            Instant::now() < deadline,
            "phoenix never ran on the other eu node: {:?}",
            three.names()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its region constraint held: never on n3.
    assert!(!three.names()["n3"].contains(&"phoenix".to_owned()));
    // The fleet answers for the live copy by its bare name.
    let node = fleet
        .ok(&["inspect", "--format", "{{.Node.ID}}", "phoenix"])
        .unwrap();
    assert_eq!(node.trim(), three.daemons[other].0);
    let log = three
        .relay
        .wait_log("container rescheduled", Duration::from_secs(5))
        .unwrap();
    assert!(log.contains("container rescheduled"));

    // The old node back: its stale copy goes, the other container stays.
    three.restart_agent(lost);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let names = three.names();
        let on_lost = &names[&three.daemons[lost].0];
        if !on_lost.contains(&"phoenix".to_owned()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stale copy stayed: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(three.node_of("stays"), "n1");
    assert!(running_on(&three, other));

    // `docker events` on the fleet says both steps, after the fact too.
    // The stale copy is gone from its daemon a moment before the relay
    // hears the removal answered and says so: asked again until then.
    let (lost_id, other_id) = (&three.daemons[lost].0, &three.daemons[other].0);
    let said = |events: &str, action: &str, node: &str, other_key: &str, other_node: &str| {
        events.lines().any(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            let a = &e["Actor"]["Attributes"];
            e["Action"] == action
                && a["name"] == "phoenix"
                && a["node"] == node
                && a[other_key] == other_node
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = fleet
            .ok(&[
                "events",
                "--since",
                &since.to_string(),
                "--until",
                "0s",
                "--filter",
                "type=container",
                "--format",
                "{{json .}}",
            ])
            .unwrap();
        if said(&events, "reschedule_cleanup", lost_id, "moved_to", other_id) {
            break events;
        }
        assert!(Instant::now() < deadline, "no cleanup said: {events}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        said(&events, "reschedule", other_id, "from_node", lost_id),
        "{events}"
    );
    assert!(!events.contains("reschedule stays"), "{events}");
    three.clear();
}

#[test]
fn docker_compose_brings_a_constrained_project_up_and_down_through_the_fleet() {
    let three = Three::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        r#"version: "2.4"
services:
  web:
    image: busybox
    command: sh -c "echo web-up; sleep 300"
    network_mode: none
    environment:
      - "constraint:region==us"
  worker:
    image: busybox
    command: sh -c "echo worker-up; sleep 300"
    network_mode: none
    labels:
      com.docker.swarm.constraints: '["disk==ssd"]'
"#,
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let out = std::process::Command::new("docker-compose")
            .args(["-p", "fleetproj"])
            .args(args)
            .current_dir(dir.path())
            .env("DOCKER_HOST", format!("tcp://{}/fleet", three.relay.api))
            .output()
            .expect("docker-compose (Debian package docker-compose)");
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    compose(&["up", "-d"]);
    assert_eq!(three.node_of("fleetproj_web_1"), "n3");
    assert_eq!(three.node_of("fleetproj_worker_1"), "n1");
    let ps = compose(&["ps"]);
    assert!(
        ps.contains("fleetproj_web_1") && ps.contains("fleetproj_worker_1"),
        "{ps}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = compose(&["logs", "--no-color"]);
        if logs.contains("web-up") && logs.contains("worker-up") {
            break;
        }
        assert!(Instant::now() < deadline, "{logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    compose(&["down", "-t", "0"]);
    assert!(
        three.counts().iter().all(|c| *c == 0),
        "{:?}",
        three.names()
    );
}

#[test]
fn volumes_and_networks_list_as_node_name_and_a_volume_is_made_where_its_constraint_says() {
    let three = Three::start(&[]);
    let fleet = three.fleet();
    fleet
        .ok(&[
            "volume",
            "create",
            "--label",
            "com.docker.swarm.constraints=[\"node==n2\"]",
            "fleetvol",
        ])
        .unwrap();
    let on = |i: usize| {
        three.daemons[i]
            .1
            .docker()
            .ok(&["volume", "ls", "-q"])
            .unwrap()
            .lines()
            .any(|l| l == "fleetvol")
    };
    assert!(on(1) && !on(0) && !on(2));
    let listed = fleet
        .ok(&["volume", "ls", "--format", "{{.Name}}"])
        .unwrap();
    assert!(listed.lines().any(|l| l == "n2/fleetvol"), "{listed}");
    let nets = fleet
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .unwrap();
    for node in ["n1", "n2", "n3"] {
        assert!(nets.lines().any(|l| l == format!("{node}/none")), "{nets}");
    }
    let refused = fleet
        .output_with_stdin(
            &[
                "volume",
                "create",
                "--label",
                "com.docker.swarm.constraints=[\"node==n9\"]",
                "nowhere",
            ],
            b"",
        )
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("constraint ruled out 3"));
    fleet.ok(&["volume", "rm", "n2/fleetvol"]).unwrap();
    assert!(!on(1));
}
