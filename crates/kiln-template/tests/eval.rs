//! Evaluated values of a template that exercises functions, for-expressions, splats, templates,
//! overrides and only/except.

use kiln_template::{load, LoadOptions};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/valid")
        .join(name)
}

#[test]
fn functions_fixture_evaluates_to_the_values_packer_gives() {
    // file() and fileexists() are relative to the working directory, as in Packer.
    let dir = fixture("");
    std::env::set_current_dir(&dir).expect("cd fixtures");
    let (plan, diags) = load(&dir.join("functions.pkr.hcl"), &LoadOptions::default());
    let plan = plan.unwrap_or_else(|| panic!("{diags}"));
    assert_eq!(plan.builds.len(), 1);
    let b = &plan.builds[0];
    assert_eq!(b.full_name, "qemu.renamed");
    assert_eq!(
        b.builder.get("vm_name").and_then(|v| v.as_str()),
        Some("override-renamed.qcow2")
    );
    assert_eq!(b.builder.get("memory").and_then(|v| v.as_u64()), Some(512));
    assert_eq!(
        b.builder.get("output_directory").and_then(|v| v.as_str()),
        Some("output-renamed")
    );
    let http = b.builder.get("http_content").expect("http_content");
    assert_eq!(http["/names"], "A,B");
    assert_eq!(
        http["/user-data"],
        "#cloud-config\nusers:\n  - name: kiln\n    ssh_authorized_keys:\n      - k1\n      - k2\n"
    );
    let inline = b.provisioners[0].component.get("inline").expect("inline");
    assert_eq!(inline[0], "echo 14 a_b {\"a\":80,\"b\":8080}");
    assert_eq!(inline[1], "echo build=renamed");
    assert_eq!(
        b.provisioners.len(),
        2,
        "the `except` provisioner is left out"
    );
    assert!(b.error_cleanup.is_some());
}

#[test]
fn sensitive_variables_are_collected_for_masking() {
    let (plan, diags) = load(
        &fixture("cloud-image-uefi.pkr.hcl"),
        &LoadOptions::default(),
    );
    let plan = plan.unwrap_or_else(|| panic!("{diags}"));
    assert!(plan.sensitive_values.contains(&"changeme".to_string()));
    assert_eq!(
        plan.redact("password is changeme"),
        "password is <sensitive>"
    );
    let b = &plan.builds[0];
    assert_eq!(b.full_name, "qemu.debian");
    assert_eq!(b.build_name.as_deref(), Some("golden"));
    assert_eq!(b.post_processors.len(), 1, "one chain");
    assert_eq!(b.post_processors[0].len(), 2, "of two post-processors");
    // Run-time placeholders stay for the builder.
    let q = b.builder.get("qemuargs").expect("qemuargs");
    assert!(q[0][1]
        .as_str()
        .unwrap_or_default()
        .contains("{{ .HTTPIP }}:{{ .HTTPPort }}"));
}
