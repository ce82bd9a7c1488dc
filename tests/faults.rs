//! The short fault matrix (bench/faults.py --quick) as part of the suite: kiln killed with
//! SIGTERM and SIGKILL while provisioning, in a host script and while storing, and two builds of
//! one name committing into one store against a gc loop. The full matrix runs before a release;
//! its last table is in docs/reliability.md.

use std::process::Command;

#[test]
fn the_quick_fault_matrix_holds() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/bench/faults.py"))
        .arg("--quick")
        .env("KILN_BIN", env!("CARGO_BIN_EXE_kiln"))
        .env_remove("KILN_STORE")
        .env_remove("KILN_FAILPOINT")
        .output()
        .expect("python3 runs bench/faults.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("6 of 6 kill points held"), "{text}");
    assert!(
        text.contains("2 of 2 concurrent commits survived"),
        "{text}"
    );
}
