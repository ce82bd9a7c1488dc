//! Feeds arbitrary bytes to the template loader as an HCL2 file and as a legacy JSON template.
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run template -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for name in ["t.pkr.hcl", "t.json"] {
        let p = dir.join(name);
        if std::fs::write(&p, data).is_ok() {
            let _ = kiln_template::load(&p, &kiln_template::LoadOptions::default());
        }
    }
});
