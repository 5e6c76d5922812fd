#!/usr/bin/env bash
# Builds the tunnelgate-agent and tunnelgate-relay .deb packages from
# release binaries, with dpkg-deb (no other tool needed):
#
#   cargo build --release -p tunnelgate-relay -p tunnelgate-agent
#   deploy/deb/build.sh --bin-dir target/release --out target/deb
#
# Each package holds the binary (/usr/bin), its systemd unit, a config
# file kept as a conffile (/etc/tunnelgate/*.toml), and maintainer
# scripts that enable and start the service on install, restart it on
# upgrade, stop it on remove, and only print what to do on a host
# without systemd.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
bin_dir=target/release
out=target/deb
version=
arch=$(dpkg --print-architecture)
compress=xz

usage() { sed -n '2,13p' "$0"; echo "options: --bin-dir DIR --out DIR [--version V] [--arch A] [--compress xz|gzip|none]"; }
while [ $# -gt 0 ]; do
  case $1 in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

for bin in tunnelgate-agent tunnelgate-relay; do
  [ -x "$bin_dir/$bin" ] || { echo "no $bin_dir/$bin: build it first (cargo build --release -p $bin)" >&2; exit 1; }
done
if [ -z "$version" ]; then
  # "tunnelgate-relay 0.1.0" -> 0.1.0
  version=$("$bin_dir/tunnelgate-relay" --version | awk '{print $2}')
fi
mkdir -p "$out"

build() {
  local pkg=$1 summary=$2 description=$3
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  install -D -m 0755 -s "$bin_dir/$pkg" "$root/usr/bin/$pkg"
  # The units as deploy/systemd has them, for the packaged binary's path.
  install -d "$root/lib/systemd/system"
  sed 's|/usr/local/bin/|/usr/bin/|g' "$deploy/systemd/$pkg.service" >"$root/lib/systemd/system/$pkg.service"
  local conf=${pkg#tunnelgate-}.toml
  install -D -m 0644 "$here/$conf" "$root/etc/tunnelgate/$conf"
  install -d "$root/DEBIAN"
  echo "/etc/tunnelgate/$conf" >"$root/DEBIAN/conffiles"
  for script in postinst prerm postrm; do
    install -m 0755 "$here/$pkg.$script" "$root/DEBIAN/$script"
  done
  cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: tunnelgate developers <tunnelgate@localhost>
Section: admin
Priority: optional
Depends: libc6
Installed-Size: $(du -ks "$root" | cut -f1)
Description: $summary
$(printf '%s\n' "$description" | sed 's/^/ /')
CONTROL
  local deb="$out/${pkg}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
  echo "$deb"
}

build tunnelgate-agent "tunnelgate agent: a Docker host behind a firewall, managed through a relay" \
"Dials out to tunnelgate relays over QUIC (or TLS over TCP) and serves
Docker API calls for this host's daemon. Configure the relay and join
token in /etc/tunnelgate/agent.toml, or use the relay's one-line install."
build tunnelgate-relay "tunnelgate relay: the Docker API for hosts behind firewalls" \
"Agents on firewalled Docker hosts dial out to the relay; Docker clients
call DOCKER_HOST=tcp://RELAY:7375/nodes/NODE. Settings in
/etc/tunnelgate/relay.toml."
