#!/usr/bin/env bash
# Runs every test: unit tests, the kernel tests through BPF_PROG_TEST_RUN, and the
# end-to-end tests in private network namespaces. Needs root. Installs what is missing
# first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the tests load XDP programs and create network namespaces; run as root (sudo -E $0)" >&2
  exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/bootstrap.sh

# The loader's binary is what the end-to-end tests run, so build it first.
cargo build --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The default members' tests, and the benchmark's (bench: its charts, and that its
# XDP programs load). The eBPF crates build for the BPF target only.
cargo test --locked --workspace --exclude knock-ebpf --exclude xknock-bench-ebpf "$@" 2>&1 | tee "$log"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "xknock: %d passed, %d failed\n", p, f }' "$log"
