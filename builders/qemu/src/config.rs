//! The qemu builder's options, named as in Packer's qemu builder, and the SSH communicator's.
//! `decode` checks them all at validate time; options kiln accepts but does not act on yet are
//! named in warnings.

use kiln_core::config::{decode, fields_of, warn_inert, Dur, Flag, Num, Text};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct QemuConfig {
    // base image
    pub iso_url: Option<Text>,
    pub iso_urls: Option<Vec<Text>>,
    pub iso_checksum: Option<Text>,
    pub iso_target_path: Option<Text>,
    pub iso_target_extension: Option<Text>,
    pub iso_skip_cache: Option<Flag>,
    pub disk_image: Option<Flag>,
    pub use_backing_file: Option<Flag>,
    pub disk_size: Option<Text>,
    pub skip_resize_disk: Option<Flag>,
    pub disk_additional_size: Option<Vec<Text>>,
    pub format: Option<Text>,
    pub disk_interface: Option<Text>,
    pub disk_cache: Option<Text>,
    pub disk_discard: Option<Text>,
    pub disk_detect_zeroes: Option<Text>,
    pub disk_compression: Option<Flag>,
    pub skip_compaction: Option<Flag>,
    pub qemu_img_args: Option<serde_json::Value>,
    // output
    pub output_directory: Option<Text>,
    pub vm_name: Option<Text>,
    // machine
    pub accelerator: Option<Text>,
    pub cpus: Option<Num>,
    pub sockets: Option<Num>,
    pub cores: Option<Num>,
    pub threads: Option<Num>,
    pub memory: Option<Num>,
    pub machine_type: Option<Text>,
    pub cpu_model: Option<Text>,
    pub qemu_binary: Option<Text>,
    pub net_device: Option<Text>,
    pub net_bridge: Option<Text>,
    pub headless: Option<Flag>,
    pub display: Option<Text>,
    pub use_default_display: Option<Flag>,
    pub efi_boot: Option<Flag>,
    pub efi_firmware_code: Option<Text>,
    pub efi_firmware_vars: Option<Text>,
    pub efi_drop_efivars: Option<Flag>,
    pub firmware: Option<Text>,
    pub tpm_device_type: Option<Text>,
    pub vtpm: Option<Flag>,
    pub cdrom_interface: Option<Text>,
    pub qemuargs: Option<Vec<Vec<Text>>>,
    /// kiln extension: flags appended after everything else, replacing nothing.
    pub qemu_extra_args: Option<Vec<Text>>,
    /// kiln extension: direct kernel boot without qemuargs.
    pub kernel: Option<Text>,
    pub initrd: Option<Text>,
    pub kernel_args: Option<Text>,
    // console and boot
    pub vnc_bind_address: Option<Text>,
    pub vnc_port_min: Option<Num>,
    pub vnc_port_max: Option<Num>,
    pub vnc_use_password: Option<Flag>,
    pub boot_wait: Option<Dur>,
    pub boot_command: Option<Vec<Text>>,
    pub boot_key_interval: Option<Dur>,
    pub boot_keygroup_interval: Option<Dur>,
    pub boot_steps: Option<serde_json::Value>,
    // http server
    pub http_directory: Option<Text>,
    pub http_content: Option<BTreeMap<String, Text>>,
    pub http_bind_address: Option<Text>,
    pub http_port_min: Option<Num>,
    pub http_port_max: Option<Num>,
    pub http_network_protocol: Option<Text>,
    // networking for the communicator
    pub host_port_min: Option<Num>,
    pub host_port_max: Option<Num>,
    pub ssh_host_port_min: Option<Num>,
    pub ssh_host_port_max: Option<Num>,
    pub skip_nat_mapping: Option<Flag>,
    // shutdown
    pub shutdown_command: Option<Text>,
    pub shutdown_timeout: Option<Dur>,
    // media
    pub cd_files: Option<Vec<Text>>,
    pub cd_content: Option<BTreeMap<String, Text>>,
    pub cd_label: Option<Text>,
    pub floppy_files: Option<Vec<Text>>,
    pub floppy_dirs: Option<Vec<Text>>,
    pub floppy_content: Option<BTreeMap<String, Text>>,
    pub floppy_label: Option<Text>,
    pub communicator: Option<Text>,
    pub pause_before_connecting: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SshOpts {
    pub ssh_host: Option<Text>,
    pub ssh_port: Option<Num>,
    pub ssh_username: Option<Text>,
    pub ssh_password: Option<Text>,
    pub ssh_private_key_file: Option<Text>,
    pub ssh_timeout: Option<Dur>,
    pub ssh_wait_timeout: Option<Dur>,
    pub ssh_handshake_attempts: Option<Num>,
    pub ssh_pty: Option<Flag>,
    pub ssh_file_transfer_method: Option<Text>,
    pub ssh_keep_alive_interval: Option<Dur>,
    pub ssh_read_write_timeout: Option<Dur>,
    pub ssh_clear_authorized_keys: Option<Flag>,
    /// kiln extension: the host key the guest must present (`SHA256:…` or a public key line).
    pub ssh_host_key: Option<Text>,
    pub ssh_agent_auth: Option<Flag>,
    pub ssh_disable_agent_forwarding: Option<Flag>,
    pub ssh_ciphers: Option<Vec<Text>>,
    pub ssh_key_exchange_algorithms: Option<Vec<Text>>,
    pub ssh_certificate_file: Option<Text>,
    pub ssh_bastion_host: Option<Text>,
    pub ssh_bastion_port: Option<Num>,
    pub ssh_bastion_username: Option<Text>,
    pub ssh_bastion_password: Option<Text>,
    pub ssh_bastion_private_key_file: Option<Text>,
    pub ssh_proxy_host: Option<Text>,
    pub ssh_proxy_port: Option<Num>,
    pub ssh_remote_tunnels: Option<Vec<Text>>,
    pub ssh_local_tunnels: Option<Vec<Text>>,
    pub ssh_keypair_name: Option<Text>,
    pub temporary_key_pair_type: Option<Text>,
    pub temporary_key_pair_bits: Option<Num>,
    pub temporary_key_pair_name: Option<Text>,
    pub pause_before_ssh: Option<Dur>,
    // winrm: accepted so Windows templates validate; the winrm communicator is not built in
    pub winrm_username: Option<Text>,
    pub winrm_password: Option<Text>,
    pub winrm_host: Option<Text>,
    pub winrm_port: Option<Num>,
    pub winrm_timeout: Option<Dur>,
    pub winrm_use_ssl: Option<Flag>,
    pub winrm_insecure: Option<Flag>,
    pub winrm_use_ntlm: Option<Flag>,
}

/// Options accepted for compatibility that kiln does not act on yet.
const INERT: &[&str] = &[
    "iso_urls",
    "iso_target_path",
    "iso_target_extension",
    "iso_skip_cache",
    "disk_additional_size",
    "disk_detect_zeroes",
    "qemu_img_args",
    "sockets",
    "cores",
    "threads",
    "net_bridge",
    "use_default_display",
    "efi_drop_efivars",
    "firmware",
    "tpm_device_type",
    "vtpm",
    "boot_keygroup_interval",
    "cdrom_interface",
    "boot_steps",
    "http_network_protocol",
    "skip_nat_mapping",
    "floppy_files",
    "floppy_dirs",
    "floppy_content",
    "floppy_label",
    "ssh_agent_auth",
    "ssh_disable_agent_forwarding",
    "ssh_ciphers",
    "ssh_key_exchange_algorithms",
    "ssh_certificate_file",
    "ssh_bastion_host",
    "ssh_bastion_port",
    "ssh_bastion_username",
    "ssh_bastion_password",
    "ssh_bastion_private_key_file",
    "ssh_proxy_host",
    "ssh_proxy_port",
    "ssh_remote_tunnels",
    "ssh_local_tunnels",
    "ssh_keypair_name",
    "temporary_key_pair_name",
    "ssh_read_write_timeout",
    "host_port_min",
    "host_port_max",
    "ssh_host_port_min",
    "ssh_host_port_max",
];

pub struct Decoded {
    pub qemu: QemuConfig,
    pub ssh: SshOpts,
    pub warnings: Diagnostics,
}

pub fn decode_all(c: &Component) -> Result<Decoded, Diagnostics> {
    let q = decode::<QemuConfig>(c, fields_of::<SshOpts>());
    let s = decode::<SshOpts>(c, fields_of::<QemuConfig>());
    let (qemu, ssh) = match (q, s) {
        (Ok(q), Ok(s)) => (q, s),
        (q, s) => {
            let mut d = Diagnostics::default();
            if let Err(e) = q {
                d.extend(e);
            }
            if let Err(e) = s {
                d.extend(e);
            }
            return Err(d);
        }
    };
    let mut warnings = Diagnostics::default();
    let mut errors = Diagnostics::default();
    warn_inert(c, INERT, &mut warnings);
    let comm = qemu.communicator.as_deref().unwrap_or("ssh");
    match comm {
        "ssh" | "none" => {}
        "winrm" => errors.push(
            Diagnostic::error(
                "the winrm communicator is not built into kiln",
                Some(c.span_of("communicator").clone()),
            )
            .with_hint("use communicator = \"ssh\" or \"none\""),
        ),
        other => errors.push(
            Diagnostic::error(
                format!("unknown communicator {other:?}"),
                Some(c.span_of("communicator").clone()),
            )
            .with_hint("use \"ssh\" or \"none\""),
        ),
    }
    if comm == "ssh" && ssh.ssh_username.is_none() {
        errors.push(
            Diagnostic::error(
                "ssh_username is required with the ssh communicator",
                Some(c.span.clone()),
            )
            .with_hint("add ssh_username = \"root\" (or the guest's user)"),
        );
    }
    check_enum(
        c,
        "format",
        qemu.format.as_deref(),
        &["qcow2", "raw"],
        &mut errors,
    );
    check_enum(
        c,
        "accelerator",
        qemu.accelerator.as_deref(),
        &["kvm", "tcg", "none", "auto", "hvf", "whpx", "xen"],
        &mut errors,
    );
    check_enum(
        c,
        "disk_interface",
        qemu.disk_interface.as_deref(),
        &[
            "virtio",
            "virtio-scsi",
            "scsi",
            "ide",
            "sata",
            "nvme",
            "floppy",
            "pflash",
            "sd",
            "mtd",
        ],
        &mut errors,
    );
    check_enum(
        c,
        "disk_cache",
        qemu.disk_cache.as_deref(),
        &["writethrough", "writeback", "none", "unsafe", "directsync"],
        &mut errors,
    );
    check_enum(
        c,
        "disk_discard",
        qemu.disk_discard.as_deref(),
        &["unmap", "ignore"],
        &mut errors,
    );
    check_enum(
        c,
        "ssh_file_transfer_method",
        ssh.ssh_file_transfer_method.as_deref(),
        &["scp", "sftp"],
        &mut errors,
    );
    if qemu.iso_url.is_none() && qemu.iso_urls.as_ref().is_none_or(|v| v.is_empty()) {
        errors.push(Diagnostic::error("iso_url is required: the base disk image (with disk_image = true) or installer ISO", Some(c.span.clone())).with_hint("set iso_url = \"path/to/base.qcow2\" and disk_image = true"));
    }
    if qemu.iso_checksum.is_none() {
        errors.push(
            Diagnostic::error("iso_checksum is required", Some(c.span.clone())).with_hint(
                "set iso_checksum = \"sha256:…\", \"file:URL\", or \"none\" to skip the check",
            ),
        );
    }
    for (i, cmd) in qemu.boot_command.iter().flatten().enumerate() {
        for (key, hint) in crate::bootcmd::unknown_keys(cmd) {
            let h = hint.map_or_else(|| "kiln knows Packer's key names (<enter>, <tab>, <f1>, <wait5>, <leftCtrlOn>, ...)".to_string(), |h| format!("did you mean {h}?"));
            errors.push(
                Diagnostic::error(
                    format!("boot_command[{i}]: unknown key {key}"),
                    Some(c.span_of("boot_command").clone()),
                )
                .with_hint(h),
            );
        }
        if let Err(e) = crate::bootcmd::parse(cmd) {
            errors.push(Diagnostic::error(
                format!("boot_command[{i}]: {e}"),
                Some(c.span_of("boot_command").clone()),
            ));
        }
    }
    if let Some(args) = &qemu.qemuargs {
        for (i, a) in args.iter().enumerate() {
            if a.is_empty() || !a[0].starts_with('-') {
                errors.push(Diagnostic::error(
                    format!("qemuargs entry {i} must start with a flag such as \"-device\""),
                    Some(c.span_of("qemuargs").clone()),
                ));
            }
        }
    }
    if errors.has_errors() {
        errors.extend(warnings);
        return Err(errors);
    }
    Ok(Decoded {
        qemu,
        ssh,
        warnings,
    })
}

fn check_enum(c: &Component, key: &str, v: Option<&str>, allowed: &[&str], d: &mut Diagnostics) {
    if let Some(v) = v {
        if !allowed.contains(&v) {
            let hint = kiln_template::did_you_mean(v, allowed.iter().copied()).map_or_else(
                || format!("use one of: {}", allowed.join(", ")),
                |s| format!("did you mean {s:?}?"),
            );
            d.push(
                Diagnostic::error(format!("invalid {key} {v:?}"), Some(c.span_of(key).clone()))
                    .with_hint(hint),
            );
        }
    }
}
