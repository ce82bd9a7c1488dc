//! Installing from an ISO, as most published qemu templates do: boot an installer CD, type a
//! boot_command that points it at an answer file (over kiln's HTTP server, or on a cd_content
//! seed CD), let it partition and fill the blank disk and reboot into the installed system, then
//! connect over SSH and provision. The installer CD is built from Debian packages
//! (tests/fixtures/mkinstaller.sh).

mod common;

use common::{text, Ctx};

fn template(ctx: &Ctx, name: &str, media: &str, boot_command: &str) -> std::path::PathBuf {
    let inst = common::installer_dir();
    let b = ctx.base.display();
    ctx.write(
        &format!("{name}.pkr.hcl"),
        &format!(
            r#"source "qemu" "{name}" {{
  iso_url              = "{iso}"
  iso_checksum         = "file:{sums}"
  disk_size            = "64M"
  format               = "qcow2"
  accelerator          = "tcg"
  memory               = 256
{media}
  boot_wait            = "3s"
  boot_key_interval    = "10ms"
  boot_command         = ["{boot_command}"]
  ssh_username         = "root"
{key}
  ssh_timeout          = "3m"
  shutdown_command     = "sync; poweroff"
  output_directory     = "out-{name}"
  vm_name              = "{name}.qcow2"
}}

build {{
  sources = ["source.qemu.{name}"]
  provisioner "shell" {{
    inline = ["cat /root/installed-by", "echo provisioned-after-install > /root/provisioned"]
  }}
}}
"#,
            iso = inst.join("installer.iso").display(),
            key = if media.contains("ssh_clear_authorized_keys") {
                String::new()
            } else {
                format!("  ssh_private_key_file = \"{b}/id_ed25519\"")
            },
            sums = ctx.dir.join("SHA256SUMS").display(),
        ),
    )
}

fn sums(ctx: &Ctx) {
    let inst = common::installer_dir();
    let out = std::process::Command::new("sha256sum")
        .arg("installer.iso")
        .current_dir(&inst)
        .output()
        .expect("sha256sum");
    std::fs::write(ctx.dir.join("SHA256SUMS"), out.stdout).expect("write sums");
}

/// `http/` with the payload and an answer file naming it and `marker`.
fn http_answer(ctx: &Ctx, marker: &str) {
    let inst = common::installer_dir();
    std::fs::create_dir_all(ctx.dir.join("http")).expect("http dir");
    std::fs::copy(
        inst.join("payload.tar.gz"),
        ctx.dir.join("http/payload.tar.gz"),
    )
    .expect("payload");
    ctx.write(
        "http/answer.txt",
        &format!("payload=payload.tar.gz\nmarker={marker}\n"),
    );
}

#[test]
fn installer_iso_with_boot_command_and_http_answer_file() {
    let ctx = Ctx::new("install-http");
    sums(&ctx);
    http_answer(&ctx, "installed-over-http");
    let t = template(
        &ctx,
        "viahttp",
        // People watch installs: a VNC server on loopback, with a password. No key is given:
        // kiln makes a temporary one, offers it in a cloud-init seed the installer reads, and
        // clears it from the image afterwards.
        "  http_directory       = \"http\"\n  vnc_bind_address     = \"127.0.0.1\"\n  vnc_use_password     = true\n  ssh_clear_authorized_keys = true",
        "install ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/answer.txt<enter>",
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("VNC: vnc://127.0.0.1:59") && s.contains("password "),
        "{s}"
    );
    assert!(s.contains("using a temporary ed25519 key pair"), "{s}");
    assert!(
        s.contains("viahttp: installed-over-http"),
        "the provisioner ran in the installed system: {s}"
    );
    let disk = ctx.dir.join("out-viahttp/viahttp.qcow2");
    assert_eq!(
        ctx.read_from_partition(&disk, "/root/installed-by")
            .as_deref(),
        Some("installed-over-http\n")
    );
    let keys = ctx
        .read_from_partition(&disk, "/root/.ssh/authorized_keys")
        .expect("authorized_keys is in the image");
    assert!(
        !keys.contains("kiln-temporary"),
        "the temporary key is cleared from the image: {keys}"
    );
    assert_eq!(
        ctx.read_from_partition(&disk, "/root/provisioned")
            .as_deref(),
        Some("provisioned-after-install\n")
    );
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn installer_iso_with_a_cd_content_seed_instead_of_http() {
    let ctx = Ctx::new("install-cd");
    sums(&ctx);
    let inst = common::installer_dir();
    let media = format!(
        "  cd_files             = [\"{}\"]\n  cd_content           = {{ \"answer\" = \"payload=payload.tar.gz\\nmarker=installed-from-cd\\n\" }}\n  cd_label             = \"cidata\"",
        inst.join("payload.tar.gz").display()
    );
    let t = template(&ctx, "viacd", &media, "install<enter>");
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("out-viacd/viacd.qcow2");
    assert_eq!(
        ctx.read_from_partition(&disk, "/root/installed-by")
            .as_deref(),
        Some("installed-from-cd\n")
    );
    assert_eq!(
        ctx.read_from_partition(&disk, "/root/provisioned")
            .as_deref(),
        Some("provisioned-after-install\n")
    );
}

#[test]
fn an_installer_that_never_brings_up_ssh_times_out_with_the_console_tail() {
    let ctx = Ctx::new("install-nossh");
    sums(&ctx);
    // The answer file is missing: the installer stops and SSH never comes.
    std::fs::create_dir_all(ctx.dir.join("http")).expect("http dir");
    let t = template(
        &ctx,
        "broken",
        "  http_directory       = \"http\"",
        "install ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/missing.txt<enter>",
    );
    let text_t = std::fs::read_to_string(&t).expect("read").replace(
        "ssh_timeout          = \"3m\"",
        "ssh_timeout          = \"25s\"",
    );
    std::fs::write(&t, text_t).expect("write");
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("timed out after 25s waiting for SSH"), "{s}");
    assert!(
        s.contains("installer: FAILED: cannot fetch"),
        "the console's last lines name the installer's failure: {s}"
    );
    assert!(ctx.qemu_pids().is_empty());
    assert!(!ctx.dir.join("out-broken").exists());
}

#[test]
fn communicator_none_waits_for_an_unattended_install_to_power_off() {
    let ctx = Ctx::new("install-none");
    sums(&ctx);
    http_answer(&ctx, "unattended");
    // No SSH at all: the installer's final reboot ends qemu (-no-reboot), which is the power-off
    // the none communicator waits for.
    let media = "  http_directory       = \"http\"\n  communicator         = \"none\"\n  qemu_extra_args      = [\"-no-reboot\"]\n  shutdown_timeout     = \"2m\"";
    let t = template(
        &ctx,
        "unattended",
        media,
        "install ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/answer.txt<enter>",
    );
    // The template's provisioner needs SSH; drop the build's provisioner for this one.
    let text_t = std::fs::read_to_string(&t).expect("read");
    let cut = text_t.find("  provisioner").expect("provisioner block");
    std::fs::write(&t, format!("{}}}\n", &text_t[..cut])).expect("write");
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("communicator none: waiting for the guest to power itself off"),
        "{s}"
    );
    let disk = ctx.dir.join("out-unattended/unattended.qcow2");
    assert_eq!(
        ctx.read_from_partition(&disk, "/root/installed-by")
            .as_deref(),
        Some("unattended\n")
    );
}
