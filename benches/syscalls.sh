#!/usr/bin/env bash
# Syscalls of the relay and of the load tester's simulated agents while
# the `latency` scenario makes small kept-alive calls: `strace -c`
# attached to every thread of both processes for a window of the run.
#
#   benches/syscalls.sh [quic|tcp] [BIN_DIR] [WINDOW_S]
#
# BIN_DIR holds tunnelgate-loadtest and tunnelgate-relay (default:
# target/release). The counts are for the window, not per call: compare
# builds by ratios within one table (recvmmsg per sendmsg, errors per
# call of a syscall). strace slows both processes several times, so this
# counts syscalls and says nothing of CPU. Needs strace; loopback only.
set -euo pipefail

transport=${1:-quic}
here=$(cd "$(dirname "$0")" && pwd)
bin=${2:-$here/../target/release}
window=${3:-8}
# shellcheck source=script-lib.sh
source "$here/script-lib.sh"
command -v strace >/dev/null || { echo "no strace; apt-get install strace" >&2; exit 1; }

"$bin/tunnelgate-loadtest" --relay-bin "$bin/tunnelgate-relay" --transport "$transport" \
    latency --calls 20000 > "$work/loadtest.log" 2>&1 &
loadtest=$!
pids+=("$loadtest")
# The relay is up and the calls are running by then.
sleep 6
relay=$(pgrep -n -P "$loadtest" -f "tunnelgate-relay serve") \
    || { echo "the load tester started no relay; see its log:" >&2; cat "$work/loadtest.log" >&2; exit 1; }
threads() { for t in /proc/"$1"/task/*; do printf -- '-p %s ' "${t##*/}"; done; }
# shellcheck disable=SC2046 # one -p per thread
timeout -s INT "$window" strace -c -o "$work/relay.txt" $(threads "$relay") 2>/dev/null &
# shellcheck disable=SC2046
timeout -s INT "$window" strace -c -o "$work/agents.txt" $(threads "$loadtest") 2>/dev/null &
wait %2 %3 || true
for side in relay agents; do
    echo "== $side ($transport, ${window} s of the run)"
    grep -E 'syscall|recvmmsg|sendmsg|epoll_wait|futex|writev|recvfrom|sendto| write|total' "$work/$side.txt"
done
wait "$loadtest" || true
