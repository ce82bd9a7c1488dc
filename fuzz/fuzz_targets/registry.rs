//! What kiln reads from registries and users: references, auth challenges, manifests.
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run registry -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        kiln_registry::fuzz_response(s);
    }
});
