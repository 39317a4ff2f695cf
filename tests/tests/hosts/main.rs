//! The hosts tier: the real `xknock` binary (target/<profile>/xknock: `cargo build`
//! first, as scripts/test.sh does) end to end between network namespaces, with
//! OpenSSH's sshd behind `xknock run`. Needs root (namespaces, bpffs mounts, XDP); as
//! another user every test fails saying so.
//!
//! The machine has two cores, so every test that starts hosts holds
//! `xknock_tests::setup::SERIAL` for its whole run: one end-to-end test at a time, as
//! when each module was a binary of its own. Names (namespaces, interfaces, temporary
//! directories) are unique per process and call (`xknock_tests::unique`).
//!
//! `netns` (knock, connect, the clients, signals, bans, stealth), `spoof` (the
//! spoofed-lockout attack), `spa`, `fwknop` (fwknop's real client), `timed`, `floods` (hping3's random-source flood),
//! `onetime`, `kinds` (passing and ICMP knocks from curl, nc and ping), `lifecycle`
//! (restart, upgrade, `down`, reload, interfaces), `faults` (fail closed), `commands`
//! (on_open and on_close), `metrics` and `fleet` (two hosts sharing authorizations
//! through a three-member etcd cluster).

mod commands;
mod faults;
mod fleet;
mod floods;
mod fwknop;
mod kinds;
mod lifecycle;
mod metrics;
mod netns;
mod onetime;
mod spa;
mod spoof;
mod timed;
