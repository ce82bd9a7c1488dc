//! The content-addressed store end to end: builds skipped when nothing changed, rebuilt when an
//! input did, read by skopeo, verified, shared by concurrent builds, and safe against SIGKILL.

mod common;

use common::{skopeo, text, Ctx};
use std::process::Command;
use std::time::{Duration, Instant};

fn template(ctx: &Ctx, name: &str, qemu: &std::path::Path, script: &str) -> std::path::PathBuf {
    let src = ctx.source(name, &format!("  qemu_binary = \"{}\"", qemu.display()));
    ctx.write(
        &format!("{name}.pkr.hcl"),
        &format!("{src}\nbuild {{\n  sources = [\"source.qemu.{name}\"]\n  provisioner \"shell\" {{\n    script = \"{script}\"\n  }}\n}}\n"),
    )
}

fn store_blobs_match_their_names(store: &std::path::Path) {
    for e in std::fs::read_dir(store.join("blobs/sha256"))
        .expect("blobs dir")
        .flatten()
    {
        let out = Command::new("sha256sum")
            .arg(e.path())
            .output()
            .expect("sha256sum");
        let sum = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        assert_eq!(
            sum,
            e.file_name().to_string_lossy(),
            "blob {} does not match its name",
            e.path().display()
        );
    }
}

#[test]
fn unchanged_rebuild_is_a_cache_hit_and_a_changed_script_rebuilds() {
    let ctx = Ctx::new("cache");
    let qemu = ctx.qemu_counter();
    ctx.write("setup.sh", "#!/bin/sh\necho v1 > /root/version\n");
    let t = template(&ctx, "cached", &qemu, "setup.sh");
    let path = t.to_str().unwrap_or_default().to_string();
    let first = ctx.kiln(&["build", &path]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(ctx.qemu_starts(), 1);
    let disk = ctx.dir.join("out-cached/disk.qcow2");
    let digest1 = std::fs::read(&disk).expect("disk written");

    // Same inputs, output dir gone: restored from the store, no VM.
    std::fs::remove_dir_all(ctx.dir.join("out-cached")).expect("rm output");
    let second = ctx.kiln(&["build", &path]);
    let s = text(&second);
    assert!(second.status.success(), "{s}");
    assert!(s.contains("up to date"), "{s}");
    assert_eq!(ctx.qemu_starts(), 1, "a cache hit starts no VM");
    assert_eq!(std::fs::read(&disk).expect("disk restored"), digest1);

    // Comments and formatting do not change the key.
    let reformatted = std::fs::read_to_string(&t)
        .expect("read")
        .replace("  qemu_binary", "  # a comment\n  qemu_binary    ");
    std::fs::write(&t, reformatted).expect("write");
    let third = ctx.kiln(&["build", &path]);
    assert!(
        third.status.success() && text(&third).contains("up to date"),
        "{}",
        text(&third)
    );
    assert_eq!(ctx.qemu_starts(), 1);

    // A changed script rebuilds.
    ctx.write("setup.sh", "#!/bin/sh\necho v2 > /root/version\n");
    let fourth = ctx.kiln(&["build", "-force", &path]);
    assert!(fourth.status.success(), "{}", text(&fourth));
    assert_eq!(ctx.qemu_starts(), 2);
    assert_eq!(
        ctx.read_from_image(&disk, "/root/version").as_deref(),
        Some("v2\n")
    );

    // -force rebuilds even when nothing changed.
    let fifth = ctx.kiln(&["build", "-force", &path]);
    assert!(fifth.status.success(), "{}", text(&fifth));
    assert_eq!(ctx.qemu_starts(), 3);

    // The store: listed, verified, readable by skopeo with digests checked.
    let store = ctx.dir.join("store");
    let images = ctx.kiln(&["images"]);
    assert!(text(&images).contains("cached"), "{}", text(&images));
    let verify = ctx.kiln(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:cached", store.display()),
    ]);
    let manifest: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    assert_eq!(manifest["artifactType"], "application/vnd.kiln.image.v1");
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.kiln.disk.qcow2"
    );
    skopeo(&[
        "copy",
        &format!("oci:{}:cached", store.display()),
        &format!("dir:{}", ctx.dir.join("copied").display()),
    ]);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_string();
    assert_eq!(
        std::fs::read(ctx.dir.join("copied").join(&layer)).expect("layer copied"),
        std::fs::read(&disk).expect("disk")
    );

    // inspect IMAGE shows the manifest: inputs by digest, never a path alone.
    let insp = ctx.kiln(&["inspect", "cached"]);
    let it = text(&insp);
    assert!(insp.status.success(), "{it}");
    assert!(it.contains("\"cacheKey\""), "{it}");
    assert!(it.contains("\"base\""), "{it}");

    // export to raw and read it back.
    let raw_out = ctx.dir.join("exported.raw");
    let ex = ctx.kiln(&[
        "export",
        "cached",
        "-o",
        raw_out.to_str().unwrap_or_default(),
        "--format",
        "raw",
    ]);
    assert!(ex.status.success(), "{}", text(&ex));
    let cat = Command::new("debugfs")
        .args(["-R", "cat /root/version"])
        .arg(&raw_out)
        .output()
        .expect("debugfs");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "v2\n");

    // A flipped byte in the disk blob is found and named.
    let blob = store.join("blobs/sha256").join(&layer);
    std::fs::set_permissions(&blob, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let mut bytes = std::fs::read(&blob).expect("read blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, bytes).expect("write blob");
    let bad = ctx.kiln(&["verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains(&layer), "{}", text(&bad));
}

#[test]
fn two_builds_of_one_name_into_one_store_at_once_both_land_and_survive_gc() {
    // Same build name (so the same tag), different scripts and outputs, at once: both images stay
    // in the store (the tag moves to the one that landed last; the other is listed untagged) and
    // `kiln gc` keeps both.
    let ctx = Ctx::new("concurrent");
    let qemu = ctx.qemu_counter();
    ctx.write("a.sh", "#!/bin/sh\necho a > /root/who\n");
    ctx.write("b.sh", "#!/bin/sh\necho b > /root/who\n");
    let write = |dir: &str, script: &str| {
        let src = ctx.source(
            "jc",
            &format!(
                "  qemu_binary = \"{}\"\n  output_directory = \"out-{dir}\"",
                qemu.display()
            ),
        );
        ctx.write(
            &format!("{dir}.pkr.hcl"),
            &format!("{src}\nbuild {{\n  sources = [\"source.qemu.jc\"]\n  provisioner \"shell\" {{\n    script = \"{script}\"\n  }}\n}}\n"),
        )
    };
    let (ta, tb) = (write("a", "a.sh"), write("b", "b.sh"));
    let spawn = |t: &std::path::Path| {
        ctx.cmd(&["build", t.to_str().unwrap_or_default()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (pa, pb) = (spawn(&ta), spawn(&tb));
    let (oa, ob) = (
        pa.wait_with_output().expect("a"),
        pb.wait_with_output().expect("b"),
    );
    assert!(oa.status.success(), "{}", text(&oa));
    assert!(ob.status.success(), "{}", text(&ob));
    let gc = ctx.kiln(&["gc"]);
    assert!(gc.status.success(), "{}", text(&gc));
    let images = text(&ctx.kiln(&["images"]));
    let rows: Vec<&str> = images.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{images}");
    assert_eq!(
        rows.iter().filter(|r| r.starts_with("jc ")).count(),
        1,
        "{images}"
    );
    assert_eq!(
        rows.iter().filter(|r| r.starts_with("<none>")).count(),
        1,
        "{images}"
    );
    assert!(ctx.kiln(&["verify"]).status.success());
    store_blobs_match_their_names(&ctx.dir.join("store"));
    // Each image's disk is still in the store: export both by id and read them back.
    for row in rows {
        let id = row.split_whitespace().nth(1).unwrap_or_default();
        let out = ctx.dir.join(format!("{}.qcow2", &id[7..]));
        let e = ctx.kiln(&[
            "export",
            id,
            "-o",
            out.to_str().unwrap_or_default(),
            "--format",
            "qcow2",
        ]);
        assert!(e.status.success(), "{}", text(&e));
        let who = ctx.read_from_image(&out, "/root/who");
        assert!(
            matches!(who.as_deref(), Some("a\n") | Some("b\n")),
            "{who:?}"
        );
    }
    for (dir, who) in [("a", "a\n"), ("b", "b\n")] {
        assert_eq!(
            ctx.read_from_image(&ctx.dir.join(format!("out-{dir}/disk.qcow2")), "/root/who")
                .as_deref(),
            Some(who)
        );
    }
}

/// Starts `kiln build t` held by the store-before-rename hook for `secs` and returns once the disk
/// is exported (hashed in the store's temp dir, not renamed yet); the log file is returned.
fn build_held_in_store(
    ctx: &Ctx,
    t: &std::path::Path,
    secs: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let log = ctx.dir.join("kiln.log");
    let f = std::fs::File::create(&log).expect("log");
    let mut child = ctx
        .cmd(&["build", t.to_str().unwrap_or_default()])
        .env("KILN_FAILPOINT", "store-before-rename")
        .env("KILN_FAILPOINT_SECS", secs)
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .spawn()
        .expect("spawn");
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let s = std::fs::read_to_string(&log).unwrap_or_default();
        if s.contains("exported disk.qcow2") {
            return (child, log);
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "kiln ended early:\n{s}"
        );
        assert!(Instant::now() < end, "no export within 120s:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkill_while_writing_into_the_store_leaves_no_bad_blob() {
    let ctx = Ctx::new("storekill");
    let qemu = ctx.qemu_counter();
    ctx.write("s.sh", "#!/bin/sh\necho killed-run > /root/run\n");
    let t = template(&ctx, "sk", &qemu, "s.sh");
    // Wait until the disk sits hashed in the store's temp dir, not yet renamed.
    let (mut child, _log) = build_held_in_store(&ctx, &t, "60");
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let store = ctx.dir.join("store");
    store_blobs_match_their_names(&store);
    assert!(
        !ctx.dir.join("out-sk").exists(),
        "no output from a killed build"
    );
    let tmp_left: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .expect("tmp")
        .flatten()
        .collect();
    assert!(
        !tmp_left.is_empty(),
        "the killed write left its temp dir (swept by the next kiln)"
    );
    // The next build succeeds, sweeps the dead temp dir, and the store verifies.
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read_dir(store.join("tmp"))
            .expect("tmp")
            .flatten()
            .next()
            .is_none(),
        "stale temp dirs were swept"
    );
    assert!(ctx.kiln(&["verify"]).status.success());
    store_blobs_match_their_names(&store);
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn post_processors_run_on_builds_and_on_cache_hits() {
    let ctx = Ctx::new("post");
    let qemu = ctx.qemu_counter();
    ctx.write("s.sh", "#!/bin/sh\necho post > /root/post\n");
    let src = ctx.source("pp", &format!("  qemu_binary = \"{}\"", qemu.display()));
    let with_post = |post: &str| {
        format!("{src}\nbuild {{\n  sources = [\"source.qemu.pp\"]\n  provisioner \"shell\" {{\n    script = \"s.sh\"\n  }}\n{post}\n}}\n")
    };
    let t = ctx.write(
        "pp.pkr.hcl",
        &with_post(
            r#"  post-processor "checksum" {
    checksum_types = ["sha1", "sha256"]
    output         = "sums/{{.BuildName}}.{{.ChecksumType}}"
  }
  post-processors {
    post-processor "compress" {
      output              = "pp.tar.zst"
      keep_input_artifact = true
    }
  }
  post-processor "manifest" {
    output = "manifest.json"
  }"#,
        ),
    );
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    let disk = ctx.dir.join("out-pp/disk.qcow2");
    let sha256 = Command::new("sha256sum")
        .arg(&disk)
        .output()
        .expect("sha256sum");
    let want = String::from_utf8_lossy(&sha256.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        std::fs::read_to_string(ctx.dir.join("sums/pp.sha256")).expect("sha256 file"),
        format!("{want}\tdisk.qcow2\n")
    );
    let sha1 = Command::new("sha1sum")
        .arg(&disk)
        .output()
        .expect("sha1sum");
    let want1 = String::from_utf8_lossy(&sha1.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(std::fs::read_to_string(ctx.dir.join("sums/pp.sha1"))
        .expect("sha1 file")
        .starts_with(&want1));
    let list = Command::new("tar")
        .args(["--zstd", "-tf"])
        .arg(ctx.dir.join("pp.tar.zst"))
        .output()
        .expect("tar");
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "disk.qcow2");
    assert!(disk.exists(), "keep_input_artifact = true keeps the disk");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ctx.dir.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    let id = manifest["builds"][0]["artifact_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        text(&ctx.kiln(&["images"])).contains(&id[..19]),
        "artifact_id is the image id"
    );
    assert_eq!(
        manifest["builds"][0]["custom_data"]["kiln_disk_sha256"],
        want
    );

    // Post-processors are not in the cache key: a new chain runs on the cached image, no VM.
    std::fs::write(
        &t,
        with_post(
            r#"  post-processor "vagrant" {
    output = "boxes/{{.BuildName}}_{{.Provider}}.box"
  }
  post-processor "manifest" {
    output = "manifest.json"
  }"#,
        ),
    )
    .expect("rewrite template");
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("up to date"), "{s}");
    assert_eq!(ctx.qemu_starts(), 1);
    let box_list = Command::new("tar")
        .args(["-tzf"])
        .arg(ctx.dir.join("boxes/pp_libvirt.box"))
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&box_list.stdout).to_string();
    for f in ["box.img", "metadata.json", "Vagrantfile"] {
        assert!(names.contains(f), "{f} in box: {names}");
    }
    assert!(
        !disk.exists(),
        "vagrant replaces its input unless keep_input_artifact = true"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ctx.dir.join("manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(
        manifest["builds"].as_array().map(Vec::len),
        Some(2),
        "manifest entries are appended per run"
    );
}

#[test]
fn read_only_commands_create_nothing_and_bad_names_are_refused() {
    let ctx = Ctx::bare("readonly");
    let missing = ctx.dir.join("no-store-here");
    let m = missing.to_str().unwrap_or_default();
    for args in [
        vec!["--store", m, "inspect", "web"],
        vec!["--store", m, "verify"],
        vec!["--store", m, "tag", "web", "v2"],
        vec!["--store", m, "rm", "web"],
        vec!["--store", m, "gc"],
        vec!["--store", m, "export", "web", "-o", "x.raw"],
    ] {
        let out = ctx.kiln(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("no kiln store at"),
            "{args:?}: {}",
            text(&out)
        );
        assert!(!missing.exists(), "{args:?} created a store");
    }
    let images = ctx.kiln(&["--store", m, "images"]);
    assert!(images.status.success(), "{}", text(&images));
    assert!(!missing.exists(), "images created a store");

    // A store with one (hand-made) image: a bad tag is refused with the grammar; an unknown name
    // in inspect says it is neither a template nor an image.
    let store = ctx.dir.join("store");
    let st = kiln_store::Store::open(&store).expect("store");
    let blob = |bytes: &[u8]| st.put_bytes(bytes).expect("put").digest;
    let cfg = blob(b"{}");
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/json","digest":"{cfg}","size":2}},"layers":[]}}"#
    );
    let id = blob(manifest.as_bytes());
    let index = |digest: &str| {
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"web"}}}}]}}"#,
            manifest.len()
        )
    };
    std::fs::write(store.join("index.json"), index(&id)).expect("index");
    let long = "t".repeat(5000);
    for bad in ["", "a b", "../../x", long.as_str()] {
        let out = ctx.kiln(&["tag", "web", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(text(&out).contains("OCI tag grammar"), "{}", text(&out));
    }
    assert!(ctx.kiln(&["tag", "web", "v1.0"]).status.success());
    let out = ctx.kiln(&["inspect", "nosuchimage"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("neither a template file or directory nor an image in the store"),
        "{}",
        text(&out)
    );
    let out = ctx.kiln(&["inspect", "v1.0"]);
    assert!(out.status.success(), "{}", text(&out));

    // A digest that walks out of the store never becomes a path; a malformed index stops gc.
    std::fs::write(
        store.join("index.json"),
        index("sha256:../../../../etc/hostname"),
    )
    .expect("index");
    for args in [
        vec!["verify"],
        vec!["inspect", "web"],
        vec!["export", "web", "-o", "x.raw"],
        vec!["gc"],
    ] {
        let out = ctx.kiln(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out).contains("index.json"),
            "{args:?}: {}",
            text(&out)
        );
    }
    std::fs::write(store.join("index.json"), r#"{"manifests": 5}"#).expect("index");
    let out = ctx.kiln(&["gc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("index.json"), "{}", text(&out));
    assert!(
        store.join("blobs/sha256").join(&id[7..]).exists(),
        "gc deleted blobs"
    );
}

#[test]
fn sigterm_during_the_store_phase_publishes_nothing() {
    let ctx = Ctx::new("storeterm");
    let qemu = ctx.qemu_counter();
    ctx.write("s.sh", "#!/bin/sh\necho term-run > /root/run\n");
    let t = template(&ctx, "st", &qemu, "s.sh");
    let (mut child, log) = build_held_in_store(&ctx, &t, "3");
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().expect("wait");
    let s = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st.code(), Some(143), "{s}");
    assert!(
        !ctx.dir.join("out-st").exists(),
        "a cancelled build published its output:\n{s}"
    );
    assert!(s.contains("is whole in the store"), "{s}");
    assert!(s.contains("nothing was published"), "{s}");
    let images = text(&ctx.kiln(&["images"]));
    assert!(images.lines().any(|l| l.starts_with("st ")), "{images}");
    assert!(ctx.kiln(&["verify"]).status.success());
    assert!(ctx.qemu_pids().is_empty());
    // The next run is a cache hit that publishes it.
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(
        ctx.read_from_image(&ctx.dir.join("out-st/disk.qcow2"), "/root/run")
            .as_deref(),
        Some("term-run\n")
    );
}

/// Running means not gone and not a zombie waiting for its reaper.
fn pid_running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|st| st != "Z" && st != "X")
}

#[test]
fn shell_local_scripts_die_with_their_build_on_sigterm_and_sigkill() {
    let ctx = Ctx::new("localkill");
    let qemu = ctx.qemu_counter();
    ctx.write("s.sh", "#!/bin/sh\necho x > /root/x\n");
    let src = ctx.source("lk", &format!("  qemu_binary = \"{}\"", qemu.display()));
    let with_post = |post: &str| {
        format!("{src}\nbuild {{\n  sources = [\"source.qemu.lk\"]\n  provisioner \"shell\" {{\n    script = \"s.sh\"\n  }}\n{post}\n}}\n")
    };
    let t = ctx.write("lk.pkr.hcl", &with_post(""));
    let out = ctx.kiln(&["build", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    // Post-processors are not in the cache key: from here on each build is a cache hit that runs
    // a host script which starts a grandchild and waits.
    let pidfile = ctx.dir.join("sleep.pid");
    ctx.write(
        "lk.pkr.hcl",
        &with_post(&format!(
            "  post-processor \"shell-local\" {{\n    inline = [\"sleep 60 & echo $! > {}; wait\"]\n  }}",
            pidfile.display()
        )),
    );
    let tmp = ctx.dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        let _ = std::fs::remove_file(&pidfile);
        let mut child = ctx
            .cmd(&["build", t.to_str().unwrap_or_default()])
            .env("TMPDIR", &tmp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let end = Instant::now() + Duration::from_secs(60);
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .filter(|p| p.ends_with('\n'))
            {
                break p;
            }
            assert!(
                child.try_wait().expect("wait").is_none(),
                "kiln ended early"
            );
            assert!(Instant::now() < end, "the script never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(pid_running(&pid));
        let scratch = std::fs::read_dir(&tmp).expect("tmp").flatten().count();
        assert_eq!(scratch, 1, "the script's scratch dir is in TMPDIR");
        // SAFETY: signalling the child we spawned.
        unsafe { libc::kill(child.id() as i32, signal) };
        // Well under the script's 60 s: the whole group goes at once.
        let end = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            assert!(
                Instant::now() < end,
                "kiln waited for the script after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if signal != libc::SIGKILL {
            assert_eq!(st.code(), Some(128 + signal), "signal {signal}");
        }
        let end = Instant::now() + Duration::from_secs(10);
        while pid_running(&pid)
            || std::fs::read_dir(&tmp)
                .expect("tmp")
                .flatten()
                .next()
                .is_some()
        {
            assert!(
                Instant::now() < end,
                "after signal {signal}: the script's child still runs ({}) or its scratch dir is left",
                pid_running(&pid)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(ctx.qemu_pids().is_empty());
}
