//! The builders, one module each, and the table kiln dispatches on. Adding a builder is a
//! module and a row in `BUILDERS`. Not for: what runs inside the guest (provisioners) or where
//! images are kept (the engine).

pub mod data;
pub mod file;
pub mod null;
pub mod qemu;

pub use data::DATA_SOURCES;
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
        name: "file",
        summary: "writes one file (copied or from content) as the artifact; no VM",
        plugin: None,
        base_option: None,
        argv_options: &[],
        make: file::make,
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
