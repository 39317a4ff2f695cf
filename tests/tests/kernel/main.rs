//! The kernel tier: xknock's XDP program through `BPF_PROG_TEST_RUN`, each test on a
//! harness of its own (a private bpffs, maps and program, time moved by hand), so
//! they run in parallel. Needs root (to load programs); as another user every test
//! fails saying so.
//!
//! `parse` (verdicts for crafted frames, truncation, the counters, the verifier's
//! headroom), `knock` (the state machine), `kinds` (passing and ICMP knocks),
//! `defences` (bans, `wrong_knock`, limits), `spa` (the kernel's half of Single Packet
//! Authorization), `timed` (time-based sequences), `floods` (the event budget,
//! one-time lines, origins), `faults` (the expiry sweep racing a renewal) and `fuzz`
//! (the differential fuzzer against the reference model; scripts/fuzz.sh runs a long
//! one).

mod defences;
mod faults;
mod floods;
mod fuzz;
mod kinds;
mod knock;
mod parse;
mod spa;
mod timed;
