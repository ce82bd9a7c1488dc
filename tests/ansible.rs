//! Tests on a real Debian guest (python3, OpenSSH, ansible-core inside; made by
//! scripts/ensure-debian.sh): the host's ansible-playbook with real modules, a handler, a role
//! installed by ansible-galaxy, ansible-local inside the guest, and login with an OpenSSH
//! certificate (OpenSSH's TrustedUserCAKeys; dropbear has no certificates). Results are read off
//! the disk.

mod common;

use common::{text, Ctx};
use std::path::PathBuf;
use std::process::Command;

fn debian_dir() -> PathBuf {
    common::ensure("ensure-debian.sh")
}

/// A build of the Debian guest with `body` inside `build {}`.
fn debian_template(ctx: &Ctx, debian: &std::path::Path, body: &str) -> String {
    let d = debian.display();
    let b = ctx.base.display();
    format!(
        r#"source "qemu" "deb" {{
  iso_url              = "{d}/debian.qcow2"
  iso_checksum         = "none"
  disk_image           = true
  accelerator          = "tcg"
  memory               = 512
  kernel               = "{b}/vmlinux"
  initrd               = "{b}/initrd.img"
  kernel_args          = "root=/dev/vda rw console=ttyS0 quiet"
  output_directory     = "out-deb"
  vm_name              = "disk.qcow2"
  ssh_username         = "root"
  ssh_private_key_file = "{d}/id_ed25519"
  ssh_timeout          = "3m"
  shutdown_command     = "sync; poweroff"
  shutdown_timeout     = "1m"
}}
build {{
  sources = ["source.qemu.deb"]
{body}
}}
"#
    )
}

fn ssh_masters_left() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", "kiln-ansible-"])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ssh"))
        .map(str::to_string)
        .collect()
}

#[test]
fn ansible_runs_a_playbook_with_a_handler_and_a_galaxy_role_against_the_guest() {
    let ctx = Ctx::new("ansible");
    let debian = debian_dir();
    // A role packed as ansible-galaxy installs it from a local tarball.
    ctx.write(
        "role-src/motd_role/tasks/main.yml",
        "- name: role writes its file\n  ansible.builtin.copy:\n    dest: /etc/from-role\n    content: \"role ran\\n\"\n",
    );
    ctx.write(
        "role-src/motd_role/meta/main.yml",
        "galaxy_info:\n  author: kiln\n  description: test\n  license: MIT\n  min_ansible_version: '2.9'\n  platforms: []\ndependencies: []\n",
    );
    let tarball = ctx.dir.join("motd_role.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(ctx.dir.join("role-src"))
        .arg("motd_role")
        .status()
        .expect("tar runs");
    assert!(st.success());
    ctx.write(
        "requirements.yml",
        &format!("- src: file://{}\n  name: motd_role\n", tarball.display()),
    );
    ctx.write(
        "playbook/templates/greeting.j2",
        "hello {{ who }} from {{ packer_builder_type }}\n",
    );
    ctx.write(
        "playbook/site.yml",
        r#"- hosts: default
  gather_facts: false
  vars:
    who: ansible
  roles:
    - motd_role
  tasks:
    - name: copy a file
      ansible.builtin.copy:
        dest: /etc/kiln-copied
        content: "copied\n"
        mode: "0640"
    - name: render a template
      ansible.builtin.template:
        src: templates/greeting.j2
        dest: /etc/kiln-greeting
      notify: record the handler
    - name: edit a line
      ansible.builtin.lineinfile:
        path: /etc/hostname
        regexp: '^kiln-debian$'
        line: kiln-ansible
  handlers:
    - name: record the handler
      ansible.builtin.copy:
        dest: /etc/kiln-handler
        content: "handler ran for {{ inventory_hostname }} in {{ group_names | join(',') }}\n"
"#,
    );
    let roles = ctx.dir.join("playbook/roles");
    let body = format!(
        r#"  provisioner "ansible" {{
    playbook_file = "playbook/site.yml"
    galaxy_file   = "requirements.yml"
    roles_path    = "{}"
    groups        = ["golden"]
    extra_arguments = ["-e", "unused=1"]
    # Real templates set this: one SSH round trip per task instead of three.
    ansible_env_vars = ["ANSIBLE_PIPELINING=True"]
  }}"#,
        roles.display()
    );
    ctx.write("deb.pkr.hcl", &debian_template(&ctx, &debian, &body));
    let out = ctx.kiln(&["build", "deb.pkr.hcl"]);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ansible_ssh_private_key_file="), "{log}");
    let disk = ctx.dir.join("out-deb/disk.qcow2");
    let read = |p: &str| ctx.read_from_image(&disk, p);
    assert_eq!(read("/etc/kiln-copied").as_deref(), Some("copied\n"));
    assert_eq!(
        read("/etc/kiln-greeting").as_deref(),
        Some("hello ansible from qemu\n")
    );
    assert_eq!(read("/etc/hostname").as_deref(), Some("kiln-ansible\n"));
    assert_eq!(
        read("/etc/kiln-handler").as_deref(),
        Some("handler ran for default in golden\n")
    );
    assert_eq!(read("/etc/from-role").as_deref(), Some("role ran\n"));
    assert!(ssh_masters_left().is_empty(), "{:?}", ssh_masters_left());
    assert!(
        ctx.work_leftovers().is_empty(),
        "{:?}",
        ctx.work_leftovers()
    );

    // The playbook's directory counts by content: the same inputs are a cache hit, a changed
    // template is a new build.
    std::fs::remove_dir_all(ctx.dir.join("out-deb")).expect("remove output");
    let again = ctx.kiln(&["build", "deb.pkr.hcl"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("up to date"), "{}", text(&again));
    ctx.write("playbook/templates/greeting.j2", "changed {{ who }}\n");
    std::fs::remove_dir_all(ctx.dir.join("out-deb")).expect("remove output");
    let changed = ctx.kiln(&["build", "deb.pkr.hcl"]);
    assert!(changed.status.success(), "{}", text(&changed));
    assert!(!text(&changed).contains("up to date"), "{}", text(&changed));
    assert_eq!(
        read("/etc/kiln-greeting").as_deref(),
        Some("changed ansible\n")
    );
}

#[test]
fn ansible_local_runs_uploaded_playbooks_inside_the_guest() {
    let ctx = Ctx::new("ansible-local");
    let debian = debian_dir();
    ctx.write(
        "local/site.yml",
        r#"- hosts: builders
  connection: local
  gather_facts: false
  roles:
    - stamp
  tasks:
    - name: a variable from group_vars
      ansible.builtin.copy:
        dest: /etc/kiln-local
        content: "{{ greeting }} {{ packer_build_name }}\n"
"#,
    );
    ctx.write(
        "local/roles/stamp/tasks/main.yml",
        "- ansible.builtin.lineinfile:\n    path: /etc/kiln-stamp\n    line: stamped by a role\n    create: true\n",
    );
    ctx.write("vars/builders.yml", "greeting: hello from group_vars\n");
    let body = format!(
        r#"  provisioner "ansible-local" {{
    playbook_file           = "local/site.yml"
    playbook_dir            = "local"
    group_vars              = "{}"
    inventory_groups        = ["builders"]
    staging_directory       = "/root/staging"
    clean_staging_directory = true
  }}
  provisioner "shell" {{
    inline = ["test ! -e /root/staging && echo staging-cleaned > /etc/kiln-cleaned"]
  }}"#,
        ctx.dir.join("vars").display()
    );
    ctx.write("local.pkr.hcl", &debian_template(&ctx, &debian, &body));
    let out = ctx.kiln(&["build", "local.pkr.hcl"]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("out-deb/disk.qcow2");
    let read = |p: &str| ctx.read_from_image(&disk, p);
    assert_eq!(
        read("/etc/kiln-local").as_deref(),
        Some("hello from group_vars deb\n")
    );
    assert_eq!(
        read("/etc/kiln-stamp").as_deref(),
        Some("stamped by a role\n")
    );
    assert_eq!(
        read("/etc/kiln-cleaned").as_deref(),
        Some("staging-cleaned\n")
    );
}

#[test]
fn a_missing_ansible_playbook_command_stops_the_build_before_any_guest_boots() {
    let ctx = Ctx::new("ansible-missing");
    let qemu = ctx.qemu_counter();
    ctx.write("site.yml", "- hosts: all\n  tasks: []\n");
    let body = r#"  provisioner "ansible" {
    playbook_file = "site.yml"
    command       = "/nonexistent/ansible-playbook"
  }"#;
    let tpl = format!(
        "{}\nbuild {{\n  sources = [\"source.qemu.m\"]\n{body}\n}}\n",
        ctx.source("m", &format!("qemu_binary = \"{}\"", qemu.display()))
    );
    ctx.write("m.pkr.hcl", &tpl);
    let out = ctx.kiln(&["build", "m.pkr.hcl"]);
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("cannot run /nonexistent/ansible-playbook --version")
            && log.contains("apt-get install ansible"),
        "{log}"
    );
    assert_eq!(ctx.qemu_starts(), 0, "no guest booted");
}

#[test]
fn ssh_certificate_file_logs_in_to_a_guest_that_trusts_a_user_ca() {
    let ctx = Ctx::new("ssh-cert");
    let debian = debian_dir();
    let keygen = |args: &[&str]| {
        let st = Command::new("ssh-keygen")
            .args(args)
            .current_dir(&ctx.dir)
            .status()
            .expect("ssh-keygen");
        assert!(st.success(), "ssh-keygen {args:?}");
    };
    keygen(&["-q", "-t", "ed25519", "-N", "", "-C", "kiln-ca", "-f", "ca"]);
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "kiln-user",
        "-f",
        "user",
    ]);
    keygen(&[
        "-q",
        "-s",
        "ca",
        "-I",
        "kiln-test",
        "-n",
        "root",
        "-V",
        "-5m:+1h",
        "user.pub",
    ]);
    let ca = std::fs::read_to_string(ctx.dir.join("ca.pub")).expect("ca.pub");
    // 1: an image of the Debian guest whose sshd trusts the CA (and not the user key itself).
    let trust = format!(
        r#"  provisioner "shell" {{
    inline = [
      "echo '{}' > /etc/ssh/kiln-ca.pub",
      "echo 'TrustedUserCAKeys /etc/ssh/kiln-ca.pub' > /etc/ssh/sshd_config.d/ca.conf",
    ]
  }}"#,
        ca.trim()
    );
    ctx.write("trust.pkr.hcl", &debian_template(&ctx, &debian, &trust));
    let out = ctx.kiln(&["build", "trust.pkr.hcl"]);
    assert!(out.status.success(), "{}", text(&out));
    // 2: a build from that image that logs in with the user key and its certificate only.
    let from = ctx.dir.join("out-deb/disk.qcow2");
    let d = debian.display().to_string();
    let t = debian_template(
        &ctx,
        &debian,
        "  provisioner \"shell\" {\n    inline = [\"echo logged-in-by-certificate\"]\n  }",
    )
    .replace(&format!("{d}/debian.qcow2"), &from.display().to_string())
    .replace(
        &format!("ssh_private_key_file = \"{d}/id_ed25519\""),
        &format!(
            "ssh_private_key_file = \"{0}/user\"\n  ssh_certificate_file = \"{0}/user-cert.pub\"",
            ctx.dir.display()
        ),
    )
    .replace("\"out-deb\"", "\"out-cert\"");
    ctx.write("cert.pkr.hcl", &t);
    let out = ctx.kiln(&["build", "cert.pkr.hcl"]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("logged-in-by-certificate"), "{s}");
    // Without the certificate the same key is refused: it is the certificate that let kiln in.
    let nocert = t
        .replace(
            &format!(
                "\n  ssh_certificate_file = \"{}/user-cert.pub\"",
                ctx.dir.display()
            ),
            "",
        )
        .replace(
            "ssh_timeout          = \"3m\"",
            "ssh_timeout          = \"15s\"",
        )
        .replace("\"out-cert\"", "\"out-nocert\"");
    ctx.write("nocert.pkr.hcl", &nocert);
    // Credentials are not inputs of the image: -force, or this is a cache hit.
    let out = ctx.kiln(&["build", "-force", "nocert.pkr.hcl"]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("/user for user root"), "{s}");
}
