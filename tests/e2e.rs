//! End-to-end builds on real QEMU guests (TCG) with a real SSH server inside. Each test checks the
//! result on the disk kiln wrote, or that nothing was left behind.

mod common;

use common::{text, Ctx};
use std::time::{Duration, Instant};

fn hcl(ctx: &Ctx, name: &str, source_extra: &str, build_body: &str) -> String {
    format!(
        "{}\nbuild {{\n  sources = [\"source.qemu.{name}\"]\n{build_body}\n}}\n",
        ctx.source(name, source_extra)
    )
}

#[test]
fn quickstart_builds_and_the_image_holds_the_provisioned_files() {
    let ctx = Ctx::new("quickstart");
    let tpl = common::repo().join("templates/quickstart.pkr.hcl");
    let base = ctx.base.display().to_string();
    let out = ctx.kiln(&[
        "build",
        "-var",
        &format!("base_dir={base}"),
        "-var",
        "message=hello from the test",
        tpl.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("output-quickstart/quickstart.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/built.txt").as_deref(),
        Some("hello from the test\n")
    );
    assert_eq!(
        ctx.read_from_image(&disk, "/etc/motd").as_deref(),
        Some("Welcome to an image built by kiln.\n")
    );
    // The exported image stands alone (no backing file into the work dir).
    let info = std::process::Command::new("qemu-img")
        .arg("info")
        .arg(&disk)
        .output()
        .expect("qemu-img info");
    assert!(
        !String::from_utf8_lossy(&info.stdout).contains("backing file"),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ctx.dir.join("output-quickstart.manifest.json"))
            .expect("manifest written"),
    )
    .expect("manifest is JSON");
    assert_eq!(manifest["builds"][0]["name"], "quickstart");
    assert!(manifest["builds"][0]["artifact_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("sha256:")));
    assert!(
        ctx.work_leftovers().is_empty(),
        "work dir not cleaned: {:?}",
        ctx.work_leftovers()
    );
    assert!(ctx.qemu_pids().is_empty());
    // The same build again is a cache hit and leaves the output directory as it is.
    let again = ctx.kiln(&[
        "build",
        "-var",
        &format!("base_dir={base}"),
        "-var",
        "message=hello from the test",
        tpl.to_str().unwrap_or_default(),
    ]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("up to date"), "{}", text(&again));
    // A different build into an output directory holding another image is refused without -force.
    let other = ctx.kiln(&[
        "build",
        "-var",
        &format!("base_dir={base}"),
        "-var",
        "message=changed",
        tpl.to_str().unwrap_or_default(),
    ]);
    assert!(!other.status.success());
    assert!(text(&other).contains("already exists"), "{}", text(&other));
}

#[test]
fn legacy_json_template_builds_the_same_image() {
    let ctx = Ctx::new("json");
    let tpl = common::repo().join("templates/quickstart.json");
    let base = ctx.base.display().to_string();
    let out = ctx.kiln(&[
        "build",
        "-var",
        &format!("base_dir={base}"),
        tpl.to_str().unwrap_or_default(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("output-quickstart/quickstart.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/built.txt").as_deref(),
        Some("built by kiln\n")
    );
    assert_eq!(
        ctx.read_from_image(&disk, "/etc/motd").as_deref(),
        Some("Welcome to an image built by kiln.\n")
    );
}

#[test]
fn failing_provisioner_fails_the_build_and_leaves_nothing_behind() {
    let ctx = Ctx::new("fail");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "fail",
            "",
            r#"  provisioner "shell" { inline = ["echo about to fail", "exit 3"] }"#,
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("exited with status 3"), "{s}");
    assert!(
        s.contains("fail: about to fail"),
        "provisioner output is attributed to its build: {s}"
    );
    assert!(
        !ctx.dir.join("out-fail").exists(),
        "no output for a failed build"
    );
    assert!(
        ctx.qemu_pids().is_empty(),
        "qemu left running: {:?}",
        ctx.qemu_pids()
    );
    assert!(
        ctx.work_leftovers().is_empty(),
        "work dir left: {:?}",
        ctx.work_leftovers()
    );
    let staging: Vec<_> = std::fs::read_dir(&ctx.dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(staging.is_empty());
}

#[test]
fn ssh_timeout_names_the_reason_and_shows_the_console() {
    let ctx = Ctx::new("sshtimeout");
    // Nothing listens on guest port 2222: SSH can never connect.
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "nossh",
            "  ssh_port = 2222\n  ssh_timeout = \"12s\"",
            "",
        ),
    );
    let started = Instant::now();
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("timed out after 12s waiting for SSH"), "{s}");
    assert!(s.contains("last reason"), "{s}");
    assert!(
        s.contains("kiln-base: ready"),
        "the console's last lines are shown: {s}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(ctx.qemu_pids().is_empty());
}

fn wait_for(
    child: &mut std::process::Child,
    out: &std::path::Path,
    needle: &str,
    limit: Duration,
) -> String {
    let end = Instant::now() + limit;
    loop {
        let s = std::fs::read_to_string(out).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("kiln exited ({st}) before {needle:?}:\n{s}");
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {needle:?}:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn interrupt_mid_provisioner(signal: i32, expected_code: i32) {
    let ctx = Ctx::new("sigint");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "sig",
            "",
            r#"  provisioner "shell" { inline = ["echo long-step-started", "sleep 60"] }"#,
        ),
    );
    let log = ctx.dir.join("kiln.log");
    let f = std::fs::File::create(&log).expect("log file");
    let mut child = ctx
        .cmd(&["build", t.to_str().unwrap_or_default()])
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .spawn()
        .expect("kiln starts");
    wait_for(
        &mut child,
        &log,
        "long-step-started",
        Duration::from_secs(90),
    );
    assert_eq!(ctx.qemu_pids().len(), 1, "one guest runs during the step");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < end,
            "kiln did not stop within 30s of the signal"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let s = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(expected_code), "{s}");
    assert!(s.contains("interrupted"), "{s}");
    assert!(
        ctx.qemu_pids().is_empty(),
        "qemu outlived the interrupted build"
    );
    assert!(
        !ctx.dir.join("out-sig").exists(),
        "no output for an interrupted build"
    );
    assert!(
        ctx.work_leftovers().is_empty(),
        "work dir left: {:?}",
        ctx.work_leftovers()
    );
}

#[test]
fn sigint_during_a_provisioner_exits_130_and_cleans_up() {
    interrupt_mid_provisioner(libc::SIGINT, 130);
}

#[test]
fn sigterm_during_a_provisioner_exits_143_and_cleans_up() {
    interrupt_mid_provisioner(libc::SIGTERM, 143);
}

#[test]
fn sigkill_of_kiln_takes_qemu_with_it_and_the_next_build_works() {
    let ctx = Ctx::new("sigkill");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "kill",
            "",
            r#"  provisioner "shell" { inline = ["echo long-step-started", "sleep 60"] }"#,
        ),
    );
    let log = ctx.dir.join("kiln.log");
    let f = std::fs::File::create(&log).expect("log file");
    let mut child = ctx
        .cmd(&["build", t.to_str().unwrap_or_default()])
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .spawn()
        .expect("kiln starts");
    wait_for(
        &mut child,
        &log,
        "long-step-started",
        Duration::from_secs(90),
    );
    let _ = child.kill();
    let _ = child.wait();
    let end = Instant::now() + Duration::from_secs(10);
    while !ctx.qemu_pids().is_empty() {
        assert!(
            Instant::now() < end,
            "qemu survived SIGKILL of kiln: {:?}",
            ctx.qemu_pids()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!ctx.dir.join("out-kill").exists());
    // The next build sweeps the dead run's scratch and succeeds.
    let t2 = ctx.write(
        "t2.pkr.hcl",
        &hcl(
            &ctx,
            "kill",
            "",
            r#"  provisioner "shell" { inline = ["echo ok > /root/ok"] }"#,
        ),
    );
    let out = ctx.kiln(&["build", t2.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        ctx.work_leftovers().is_empty(),
        "stale work dirs remain: {:?}",
        ctx.work_leftovers()
    );
    assert_eq!(
        ctx.read_from_image(&ctx.dir.join("out-kill/disk.qcow2"), "/root/ok")
            .as_deref(),
        Some("ok\n")
    );
}

#[test]
fn expect_disconnect_survives_a_guest_reboot() {
    let ctx = Ctx::new("reboot");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "reboot",
            "",
            r#"  provisioner "shell" {
    inline            = ["cat /proc/sys/kernel/random/boot_id > /root/boot1", "sync", "reboot"]
    expect_disconnect = true
  }
  provisioner "shell" {
    inline = ["cat /proc/sys/kernel/random/boot_id > /root/boot2"]
  }"#,
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("out-reboot/disk.qcow2");
    let b1 = ctx
        .read_from_image(&disk, "/root/boot1")
        .expect("boot1 written before the reboot");
    let b2 = ctx
        .read_from_image(&disk, "/root/boot2")
        .expect("boot2 written after the reboot");
    assert_ne!(b1, b2, "the second provisioner ran in a new boot");
}

#[test]
fn max_retries_reruns_a_failing_provisioner_and_files_download() {
    let ctx = Ctx::new("retry");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "retry",
            "",
            r#"  provisioner "shell" {
    inline      = ["if [ -f /root/attempt ]; then echo second-try; else touch /root/attempt; exit 7; fi"]
    max_retries = 2
  }
  provisioner "file" {
    direction   = "download"
    source      = "/etc/hostname"
    destination = "downloaded/"
  }
  provisioner "file" {
    content     = "inline content\n"
    destination = "/root/content.txt"
  }"#,
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("retry 1/2"), "{s}");
    assert!(s.contains("second-try"), "{s}");
    assert_eq!(
        std::fs::read_to_string(ctx.dir.join("downloaded/hostname"))
            .ok()
            .as_deref(),
        Some("kiln-base\n")
    );
    let disk = ctx.dir.join("out-retry/disk.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/content.txt").as_deref(),
        Some("inline content\n")
    );
}

#[test]
fn http_content_directories_sftp_and_local_steps_work_together() {
    let ctx = Ctx::new("features");
    ctx.write("tree/a.txt", "file a\n");
    ctx.write("tree/sub/b.sh", "#!/bin/sh\necho b\n");
    std::fs::set_permissions(
        ctx.dir.join("tree/sub/b.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .expect("chmod");
    ctx.write("www/from-dir.txt", "served from http_directory\n");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "feat",
            "  http_directory = \"www\"\n  http_content = { \"/seed\" = \"seed for ${source.name}\" }\n  ssh_file_transfer_method = \"sftp\"",
            r#"  provisioner "shell" {
    inline = [
      "wget -qO /root/seed http://$PACKER_HTTP_ADDR/seed",
      "wget -qO /root/from-dir http://$PACKER_HTTP_ADDR/from-dir.txt",
      "echo \"$GREETING $PACKER_BUILD_NAME\" > /root/env",
    ]
    environment_vars = ["GREETING=hello there"]
  }
  provisioner "file" {
    source      = "tree"
    destination = "/opt"
  }
  provisioner "file" {
    source      = "tree/"
    destination = "/srv/contents"
  }
  provisioner "shell-local" {
    inline = ["echo \"local $PACKER_BUILD_NAME $PACKER_BUILDER_TYPE\" > local-ran.txt"]
  }"#,
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("out-feat/disk.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/seed").as_deref(),
        Some("seed for feat")
    );
    assert_eq!(
        ctx.read_from_image(&disk, "/root/from-dir").as_deref(),
        Some("served from http_directory\n")
    );
    assert_eq!(
        ctx.read_from_image(&disk, "/root/env").as_deref(),
        Some("hello there feat\n")
    );
    assert_eq!(
        ctx.read_from_image(&disk, "/opt/tree/a.txt").as_deref(),
        Some("file a\n")
    );
    assert_eq!(
        ctx.read_from_image(&disk, "/srv/contents/sub/b.sh")
            .as_deref(),
        Some("#!/bin/sh\necho b\n")
    );
    // File modes are kept.
    let raw = ctx.dir.join("modes.raw");
    assert!(std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&disk)
        .arg(&raw)
        .status()
        .expect("qemu-img")
        .success());
    let stat = std::process::Command::new("debugfs")
        .args(["-R", "stat /srv/contents/sub/b.sh"])
        .arg(&raw)
        .output()
        .expect("debugfs");
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("Mode:  0750"),
        "{}",
        String::from_utf8_lossy(&stat.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(ctx.dir.join("local-ran.txt"))
            .ok()
            .as_deref(),
        Some("local feat qemu\n")
    );
}

#[test]
fn error_cleanup_provisioner_runs_when_a_step_fails() {
    let ctx = Ctx::new("cleanupprov");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "ecp",
            "",
            r#"  provisioner "shell" { inline = ["exit 1"] }
  error-cleanup-provisioner "shell-local" {
    inline = ["echo cleaned > cleanup-ran.txt"]
  }"#,
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(ctx.dir.join("cleanup-ran.txt"))
            .ok()
            .as_deref(),
        Some("cleaned\n")
    );
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn iso_url_over_http_is_downloaded_once_verified_and_cached() {
    let ctx = Ctx::new("download");
    let www = ctx.dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::copy(ctx.base.join("base.qcow2"), www.join("base.qcow2")).expect("copy base");
    let sum = std::process::Command::new("sha256sum")
        .arg("base.qcow2")
        .current_dir(&www)
        .output()
        .expect("sha256sum");
    std::fs::write(www.join("SHA256SUMS"), &sum.stdout).expect("sums");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let log = ctx.dir.join("http.log");
    let mut server = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("python3 http.server");
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "http server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let extra = format!("  iso_url = \"http://127.0.0.1:{port}/base.qcow2\"\n  iso_checksum = \"file:http://127.0.0.1:{port}/SHA256SUMS\"");
    let t = ctx.write(
        "dl.pkr.hcl",
        &hcl(
            &ctx,
            "dl",
            &extra,
            r#"  provisioner "shell" { inline = ["echo downloaded > /root/d"] }"#,
        ),
    );
    let run = |args: &[&str]| {
        ctx.cmd(args)
            .env("KILN_DOWNLOAD_CACHE", ctx.dir.join("downloads"))
            .output()
            .expect("kiln")
    };
    let out = run(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("downloading http://127.0.0.1"),
        "{}",
        text(&out)
    );
    assert_eq!(
        ctx.read_from_image(&ctx.dir.join("out-dl/disk.qcow2"), "/root/d")
            .as_deref(),
        Some("downloaded\n")
    );
    let again = run(&["build", "-force", t.to_str().unwrap_or_default()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        !text(&again).contains("downloading http://127.0.0.1:{port}/base.qcow2"),
        "served from the download cache"
    );
    let gets = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("GET /base.qcow2")
            .count()
    };
    assert_eq!(gets(), 1, "the base was downloaded once");
    // iso_skip_cache: the same inputs (a cache hit, nothing boots), but the base is fetched
    // again for the key and nothing new lands in the download cache.
    let entries = |d: &std::path::Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);
    let cached_before = entries(&ctx.dir.join("downloads"));
    let skip = ctx.write(
        "dl.pkr.hcl",
        &hcl(
            &ctx,
            "dl",
            &format!("{extra}\n  iso_skip_cache = true"),
            r#"  provisioner "shell" { inline = ["echo downloaded > /root/d"] }"#,
        ),
    );
    let out = run(&["build", skip.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(gets(), 2, "iso_skip_cache downloads again");
    assert_eq!(
        entries(&ctx.dir.join("downloads")),
        cached_before,
        "and keeps nothing"
    );
    // iso_target_path: the download is saved there (from the cache: no new request).
    let saved = ctx.dir.join("saved/base.qcow2");
    let target = ctx.write(
        "dl.pkr.hcl",
        &hcl(
            &ctx,
            "dl",
            &format!("{extra}\n  iso_target_path = \"{}\"", saved.display()),
            r#"  provisioner "shell" { inline = ["echo downloaded > /root/d"] }"#,
        ),
    );
    let out = run(&["build", target.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&saved).ok(),
        std::fs::read(www.join("base.qcow2")).ok(),
        "the base is saved at iso_target_path: {}",
        text(&out)
    );
    assert_eq!(gets(), 2);
    let _ = server.kill();
    let _ = server.wait();
    // A wrong checksum is refused before anything boots.
    let bad = ctx.write(
        "bad.pkr.hcl",
        &hcl(
            &ctx,
            "bad",
            &format!(
                "  iso_url = \"{}/base.qcow2\"\n  iso_checksum = \"sha256:{}\"",
                ctx.base.display(),
                "0".repeat(64)
            ),
            "",
        ),
    );
    let o = ctx.kiln(&["build", bad.to_str().unwrap_or_default()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("checksum mismatch"), "{}", text(&o));
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn the_guest_host_key_is_pinned_for_the_build_recorded_and_checked_against_ssh_host_key() {
    let ctx = Ctx::new("hostkey");
    let build = |name: &str, extra: &str, body: &str| {
        let t = ctx.write(&format!("{name}.pkr.hcl"), &hcl(&ctx, name, extra, body));
        ctx.kiln(&["build", t.to_str().unwrap_or_default()])
    };
    // A wrong ssh_host_key: refused before authenticating, naming the key the guest has.
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = build(
        "hk1",
        &format!("  ssh_host_key = \"{wrong}\"\n"),
        "  provisioner \"shell\" {\n    inline = [\"true\"]\n  }",
    );
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s.contains("host key") && s.contains("changed") && s.contains(wrong),
        "{s}"
    );
    let actual = s
        .split("it is ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        actual.starts_with("SHA256:") && actual.len() == 50,
        "{actual:?} in {s}"
    );
    assert!(!ctx.dir.join("out-hk1").exists());

    // The right one: the build passes and the manifest records the key.
    let out = build(
        "hk2",
        &format!("  ssh_host_key = \"{actual}\"\n"),
        "  provisioner \"shell\" {\n    inline = [\"true\"]\n  }",
    );
    assert!(out.status.success(), "{}", text(&out));
    let insp = ctx.kiln(&["inspect", "hk2"]);
    let v: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("inspect json");
    assert_eq!(v["config"]["builder"]["sshHostKey"], actual.as_str());

    // Keys swapped mid-build (new host keys, then a reboot): the reconnection is refused.
    let keys = ctx.dir.join("newkeys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    let mut uploads = String::new();
    for (t, extra) in [
        ("ed25519", vec![]),
        ("ecdsa", vec!["-s", "256"]),
        ("rsa", vec!["-s", "2048"]),
    ] {
        let f = keys.join(format!("dropbear_{t}_host_key"));
        let st = std::process::Command::new("dropbearkey")
            .args(["-t", t])
            .args(&extra)
            .arg("-f")
            .arg(&f)
            .output()
            .expect("dropbearkey (apt-get install dropbear-bin)");
        assert!(st.status.success());
        uploads.push_str(&format!(
            "  provisioner \"file\" {{\n    source      = \"{}\"\n    destination = \"/etc/dropbear/dropbear_{t}_host_key\"\n  }}\n",
            f.display()
        ));
    }
    let out = build(
        "hk3",
        "",
        &format!("{uploads}  provisioner \"shell\" {{\n    inline            = [\"sync\", \"reboot\"]\n    expect_disconnect = true\n  }}\n  provisioner \"shell\" {{\n    inline = [\"echo after > /root/after\"]\n  }}"),
    );
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s.contains("host key") && s.contains("seen at the first connection"),
        "{s}"
    );
    assert!(!ctx.dir.join("out-hk3").exists());
    assert!(ctx.qemu_pids().is_empty());
}

/// A tiny guest started by the test itself (not by kiln): the "existing machine" the null
/// builder provisions. Killed when dropped.
struct RunningGuest {
    child: std::process::Child,
    port: u16,
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_guest(ctx: &Ctx) -> RunningGuest {
    let b = ctx.base.display().to_string();
    let overlay = ctx.dir.join("existing.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(format!("{b}/base.qcow2"))
        .arg(&overlay)
        .status()
        .expect("qemu-img runs");
    assert!(st.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "accel=tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args([
            "-kernel",
            &format!("{b}/vmlinux"),
            "-initrd",
            &format!("{b}/initrd.img"),
        ])
        .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        ])
        .args([
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-rng-pci",
        ])
        .arg("-serial")
        .arg(format!(
            "file:{}",
            ctx.dir.join("existing-console.log").display()
        ))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("qemu starts");
    RunningGuest { child, port }
}

#[test]
fn the_null_builder_provisions_a_running_machine_and_stores_nothing() {
    let ctx = Ctx::new("null");
    let guest = start_guest(&ctx);
    let b = ctx.base.display();
    let t = ctx.write(
        "null.pkr.hcl",
        &format!(
            r#"source "null" "existing" {{
  ssh_host             = "127.0.0.1"
  ssh_port             = {port}
  ssh_username         = "root"
  ssh_private_key_file = "{b}/id_ed25519"
  ssh_timeout          = "2m"
}}
build {{
  sources = ["source.null.existing"]
  provisioner "shell" {{
    inline = ["echo run >> /root/null-runs", "echo runs=$(wc -l < /root/null-runs)"]
  }}
}}
"#,
            port = guest.port
        ),
    );
    let t = t.to_string_lossy().into_owned();
    let v = ctx.kiln(&["validate", &t]);
    assert!(v.status.success(), "{}", text(&v));
    let first = ctx.kiln(&["build", &t]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("runs=1"), "{}", text(&first));
    // No image, so no cache: the same template runs its provisioners again, on the same machine.
    let second = ctx.kiln(&["build", &t]);
    assert!(second.status.success(), "{}", text(&second));
    assert!(text(&second).contains("runs=2"), "{}", text(&second));
    let images = ctx.kiln(&["images"]);
    assert!(!text(&images).contains("existing"), "{}", text(&images));
    assert!(
        ctx.qemu_pids().len() == 1,
        "kiln started no VM of its own and left the machine running"
    );
    // The machine is not kiln's: it is still up after both builds.
    drop(guest);
    // A null source without credentials is refused at validate, naming what is missing.
    let bad = ctx.write(
        "bad.pkr.hcl",
        "source \"null\" \"x\" {\n  ssh_host = \"127.0.0.1\"\n  ssh_username = \"root\"\n}\nbuild {\n  sources = [\"source.null.x\"]\n}\n",
    );
    let o = ctx.kiln(&["validate", &bad.to_string_lossy()]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("needs ssh_password, ssh_private_key_file or ssh_agent_auth"),
        "{}",
        text(&o)
    );
}

#[test]
fn cpu_topology_detect_zeroes_vga_and_iso_urls_reach_the_guest() {
    let ctx = Ctx::new("topology");
    let b = ctx.base.display();
    // The first iso_urls candidate does not exist: the second is used, and the build says so.
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "topo",
            &format!(
                "  iso_urls = [\"{b}/no-such-base.qcow2\", \"{b}/base.qcow2\"]\n  sockets = 1\n  cores = 2\n  disk_detect_zeroes = \"on\"\n  vga = \"std\""
            ),
            "  provisioner \"shell\" {\n    inline = [\"echo cpus=$(grep -c ^processor /proc/cpuinfo)\"]\n  }",
        )
        .replace(&format!("  iso_url              = \"{b}/base.qcow2\"\n"), ""),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("cpus=2"),
        "sockets × cores became the guest's CPUs: {s}"
    );
    assert!(!s.contains("accepted but not acted on"), "{s}");
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn qemu_img_args_reach_qemu_img_and_cdroms_attach_over_virtio_scsi() {
    let ctx = Ctx::new("qemuimgargs");
    ctx.write("seed/hello.txt", "hello\n");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "imgargs",
            "  cd_files = [\"seed/hello.txt\"]\n  cdrom_interface = \"virtio-scsi\"\n  qemu_img_args {\n    convert = [\"-o\", \"cluster_size=2M\"]\n    create  = [\"-o\", \"cluster_size=128k\"]\n  }",
            "  provisioner \"shell\" {\n    inline = [\"echo up\"]\n  }",
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(!s.contains("accepted but not acted on"), "{s}");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(ctx.dir.join("out-imgargs/disk.qcow2"))
        .output()
        .expect("qemu-img runs");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(
        info["cluster-size"],
        serde_json::json!(2 << 20),
        "qemu_img_args.convert shaped the exported disk: {info}"
    );
    assert!(ctx.qemu_pids().is_empty());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn host_port_ranges_and_skip_nat_mapping_choose_where_kiln_connects() {
    let ctx = Ctx::new("hostports");
    // A one-port range: the forward is on exactly that port.
    let p = free_port();
    let t = ctx.write(
        "range.pkr.hcl",
        &hcl(
            &ctx,
            "range",
            &format!("  host_port_min = {p}\n  host_port_max = {p}"),
            "  provisioner \"shell\" {\n    inline = [\"true\"]\n  }",
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains(&format!("waiting for SSH on 127.0.0.1:{p} ")),
        "{s}"
    );
    // skip_nat_mapping: kiln forwards nothing and connects to ssh_port as given; the forward is
    // the template's own (in qemuargs).
    let q = free_port();
    let t = ctx.write(
        "skip.pkr.hcl",
        &hcl(
            &ctx,
            "skip",
            &format!(
                "  skip_nat_mapping = true\n  ssh_port = {q}\n  qemuargs = [[\"-netdev\", \"user,id=user.0,hostfwd=tcp:127.0.0.1:{q}-:22\"]]"
            ),
            "  provisioner \"shell\" {\n    inline = [\"true\"]\n  }",
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains(&format!("waiting for SSH on 127.0.0.1:{q} ")),
        "{s}"
    );
    assert!(!s.contains("accepted but not acted on"), "{s}");
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn ssh_agent_auth_and_chosen_algorithms_reach_the_guest() {
    let ctx = Ctx::new("agent");
    let b = ctx.base.display();
    let sock = ctx.dir.join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client)");
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < end, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = std::process::Command::new("ssh-add")
        .arg(format!("{b}/id_ed25519"))
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "agent",
            "  ssh_agent_auth = true\n  ssh_ciphers = [\"aes256-ctr\"]\n  ssh_key_exchange_algorithms = [\"curve25519-sha256\"]",
            "  provisioner \"shell\" {\n    inline = [\"echo via-agent\"]\n  }",
        )
        .replace(&format!("  ssh_private_key_file = \"{b}/id_ed25519\"\n"), ""),
    );
    assert!(!std::fs::read_to_string(&t)
        .unwrap_or_default()
        .contains("ssh_private_key_file"));
    let out = ctx
        .cmd(&["build", t.to_str().unwrap_or_default()])
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("kiln");
    let _ = agent.kill();
    let _ = agent.wait();
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("via-agent"), "{s}");
    assert!(
        !s.contains("temporary"),
        "no temporary key with the agent: {s}"
    );
    assert!(!s.contains("accepted but not acted on"), "{s}");
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn ssh_read_write_timeout_ends_a_command_that_hangs() {
    let ctx = Ctx::new("rwtimeout");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "rw",
            "  ssh_read_write_timeout = \"2s\"",
            "  provisioner \"shell\" {\n    inline = [\"sleep 60\"]\n  }",
        ),
    );
    let started = Instant::now();
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("timed out after 2s"), "{s}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the 60 s sleep was cut short"
    );
    assert!(!s.contains("accepted but not acted on"), "{s}");
    assert!(ctx.qemu_pids().is_empty());
}

/// The kernel the tiny base is built from: the newest /boot/vmlinuz-* (as mkbase-tiny.sh picks).
fn newest_kver() -> String {
    std::fs::read_dir("/boot")
        .expect("/boot")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .max_by(|a, b| {
            let key = |s: &str| {
                s.split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b))
        })
        .expect("a kernel in /boot")
}

#[test]
fn floppy_files_dirs_and_content_are_read_by_the_guest() {
    let ctx = Ctx::new("floppy");
    ctx.write("fl/answer.txt", "from-floppy-files\n");
    ctx.write("tree/sub/deep.txt", "from-floppy-dirs\n");
    // The tiny guest loads only virtio and ext4 at boot: the test hands it the floppy and FAT
    // modules of the same kernel (the base is built from the newest /boot/vmlinuz-*).
    let kver = newest_kver();
    let m = format!("/lib/modules/{kver}/kernel");
    let mods = [
        "drivers/block/floppy.ko",
        "fs/fat/fat.ko",
        "fs/fat/vfat.ko",
        "fs/nls/nls_cp437.ko",
        "fs/nls/nls_ascii.ko",
        "fs/nls/nls_utf8.ko",
    ];
    let uploads: String = mods
        .iter()
        .map(|p| format!("  provisioner \"file\" {{\n    source = \"{m}/{p}\"\n    destination = \"/tmp/\"\n  }}\n"))
        .collect();
    let insmods: String = mods
        .iter()
        .map(|p| {
            format!(
                "\"insmod /tmp/{} || true\", ",
                p.rsplit('/').next().unwrap_or(p)
            )
        })
        .collect();
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "floppy",
            "  floppy_files = [\"fl/answer.txt\"]\n  floppy_dirs = [\"tree\"]\n  floppy_content = { \"conf/c.txt\" = \"from-floppy-content\" }\n  floppy_label = \"KILNFLOP\"",
            &format!(
                "{uploads}  provisioner \"shell\" {{\n    inline = [{insmods}\"i=0; while [ ! -b /dev/fd0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\", \"mkdir -p /mnt/fd\", \"mount -t vfat -o ro /dev/fd0 /mnt/fd\", \"cat /mnt/fd/answer.txt /mnt/fd/tree/sub/deep.txt /mnt/fd/conf/c.txt\", \"umount /mnt/fd\"]\n  }}"
            ),
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    for want in [
        "from-floppy-files",
        "from-floppy-dirs",
        "from-floppy-content",
    ] {
        assert!(s.contains(want), "{want}: {s}");
    }
    assert!(!s.contains("accepted but not acted on"), "{s}");
    assert!(ctx.qemu_pids().is_empty());
}

/// The UEFI guest (tests/fixtures/mkbase-efi.sh): GPT, systemd-boot on its own ESP, root on p2.
fn efi_dir() -> std::path::PathBuf {
    common::ensure("ensure-efi.sh")
}

#[test]
fn a_uefi_guest_boots_from_its_own_esp_with_a_tpm_and_nothing_outlives_the_build() {
    let ctx = Ctx::new("efi");
    let efi = efi_dir();
    let template = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    let before = std::fs::read(template).expect("ovmf (scripts/setup.sh installs it)");
    // No kernel option: OVMF finds EFI/BOOT/BOOTX64.EFI (systemd-boot) on the disk's ESP.
    let t = ctx.write(
        "t.pkr.hcl",
        &format!(
            r#"source "qemu" "efi" {{
  iso_url              = "{e}/efi.qcow2"
  iso_checksum         = "none"
  disk_image           = true
  accelerator          = "tcg"
  memory               = 256
  machine_type         = "q35"
  efi_boot             = true
  vtpm                 = true
  output_directory     = "out-efi"
  vm_name              = "disk.qcow2"
  ssh_username         = "root"
  ssh_private_key_file = "{e}/id_ed25519"
  ssh_timeout          = "4m"
  shutdown_command     = "sync; poweroff"
}}
build {{
  sources = ["source.qemu.efi"]
  provisioner "shell" {{
    inline = [
      "test -d /sys/firmware/efi && echo booted-through-uefi",
      "test -c /dev/tpm0 && echo guest-has-tpm0",
      "cat /sys/class/tpm/tpm0/tpm_version_major",
      "echo from-the-esp-guest > /root/efi.txt",
    ]
  }}
}}
"#,
            e = efi.display()
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("booted-through-uefi"), "{s}");
    assert!(s.contains("guest-has-tpm0"), "{s}");
    assert!(s.contains("started swtpm"), "{s}");
    assert_eq!(
        std::fs::read(template).ok().as_deref(),
        Some(before.as_slice()),
        "the system's OVMF_VARS template was not written"
    );
    // The file landed on p2 of the GPT disk: read it at that partition's offset.
    let raw = ctx.dir.join("efi.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(ctx.dir.join("out-efi/disk.qcow2"))
        .arg(&raw)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let gpt = std::fs::read(&raw).expect("raw disk");
    assert_eq!(&gpt[512..520], b"EFI PART", "a GPT disk");
    // Entry 2 of the partition array at LBA 2: first LBA at byte 32 of the 128-byte entry.
    let e2 = 1024 + 128;
    let mut lba = [0u8; 8];
    lba.copy_from_slice(&gpt[e2 + 32..e2 + 40]);
    let start = u64::from_le_bytes(lba) * 512;
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /root/efi.txt"])
        .arg(format!("{}?offset={start}", raw.display()))
        .output()
        .expect("debugfs");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "from-the-esp-guest\n");
    let needle = ctx.dir.to_string_lossy().into_owned();
    let swtpms: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("swtpm") && c.contains(&needle))
        .collect();
    assert!(swtpms.is_empty(), "swtpm left running: {swtpms:?}");
    assert!(ctx.qemu_pids().is_empty());
}

/// The tiny arm64 guest (tests/fixtures/mkbase-arm64.sh), from Debian's arm64 packages.
fn arm64_dir() -> std::path::PathBuf {
    common::ensure("ensure-arm64.sh")
}

#[test]
fn an_arm64_guest_builds_under_tcg_with_defaults_for_its_architecture() {
    let ctx = Ctx::new("arm64");
    let a = arm64_dir();
    // No machine_type, cpu_model or accelerator: kiln picks virt, -cpu max and TCG for aarch64.
    let t = ctx.write(
        "t.pkr.hcl",
        &format!(
            r#"source "qemu" "arm" {{
  qemu_binary          = "qemu-system-aarch64"
  iso_url              = "{a}/base.qcow2"
  iso_checksum         = "none"
  disk_image           = true
  memory               = 256
  kernel               = "{a}/Image"
  initrd               = "{a}/initrd.img"
  kernel_args          = "root=/dev/vda rw console=ttyAMA0 quiet"
  output_directory     = "out-arm"
  vm_name              = "disk.qcow2"
  ssh_username         = "root"
  ssh_private_key_file = "{a}/id_ed25519"
  ssh_timeout          = "4m"
  shutdown_command     = "sync; poweroff"
}}
build {{
  sources = ["source.qemu.arm"]
  provisioner "shell" {{
    inline = ["uname -m > /root/arch", "echo guest-arch=$(uname -m)"]
  }}
}}
"#,
            a = a.display()
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("guest-arch=aarch64"), "{s}");
    assert!(
        s.contains("accelerator: tcg (auto: the guest is aarch64"),
        "{s}"
    );
    let disk = ctx.dir.join("out-arm/disk.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/arch").as_deref(),
        Some("aarch64\n")
    );
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn ssh_through_a_bastion_reaches_an_address_only_the_bastion_can_see() {
    let ctx = Ctx::new("bastion");
    let guest = start_guest(&ctx);
    let b = ctx.base.display();
    // 10.0.2.15 is the guest's address inside QEMU's user network: this host cannot reach it,
    // the guest (the bastion here, at the forwarded port) can.
    let tpl = |key: &str| {
        format!(
            r#"source "null" "behind" {{
  ssh_host                     = "10.0.2.15"
  ssh_port                     = 22
  ssh_username                 = "root"
  ssh_private_key_file         = "{b}/id_ed25519"
  ssh_timeout                  = "2m"
  ssh_bastion_host             = "127.0.0.1"
  ssh_bastion_port             = {port}
  ssh_bastion_username         = "root"
  ssh_bastion_private_key_file = "{key}"
}}
build {{
  sources = ["source.null.behind"]
  provisioner "shell" {{
    inline = ["echo reached-$(hostname)-at-$(ip -4 addr show eth0 | grep -o '10.0.2.15')"]
  }}
  provisioner "file" {{
    content     = "through the bastion\n"
    destination = "/root/bastion.txt"
  }}
  provisioner "shell" {{
    inline = ["cat /root/bastion.txt"]
  }}
}}
"#,
            port = guest.port
        )
    };
    let t = ctx.write("b.pkr.hcl", &tpl(&format!("{b}/id_ed25519")));
    let out = ctx.kiln(&["build", &t.to_string_lossy()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("reached-kiln-base-at-10.0.2.15"), "{s}");
    assert!(s.contains("through the bastion"), "{s}");
    // A key the bastion refuses is named as the bastion's problem.
    let other = ctx.dir.join("other_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let t = ctx.write(
        "bad.pkr.hcl",
        &tpl(&other.to_string_lossy()).replace("\"2m\"", "\"5s\""),
    );
    let out = ctx.kiln(&["build", &t.to_string_lossy()]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(s.contains("bastion 127.0.0.1: key"), "{s}");
    drop(guest);
}

/// A SOCKS5 proxy for the test (RFC 1928 CONNECT by name, with RFC 1929 username/password):
/// returns its port and what it was asked to connect to.
fn socks_proxy(
    user: &'static str,
    pass: &'static str,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut b = [0u8; 512];
                let Ok(()) = c.read_exact(&mut b[..2]) else {
                    return;
                };
                let n = usize::from(b[1]);
                let Ok(()) = c.read_exact(&mut b[..n]) else {
                    return;
                };
                if !b[..n].contains(&2) {
                    let _ = c.write_all(&[5, 0xff]);
                    return;
                }
                let _ = c.write_all(&[5, 2]);
                let Ok(()) = c.read_exact(&mut b[..2]) else {
                    return;
                };
                let ul = usize::from(b[1]);
                let mut u = vec![0; ul];
                let Ok(()) = c.read_exact(&mut u) else { return };
                let Ok(()) = c.read_exact(&mut b[..1]) else {
                    return;
                };
                let mut p = vec![0; usize::from(b[0])];
                let Ok(()) = c.read_exact(&mut p) else { return };
                if u != user.as_bytes() || p != pass.as_bytes() {
                    let _ = c.write_all(&[1, 1]);
                    return;
                }
                let _ = c.write_all(&[1, 0]);
                let Ok(()) = c.read_exact(&mut b[..5]) else {
                    return;
                };
                let hl = usize::from(b[4]);
                let mut h = vec![0; hl + 2];
                let Ok(()) = c.read_exact(&mut h) else { return };
                let host = String::from_utf8_lossy(&h[..hl]).into_owned();
                let tport = u16::from_be_bytes([h[hl], h[hl + 1]]);
                seen.lock().expect("lock").push(format!("{host}:{tport}"));
                let Ok(t) = std::net::TcpStream::connect((host.as_str(), tport)) else {
                    let _ = c.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
                    return;
                };
                let _ = c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]);
                let (mut c2, mut t2) =
                    (c.try_clone().expect("clone"), t.try_clone().expect("clone"));
                let (mut c, mut t) = (c, t);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut t2);
                    let _ = t2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut t, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, seen)
}

#[test]
fn ssh_through_a_socks_proxy_with_a_password() {
    let ctx = Ctx::new("socks");
    let (port, seen) = socks_proxy("kiln", "proxy-secret");
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "socks",
            &format!(
                "  ssh_proxy_host = \"127.0.0.1\"\n  ssh_proxy_port = {port}\n  ssh_proxy_username = \"kiln\"\n  ssh_proxy_password = \"proxy-secret\""
            ),
            "  provisioner \"shell\" {\n    inline = [\"echo via-socks > /root/socks.txt\"]\n  }",
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    let asked = seen.lock().expect("lock").clone();
    assert!(
        !asked.is_empty() && asked.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{asked:?}"
    );
    let disk = ctx.dir.join("out-socks/disk.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/socks.txt").as_deref(),
        Some("via-socks\n")
    );
    // A wrong proxy password is named, and the build does not wait out ssh_timeout for it.
    let bad = std::fs::read_to_string(&t)
        .expect("read")
        .replace("proxy-secret", "wrong")
        .replace("\"out-socks\"", "\"out-socks-bad\"");
    let t2 = ctx.write("bad.pkr.hcl", &bad);
    // The proxy is not an input of the image: -force, or this is a cache hit.
    let out = ctx.kiln(&["build", "-force", t2.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(!out.status.success(), "{s}");
    assert!(
        s.contains("the proxy refused ssh_proxy_username/ssh_proxy_password"),
        "{s}"
    );
}

#[test]
fn ssh_local_and_remote_tunnels_carry_connections_both_ways_during_the_build() {
    let ctx = Ctx::new("tunnels");
    // Something on this machine for the guest to reach through the remote tunnel.
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let web_port = web.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for c in web.incoming().flatten() {
            let mut c = c;
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            let _ = c.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\nhello-from-host",
            );
        }
    });
    let local = free_port();
    let t = ctx.write(
        "t.pkr.hcl",
        &hcl(
            &ctx,
            "tun",
            &format!(
                "  ssh_local_tunnels  = [\"{local}:127.0.0.1:22\"]\n  ssh_remote_tunnels = [\"9000:127.0.0.1:{web_port}\"]"
            ),
            &format!(
                r#"  provisioner "shell" {{
    inline = ["wget -qO- http://127.0.0.1:9000/ > /root/via-remote-tunnel"]
  }}
  provisioner "shell-local" {{
    inline = ["python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', {local})); print('local-tunnel-banner=' + s.recv(64).split(b'\\r')[0].decode())\""]
  }}"#
            ),
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("local-tunnel-banner=SSH-2.0-dropbear"), "{s}");
    let disk = ctx.dir.join("out-tun/disk.qcow2");
    assert_eq!(
        ctx.read_from_image(&disk, "/root/via-remote-tunnel")
            .as_deref(),
        Some("hello-from-host")
    );
    // The local end is closed with the build.
    assert!(std::net::TcpStream::connect(("127.0.0.1", local)).is_err());
}
