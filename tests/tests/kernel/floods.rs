//! What keeps a flood from costing correctness, through `BPF_PROG_TEST_RUN`: the
//! per-CPU budget of knock and reset events (rare events are never limited), the
//! suppression counters, one-time lines spent in the kernel, time-based slots that
//! end without `run`, and the origin every authorization records.

use std::{path::Path, time::Duration};

use knock_common::{Counter, EventKind, OneTimeId, OpenFailure, Origin};
use xknock::{
    config::Config,
    daemon::{
        event::{Event, Kind, Opener},
        events::Events,
    },
    net::source_key,
};
use xknock_tests::{
    cpu::{pin, unpin},
    frame::Frame,
    harness::{A, B, Harness, SSH, ssh_knocks},
};

/// Runs `f` on one CPU: the event budget is per CPU.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    let before = pin(0);
    let out = f();
    unpin(&before);
    out
}

fn kinds(h: &mut Harness, kind: EventKind) -> usize {
    h.events().iter().filter(|e| e.kind == kind as u8).count()
}

#[test]
fn knock_events_stay_within_the_budget_and_the_rest_are_counted() {
    let mut h = Harness::new();
    on_one_cpu(|| {
        // Two events a second, a burst of two.
        h.set_event_budget(500_000_000, 1_000_000_000);
        for i in 0..5 {
            h.knock(&[Frame::syn(&format!("198.18.3.{i}"), 7000)]);
        }
        assert_eq!(kinds(&mut h, EventKind::Knock), 2, "the burst");
        assert_eq!(h.counter(Counter::SuppressedKnock), 3);
        assert_eq!(h.step("198.18.3.4", SSH), Some(1), "suppressed, not ignored");

        // Budget spent: a completed sequence still says so, and its knocks do not.
        h.knock(&ssh_knocks(A));
        let events = h.events();
        assert!(events.iter().all(|e| e.kind != EventKind::Knock as u8));
        assert_eq!(
            events.iter().filter(|e| e.kind == EventKind::Open as u8).count(),
            1,
            "an open is never limited"
        );
        assert_eq!(h.counter(Counter::SuppressedKnock), 6);

        // Half a second buys one more; resets share the budget.
        h.advance(Duration::from_millis(500));
        h.knock(&[Frame::syn(B, 7000), Frame::syn(B, 9000), Frame::syn(B, 9000)]);
        let made: Vec<_> = h.events().iter().map(|e| e.kind).collect();
        assert_eq!(made, [EventKind::Knock as u8], "one event's credit");
        assert_eq!(h.counter(Counter::SuppressedReset), 1);

        // A budget of nothing (rate 0): no per-packet event at all.
        h.set_event_budget(u64::MAX, 0);
        h.advance(Duration::from_secs(10));
        h.knock(&[Frame::syn("198.18.3.9", 7000)]);
        assert_eq!(kinds(&mut h, EventKind::Knock), 0);
    });
    assert_eq!(h.counter(Counter::EventsLost), 0);
}

#[test]
fn a_one_time_line_opens_once_even_with_nobody_to_replace_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("otp");
    std::fs::write(&file, "7000,8000/udp,9000\n7001,7002\n").expect("write");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let toml = format!(
        "[[sequence]]\nname = \"door\"\none_time_sequences = \"{}\"\nprotect = [\"22/tcp\"]\n",
        file.display()
    );
    let config = Config::parse(Path::new("t.toml"), &toml).expect("valid");
    let id = config.sequences[0].one_time_id().expect("one-time");
    let mut h = Harness::with_config(&toml);

    h.knock(&ssh_knocks(A));
    assert!(h.authorized(A, 0), "the line opens");
    assert_eq!(h.state.spent.get(&OneTimeId { id }, 0).ok(), Some(h.now_ns()));
    h.events();

    // Replayed from another source, with no `run` to load the next line.
    h.knock(&ssh_knocks(B));
    assert!(!h.authorized(B, 0), "a used line never opens again");
    assert_eq!(h.counter(Counter::OneTimeSpent), 1);
    let failed: Vec<_> = h
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::OpenFailed as u8)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].reason, OpenFailure::Spent as u8);

    // Writing the same line again (a reload, a restart) does not bring it back: the
    // record is by identity, and only `run` removes it once the line is replaced.
    h.state.apply(&config).expect("apply again");
    h.knock(&ssh_knocks(B));
    assert!(!h.authorized(B, 0));
    h.state.spent.remove(&OneTimeId { id }).expect("remove");
    h.knock(&ssh_knocks(B));
    assert!(h.authorized(B, 0), "the record is what closed it");
}

#[test]
fn every_authorization_records_what_made_it() {
    let mut h = Harness::new();
    h.knock(&ssh_knocks(A));
    h.state
        .allow(B.parse().expect("addr"), SSH, Duration::from_secs(60))
        .expect("allow");
    let origin = |addr: &str| {
        let key = source_key(addr.parse().expect("addr"), SSH);
        h.state.authorized.get(&key, 0).expect("authorized").origin
    };
    assert_eq!(origin(A), Origin::Knock as u8);
    assert_eq!(origin(B), Origin::Allow as u8);
}

#[test]
fn opens_and_bans_the_rings_lost_are_reported_from_the_maps_once_each() {
    let mut h = Harness::with_config(&format!(
        "{}\n[ban]\nfailures = 1\nban_for = \"1h\"\n",
        xknock_tests::harness::CONFIG
    ));
    let mut events = Events::new(&h.state).expect("events");
    /// The sweep's events of kind `what`.
    fn said(events: &mut Events, h: &mut Harness, what: &str) -> Vec<Event> {
        let found = events.sweep(&mut h.state).expect("sweep");
        found.into_iter().filter(|e| e.name() == what).collect()
    }
    h.knock(&ssh_knocks(A));
    // Read and thrown away: as if the ring had overflowed.
    let lost = h.events();
    let opens = said(&mut events, &mut h, "open");
    assert_eq!(opens.len(), 1, "{opens:?}");
    let Kind::Open {
        sequence,
        reason,
        open_for,
        ..
    } = &opens[0].kind
    else {
        panic!("{opens:?}");
    };
    assert_eq!(*reason, Opener::Knock, "its real reason, not `allow`");
    assert_eq!(sequence, "ssh");
    assert_eq!(*open_for, Duration::from_secs(30));
    assert!(opens[0].render(true).contains(r#""reason":"knock""#));
    let late = lost
        .iter()
        .find(|e| e.kind == EventKind::Open as u8)
        .expect("open event");
    assert!(
        events.from_kernel(late, h.now_ns()).is_none(),
        "the ring's late copy is not said again"
    );
    assert!(said(&mut events, &mut h, "open").is_empty());

    // A renewal whose event is lost is an open too.
    h.advance(Duration::from_secs(1));
    h.knock(&ssh_knocks(A));
    h.events();
    assert_eq!(said(&mut events, &mut h, "open").len(), 1, "the renewal");

    // A ban (two failures) whose event is lost.
    h.knock(&[
        Frame::syn(B, 7000),
        Frame::syn(B, 9000),
        Frame::syn(B, 7000),
        Frame::syn(B, 9000),
    ]);
    assert!(h.banned(B));
    h.events();
    let bans = said(&mut events, &mut h, "ban");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].source.to_string(), B);
    assert!(said(&mut events, &mut h, "ban").is_empty());
}
