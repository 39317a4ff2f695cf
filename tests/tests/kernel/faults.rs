//! Fail closed in the kernel's maps: the expiry sweep racing a renewal removes only
//! what is still expired. (The faults made to happen to `run` end to end are in
//! tests/tests/hosts/faults.rs.)

use std::time::Duration;

use xknock_tests::harness::Harness;

#[test]
fn the_expiry_sweep_removes_only_what_is_still_expired() {
    let mut h = Harness::new();
    let key = xknock::net::source_key("198.18.0.7".parse().expect("addr"), 0);
    let now = h.now_ns();
    let auth =
        |expires_ns| knock_common::Authorization::new(now - 1, expires_ns, knock_common::Origin::Knock);
    // Renewed in place by a re-knock after the sweep read it as expired.
    h.state
        .authorize(&key, &auth(now + 5_000_000_000))
        .expect("authorize");
    assert!(
        !h.state.unauthorize_expired(&key, now).expect("sweep"),
        "a renewal stays"
    );
    assert!(h.authorized("198.18.0.7", 0), "and admits");
    h.advance(Duration::from_secs(10));
    assert!(
        h.state.unauthorize_expired(&key, h.now_ns()).expect("sweep"),
        "expired: removed"
    );
    assert!(
        !h.state.unauthorize_expired(&key, h.now_ns()).expect("sweep"),
        "gone: nothing to remove"
    );
}
