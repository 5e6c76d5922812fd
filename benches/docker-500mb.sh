#!/usr/bin/env bash
# Real Docker, large transfers: `docker save` of a 500 MB image, `docker cp`
# of a 500 MB file into a container and back out, direct to dockerd over
# TCP and through tunnelgate (quickstart: relay + agent, QUIC), each pair
# run back to back so both see the same machine state.
#
#   benches/docker-500mb.sh [ROUNDS]
#
# Starts its own dockerd (unix socket for the agent, plain TCP on loopback
# as the direct baseline) in a temporary directory; needs docker.io and
# busybox-static, as scripts/test installs them. Loopback only; everything
# it starts is stopped when it exits.
set -euo pipefail

rounds=${1:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=script-lib.sh
source "$repo/benches/script-lib.sh"

now() { date +%s.%N; }

cd "$repo"
cargo build --quiet --release -p tunnelgate-relay

direct_port=$(free_port)
dockerd --host "unix://$work/docker.sock" --host "tcp://127.0.0.1:$direct_port" \
    --data-root "$work/root" --exec-root "$work/exec" --pidfile "$work/pid" \
    --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs \
    > "$work/dockerd.log" 2>&1 &
dockerd_pid=$!
pids+=("$dockerd_pid")
direct="tcp://127.0.0.1:$direct_port"
for _ in $(seq 100); do docker -H "$direct" version >/dev/null 2>&1 && break; sleep 0.2; done

echo "building a 500 MB image (busybox + 500 MB of random bytes)" >&2
mkdir -p "$work/rootfs/bin"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
head -c 500000000 /dev/urandom > "$work/rootfs/big.bin"
tar -C "$work/rootfs" -c . | docker -H "$direct" import - big:latest >/dev/null
docker -H "$direct" create --name holder --network none big:latest /bin/sh >/dev/null

api=$(free_port)
target/release/tunnelgate-relay quickstart --state-dir "$work/tg" \
    --api-listen "127.0.0.1:$api" --agent-listen "127.0.0.1:$(free_port)" \
    --metrics-listen "127.0.0.1:$(free_port)" --node-id bench \
    --docker "unix://$work/docker.sock" > "$work/quickstart.log" 2>&1 &
tunnel_pid=$!
pids+=("$tunnel_pid")
relayed="tcp://127.0.0.1:$api/nodes/bench"
for _ in $(seq 150); do docker -H "$relayed" version >/dev/null 2>&1 && break; sleep 0.2; done
docker -H "$relayed" version >/dev/null

# Times one command, in seconds.
timed() {
    local t0
    t0=$(now)
    "$@" >/dev/null
    python3 -c "print($(now) - $t0)"
}

# CPU seconds a process has used so far (user + system).
ticks=$(getconf CLK_TCK)
cpu_s() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

# Runs one operation on one side: its time, and the CPU dockerd and the
# tunnel (relay + agent, one quickstart process) spent on it. On two cores
# the tunnel's CPU competes with dockerd's, which is what the ratio shows
# when the daemon itself is fast.
declare -A took daemon_cpu tunnel_cpu
run_op() {
    local op=$1 side=$2 d0 t0
    shift 2
    d0=$(cpu_s "$dockerd_pid")
    t0=$(cpu_s "$tunnel_pid")
    took[${op}_$side]+="$(timed "$@") "
    daemon_cpu[${op}_$side]+="$(python3 -c "print($(cpu_s "$dockerd_pid") - $d0)") "
    tunnel_cpu[${op}_$side]+="$(python3 -c "print($(cpu_s "$tunnel_pid") - $t0)") "
}

for round in $(seq "$rounds"); do
    for side in direct relayed; do
        host=${!side}
        run_op save "$side" docker -H "$host" save big:latest
        run_op cp_in "$side" docker -H "$host" cp "$work/rootfs/big.bin" holder:/big-copy.bin
        run_op cp_out "$side" docker -H "$host" cp holder:/big.bin -
    done
    echo "round $round of $rounds done" >&2
done

echo "| operation (500 MB) | direct over TCP, median s | through tunnelgate (QUIC), median s | relayed / direct | dockerd CPU-s, direct / relayed | tunnelgate CPU-s |"
echo "|---|---|---|---|---|---|"
for op in save cp_in cp_out; do
    python3 - "$op" "${took[${op}_direct]}" "${took[${op}_relayed]}" \
        "${daemon_cpu[${op}_direct]}" "${daemon_cpu[${op}_relayed]}" "${tunnel_cpu[${op}_relayed]}" <<'PY'
import statistics, sys
op = sys.argv[1]
d, r, dd, dr, tr = ([float(x) for x in a.split()] for a in sys.argv[2:])
med = statistics.median
names = {"save": "`docker save`", "cp_in": "`docker cp` into a container", "cp_out": "`docker cp` out of a container"}
print(f"| {names[op]} | {med(d):.2f} | {med(r):.2f} | **{med(r) / med(d):.2f}x** "
      f"| {med(dd):.2f} / {med(dr):.2f} | {med(tr):.2f} |")
PY
done
