#!/usr/bin/env bash
# Installs xknock: the binary as PREFIX/sbin/xknock, the systemd unit as
# /etc/systemd/system/xknock.service, and the example configuration as
# /etc/xknock/xknock.toml when there is none. Running it again updates the binary and
# the unit and leaves the configuration alone.
#
#   sudo ./scripts/install.sh                   # builds the release binary first
#   sudo ./scripts/install.sh --prefix /opt/xknock
#   DESTDIR=/tmp/stage ./scripts/install.sh     # everything under /tmp/stage (packaging)
#   XKNOCK_BIN=target/release/xknock ./scripts/install.sh   # a binary built already
#
# Options: --prefix DIR (default /usr/local), --destdir DIR (or DESTDIR), --bin FILE
# (or XKNOCK_BIN). The unit's ExecStart follows --prefix, never DESTDIR (the files
# are meant to end up at the paths without it).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
destdir=${DESTDIR:-}
bin=${XKNOCK_BIN:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --bin) bin=${2:?--bin needs a file}; shift 2 ;;
    --bin=*) bin=${1#*=}; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) ;;
  *) echo "install.sh: --prefix must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
prefix=${prefix%/}

log() { printf 'install: %s\n' "$*" >&2; }

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
  log "installing into / needs root (sudo $0), or give DESTDIR to stage elsewhere"
  exit 1
fi

if [ -z "$bin" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  ./scripts/bootstrap.sh
  log "building the release binary"
  cargo build --release --locked -p knock-loader
  bin=target/release/xknock
fi
[ -x "$bin" ] || { log "$bin is not an executable: build it first, or leave XKNOCK_BIN unset"; exit 1; }

sbin="$destdir$prefix/sbin"
unit_dir="$destdir/etc/systemd/system"
conf_dir="$destdir/etc/xknock"
install -d -m 0755 "$sbin" "$unit_dir"
[ -d "$conf_dir" ] || install -d -m 0755 "$conf_dir"

# Through a new file and a rename: a running xknock keeps its old binary, and nothing
# ever sees half a binary.
install -m 0755 "$bin" "$sbin/.xknock.new"
mv -f "$sbin/.xknock.new" "$sbin/xknock"
log "installed $sbin/xknock"

sed "s|/usr/local/sbin/xknock|$prefix/sbin/xknock|g" dist/xknock.service >"$unit_dir/.xknock.service.new"
chmod 0644 "$unit_dir/.xknock.service.new"
mv -f "$unit_dir/.xknock.service.new" "$unit_dir/xknock.service"
log "installed $unit_dir/xknock.service"

# The configuration is the administrator's: never replaced. Mode 0600, as it may come
# to hold SPA keys.
if [ -e "$conf_dir/xknock.toml" ]; then
  log "kept $conf_dir/xknock.toml (the example is dist/xknock.toml)"
else
  install -m 0600 dist/xknock.toml "$conf_dir/xknock.toml"
  log "installed the example configuration $conf_dir/xknock.toml: edit it (interface, knocks, allow)"
fi

# /run/systemd/system exists only when systemd is the running init (sd_booted(3)).
if [ -n "$destdir" ]; then
  log "DESTDIR given: run systemctl daemon-reload where the files end up"
elif [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  log "systemctl daemon-reload done"
else
  log "systemd is not running here (not PID 1): no daemon-reload; run it on the machine that boots with it"
fi
log "next: xknock check --config /etc/xknock/xknock.toml, then systemctl enable --now xknock"
