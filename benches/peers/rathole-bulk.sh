#!/usr/bin/env bash
# Side by side: one 1 GiB HTTP response through tunnelgate (relay + agent)
# and through rathole (over TLS and over plain TCP), with the direct
# download as the baseline, all in one load-test run.
#
#   benches/peers/rathole-bulk.sh [quic|tcp] [BYTES] [ROUNDS]
#
# rathole is not part of this repository: set RATHOLE=/path/to/rathole, or
# the script runs `cargo install rathole` into a temporary root outside the
# repository (needs libssl-dev and pkg-config for its native-tls build).
# RELAY_ARGS passes settings to the relay, e.g.
# RELAY_ARGS=--agent-quic-mtu=6500. Loopback only; every process it starts
# is stopped when it exits.
set -euo pipefail

transport=${1:-quic}
bytes=${2:-1073741824}
rounds=${3:-2}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../script-lib.sh
source "$repo/benches/script-lib.sh"

if [[ -z "${RATHOLE:-}" ]]; then
    RATHOLE=/tmp/tunnelgate-rathole/bin/rathole
    if [[ ! -x $RATHOLE ]]; then
        echo "installing rathole into /tmp/tunnelgate-rathole (once)" >&2
        cargo install --quiet rathole --root /tmp/tunnelgate-rathole
    fi
fi


# A throwaway CA and a server identity for rathole's TLS transport.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > "$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null
openssl pkcs12 -export -out "$work/server.p12" -inkey "$work/server.key" \
    -in "$work/server.pem" -passout pass:bench

responder=$(free_port)
peer_args=()
for kind in tls tcp; do
    control=$(free_port)
    entry=$(free_port)
    for side in server client; do
        sed -e "s|@CONTROL_PORT@|$control|; s|@ENTRY_PORT@|$entry|; s|@RESPONDER_PORT@|$responder|" \
            -e "s|@TRANSPORT@|$kind|; s|@DIR@|$work|" \
            "$here/rathole-$side.toml" > "$work/$kind-$side.toml"
    done
    "$RATHOLE" --server "$work/$kind-server.toml" > "$work/$kind-server.log" 2>&1 &
    server=$!
    pids+=("$server")
    "$RATHOLE" --client "$work/$kind-client.toml" > "$work/$kind-client.log" 2>&1 &
    client=$!
    pids+=("$client")
    peer_args+=(--peer "rathole-$kind=127.0.0.1:$entry,$server,$client")
done
# rathole opens its service port once the client has registered.
sleep 2

cd "$repo"
cargo build --quiet --release -p tunnelgate-relay -p tunnelgate-loadtest
relay_args=()
for a in ${RELAY_ARGS:-}; do relay_args+=("--relay-arg=$a"); done
# SCENARIO is a scenario and its flags, split into words on purpose.
# shellcheck disable=SC2086
target/release/tunnelgate-loadtest --transport "$transport" --responder-port "$responder" "${relay_args[@]}" \
    --json "${JSON:-/dev/null}" ${SCENARIO:-bulk --bytes "$bytes" --rounds "$rounds"} "${peer_args[@]}"
