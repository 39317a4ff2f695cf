#!/usr/bin/env bash
# The live demo: OpenSSH's sshd in a private network namespace behind `xknock run`;
# a client namespace tries to log in (times out), knocks, and logs in. Everything it
# creates (two namespaces, a veth pair, a private bpffs, a temp dir) is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: needs root for XDP and network namespaces (sudo -E $0)" >&2
  exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/bootstrap.sh
cargo build --locked --quiet 2>/dev/null || cargo build --locked
XKNOCK=$PWD/target/debug/xknock

id=$$
SRV=xkdemo-srv-$id CLI=xkdemo-cli-$id
TMP=$(mktemp -d /tmp/xknock-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$SRV" 2>/dev/null || true
  ip netns del "$CLI" 2>/dev/null || true
  umount "$TMP/bpf" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Two private hosts: $SRV (198.18.0.1, runs sshd) and $CLI (198.18.0.2)"
ip netns add "$SRV"
ip netns add "$CLI"
ip link add xkd0 netns "$SRV" type veth peer name xkd1 netns "$CLI"
ip -n "$SRV" addr add 198.18.0.1/24 dev xkd0
ip -n "$CLI" addr add 198.18.0.2/24 dev xkd1
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set xkd0 up
ip -n "$CLI" link set xkd1 up

mkdir -p /run/sshd "$TMP/bpf"
mount -t bpf bpf "$TMP/bpf"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$TMP/user_key"
cp "$TMP/user_key.pub" "$TMP/authorized_keys"
cat >"$TMP/sshd_config" <<CONF
Port 22
ListenAddress 198.18.0.1
HostKey $TMP/host_key
PidFile none
UsePAM no
PermitRootLogin prohibit-password
AuthorizedKeysFile $TMP/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
CONF
nsenter --net="/run/netns/$SRV" /usr/sbin/sshd -D -e -f "$TMP/sshd_config" 2>/dev/null &
PIDS+=($!)

step "xknock run on the server's interface with examples/xknock.toml"
cat examples/xknock.toml | grep -v '^#' | sed '/^$/d'
nsenter --net="/run/netns/$SRV" "$XKNOCK" run --config examples/xknock.toml \
  --iface xkd0 --pin-dir "$TMP/bpf/xknock" > >(sed -u 's/^/  [xknock run] /') 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ip -n "$SRV" link show xkd0 | grep -q xdp && break; sleep 0.1; done

SSH=(ssh -i "$TMP/user_key" -o BatchMode=yes -o ConnectTimeout=3
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@198.18.0.1)

step "Before knocking: ssh root@198.18.0.1 (port 22 is silently dropped)"
if ip netns exec "$CLI" "${SSH[@]}" true 2>&1 | sed 's/^/  /'; then
  echo "  unexpected: the connection succeeded"; exit 1
fi

step "Knocking: xknock knock 198.18.0.1 7000 8000/udp 9000"
ip netns exec "$CLI" "$XKNOCK" knock 198.18.0.1 7000 8000/udp 9000
sleep 0.3

step "After knocking: ssh root@198.18.0.1"
ip netns exec "$CLI" "${SSH[@]}" 'echo "  logged in over SSH: $(uname -sr)"'

step "xknock status (reads the pinned maps from another shell)"
"$XKNOCK" status --pin-dir "$TMP/bpf/xknock" | sed 's/^/  /'

step "Done: stopping xknock (SIGTERM detaches it) and cleaning up"
