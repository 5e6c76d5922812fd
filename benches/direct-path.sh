#!/usr/bin/env bash
# The direct path against the docker CLI straight to the same TLS daemon:
# `docker save` of a 500 MB image, `docker cp` of 500 MB in and out and of
# 1 GiB out, each through the relay's direct path (node `direct`), through
# the tunnel (node `tunnel`, the same daemon over its agent) and straight
# to dockerd's TLS port, interleaved per round so all three see the same
# machine state; then small-call latency (`GET /_ping` on one kept-alive
# connection) on the three routes.
#
#   benches/direct-path.sh [ROUNDS]
#
# ROUTES (default "straight direct tunnel") and OPS (default "save cp_in
# cp_out cp_1g") narrow a run, e.g. to profile one operation on one route;
# the tables then cover only the full set. RELAY_BIN runs another relay
# build (an A/B pair of builds, run in turn).
#
# Starts its own relay and dockerd (TLS on loopback from
# `tunnelgate-agent docker-tls`, plus a unix socket for the agents) in a
# temporary directory. The daemon is told to trust one more CA than in
# production, a bench CA whose client certificate the docker CLI uses for
# the straight baseline, since the direct-path CA signs only relays.
# Loopback only; everything it starts is stopped when it exits.
set -euo pipefail

rounds=${1:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=script-lib.sh
source "$repo/benches/script-lib.sh"

cd "$repo"
cargo build --quiet --release -p tunnelgate-relay -p tunnelgate-agent
relay_bin=${RELAY_BIN:-target/release/tunnelgate-relay}
agent_bin=target/release/tunnelgate-agent

api=$(free_port)
"$relay_bin" serve --state-dir "$work/relay" --api-listen "127.0.0.1:$api" \
    --agent-listen "127.0.0.1:$(free_port)" --metrics-listen "127.0.0.1:$(free_port)" \
    --direct-probe-interval 2s > "$work/relay.out" 2> "$work/relay.log" &
relay_pid=$!
pids+=("$relay_pid")
for _ in $(seq 100); do [ -s "$work/relay.out" ] && break; sleep 0.1; done
agent_addr=$(grep -o 'agent=[^ ]*' "$work/relay.out" | cut -d= -f2)
token() { "$relay_bin" token create --state-dir "$work/relay" | tail -1; }

tls_port=$(free_port)
"$agent_bin" docker-tls --out "$work/tls" --ip 127.0.0.1 --port "$tls_port" \
    --relay "$agent_addr" --token "$(token)" --node-id direct --state-dir "$work/agent-direct" \
    > /dev/null 2> "$work/docker-tls.log"

# The bench CA and the docker CLI's client certificate from it.
mkdir -p "$work/cli"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench-ca -keyout "$work/bench-ca-key.pem" -out "$work/bench-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench-cli \
    -keyout "$work/cli/key.pem" -out "$work/cli.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > "$work/cli.ext"
openssl x509 -req -in "$work/cli.csr" -CA "$work/bench-ca.pem" -CAkey "$work/bench-ca-key.pem" \
    -CAcreateserial -days 1 -extfile "$work/cli.ext" -out "$work/cli/cert.pem" 2>/dev/null
cp "$work/relay/ca.pem" "$work/cli/ca.pem"
cat "$work/tls/ca.pem" "$work/bench-ca.pem" > "$work/daemon-ca.pem"

dockerd --host "unix://$work/docker.sock" --host "tcp://127.0.0.1:$tls_port" --tlsverify \
    --tlscacert "$work/daemon-ca.pem" --tlscert "$work/tls/server-cert.pem" \
    --tlskey "$work/tls/server-key.pem" \
    --data-root "$work/root" --exec-root "$work/exec" --pidfile "$work/pid" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    > "$work/dockerd.log" 2>&1 &
dockerd_pid=$!
pids+=("$dockerd_pid")
sock="unix://$work/docker.sock"
for _ in $(seq 100); do docker -H "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done

"$agent_bin" --relay "$agent_addr" --node-id direct --state-dir "$work/agent-direct" \
    --docker "$sock" --daemon-tls "$work/tls" 2> "$work/agent-direct.log" &
direct_agent=$!
pids+=("$direct_agent")
"$agent_bin" --relay "$agent_addr" --node-id tunnel --state-dir "$work/agent-tunnel" \
    --token "$(token)" --docker "$sock" 2> "$work/agent-tunnel.log" &
tunnel_agent=$!
pids+=("$tunnel_agent")

route() { curl -s "http://127.0.0.1:$api/v1/nodes/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("route",""))' 2>/dev/null || true; }
for _ in $(seq 150); do [ "$(route direct)" = direct ] && [ "$(route tunnel)" = tunnel ] && break; sleep 0.2; done
[ "$(route direct)" = direct ] || { echo "node direct never went direct; relay log:" >&2; tail "$work/relay.log" >&2; exit 1; }

echo "building a 500 MB image and a 1 GiB file (busybox + random bytes)" >&2
mkdir -p "$work/rootfs/bin"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
head -c 500000000 /dev/urandom > "$work/rootfs/big.bin"
head -c 1073741824 /dev/urandom > "$work/rootfs/huge.bin"
tar -C "$work/rootfs" -c bin big.bin | docker -H "$sock" import - big:latest >/dev/null
docker -H "$sock" create --name holder --network none big:latest /bin/sh >/dev/null
docker -H "$sock" cp "$work/rootfs/huge.bin" holder:/huge.bin

export DOCKER_CERT_PATH="$work/cli"
# The docker CLI on one side: straight to the TLS port, or through the
# relay to the node that goes direct or the one that takes the tunnel.
on() {
    local side=$1
    shift
    case $side in
        straight) docker --tlsverify -H "tcp://127.0.0.1:$tls_port" "$@" ;;
        *) docker -H "tcp://127.0.0.1:$api/nodes/$side" "$@" ;;
    esac
}

ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
now() { date +%s.%N; }

# One operation on one side: seconds, and CPU-seconds of dockerd, the
# relay and the two agents.
declare -A took cpu_daemon cpu_relay cpu_agents
run_op() {
    local op=$1 side=$2 t0 d0 r0 a0
    shift 2
    d0=$(cpu_s "$dockerd_pid"); r0=$(cpu_s "$relay_pid")
    a0=$(python3 -c "print($(cpu_s "$direct_agent") + $(cpu_s "$tunnel_agent"))")
    t0=$(now)
    "$@" > /dev/null
    took[${op}_$side]+="$(python3 -c "print($(now) - $t0)") "
    cpu_daemon[${op}_$side]+="$(python3 -c "print($(cpu_s "$dockerd_pid") - $d0)") "
    cpu_relay[${op}_$side]+="$(python3 -c "print($(cpu_s "$relay_pid") - $r0)") "
    cpu_agents[${op}_$side]+="$(python3 -c "print($(cpu_s "$direct_agent") + $(cpu_s "$tunnel_agent") - $a0)") "
}

routes=${ROUTES:-straight direct tunnel}
ops=${OPS:-save cp_in cp_out cp_1g}
for round in $(seq "$rounds"); do
    for side in $routes; do
        for op in $ops; do
            case $op in
                save) run_op save "$side" on "$side" save big:latest ;;
                cp_in) run_op cp_in "$side" on "$side" cp "$work/rootfs/big.bin" holder:/big-copy.bin ;;
                cp_out) run_op cp_out "$side" on "$side" cp holder:/big.bin - ;;
                cp_1g) run_op cp_1g "$side" on "$side" cp holder:/huge.bin - ;;
            esac
        done
    done
    echo "round $round of $rounds done" >&2
done
if [ -n "${ROUTES:-}${OPS:-}" ]; then
    for k in "${!took[@]}"; do echo "$k: seconds ${took[$k]}; relay CPU-s ${cpu_relay[$k]}; dockerd CPU-s ${cpu_daemon[$k]}"; done
    exit 0
fi

echo "| operation | straight TLS, s | direct, s | tunnel, s | direct / straight | tunnel / straight | dockerd CPU-s straight / direct / tunnel | relay CPU-s direct / tunnel | agents CPU-s direct / tunnel |"
echo "|---|---|---|---|---|---|---|---|---|"
for op in save cp_in cp_out cp_1g; do
    python3 - "$op" "${took[${op}_straight]}" "${took[${op}_direct]}" "${took[${op}_tunnel]}" \
        "${cpu_daemon[${op}_straight]}" "${cpu_daemon[${op}_direct]}" "${cpu_daemon[${op}_tunnel]}" \
        "${cpu_relay[${op}_direct]}" "${cpu_relay[${op}_tunnel]}" \
        "${cpu_agents[${op}_direct]}" "${cpu_agents[${op}_tunnel]}" <<'PY'
import statistics, sys
op = sys.argv[1]
s, d, t, ds, dd, dt, rd, rt, ad, at = ([float(x) for x in a.split()] for a in sys.argv[2:])
m = statistics.median
names = {"save": "`docker save` 500 MB", "cp_in": "`docker cp` 500 MB in",
         "cp_out": "`docker cp` 500 MB out", "cp_1g": "`docker cp` 1 GiB out"}
print(f"| {names[op]} | {m(s):.2f} | {m(d):.2f} | {m(t):.2f} | **{m(d) / m(s):.2f}x** | {m(t) / m(s):.2f}x "
      f"| {m(ds):.2f} / {m(dd):.2f} / {m(dt):.2f} | {m(rd):.2f} / {m(rt):.2f} | {m(ad):.2f} / {m(at):.2f} |")
PY
done

# Small calls: GET /_ping on one kept-alive connection per route, in
# turn, 2,000 each after 200 to warm up; p50 and p99 in microseconds.
python3 - "$api" "$tls_port" "$work/cli" <<'PY'
import http.client, ssl, statistics, sys, time
api, tls_port, certs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=f"{certs}/ca.pem")
ctx.load_cert_chain(f"{certs}/cert.pem", f"{certs}/key.pem")
routes = {
    "straight": (lambda: http.client.HTTPSConnection("127.0.0.1", tls_port, context=ctx), "/_ping"),
    "direct": (lambda: http.client.HTTPConnection("127.0.0.1", int(api)), "/nodes/direct/_ping"),
    "tunnel": (lambda: http.client.HTTPConnection("127.0.0.1", int(api)), "/nodes/tunnel/_ping"),
}
conns = {k: (mk(), path) for k, (mk, path) in routes.items()}
lat = {k: [] for k in routes}
for i in range(2200):
    for k, (c, path) in conns.items():
        t0 = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        assert r.status == 200, (k, r.status)
        if i >= 200:
            lat[k].append((time.perf_counter() - t0) * 1e6)
q = lambda xs, p: sorted(xs)[int(len(xs) * p)]
print()
print("| `GET /_ping`, kept-alive | p50 µs | p99 µs | added p50 over straight µs |")
print("|---|---|---|---|")
base = statistics.median(lat["straight"])
for k, xs in lat.items():
    print(f"| {k} | {statistics.median(xs):.0f} | {q(xs, 0.99):.0f} | {statistics.median(xs) - base:.0f} |")
PY
