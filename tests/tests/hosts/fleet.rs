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

use std::time::Duration;

use serde_json::Value;
use xknock_tests::{
    fleet::{A, B, Fleet, Options, SEQUENCE},
    setup::SERIAL,
};

/// The client: 198.19.0.10 toward both servers.
const C: usize = 0;

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
