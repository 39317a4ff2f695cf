//! The fleet (issue 16) end to end, on `xknock_tests::fleet::Fleet`: a three-member
//! etcd cluster, servers A and B running sshd behind `xknock run` with the same
//! `[fleet]`, a client C with one address toward both, and a probe P that never
//! knocks and is never answered.
//!
//! The first test checks the rig itself, with no `[fleet]` section: etcd, its outages
//! and compaction, the cut-off, and two independent hosts. The others are the fleet's
//! scenarios: what one host authorizes (knock, SPA) opens the other, a revocation on
//! either ends it on both, a nonce is spent fleet-wide, sharing survives etcd's
//! outages and resumes by itself, and a watch broken across a compaction loses no
//! deletion.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use xknock::spa::ClientKey;
use xknock_tests::{
    fleet::{A, B, Fleet, Options, SEQUENCE, WAIT, is},
    setup::SERIAL,
};

use crate::spa::{PORT as SPA_PORT, alice, sealed};

/// The client: 198.19.0.10 toward both servers.
const C: usize = 0;
/// How long B may take to hear of what A did once etcd is back (or B is back on
/// etcd): a reconnect, a full listing.
const RESUME: Duration = Duration::from_secs(15);

#[test]
fn the_rig_runs_etcd_and_two_independent_hosts() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut f = Fleet::new(&Options {
        fleet: false,
        ..Options::default()
    });
    let probe = f.probe();
    let (a_ns, b_ns) = (f.servers[A].ns.name.clone(), f.servers[B].ns.name.clone());
    let key = format!("{}/rig", f.prefix);

    // One cluster, seen alike from both servers.
    let (ok, out) = f.etcdctl_in(&a_ns, &["put", &key, "one"]);
    assert!(ok, "put from a: {out}");
    let (ok, out) = f.etcdctl_in(&b_ns, &["get", &key, "--print-value-only"]);
    assert!(ok && out.trim() == "one", "get from b: {out}");
    let (ok, out) = f.etcdctl_in(&b_ns, &["member", "list"]);
    assert!(ok && out.lines().count() == 3, "three members: {out}");

    // One member killed: the other two are a quorum; back on its data, it catches up.
    f.kill_member(0);
    assert!(!f.member_running(0));
    // (If it led, the others elect a leader first.)
    f.wait_etcd_healthy(A);
    let (ok, out) = f.etcdctl_in(&a_ns, &["put", &key, "two"]);
    assert!(ok, "put with a member down: {out}");
    f.start_member(0);
    f.wait_etcd_healthy(A);
    let (ok, out) = f.etcdctl_in(&a_ns, &["endpoint", "status", "-w", "json"]);
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(&out).expect("endpoint status JSON");
    let revisions: Vec<i64> = status
        .as_array()
        .expect("one status per endpoint")
        .iter()
        .map(|s| s["Status"]["header"]["revision"].as_i64().expect("revision"))
        .collect();
    assert_eq!(revisions.len(), 3, "{out}");

    // All killed: nothing answers; all back: the data is kept.
    f.kill_all_members();
    let (ok, _) = f.etcdctl_in(&b_ns, &["get", &key]);
    assert!(!ok, "no etcd with every member down");
    f.start_all_members();
    f.wait_etcd_healthy(A);
    f.wait_etcd_healthy(B);
    assert_eq!(f.get(&key).as_deref(), Some("two"), "kept across the outage");

    // Compaction: the old revisions are gone.
    let before = f.revision();
    f.etcdctl(&["put", &key, "three"]);
    let compacted = f.compact();
    assert!(compacted > before, "{compacted} > {before}");
    let (ok, out) = f.etcdctl_in(&a_ns, &["get", &key, "--rev", &before.to_string()]);
    assert!(
        !ok && out.contains("compacted"),
        "a read below the compaction: {out}"
    );

    // B cut off etcd, and back: a watch in B hears nothing meanwhile, and one that
    // resumes below a compaction is refused, as the fleet's watcher will be.
    let watched = format!("{}/watched/", f.prefix);
    let watch = f.watch(B, &watched, Some(f.revision() + 1));
    f.etcdctl(&["put", &format!("{watched}1"), "before"]);
    watch.wait_for("before");
    f.cut_etcd(B);
    let (ok, _) = f.etcdctl_in(&b_ns, &["get", &key]);
    assert!(!ok, "b is cut off");
    let (ok, out) = f.etcdctl_in(&a_ns, &["put", &format!("{watched}2"), "cut"]);
    assert!(ok, "a is not: {out}");
    f.etcdctl(&["del", "--prefix", &watched]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !watch.text().contains("cut"),
        "b's watch heard nothing: {}",
        watch.text()
    );
    f.compact();
    f.restore_etcd(B);
    f.wait_etcd_healthy(B);
    watch.wait_for("compacted");
    drop(watch);
    let fresh = f.watch(B, &watched, Some(f.revision() + 1));
    f.etcdctl(&["put", &format!("{watched}3"), "after"]);
    fresh.wait_for("after");
    drop(fresh);

    // The hosts: closed to C; a knock on A opens A, not B (no [fleet]).
    let client = f.clients[C].addr;
    assert!(
        !f.reachable(C, A) && !f.reachable(C, B),
        "closed before any knock"
    );
    let (a0, b0) = (f.seen(A), f.seen(B));
    f.knock(C, A);
    let open = f.wait_open(A, a0, client, "knock");
    assert_eq!(open["sequence"], SEQUENCE, "{open}");
    assert!(f.reachable(C, A), "a open for c");
    assert!(!f.reachable(C, B), "b did not see the knock");
    f.assert_no_event(B, b0, Duration::ZERO, "an open", |e| e["event"] == "open");

    // B sees C under the same address: a knock on B opens B for it.
    f.knock(C, B);
    f.wait_open(B, b0, client, "knock");
    assert!(f.reachable(C, B), "b open for c");
    let status = f.status(B);
    assert_eq!(status["authorized"][0]["source"], client.to_string(), "{status}");

    // A revocation on B is B's alone.
    let b1 = f.seen(B);
    let out = f.revoke(B, client);
    assert!(out.contains("revoked 1"), "{out}");
    f.wait_close(B, b1, client, "revoked");
    assert!(!f.reachable(C, B), "b closed again");
    assert!(f.reachable(C, A), "a still open");

    // A restarted run adopts A's authorization.
    f.restart_run(A);
    assert!(f.reachable(C, A), "a still open after its run restarted");
    assert!(f.run_alive(A) && f.run_alive(B));
    probe.assert_never_answered("the rig");
}

/// The entry of `xknock status --json`'s `authorized` for `source`.
fn authorized(status: &Value, source: IpAddr) -> Option<&Value> {
    status["authorized"]
        .as_array()?
        .iter()
        .find(|a| a["source"] == source.to_string())
}

/// Waits (`WAIT`) until the keys under the fleet's prefix + `under` are none
/// (`present` false) or some (`present` true).
fn wait_keys(f: &Fleet, under: &str, present: bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let keys = f.keys(under);
        if keys.is_empty() != present {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keys under {}{under} after {WAIT:?}: {keys:?} (wanted {})\n{}",
            f.prefix,
            if present { "some" } else { "none" },
            f.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_knock_or_a_request_on_one_host_opens_both_and_a_revocation_on_either_ends_both() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let keys = tempfile::tempdir().expect("temp dir");
    // One client key on both hosts; each its own replay file.
    let (stanza, key_file) = alice(keys.path());
    let extra = format!("\n[spa]\nport = {SPA_PORT}\nreplay_file = \"@DIR@/replay\"\n{stanza}");
    let mut f = Fleet::new(&Options {
        extra,
        ..Options::default()
    });
    let probe = f.probe();
    let client = f.clients[C].addr;
    assert!(
        !f.reachable(C, A) && !f.reachable(C, B),
        "closed before any knock"
    );

    // A knock on A opens A, and B through etcd, for the same address.
    let (a0, b0) = (f.seen(A), f.seen(B));
    f.knock(C, A);
    let own = f.wait_open(A, a0, client, "knock");
    assert_eq!(own["sequence"], SEQUENCE, "{own}");
    let shared = f.wait_open(B, b0, client, "fleet");
    assert_eq!(shared["sequence"], SEQUENCE, "{shared}");
    assert_eq!(shared["origin"], "a", "b says who opened it: {shared}");
    assert!(f.reachable(C, A), "a open for c");
    assert!(f.reachable(C, B), "b open for c, which never knocked on b");
    assert_eq!(
        f.keys("/auth/"),
        [format!("{}/auth/{client}/{SEQUENCE}", f.prefix)],
        "one key: address and sequence name"
    );

    // B's status shows where it came from.
    let status = f.status(B);
    let entry = authorized(&status, client).unwrap_or_else(|| panic!("c authorized on b: {status}"));
    assert_eq!(entry["sequence"], SEQUENCE, "{status}");
    assert_eq!(entry["origin"], "a", "{status}");

    // A revocation on B (of what A granted) ends it on both.
    let (a1, b1) = (f.seen(A), f.seen(B));
    f.revoke(B, client);
    f.wait_close(B, b1, client, "revoked");
    f.wait_close(A, a1, client, "revoked");
    assert!(!f.reachable(C, B), "b closed for new connections");
    assert!(!f.reachable(C, A), "a closed for new connections");
    wait_keys(&f, "/auth/", false);

    // One SPA datagram: to A it opens A and B; the same bytes to B are a replay.
    let key = ClientKey::load(&key_file).expect("key file");
    let datagram = sealed(&key, None, SystemTime::now());
    let (a2, b2) = (f.seen(A), f.seen(B));
    f.send_udp(C, A, SPA_PORT, datagram.clone());
    let own = f.wait_open(A, a2, client, "spa");
    assert_eq!(own["client"], "alice", "{own}");
    let shared = f.wait_open(B, b2, client, "fleet");
    assert_eq!(shared["origin"], "a", "{shared}");
    assert!(f.reachable(C, B), "b open after the request to a");
    // A claimed the nonce in etcd.
    wait_keys(&f, "/nonce/", true);
    f.send_udp(C, B, SPA_PORT, datagram);
    let refused = f.wait_event(B, b2, WAIT, "spa_rejected (replayed)", |e| {
        e["event"] == "spa_rejected" && e["reason"] == "replayed"
    });
    assert_eq!(refused["source"], client.to_string(), "{refused}");
    f.assert_no_event(B, b2, Duration::ZERO, "an open of its own for the replay", |e| {
        is(e, "open", client) && e["reason"] != "fleet"
    });

    // Both hosts grant the same source: B's knock now lasts longer than A's SPA
    // grant, so B's record replaces A's in etcd and A installs it.
    let (a3, b3) = (f.seen(A), f.seen(B));
    f.knock(C, B);
    f.wait_open(B, b3, client, "knock");
    let from_b = f.wait_open(A, a3, client, "fleet");
    assert_eq!(from_b["origin"], "b", "{from_b}");
    // A revocation on A still ends it on both, whoever wrote the record last.
    let (a4, b4) = (f.seen(A), f.seen(B));
    f.revoke(A, client);
    f.wait_close(A, a4, client, "revoked");
    f.wait_close(B, b4, client, "revoked");
    assert!(!f.reachable(C, A) && !f.reachable(C, B), "closed on both");
    wait_keys(&f, "/auth/", false);

    assert!(f.run_alive(A) && f.run_alive(B), "both runs still running");
    probe.assert_never_answered("sharing");
}

#[test]
fn sharing_rides_out_etcd_outages_and_a_watch_broken_across_a_compaction_loses_no_deletion() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut f = Fleet::new(&Options::default());
    let probe = f.probe();
    let client = f.clients[C].addr;

    // One member down (the first endpoint of both hosts): a quorum is left.
    f.kill_member(0);
    let (a0, b0) = (f.seen(A), f.seen(B));
    f.knock(C, A);
    f.wait_open(A, a0, client, "knock");
    let shared = f.wait_open(B, b0, client, "fleet");
    assert_eq!(shared["origin"], "a", "{shared}");
    assert!(f.reachable(C, B), "b open with a member down");
    f.start_member(0);
    f.wait_etcd_healthy(A);

    // A revocation on A (of its own) ends it on B too.
    let (a1, b1) = (f.seen(A), f.seen(B));
    f.revoke(A, client);
    f.wait_close(A, a1, client, "revoked");
    f.wait_close(B, b1, client, "revoked");
    assert!(!f.reachable(C, B), "b closed");
    wait_keys(&f, "/auth/", false);

    // Every member down: A opens for itself; B cannot hear of it; both keep running.
    f.kill_all_members();
    let (a2, b2) = (f.seen(A), f.seen(B));
    f.knock(C, A);
    f.wait_open(A, a2, client, "knock");
    assert!(f.reachable(C, A), "a opens without etcd");
    assert!(!f.reachable(C, B), "b closed: nothing reached it");
    f.assert_no_event(B, b2, Duration::from_secs(1), "an open without etcd", |e| {
        is(e, "open", client)
    });
    assert!(f.run_alive(A) && f.run_alive(B), "both runs ride out the outage");

    // The members back: sharing resumes by itself, with what A granted meanwhile.
    f.start_all_members();
    f.wait_etcd_healthy(A);
    let shared = f.wait_event(
        B,
        b2,
        RESUME,
        "open (fleet) for what a granted during the outage",
        |e| is(e, "open", client) && e["reason"] == "fleet",
    );
    assert_eq!(shared["origin"], "a", "{shared}");
    assert!(f.reachable(C, B), "b open once etcd is back");

    // B cut off etcd (its watch broken); A revokes; etcd compacts past the deletion,
    // so no watch can replay it: back on etcd, B must still close.
    f.cut_etcd(B);
    let (a3, b3) = (f.seen(A), f.seen(B));
    f.revoke(A, client);
    f.wait_close(A, a3, client, "revoked");
    wait_keys(&f, "/auth/", false);
    let rev = f.compact();
    let (ok, out) = f.etcdctl_in(
        &f.etcd.ns.name,
        &["get", &f.prefix, "--rev", &(rev - 1).to_string()],
    );
    assert!(
        !ok && out.contains("compacted"),
        "the deletion's history is gone: {out}"
    );
    // (B still holds it, knowing nothing: what follows is B catching up.)
    f.assert_no_event(B, b3, Duration::ZERO, "a close while cut off", |e| {
        is(e, "close", client)
    });
    assert!(f.reachable(C, B), "b keeps what it has while cut off");
    f.restore_etcd(B);
    f.wait_event(B, b3, RESUME, "close (revoked) for the deletion it missed", |e| {
        is(e, "close", client) && e["reason"] == "revoked"
    });
    assert!(!f.reachable(C, B), "b closed for new connections");
    assert!(!f.reachable(C, A), "a closed for new connections");
    assert!(f.run_alive(A) && f.run_alive(B), "both runs still running");
    probe.assert_never_answered("outages");
}
