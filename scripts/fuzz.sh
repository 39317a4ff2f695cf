#!/usr/bin/env bash
# A long fuzzing run: the XDP program (BPF_PROG_TEST_RUN) against the reference model
# (tests/src/model.rs), then the config parser on mutated configs (a tenth as many).
# Needs root.
#   ./scripts/fuzz.sh [FRAMES] [SEED]      defaults: 50 million frames, a random seed
# A failure prints the frame (hex) and the seed; add the frame to REGRESSIONS in
# tests/tests/kernel/fuzz.rs once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "fuzz.sh: loads XDP programs; run as root" >&2
  exit 1
fi
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/bootstrap.sh
export XKNOCK_FUZZ_FRAMES=${1:-50000000}
export XKNOCK_FUZZ_SEED=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "fuzz.sh: $XKNOCK_FUZZ_FRAMES frames, seed $XKNOCK_FUZZ_SEED"
export XKNOCK_CONFIG_FUZZ=$((XKNOCK_FUZZ_FRAMES / 10))
# The fuzz module of the kernel tier, and the config fuzzer of the unprivileged tier.
cargo test --release --locked -p xknock-tests --test kernel -- --nocapture fuzz::
cargo test --release --locked -p knock-loader --test unprivileged -- --nocapture config_fuzz::
