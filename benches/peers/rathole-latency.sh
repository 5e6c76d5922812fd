#!/usr/bin/env bash
# Side by side: added latency of small calls through tunnelgate and through
# rathole (TLS and TCP), against the same calls direct, in one run.
#
#   benches/peers/rathole-latency.sh [quic|tcp] [CALLS]
#
# Same set-up as rathole-bulk.sh (RATHOLE=..., or installed once).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
SCENARIO="latency --calls ${2:-5000}" exec "$here/rathole-bulk.sh" "${1:-quic}"
