#!/usr/bin/env bash
# Side by side: small kept-alive calls (`GET /_ping`) through tunnelgate
# (relay + agent) and through an nginx reverse proxy in front of the same
# synthetic Docker responder, with the calls direct as the baseline, all
# in one load-test run: added latency and CPU per call of each process
# (the relay, the agent, nginx's one worker).
#
#   benches/peers/nginx-latency.sh [quic|tcp] [CALLS]
#
# nginx: Debian's (`apt-get install nginx-light`), or NGINX=/path. Its
# worker proxies with upstream keepalive and writes an access line per
# call, as the relay writes its audit line. RELAY_ARGS passes settings to
# the relay. Loopback only; every process it starts is stopped when it
# exits.
set -euo pipefail

transport=${1:-quic}
calls=${2:-5000}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../script-lib.sh
source "$repo/benches/script-lib.sh"
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x $NGINX ]] || { echo "no nginx; apt-get install nginx-light, or set NGINX=/path" >&2; exit 1; }

responder=$(free_port)
entry=$(free_port)
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
    access_log $work/access.log;
    # nginx closes a kept-alive connection after 1,000 requests by
    # default, on both sides; the relay keeps its connections for good.
    keepalive_requests 1000000;
    upstream docker {
        server 127.0.0.1:$responder;
        keepalive 16;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$entry;
        location / {
            proxy_pass http://docker;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
CONF
"$NGINX" -c "$work/nginx.conf" -e "$work/error.log" &
master=$!
pids+=("$master")
for _ in $(seq 50); do
    worker=$(pgrep -P "$master" || true)
    [[ -n $worker ]] && break
    sleep 0.1
done
[[ -n ${worker:-} ]] || { echo "nginx started no worker: $(cat "$work/error.log")" >&2; exit 1; }

cd "$repo"
cargo build --quiet --release -p tunnelgate-relay -p tunnelgate-loadtest
relay_args=()
for a in ${RELAY_ARGS:-}; do relay_args+=("--relay-arg=$a"); done
target/release/tunnelgate-loadtest --transport "$transport" --responder-port "$responder" "${relay_args[@]}" \
    --json "${JSON:-/dev/null}" latency --calls "$calls" --peer "nginx=127.0.0.1:$entry,$worker"
