#!/usr/bin/env bash
# One stream through our QUIC session layer against quinn's own perf
# client and server, interleaved round by round on the same machine:
# throughput and CPU-seconds per GB (both ends together, from /proc).
#
#   QUINN_SRC=/path/to/quinn benches/quinn-perf.sh [ROUNDS] [SECONDS]
#
# QUINN_SRC is a checkout of the quinn repository at the release the
# workspace uses (Cargo.lock); its `perf` crate is built there, outside
# this workspace (QUINN_PERF=/path/to/quinn-perf skips the build). Each
# round runs `session-perf` (1 GiB per way: the session layer's Stream,
# its write half with quinn's chunk reads, and quinn's chunk API on our
# connection settings) and then quinn's perf server and client for
# SECONDS (default 10) downloading 1 GiB requests on one stream. UDP on
# loopback only; everything started is stopped on exit.
set -euo pipefail

rounds=${1:-3}
seconds=${2:-10}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=script-lib.sh
source "$repo/benches/script-lib.sh"

if [ -z "${QUINN_PERF:-}" ]; then
    [ -n "${QUINN_SRC:-}" ] || { echo "set QUINN_SRC to a quinn checkout (or QUINN_PERF to its built perf binary)" >&2; exit 2; }
    (cd "$QUINN_SRC" && cargo build --quiet --release -p perf)
    QUINN_PERF=$QUINN_SRC/target/release/quinn-perf
fi
cd "$repo"
cargo build --quiet --release -p tunnelgate-benches --bin session-perf

cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }

for round in $(seq "$rounds"); do
    target/release/session-perf --bytes 1073741824 --rounds 1 | sed "s/\"round\":0/\"round\":$round/"

    port=$(free_port)
    "$QUINN_PERF" server --listen "127.0.0.1:$port" > /dev/null 2>&1 &
    server=$!
    pids+=("$server")
    sleep 0.5
    server_before=$(cpu "$server")
    TIMEFORMAT='%U %S'
    { time "$QUINN_PERF" client "127.0.0.1:$port" --download-size 1G --upload-size 0 \
        --duration "$seconds" --interval 1 --json "$work/client.json" \
        > /dev/null 2>&1; } 2> "$work/client.time"
    server_after=$(cpu "$server")
    kill "$server"
    python3 - "$work/client.json" "$work/client.time" "$server_before" "$server_after" "$round" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1]))
user, system = map(float, open(sys.argv[2]).read().split()[-2:])
# The client's CPU also covers its last 0.2 s, which no interval counts:
# about 2 % against quinn at 10 s.
cpu = user + system + float(sys.argv[4]) - float(sys.argv[3])
got = sum(i["sum"]["bytes"] for i in stats["intervals"])
secs = sum(i["sum"]["seconds"] for i in stats["intervals"])
gb = got / 1e9
print(json.dumps({"round": int(sys.argv[5]), "way": "quinn-perf", "bytes": got,
                  "gbit_s": round(gb * 8 / secs, 3), "cpu_s_per_gb": round(cpu / gb, 3)}))
PY
done
