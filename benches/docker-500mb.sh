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
pids+=("$!")
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
pids+=("$!")
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

declare -A took
for round in $(seq "$rounds"); do
    for side in direct relayed; do
        host=${!side}
        took[save_$side]+="$(timed docker -H "$host" save big:latest) "
        took[cp_in_$side]+="$(timed docker -H "$host" cp "$work/rootfs/big.bin" holder:/big-copy.bin) "
        took[cp_out_$side]+="$(timed docker -H "$host" cp holder:/big.bin -) "
    done
    echo "round $round of $rounds done" >&2
done

echo "| operation (500 MB) | direct over TCP, median s | through tunnelgate (QUIC), median s | relayed / direct |"
echo "|---|---|---|---|"
for op in save cp_in cp_out; do
    python3 - "$op" "${took[${op}_direct]}" "${took[${op}_relayed]}" <<'PY'
import statistics, sys
op, d, r = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
names = {"save": "`docker save`", "cp_in": "`docker cp` into a container", "cp_out": "`docker cp` out of a container"}
dm, rm = statistics.median(d), statistics.median(r)
print(f"| {names[op]} | {dm:.2f} | {rm:.2f} | **{rm / dm:.2f}x** |")
PY
done
