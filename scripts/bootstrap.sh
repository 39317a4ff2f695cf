#!/usr/bin/env bash
# Installs whatever is missing to build and test xknock on a Debian 12 machine, and
# does nothing when everything is present. Both README commands call it.
# Needs root for apt-get (the demo and the tests need root anyway).
set -euo pipefail

cd "$(dirname "$0")/.."

# The eBPF object and the host code are built by one pinned nightly: aya 0.16 needs
# rustc 1.98, and rustc must use the same LLVM major (22) as bpf-linker. 1.99 nightlies
# moved to LLVM 23, so this stays on a 1.98 nightly.
TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
BPF_LINKER_VERSION=0.13.0
LLVM_PREFIX=/usr/lib/llvm-22

# Debian packages: LLVM 22 for bpf-linker, and the real peers the tests and demo use.
APT_PACKAGES=(
  llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev   # bpf-linker against LLVM 22
  iproute2 bpftool ethtool                             # namespaces, veth, map dumps, stats
  openssh-server openssh-client                        # the protected service
  knockd nmap hping3 fwknop-client                     # third-party clients, floods
  iputils-ping curl netcat-openbsd python3             # stock tools knocking, a web server
  iptables nftables                                    # the alternatives benchmarked
  etcd-server etcd-client                              # the fleet: a real etcd cluster
  protobuf-compiler libprotobuf-dev                    # protoc and its well-known types (etcd-client)
  dpkg-dev lintian man-db                              # cargo xtask deb, and its checks
)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

missing_packages() {
  local p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this as root (or install them)"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages' services (sshd, knockd) from starting on the host:
  # the tests run their own copies inside private network namespaces.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" -eq 1 ] && rm -f "$policy"
  return 0
}

install_toolchain() {
  if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
    ! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src'; then
    log "installing Rust $TOOLCHAIN"
    # Reads rust-toolchain.toml (channel, components, targets); RUSTUP_AUTO_INSTALL=0
    # means nothing else would download it.
    rustup toolchain install
  fi
}

install_bpf_linker() {
  local have
  have=$(bpf-linker --version 2>/dev/null | awk '{print $2}') || true
  [ "$have" = "$BPF_LINKER_VERSION" ] && return
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
  # Built with the pinned toolchain so that its LLVM and rustc's agree.
  LLVM_PREFIX=$LLVM_PREFIX cargo +"$TOOLCHAIN" install --locked --force \
    bpf-linker --version "$BPF_LINKER_VERSION" --no-default-features --features llvm-22
}

install_packages
install_toolchain
install_bpf_linker
log "ready"
