//! `run --metrics ADDR`: an address it cannot take is refused, with the forms it
//! takes, before anything is loaded (so no root is needed). The metrics themselves are
//! tested end to end in tests/tests/hosts/metrics.rs.

use crate::xknock_bin;

#[test]
fn a_bad_metrics_address_is_refused_with_the_forms_it_takes() {
    let out = std::process::Command::new(xknock_bin())
        .args(["run", "--metrics", "localhost:9464"])
        .output()
        .expect("run xknock");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics") && err.contains("is not PORT (on 127.0.0.1) or ADDR:PORT"),
        "{err}"
    );
}
