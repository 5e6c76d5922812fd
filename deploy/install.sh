#!/bin/sh
# Puts this host under management by a tunnelgate relay: downloads the
# agent from the relay (checking the relay's CA against the install
# command and the binary against its SHA-256), installs it with its
# config and a systemd unit, starts it, and waits until it is connected.
#
# Served by the relay at /install.sh with its own address filled in; the
# relay's `token create --install-command` prints the line to run:
#
#   curl ... https://RELAY:7375/install.sh | sudo sh -s -- --token TOKEN --ca-sha256 HASH
#
# Run again, it upgrades the agent in place and keeps the node's identity.
#   --uninstall   stop and remove the agent (its identity stays, so a
#                 later install is the same node)
#   --purge       also remove the identity and revoke the node at the relay
#
# Other options: --node-id ID (default: the host name), --relay HOST:PORT
# (the relay's agent address), --url URL (where this script came from),
# --docker ENDPOINT, --root DIR (install under DIR instead of /, for tests
# and image builds; implies --no-systemd), --no-systemd (install, then
# print the command to run the agent under another supervisor),
# --wait SECONDS (how long to wait for the agent to connect, default 60).
set -eu

URL="@RELAY_URL@"
RELAY="@RELAY_AGENT_ADDR@"
TOKEN=""
CA_SHA256=""
NODE_ID=""
DOCKER=""
ROOT=""
SYSTEMD=auto
ACTION=install
WAIT=60

say() { printf '==> %s\n' "$*" >&2; }
fail() {
    printf 'tunnelgate install failed at step "%s": %s\n' "$STEP" "$*" >&2
    exit 1
}
STEP="read the options"

while [ $# -gt 0 ]; do
    case $1 in
        --token) TOKEN=$2; shift 2 ;;
        --ca-sha256) CA_SHA256=$2; shift 2 ;;
        --node-id) NODE_ID=$2; shift 2 ;;
        --relay) RELAY=$2; shift 2 ;;
        --url) URL=$2; shift 2 ;;
        --docker) DOCKER=$2; shift 2 ;;
        --root) ROOT=$2; SYSTEMD=no; shift 2 ;;
        --no-systemd) SYSTEMD=no; shift ;;
        --wait) WAIT=$2; shift 2 ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) ACTION=purge; shift ;;
        -h|--help) sed -n '2,24p' "$0" 2>/dev/null || true; exit 0 ;;
        *) fail "unknown option $1; see the top of this script" ;;
    esac
done

BIN="$ROOT/usr/local/bin/tunnelgate-agent"
CONF_DIR="$ROOT/etc/tunnelgate"
CONF="$CONF_DIR/agent.toml"
STATE="$ROOT/var/lib/tunnelgate-agent"
UNIT="$ROOT/etc/systemd/system/tunnelgate-agent.service"

STEP="detect the init system"
if [ "$SYSTEMD" = auto ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        SYSTEMD=yes
    else
        SYSTEMD=no
    fi
fi

if [ "$ACTION" != install ]; then
    STEP="$ACTION"
    if [ "$SYSTEMD" = yes ]; then
        say "stopping and disabling the tunnelgate-agent service"
        systemctl disable --now tunnelgate-agent.service >/dev/null 2>&1 || true
    else
        say "no systemd here: stop the agent under your supervisor before or after this"
    fi
    if [ "$ACTION" = purge ]; then
        if [ -x "$BIN" ] && [ -f "$STATE/node.pem" ]; then
            say "revoking this node at the relay"
            "$BIN" leave --config "$CONF" || fail "the relay did not revoke the node; revoke it there with \`tunnelgate-relay node revoke TENANT/NODE\`, then run --purge again"
        fi
        rm -rf "$STATE"
        say "removed the node's identity ($STATE)"
    fi
    rm -f "$BIN" "$UNIT"
    if [ "$ACTION" = purge ]; then rm -rf "$CONF_DIR"; fi
    if [ "$SYSTEMD" = yes ]; then systemctl daemon-reload || true; fi
    say "removed the agent binary and its unit"
    [ "$ACTION" = uninstall ] && say "kept the node's identity in $STATE and the config in $CONF: installing again makes this the same node"
    exit 0
fi

case $URL in
    @*|"") fail "no relay URL; pass --url https://RELAY:7375" ;;
esac
command -v curl >/dev/null 2>&1 || fail "curl is missing; install it (e.g. apt-get install curl) and run this again"
command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is missing; install coreutils and run this again"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

STEP="1/6 trust the relay"
say "step $STEP: fetching the relay's CA from $URL"
curl -fsSk "$URL/ca.pem" -o "$TMP/ca.pem" || fail "cannot fetch $URL/ca.pem; check the URL and that the relay's API port is reachable from this host"
got=$(sha256sum "$TMP/ca.pem" | cut -d' ' -f1)
if [ -n "$CA_SHA256" ] && [ "$got" != "$CA_SHA256" ]; then
    fail "the relay at $URL presents a CA with SHA-256 $got, not the $CA_SHA256 in the install command: this is another relay, or someone in between. Check the URL and copy the command again from \`tunnelgate-relay token create --install-command\`. Nothing was installed."
fi
[ -n "$CA_SHA256" ] || say "no --ca-sha256 given: trusting the CA the relay presents (the token's fingerprint still pins it at enrolment)"
CURL="curl -fsSL"
case $URL in https://*) CURL="curl -fsSL --cacert $TMP/ca.pem" ;; esac

STEP="2/6 detect the platform"
case $(uname -m) in
    x86_64|amd64) ARCH=x86_64 ;;
    aarch64|arm64) ARCH=aarch64 ;;
    *) fail "no agent build for $(uname -m); tunnelgate ships x86_64 and aarch64" ;;
esac
say "step $STEP: linux-$ARCH, init: $( [ "$SYSTEMD" = yes ] && echo systemd || echo 'none (no systemd)')"

STEP="3/6 download the agent"
NAME="tunnelgate-agent-linux-$ARCH"
say "step $STEP: $URL/download/$NAME"
$CURL "$URL/download/$NAME" -o "$TMP/agent" || fail "cannot download $URL/download/$NAME; the relay may have no agent build for this platform (its log says which it serves)"
$CURL "$URL/download/$NAME.sha256" -o "$TMP/agent.sha256" || fail "cannot download $URL/download/$NAME.sha256"
want=$(cut -d' ' -f1 < "$TMP/agent.sha256")
have=$(sha256sum "$TMP/agent" | cut -d' ' -f1)
[ "$want" = "$have" ] || fail "the downloaded agent's SHA-256 is $have, but the relay says $want: the download was altered or cut. Nothing was installed; run this again."
chmod 755 "$TMP/agent"

STEP="4/6 install the agent and its config"
mkdir -p "$(dirname "$BIN")" "$CONF_DIR" "$STATE"
chmod 700 "$STATE"
upgrade=no
[ -x "$BIN" ] && upgrade=yes
mv -f "$TMP/agent" "$BIN"
if [ -f "$STATE/node.pem" ]; then
    say "this host is enrolled already ($STATE): keeping its identity"
fi
if [ ! -f "$CONF" ]; then
    [ -n "$NODE_ID" ] || NODE_ID=$(hostname 2>/dev/null || cat /etc/hostname)
    {
        echo "# Written by the tunnelgate install script; edit freely, reinstalls keep it."
        echo "relay = \"$RELAY\""
        echo "node_id = \"$NODE_ID\""
        echo "state_dir = \"/var/lib/tunnelgate-agent\""
        [ -z "$DOCKER" ] || echo "docker = \"$DOCKER\""
    } > "$CONF"
    if [ -n "$ROOT" ]; then
        # Installed under a root prefix: the state dir is under it too.
        sed "s#^state_dir = .*#state_dir = \"$STATE\"#" "$CONF" > "$CONF.new" && mv "$CONF.new" "$CONF"
    fi
fi
if [ -n "$TOKEN" ] && [ ! -f "$STATE/node.pem" ]; then
    # The token is needed once, for enrolment: kept beside the config,
    # readable by root only, and unused once the node certificate exists.
    umask 077
    printf 'TUNNELGATE_TOKEN=%s\n' "$TOKEN" > "$CONF_DIR/token.env"
    umask 022
fi
say "step $STEP: $BIN ($( [ $upgrade = yes ] && echo upgraded || echo installed )), $CONF"

STEP="5/6 start the agent"
RUN="$BIN --config $CONF"
if [ "$SYSTEMD" = yes ]; then
    # The unit from the relay's deploy/systemd/tunnelgate-agent.service.
    mkdir -p "$(dirname "$UNIT")"
    cat > "$UNIT" <<'UNIT_EOF'
@AGENT_UNIT@
UNIT_EOF
    systemctl daemon-reload
    systemctl enable tunnelgate-agent.service >/dev/null 2>&1
    systemctl restart tunnelgate-agent.service || fail "systemd could not start the agent; see \`journalctl -u tunnelgate-agent\`"
    say "step $STEP: the tunnelgate-agent service is enabled and (re)started"
else
    say "step $STEP: no systemd here; run the agent under your supervisor with:"
    if [ -f "$CONF_DIR/token.env" ]; then
        echo "env \$(cat $CONF_DIR/token.env) $RUN"
    else
        echo "$RUN"
    fi
    exit 0
fi

STEP="6/6 wait until connected"
i=0
while [ "$i" -lt "$WAIT" ]; do
    if "$BIN" status --state-dir "$STATE" >/dev/null 2>&1; then
        "$BIN" status --state-dir "$STATE" >&2 || true
        rm -f "$CONF_DIR/token.env"
        say "done: this host is node $(sed -n 's/^node_id = "\(.*\)"/\1/p' "$CONF") of the relay"
        exit 0
    fi
    sleep 1
    i=$((i + 1))
done
"$BIN" status --state-dir "$STATE" >&2 || true
fail "the agent did not connect within $WAIT s; see \`journalctl -u tunnelgate-agent\`"
