//! The docker CLI scenario list. Each scenario drives the real `docker`
//! CLI at whatever `DOCKER_HOST` it is given, so the same list runs
//! directly against dockerd (the baseline) and through the relay.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use super::{pseudo_random, Docker, LineReader};

/// A named scenario.
pub type Scenario = (&'static str, fn(&Docker) -> Result<()>);

/// Every scenario, in the order the acceptance list names them.
pub const ALL: &[Scenario] = &[
    ("version, info, ps, images", basics),
    ("import from stdin", import_stdin),
    ("run echo and late output", run_output),
    ("run -i stdin round trip (20 MB)", run_stdin),
    ("50 MB of stdout", big_stdout),
    ("logs -f streams", logs_follow),
    ("events streams", events),
    ("exec, exec -i, exec -it", exec),
    ("cp 10 MB in and out", cp),
    ("save and load", save_load),
    ("build with a context", build),
    ("16 concurrent runs", concurrent_runs),
];

/// Runs every scenario; returns each one's time. Fails naming the first
/// scenario that failed.
pub fn run_all(docker: &Docker) -> Result<Vec<(&'static str, Duration)>> {
    let mut times = Vec::new();
    for (name, f) in ALL {
        let started = Instant::now();
        f(docker).with_context(|| format!("scenario {name:?} via {}", docker.host))?;
        times.push((*name, started.elapsed()));
    }
    Ok(times)
}

/// Runs `f` with a detached busybox container running `cmd`, and removes
/// the container afterwards whatever `f` returned.
pub fn with_container(
    d: &Docker,
    prefix: &str,
    cmd: &[&str],
    f: impl FnOnce(&str) -> Result<()>,
) -> Result<()> {
    let name = unique(prefix);
    let mut args = vec!["run", "-d", "--name", &name, "--network", "none", "busybox"];
    args.extend_from_slice(cmd);
    d.ok(&args)?;
    let result = f(&name);
    d.ok(&["rm", "-f", &name])?;
    result
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ (std::process::id() << 8)
}

const RUN: &[&str] = &["run", "--rm", "--network", "none", "busybox"];

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = RUN.to_vec();
    v.extend_from_slice(extra);
    v
}

fn basics(d: &Docker) -> Result<()> {
    let v = d.ok(&["version", "--format", "{{.Server.Version}}"])?;
    ensure!(!v.trim().is_empty(), "no server version");
    let info = d.ok(&["info", "--format", "{{.ServerVersion}} {{.Driver}}"])?;
    ensure!(
        info.contains(v.trim()),
        "info {info:?} does not match version {v:?}"
    );
    d.ok(&["ps", "-a"])?;
    let images = d.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?;
    ensure!(
        images.contains("busybox:latest"),
        "images lacks busybox: {images}"
    );
    Ok(())
}

/// A one-file tar archive, built here so the test needs no tar binary.
fn tar_with_file(name: &str, contents: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(format!("{:011o}", contents.len()).as_bytes());
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..262].copy_from_slice(b"ustar");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(contents);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    tar
}

fn import_stdin(d: &Docker) -> Result<()> {
    let tag = format!("{}:test", unique("tg-import"));
    let tar = tar_with_file("hello.txt", b"imported through stdin\n");
    let out = String::from_utf8(d.ok_bytes(&["import", "-", &tag], &tar)?)?;
    ensure!(out.trim().starts_with("sha256:"), "import printed {out:?}");
    let size = d.ok(&["image", "inspect", "--format", "{{.Size}}", &tag])?;
    ensure!(size.trim().parse::<u64>()? > 0, "imported image is empty");
    d.ok(&["rmi", &tag])?;
    Ok(())
}

fn run_output(d: &Docker) -> Result<()> {
    let out = d.ok(&run_args(&["echo", "hello from busybox"]))?;
    ensure!(out == "hello from busybox\n", "echo gave {out:?}");
    let out = d.ok(&run_args(&["sh", "-c", "sleep 2; echo late"]))?;
    ensure!(out == "late\n", "late output lost: {out:?}");
    Ok(())
}

fn run_stdin(d: &Docker) -> Result<()> {
    let cat = ["run", "-i", "--rm", "--network", "none", "busybox", "cat"];
    let out = d.ok_bytes(&cat, b"x\n")?;
    ensure!(
        out == b"x\n",
        "echo x | cat gave {:?}",
        String::from_utf8_lossy(&out)
    );
    let data = pseudo_random(20 * 1024 * 1024, 0x5eed);
    let out = d.ok_bytes(&cat, &data)?;
    ensure!(
        out.len() == data.len(),
        "20 MB stdin came back as {} bytes",
        out.len()
    );
    ensure!(
        Sha256::digest(&out) == Sha256::digest(&data),
        "20 MB stdin came back altered"
    );
    Ok(())
}

fn big_stdout(d: &Docker) -> Result<()> {
    const LEN: usize = 50 * 1024 * 1024;
    let out = d.ok_bytes(
        &run_args(&[
            "sh",
            "-c",
            "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 52428800",
        ]),
        b"",
    )?;
    ensure!(
        out.len() == LEN,
        "50 MB stdout arrived as {} bytes",
        out.len()
    );
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz\n";
    let expected: Vec<u8> = line.iter().copied().cycle().take(LEN).collect();
    ensure!(out == expected, "50 MB stdout arrived altered");
    Ok(())
}

/// Streaming, shown causally rather than by timing: the container prints
/// its second line only after the test has seen the first through
/// `logs -f` and then told it to go on.
fn logs_follow(d: &Docker) -> Result<()> {
    let script = "echo first; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second; sleep 60";
    with_container(d, "tg-logs", &["sh", "-c", script], |name| {
        let mut follow = d
            .cmd(["logs", "-f", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let lines = LineReader::new(follow.stdout.take().expect("piped"));
        let first = lines.wait_for("first", Duration::from_secs(30));
        let go = d.ok(&["exec", name, "touch", "/tmp/go"]);
        let second = lines.wait_for("second", Duration::from_secs(30));
        let _ = follow.kill();
        let _ = follow.wait();
        first.context("first line did not stream before the second was written")?;
        go?;
        second?;
        Ok(())
    })
}

fn events(d: &Docker) -> Result<()> {
    let prefix = unique("tg-ev");
    let mut events = d
        .cmd([
            "events",
            "--filter",
            "type=container",
            "--filter",
            "event=start",
            "--format",
            "{{.Actor.Attributes.name}}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let lines = LineReader::new(events.stdout.take().expect("piped"));
    // The events call may not be subscribed yet when the first container
    // starts; start more (bounded) until one is seen.
    let mut seen = None;
    for i in 0..10 {
        let name = format!("{prefix}-{i}");
        d.ok(&[
            "run",
            "--rm",
            "--name",
            &name,
            "--network",
            "none",
            "busybox",
            "true",
        ])?;
        if let Ok(line) = lines.wait_for(&prefix, Duration::from_secs(3)) {
            seen = Some(line);
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let line = seen.context("docker events never showed a started container")?;
    ensure!(line.starts_with(&prefix), "unexpected event line {line:?}");
    Ok(())
}

fn exec(d: &Docker) -> Result<()> {
    with_container(d, "tg-exec", &["sleep", "120"], |name| {
        let out = d.ok(&["exec", name, "echo", "exec works"])?;
        ensure!(out == "exec works\n", "exec gave {out:?}");
        let out = d.ok_bytes(
            &["exec", "-i", name, "sh", "-c", "cat; echo done"],
            b"piped in\n",
        )?;
        ensure!(
            out == b"piped in\ndone\n",
            "exec -i gave {:?}",
            String::from_utf8_lossy(&out)
        );
        // -t needs a terminal: `script` gives docker a pty.
        let cmdline = format!("docker exec -it {name} sh -c 'tty; echo tty-ok'");
        let out = d
            .clone()
            .script_cmd(&cmdline)
            .output()
            .context("running script(1); install bsdutils")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "exec -it failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            text.contains("/dev/pts/") && text.contains("tty-ok"),
            "exec -it gave {text:?}"
        );
        Ok(())
    })
}

impl Docker {
    /// `script -qec CMD /dev/null` with this DOCKER_HOST: CMD runs under a pty.
    fn script_cmd(self, cmdline: &str) -> std::process::Command {
        let mut c = std::process::Command::new("script");
        c.args(["-qec", cmdline, "/dev/null"])
            .env("DOCKER_HOST", &self.host)
            .stdin(Stdio::null());
        c
    }
}

fn cp(d: &Docker) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("payload.bin");
    let back = dir.path().join("back.bin");
    let data = pseudo_random(10 * 1024 * 1024, 0xc0ffee);
    std::fs::write(&src, &data)?;
    with_container(d, "tg-cp", &["sleep", "120"], |name| {
        d.ok(&[
            "cp",
            src.to_str().expect("utf-8 path"),
            &format!("{name}:/tmp/payload.bin"),
        ])?;
        let inside = d.ok(&["exec", name, "sha256sum", "/tmp/payload.bin"])?;
        let want = hex(&Sha256::digest(&data));
        ensure!(
            inside.starts_with(&want),
            "file in the container differs: {inside}"
        );
        d.ok(&[
            "cp",
            &format!("{name}:/tmp/payload.bin"),
            back.to_str().expect("utf-8 path"),
        ])?;
        let got = std::fs::read(&back)?;
        ensure!(got == data, "file copied out differs ({} bytes)", got.len());
        Ok(())
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn save_load(d: &Docker) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tar = dir.path().join("busybox.tar");
    let tar = tar.to_str().expect("utf-8 path");
    d.ok(&["save", "-o", tar, "busybox:latest"])?;
    let size = std::fs::metadata(tar)?.len();
    ensure!(size > 500 * 1024, "saved image is only {size} bytes");
    let out = d.ok(&["load", "-i", tar])?;
    ensure!(out.contains("Loaded image"), "load said {out:?}");
    Ok(())
}

fn build(d: &Docker) -> Result<()> {
    let ctx = tempfile::tempdir()?;
    std::fs::write(
        ctx.path().join("greeting.txt"),
        "built through the tunnel\n",
    )?;
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox:latest\nCOPY greeting.txt /greeting.txt\nRUN cat /greeting.txt\n",
    )?;
    let tag = format!("{}:test", unique("tg-build"));
    let out = d.ok(&[
        "build",
        "--network",
        "none",
        "-t",
        &tag,
        ctx.path().to_str().expect("utf-8 path"),
    ])?;
    ensure!(
        out.contains("built through the tunnel"),
        "build output lacks the RUN step's output: {out}"
    );
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "cat",
        "/greeting.txt",
    ])?;
    ensure!(
        got == "built through the tunnel\n",
        "built image holds {got:?}"
    );
    d.ok(&["rmi", &tag])?;
    Ok(())
}

fn concurrent_runs(d: &Docker) -> Result<()> {
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                d.ok(&[
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "busybox",
                    "echo",
                    &format!("run-{i}"),
                ])
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        if out != format!("run-{i}\n") {
            bail!("run {i} printed {out:?}");
        }
    }
    Ok(())
}
