# Shared by the bench scripts (sourced, not run): a temporary work dir and
# a list of started processes, both cleaned up on exit, and free ports.

work=$(mktemp -d /tmp/tunnelgate-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
