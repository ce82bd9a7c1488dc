//! The builders, one module each, and the table kiln dispatches on. Adding a builder is a
//! module and a row in `BUILDERS`. Not for: what runs inside the guest (provisioners) or where
//! images are kept (the engine).

pub mod null;
pub mod qemu;

use kiln_core::plugins::BuilderRow;

/// Every builder kiln has.
pub const BUILDERS: &[BuilderRow] = &[
    BuilderRow {
        name: "qemu",
        summary: "boots a base disk or installer ISO under QEMU and stores the disk",
        plugin: Some("qemu"),
        base_option: Some("iso_url"),
        argv_options: qemu::ARGV_OPTIONS,
        make: qemu::make,
    },
    BuilderRow {
        name: "null",
        summary: "provisions a machine that already runs, over SSH; makes no image",
        plugin: None,
        base_option: None,
        argv_options: &[],
        make: null::make,
    },
];
