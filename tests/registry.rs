//! Registries end to end, against a real registry (Debian's docker-registry, distribution 2.8)
//! on loopback: push and pull with identical ids, a build cache two stores share, skopeo
//! interoperability, and authentication with credentials that never show.

mod common;

use common::{skopeo, text, Ctx};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Registry {
    child: Child,
    pub host: String,
}

impl Registry {
    fn start(dir: &Path, htpasswd: Option<(&str, &str)>) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let data = dir.join("registry-data");
        std::fs::create_dir_all(&data).expect("data dir");
        let mut cfg = format!("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", data.display());
        if let Some((user, pass)) = htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd (apache2-utils) runs");
            let file = dir.join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                file.display()
            ));
        }
        let cfg_path = dir.join("registry.yml");
        std::fs::write(&cfg_path, cfg).expect("write config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        let host = format!("127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(Instant::now() < end, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, host }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn template(ctx: &Ctx, qemu: &Path, script: &str) -> PathBuf {
    let src = ctx.source("shared", &format!("  qemu_binary = \"{}\"", qemu.display()));
    ctx.write("shared.pkr.hcl", &format!("{src}\nbuild {{\n  sources = [\"source.qemu.shared\"]\n  provisioner \"shell\" {{\n    script = \"{script}\"\n  }}\n}}\n"))
}

fn in_store(ctx: &Ctx, store: &str, args: &[&str]) -> std::process::Output {
    ctx.cmd(args)
        .env("KILN_STORE", ctx.dir.join(store))
        .env("KILN_AUTH_FILE", ctx.dir.join("auth.json"))
        .output()
        .expect("kiln runs")
}

fn image_id(ctx: &Ctx, store: &str, name: &str) -> String {
    let out = in_store(ctx, store, &["inspect", name]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("inspect {name}: {}", text(&out)));
    v["id"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_registry_shares_images_and_the_build_cache_between_stores() {
    let ctx = Ctx::new("registry");
    let reg = Registry::start(&ctx.dir, None);
    let qemu = ctx.qemu_counter();
    ctx.write("setup.sh", "#!/bin/sh\necho shared-v1 > /root/v\n");
    let t = template(&ctx, &qemu, "setup.sh");
    let tp = t.to_str().unwrap_or_default();
    let cache = format!("{}/team/cache", reg.host);

    // Machine A builds and fills the shared cache.
    let a = in_store(
        &ctx,
        "store-a",
        &["build", "--plain-http", "--cache-to", &cache, tp],
    );
    assert!(a.status.success(), "{}", text(&a));
    assert!(text(&a).contains("uploaded image"), "{}", text(&a));
    assert_eq!(ctx.qemu_starts(), 1);
    let id_a = image_id(&ctx, "store-a", "shared");

    // Machine B (an empty store) gets a cache hit: it downloads and boots no VM.
    std::fs::remove_dir_all(ctx.dir.join("out-shared")).expect("rm output");
    let b = in_store(
        &ctx,
        "store-b",
        &["build", "--plain-http", "--cache-from", &cache, tp],
    );
    let bs = text(&b);
    assert!(b.status.success(), "{bs}");
    assert!(bs.contains("downloaded from the shared cache"), "{bs}");
    assert_eq!(ctx.qemu_starts(), 1, "a shared-cache hit boots no VM");
    assert_eq!(
        image_id(&ctx, "store-b", "shared"),
        id_a,
        "identical image ids"
    );
    assert!(in_store(&ctx, "store-b", &["verify"]).status.success());
    assert_eq!(
        ctx.read_from_image(&ctx.dir.join("out-shared/disk.qcow2"), "/root/v")
            .as_deref(),
        Some("shared-v1\n")
    );

    // push / pull by hand: identical ids and disk digests, both stores verify.
    let r = format!("{}/team/shared:v1", reg.host);
    let push = in_store(&ctx, "store-a", &["push", "--plain-http", "shared", &r]);
    assert!(push.status.success(), "{}", text(&push));
    let pull = in_store(&ctx, "store-c", &["pull", "--plain-http", &r]);
    assert!(pull.status.success(), "{}", text(&pull));
    assert_eq!(image_id(&ctx, "store-c", &r), id_a);
    assert!(in_store(&ctx, "store-c", &["verify"]).status.success());
    // By digest too; a wrong digest is refused.
    let by_digest = format!("{}/team/shared@{id_a}", reg.host);
    assert!(
        in_store(&ctx, "store-d", &["pull", "--plain-http", &by_digest])
            .status
            .success()
    );
    let wrong = format!("{}/team/shared@sha256:{}", reg.host, "0".repeat(64));
    assert_eq!(
        in_store(&ctx, "store-d", &["pull", "--plain-http", &wrong])
            .status
            .code(),
        Some(1)
    );

    // skopeo reads what kiln pushed, and kiln pulls what skopeo copied from kiln's layout.
    let insp = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{r}"),
    ]);
    assert!(String::from_utf8_lossy(&insp).contains("application/vnd.kiln.image.v1"));
    let via_skopeo = format!("{}/other/copied:s1", reg.host);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:shared", ctx.dir.join("store-a").display()),
        &format!("docker://{via_skopeo}"),
    ]);
    assert!(
        in_store(&ctx, "store-e", &["pull", "--plain-http", &via_skopeo])
            .status
            .success()
    );
    assert_eq!(image_id(&ctx, "store-e", &via_skopeo), id_a);

    // A changed provisioner script misses the shared cache and rebuilds.
    ctx.write("setup.sh", "#!/bin/sh\necho shared-v2 > /root/v\n");
    let b2 = in_store(
        &ctx,
        "store-b",
        &[
            "build",
            "-force",
            "--plain-http",
            "--cache-from",
            &cache,
            tp,
        ],
    );
    assert!(b2.status.success(), "{}", text(&b2));
    assert_eq!(ctx.qemu_starts(), 2);
    assert_eq!(
        ctx.read_from_image(&ctx.dir.join("out-shared/disk.qcow2"), "/root/v")
            .as_deref(),
        Some("shared-v2\n")
    );

    // TLS is the default: a plain-HTTP registry without --plain-http is an error that says so,
    // and plain HTTP is refused for anything but loopback.
    let tls = in_store(&ctx, "store-a", &["push", "shared", &r]);
    assert_eq!(tls.status.code(), Some(1));
    assert!(text(&tls).contains("--plain-http"), "{}", text(&tls));
    let remote = in_store(
        &ctx,
        "store-a",
        &["push", "--plain-http", "shared", "registry.example.com/x:y"],
    );
    assert!(text(&remote).contains("only loopback"), "{}", text(&remote));
}

fn tiny_image(store: &Path) -> String {
    let s = kiln_store::Store::open(store).expect("store");
    let t = s.temp_dir().expect("tmp");
    let disk = t.path().join("disk");
    std::fs::write(&disk, vec![42u8; 3 << 20]).expect("disk");
    let cfg = serde_json::json!({"name": "tiny"});
    let (id, _) = s
        .commit_image(&kiln_store::NewImage {
            disk: &disk,
            disk_media_type: "application/vnd.kiln.disk.raw",
            disk_title: "tiny.raw",
            config: &cfg,
            cache_key: None,
            tag: Some("tiny"),
            created: "2026-11-29T00:00:00Z",
        })
        .expect("commit");
    id
}

#[test]
fn authentication_uses_saved_credentials_that_never_show() {
    let ctx = Ctx::bare("regauth");
    let reg = Registry::start(&ctx.dir, Some(("ci", "s3cret-pass")));
    let id = tiny_image(&ctx.dir.join("store-a"));
    let r = format!("{}/secure/tiny:v1", reg.host);

    let denied = in_store(&ctx, "store-a", &["push", "--plain-http", "tiny", &r]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        text(&denied).contains(&format!("kiln login {}", reg.host)),
        "{}",
        text(&denied)
    );

    let login = |pass: &str| {
        let mut c = ctx
            .cmd(&[
                "login",
                "--plain-http",
                "--password-stdin",
                "-u",
                "ci",
                &reg.host,
            ])
            .env("KILN_AUTH_FILE", ctx.dir.join("auth.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        use std::io::Write;
        c.stdin
            .take()
            .expect("stdin")
            .write_all(format!("{pass}\n").as_bytes())
            .expect("write");
        c.wait_with_output().expect("login")
    };
    let bad = login("wrong");
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    let good = login("s3cret-pass");
    assert!(good.status.success(), "{}", text(&good));
    let mode = std::fs::metadata(ctx.dir.join("auth.json"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);

    let push = in_store(&ctx, "store-a", &["push", "--plain-http", "tiny", &r]);
    assert!(push.status.success(), "{}", text(&push));
    let pull = in_store(&ctx, "store-b", &["pull", "--plain-http", &r]);
    assert!(pull.status.success(), "{}", text(&pull));
    assert_eq!(image_id(&ctx, "store-b", &r), id);
    for o in [&denied, &bad, &good, &push, &pull] {
        assert!(
            !text(o).contains("s3cret-pass"),
            "the password leaked: {}",
            text(o)
        );
    }
    assert!(in_store(&ctx, "store-a", &["logout", &reg.host])
        .status
        .success());
    assert_eq!(
        in_store(&ctx, "store-c", &["pull", "--plain-http", &r])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn oci_base_images_are_pulled_once_and_recorded_by_digest() {
    let ctx = Ctx::new("ocibase");
    let reg = Registry::start(&ctx.dir, None);
    // Publish the tiny base disk as an image in the registry.
    let s = kiln_store::Store::open(&ctx.dir.join("publisher")).expect("store");
    let t = s.temp_dir().expect("tmp");
    let disk = t.path().join("base.qcow2");
    std::fs::copy(ctx.base.join("base.qcow2"), &disk).expect("copy base");
    let cfg = serde_json::json!({"name": "tiny-base"});
    let (base_id, base_disk) = s
        .commit_image(&kiln_store::NewImage {
            disk: &disk,
            disk_media_type: "application/vnd.kiln.disk.qcow2",
            disk_title: "base.qcow2",
            config: &cfg,
            cache_key: None,
            tag: Some("base"),
            created: "2026-11-29T00:00:00Z",
        })
        .expect("commit");
    let push = in_store(
        &ctx,
        "publisher",
        &[
            "push",
            "--plain-http",
            "base",
            &format!("{}/bases/tiny:1", reg.host),
        ],
    );
    assert!(push.status.success(), "{}", text(&push));

    let b = ctx.base.display();
    let q = ctx.qemu_counter();
    let q = q.display();
    let src = format!(
        "source \"qemu\" \"fromoci\" {{\n  qemu_binary = \"{q}\"\n  iso_url = \"oci://{}/bases/tiny@{base_id}\"\n  iso_checksum = \"none\"\n  disk_image = true\n  accelerator = \"tcg\"\n  memory = 256\n  kernel = \"{b}/vmlinux\"\n  initrd = \"{b}/initrd.img\"\n  kernel_args = \"root=/dev/vda rw console=ttyS0 quiet\"\n  output_directory = \"out-oci\"\n  ssh_username = \"root\"\n  ssh_private_key_file = \"{b}/id_ed25519\"\n  shutdown_command = \"sync; poweroff\"\n}}\nbuild {{\n  sources = [\"source.qemu.fromoci\"]\n  provisioner \"shell\" {{\n    inline = [\"echo from-oci > /root/o\"]\n  }}\n}}\n",
        reg.host
    );
    let tp = ctx.write("oci.pkr.hcl", &src);
    let out = in_store(
        &ctx,
        "builder",
        &["build", "--plain-http", tp.to_str().unwrap_or_default()],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ctx.read_from_image(&ctx.dir.join("out-oci/packer-fromoci"), "/root/o")
            .as_deref(),
        Some("from-oci\n")
    );
    assert_eq!(ctx.qemu_starts(), 1);
    let insp = in_store(&ctx, "builder", &["inspect", "fromoci"]);
    let v: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("inspect JSON");
    assert!(
        v["config"]["base"]["source"]
            .as_str()
            .unwrap_or_default()
            .starts_with("oci://"),
        "{v}"
    );
    assert_eq!(
        v["config"]["base"]["digest"], base_disk.digest,
        "the base is recorded by its content digest"
    );
    // A wrong digest is refused before anything boots.
    let starts = ctx.qemu_starts();
    let wrong = src.replace(&base_id, &format!("sha256:{}", "0".repeat(64)));
    let tw = ctx.write("oci-wrong.pkr.hcl", &wrong);
    let ow = in_store(
        &ctx,
        "builder",
        &[
            "build",
            "-force",
            "--plain-http",
            tw.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(ow.status.code(), Some(1), "{}", text(&ow));
    assert!(
        text(&ow).contains("does not exist in the registry"),
        "{}",
        text(&ow)
    );
    assert_eq!(ctx.qemu_starts(), starts, "nothing booted");
    // A tag works too, with a warning naming the digest it resolved to.
    let tagged = src.replace(&format!("@{base_id}"), ":1");
    let tp2 = ctx.write("oci-tag.pkr.hcl", &tagged);
    let out2 = in_store(
        &ctx,
        "builder",
        &["validate", tp2.to_str().unwrap_or_default()],
    );
    assert!(
        out2.status.success(),
        "validate does not pull: {}",
        text(&out2)
    );
    let out3 = in_store(
        &ctx,
        "builder",
        &["build", "--plain-http", tp2.to_str().unwrap_or_default()],
    );
    assert!(out3.status.success(), "{}", text(&out3));
    assert!(
        text(&out3).contains("is a tag; it resolved to"),
        "{}",
        text(&out3)
    );
    assert!(
        text(&out3).contains("up to date"),
        "same base content, same key: {}",
        text(&out3)
    );
}

#[test]
fn a_killed_push_leaves_no_manifest_and_a_rerun_completes() {
    let ctx = Ctx::bare("regkill");
    let reg = Registry::start(&ctx.dir, None);
    let id = tiny_image(&ctx.dir.join("store-a"));
    let r = format!("{}/killed/tiny:v1", reg.host);
    let log = ctx.dir.join("push.log");
    let mut child = ctx
        .cmd(&["push", "--plain-http", "tiny", &r])
        .env("KILN_STORE", ctx.dir.join("store-a"))
        .env("KILN_FAILPOINT", "push-before-manifest")
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn push");
    let end = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("pushed sha256:")
        .count()
        < 2
    {
        assert!(
            Instant::now() < end,
            "blobs not pushed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Blobs are there, the manifest is not: nobody can pull a half-pushed image.
    let pull = in_store(&ctx, "store-b", &["pull", "--plain-http", &r]);
    assert_eq!(pull.status.code(), Some(1));
    assert!(text(&pull).contains("does not exist"), "{}", text(&pull));
    // Rerunning completes (the blobs already there are skipped).
    let again = in_store(&ctx, "store-a", &["push", "--plain-http", "tiny", &r]);
    assert!(again.status.success(), "{}", text(&again));
    let pull = in_store(&ctx, "store-b", &["pull", "--plain-http", &r]);
    assert!(pull.status.success(), "{}", text(&pull));
    assert_eq!(image_id(&ctx, "store-b", &r), id);
    assert!(in_store(&ctx, "store-b", &["verify"]).status.success());
}

#[test]
fn sensitive_builds_share_the_cache_under_kiln_cache_secret_and_an_unreachable_cache_only_warns() {
    let ctx = Ctx::new("cachesecret");
    let reg = Registry::start(&ctx.dir, None);
    let qemu = ctx.qemu_counter();
    let src = ctx.source("sens", &format!("  qemu_binary = \"{}\"", qemu.display()));
    let t = ctx.write(
        "sens.pkr.hcl",
        &format!("variable \"token\" {{\n  type      = string\n  sensitive = true\n  default   = \"tok-s3cr3t-0123456789\"\n}}\n{src}\nbuild {{\n  sources = [\"source.qemu.sens\"]\n  provisioner \"shell\" {{\n    inline = [\"test -n '${{var.token}}'\", \"echo ok > /root/ok\"]\n  }}\n}}\n"),
    );
    let tp = t.to_str().unwrap_or_default();
    let cache = format!("{}/team/cache", reg.host);
    let team_secret = "team-secret-for-every-runner-0001";
    let build = |store: &str, args: &[&str], secret: Option<&str>| {
        let mut c = ctx.cmd(&["build", "--plain-http"]);
        c.args(args)
            .arg(tp)
            .env("KILN_STORE", ctx.dir.join(store))
            .env("KILN_AUTH_FILE", ctx.dir.join("auth.json"))
            .env_remove("KILN_CACHE_SECRET")
            .env_remove("KILN_CACHE_SECRET_FILE");
        if let Some(s) = secret {
            c.env("KILN_CACHE_SECRET", s);
        }
        c.output().expect("kiln")
    };
    let a = build("store-a", &["--cache-to", &cache], Some(team_secret));
    assert!(a.status.success(), "{}", text(&a));
    assert_eq!(ctx.qemu_starts(), 1);
    // The inline script held the secret: its digest in the stored config is an HMAC.
    let insp = in_store(&ctx, "store-a", &["inspect", "sens"]);
    let v: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("inspect json");
    let digest = v["config"]["provisioners"][0]["inputs"]["scripts"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(digest.starts_with("hmac:"), "{digest}");
    assert!(!String::from_utf8_lossy(&insp.stdout).contains("tok-s3cr3t"));

    // Another machine (empty store) with the same team secret: a hit, no VM.
    std::fs::remove_dir_all(ctx.dir.join("out-sens")).expect("rm output");
    let b = build("store-b", &["--cache-from", &cache], Some(team_secret));
    assert!(b.status.success(), "{}", text(&b));
    assert!(
        text(&b).contains("downloaded from the shared cache"),
        "{}",
        text(&b)
    );
    assert_eq!(ctx.qemu_starts(), 1, "a shared-cache hit boots no VM");

    // An unreachable cache: with --cache-required the build fails before any VM ...
    std::fs::remove_dir_all(ctx.dir.join("out-sens")).expect("rm output");
    let dead = "127.0.0.1:9/team/cache";
    let c = build(
        "store-c",
        &["--cache-from", dead, "--cache-required"],
        Some(team_secret),
    );
    assert_eq!(c.status.code(), Some(1), "{}", text(&c));
    assert!(text(&c).contains("127.0.0.1:9"), "{}", text(&c));
    assert_eq!(ctx.qemu_starts(), 1);
    // ... without it, kiln warns and builds; and without the team secret it says the shared
    // cache cannot match this build elsewhere.
    let d = build("store-d", &["--cache-from", dead], None);
    let ds = text(&d);
    assert!(d.status.success(), "{ds}");
    assert!(ds.contains("building without it"), "{ds}");
    assert!(ds.contains("set KILN_CACHE_SECRET"), "{ds}");
    assert_eq!(ctx.qemu_starts(), 2);
    for out in [&a, &b, &c, &d] {
        assert!(!text(out).contains("tok-s3cr3t"), "{}", text(out));
        assert!(!text(out).contains(team_secret));
    }
}
