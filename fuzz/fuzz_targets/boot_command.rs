//! boot_command parsing (`<enter>`, `<waitXs>`, `<leftCtrlOn>`, …) on arbitrary text.
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run boot_command -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kiln_builders::qemu::fuzz_boot_command(s);
    }
});
