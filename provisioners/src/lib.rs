//! Provisioners (shell, file, shell-local, ansible, ansible-local, breakpoint) and post-processors (manifest, checksum,
//! compress, shell-local, vagrant), each built from a template `Component` with Packer's option
//! names, and the tables kiln dispatches on. Adding one is a module and a row.

mod ansible;
mod file;
mod local;
mod post;
mod shell;

use kiln_core::plugins::{Made, PostProcessorRow, ProvisionerRow};
use kiln_core::{PostProcessor, Provisioner};
use kiln_template::{Component, Diagnostics};

/// A table constructor from a module's `fn(&Component) -> Result<T, Diagnostics>`.
macro_rules! prov {
    ($f:path) => {{
        fn make(c: &Component) -> Made<dyn Provisioner> {
            Ok((Box::new($f(c)?), Diagnostics::default()))
        }
        make
    }};
}

macro_rules! post {
    ($f:path) => {{
        fn make(c: &Component, _: &str) -> Made<dyn PostProcessor> {
            Ok((Box::new($f(c)?), Diagnostics::default()))
        }
        make
    }};
}

/// Every provisioner kiln has.
pub const PROVISIONERS: &[ProvisionerRow] = &[
    ProvisionerRow {
        name: "shell",
        summary: "runs inline commands or scripts in the guest",
        plugin: None,
        make: prov!(shell::from_component),
    },
    ProvisionerRow {
        name: "file",
        summary: "uploads files and directories to the guest, or downloads them",
        plugin: None,
        make: prov!(file::from_component),
    },
    ProvisionerRow {
        name: "shell-local",
        summary: "runs commands on the machine running kiln",
        plugin: None,
        make: prov!(local::shell_local),
    },
    ProvisionerRow {
        name: "ansible",
        summary: "runs the host's ansible-playbook against the guest",
        plugin: Some("ansible"),
        make: |c| {
            let (p, warnings) = ansible::ansible(c)?;
            Ok((Box::new(p), warnings))
        },
    },
    ProvisionerRow {
        name: "ansible-local",
        summary: "runs ansible-playbook inside the guest on uploaded playbooks",
        plugin: Some("ansible"),
        make: prov!(ansible::ansible_local),
    },
    ProvisionerRow {
        name: "breakpoint",
        summary: "pauses the build until Enter is pressed",
        plugin: None,
        make: prov!(local::breakpoint),
    },
];

/// Every post-processor kiln has.
pub const POST_PROCESSORS: &[PostProcessorRow] = &[
    PostProcessorRow {
        name: "manifest",
        summary: "writes Packer's packer-manifest.json",
        plugin: None,
        make: |c, run_uuid| {
            Ok((
                Box::new(post::manifest(c, run_uuid)?),
                Diagnostics::default(),
            ))
        },
    },
    PostProcessorRow {
        name: "checksum",
        summary: "writes checksum files of the artifact's files",
        plugin: None,
        make: post!(post::checksum),
    },
    PostProcessorRow {
        name: "compress",
        summary: "compresses the artifact (tar, gz, zst, xz, zip)",
        plugin: None,
        make: post!(post::compress),
    },
    PostProcessorRow {
        name: "shell-local",
        summary: "runs commands on the machine running kiln, with the artifact's files",
        plugin: None,
        make: post!(local::shell_local),
    },
    PostProcessorRow {
        name: "artifice",
        summary: "makes the listed files the artifact for the post-processors after it",
        plugin: None,
        make: post!(post::artifice),
    },
    PostProcessorRow {
        name: "vagrant",
        summary: "packs the disk into a Vagrant box for the libvirt provider",
        plugin: Some("vagrant"),
        make: post!(post::vagrant),
    },
];
