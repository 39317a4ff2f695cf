//! The receivers the benchmark measures: xknock, the empty XDP program, and the
//! netfilter rulesets behind it, each on a fresh veth pair.

use aya::{Ebpf, programs::Xdp};
use xknock_tests::harness::Harness;

use crate::rig::{Netfilter, Pair, attach_native};

/// The benchmark's sequences (the same ports as the netfilter rulesets' and knockd's;
/// long timeouts), with the clock and bans out of the way.
pub const SEQUENCES: &str = r#"
[[sequence]]
name = "ssh"
knocks = ["7000/tcp", "8000/udp", "9000/tcp"]
protect = ["22/tcp"]
open_for = "1h"
step_timeout = "1h"
sequence_timeout = "1h"

[[sequence]]
name = "one"
knocks = ["6000/udp"]
protect = ["2222/tcp"]
open_for = "1h"

# Passing and ICMP knocks: 443 serves, so its visitors feed the state machine.
[[sequence]]
name = "web"
knocks = ["443/tcp:pass", "64/icmp", "6100/udp"]
protect = ["2200/tcp"]
open_for = "1h"

[ban]
failures = 0
"#;

/// Room for a million sources in progress and authorized (the default is 65,536 and
/// 16,384).
pub const LIMITS: &str = r"
[limits]
in_progress = 1048640
authorized = 1048640
";

/// Loads a fresh empty program (each live run attaches its own); `empty_program`
/// finds it in the object.
pub fn load_empty_program() -> Ebpf {
    let mut ebpf = Ebpf::load(crate::PASS_OBJECT).expect("load the empty program");
    empty_program(&mut ebpf).load().expect("the empty program loads");
    ebpf
}

pub fn empty_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut("xdp_pass")
        .expect("xdp_pass")
        .try_into()
        .expect("xdp")
}

/// A veth pair whose receiver runs the empty XDP program (veth hands XDP_TX frames
/// only to a peer with an XDP program). Keep the Ebpf while measuring.
pub fn passing_pair() -> (Pair, Ebpf) {
    let pair = Pair::new();
    let mut pass = load_empty_program();
    attach_native(&pair, empty_program(&mut pass));
    (pair, pass)
}

/// A passing pair whose receiver runs `nf` behind the empty program.
pub fn netfilter_pair(nf: Netfilter) -> (Pair, Ebpf) {
    let (pair, pass) = passing_pair();
    nf.install(&pair);
    (pair, pass)
}

/// xknock with the benchmark's sequences and default [limits] on the real clock,
/// ready to attach.
pub fn xknock_harness() -> Harness {
    xknock_harness_with(SEQUENCES)
}

/// The same with LIMITS: room for every source the generator has, and for the
/// in-kernel part's million.
pub fn xknock_harness_large() -> Harness {
    xknock_harness_with(&format!("{SEQUENCES}{LIMITS}"))
}

pub fn xknock_harness_with(config: &str) -> Harness {
    let mut h = Harness::with_config(config);
    // The frozen test clock would skip the clock helper the real path pays for.
    h.state.set_test_clock(None).expect("real clock");
    h
}

/// A veth pair whose receiver runs xknock (xknock_harness).
pub fn xknock_pair() -> (Pair, Harness) {
    xknock_pair_with(xknock_harness())
}

pub fn xknock_pair_with(mut h: Harness) -> (Pair, Harness) {
    let pair = Pair::new();
    attach_native(&pair, h.program_mut());
    (pair, h)
}

#[cfg(test)]
mod tests {
    /// The verifier takes both of the benchmark's programs (needs root).
    #[test]
    fn the_benchmark_programs_load() {
        xknock_tests::require_root();
        for (object, name) in [(crate::PASS_OBJECT, "xdp_pass"), (crate::GEN_OBJECT, "xdp_gen")] {
            let mut ebpf = aya::Ebpf::load(object).unwrap_or_else(|e| panic!("{name} object: {e}"));
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(name)
                .expect("the program")
                .try_into()
                .expect("an XDP program");
            prog.load()
                .unwrap_or_else(|e| panic!("the verifier refused {name}: {e}"));
        }
    }
}
