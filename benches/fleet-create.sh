#!/usr/bin/env bash
# The relay's CPU for one `docker create` (and the `rm` after it) through
# /fleet, where it is placed, against the same create through
# /nodes/<id>, in interleaved rounds on one relay and one agent in front
# of a real dockerd. CPU is the relay process's own (utime + stime from
# /proc), per create, so the agent and dockerd, which both paths share,
# do not count. Then how soon a container made on the node directly shows
# in the fleet's ps (p50 and p99 of 100 tries).
#
#   benches/fleet-create.sh [ROUNDS] [CREATES_PER_ROUND]
#
# Starts its own dockerd in a temporary directory; needs docker.io and
# busybox-static, as scripts/test installs them. Loopback only;
# everything it starts is stopped when it exits.
set -euo pipefail

rounds=${1:-5}
per=${2:-40}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=script-lib.sh
source "$repo/benches/script-lib.sh"

cd "$repo"
cargo build --quiet --release -p tunnelgate-relay -p tunnelgate-agent

dockerd --host "unix://$work/docker.sock" --data-root "$work/root" --exec-root "$work/exec" \
    --pidfile "$work/pid" --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    > "$work/dockerd.log" 2>&1 &
pids+=("$!")
sock="unix://$work/docker.sock"
for _ in $(seq 100); do docker -H "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
mkdir -p "$work/img/bin"
cp "$(command -v busybox)" "$work/img/bin/busybox"
ln -s busybox "$work/img/bin/true"
tar -C "$work/img" -c . | docker -H "$sock" import - bench:latest >/dev/null

api=$(free_port)
agent=$(free_port)
NO_COLOR=1 target/release/tunnelgate-relay serve --state-dir "$work/relay" \
    --api-listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$agent" \
    --metrics-listen "127.0.0.1:$(free_port)" > "$work/relay.out" 2> "$work/relay.log" &
relay_pid=$!
pids+=("$relay_pid")
for _ in $(seq 100); do [ -s "$work/relay.out" ] && break; sleep 0.1; done
token=$(target/release/tunnelgate-relay token create --state-dir "$work/relay" | tail -1)
NO_COLOR=1 target/release/tunnelgate-agent --relay "127.0.0.1:$agent" --node-id bench \
    --docker "$sock" --state-dir "$work/agent" --token "$token" 2> "$work/agent.log" &
pids+=("$!")
node="tcp://127.0.0.1:$api/nodes/bench"
fleet="tcp://127.0.0.1:$api/fleet"
for _ in $(seq 150); do docker -H "$node" version >/dev/null 2>&1 && break; sleep 0.2; done
# The first fleet call starts the view; not measured.
docker -H "$fleet" ps >/dev/null

ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

# Creates and removes $per containers through $1; prints relay CPU-ms per create.
round() {
    local host=$1 c0 i
    c0=$(cpu_s "$relay_pid")
    for i in $(seq "$per"); do
        docker -H "$host" create --network none --name "c$i" bench:latest true >/dev/null
        docker -H "$host" rm "c$i" >/dev/null
    done
    python3 -c "print(round(($(cpu_s "$relay_pid") - $c0) * 1000 / $per, 3))"
}

printf '%-6s %16s %16s %8s\n' round "nodes ms/create" "fleet ms/create" ratio
for r in $(seq "$rounds"); do
    n=$(round "$node")
    f=$(round "$fleet")
    printf '%-6s %16s %16s %8s\n' "$r" "$n" "$f" "$(python3 -c "print(round($f / $n, 2))")"
done

# Freshness: a container made on the node directly (not through the
# relay), until the fleet's ps lists it: the view hears of it only from
# the node's events. 100 tries, polled every 2 ms.
python3 - "$api" "$sock" <<'PY'
import json, subprocess, sys, time, urllib.parse, urllib.request
api, sock = sys.argv[1], sys.argv[2]
took = []
for i in range(100):
    name = f"fresh{i}"
    subprocess.run(["docker", "-H", sock, "create", "--network", "none", "--name", name,
                    "bench:latest", "true"], check=True, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    query = urllib.parse.quote(json.dumps({"name": [name]}))
    url = f"http://127.0.0.1:{api}/fleet/containers/json?all=1&filters={query}"
    while name.encode() not in urllib.request.urlopen(url).read():
        if time.monotonic() - t0 > 10:
            sys.exit(f"{name} was not in the fleet's ps after 10 s")
        time.sleep(0.002)
    took.append((time.monotonic() - t0) * 1000)
    subprocess.run(["docker", "-H", sock, "rm", name], check=True, stdout=subprocess.DEVNULL)
took.sort()
print(f"freshness over {len(took)} tries: p50 {took[49]:.1f} ms, p99 {took[98]:.1f} ms, "
      f"max {took[-1]:.1f} ms")
PY
