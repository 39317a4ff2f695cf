#!/usr/bin/env bash
# Runs every test: unit tests and the unprivileged tests, the kernel tests through
# BPF_PROG_TEST_RUN, and the end-to-end tests in private network namespaces. Needs
# root. Installs what is missing first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the tests load XDP programs and create network namespaces; run as root (sudo -E $0)" >&2
  exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/bootstrap.sh

# Formatting is part of the change: a diff rustfmt would make fails here.
cargo fmt --all -- --check
# The loader's binary is what the end-to-end tests run, so build it first.
cargo build --locked
# The client alone, as users build it for their machines: it builds without the
# daemon feature and depends on neither aya nor etcd-client (in a target dir of its
# own, so that target/debug/xknock stays the build the tests run).
cargo build --locked -p knock-loader --no-default-features --target-dir target/client
if cargo tree --locked -p knock-loader --no-default-features -e normal | grep -qE ' (aya|etcd-client)'; then
  echo "test.sh: the client-only build (--no-default-features) depends on aya or etcd-client" >&2
  exit 1
fi
# The Debian package, one of a later version for the upgrade test, and the client's
# archive: the package tier (tests/tests/package.rs) inspects and installs them.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' knock-loader/Cargo.toml | head -n 1)
cargo xtask deb
cargo xtask deb --version "$version+upgrade.test" --out target/deb/upgrade
cargo xtask client
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every tier, in one run: the tests that need neither root nor the kernel (unit tests
# and knock-loader/tests/unprivileged: what a plain `cargo test` of the default members
# runs, as any user), xknock-tests' kernel tests (tests/tests/kernel, through
# BPF_PROG_TEST_RUN) and hosts tests (tests/tests/hosts, network namespaces), and the
# benchmark's own (bench). The eBPF crates build for the BPF target only.
cargo test --locked --workspace --exclude knock-ebpf --exclude xknock-bench-ebpf "$@" 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "xknock: %d passed, %d failed\n", p, f }' "$log"
