//! Templates through the real `kiln` binary: every malformed fixture fails with its expected
//! message at its position (and never panics), every valid fixture validates, and the CLI's
//! variables, masking, usage errors and help behave as documented.
// The mutation fuzzer below keeps the low bits of its PRNG on purpose.
#![allow(clippy::cast_possible_truncation)]

mod common;

use common::{repo, text, Ctx};
use std::process::Command;

fn kiln_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_remove("PKR_VAR_name")
        .env_remove("KILN_VAR_name")
        .output()
        .expect("kiln runs")
}

/// insta settings for CLI output: snapshots in tests/snapshots/<dir>, with the paths, digests and
/// durations that differ between machines and runs replaced by placeholders.
pub fn snapshot_settings(dir: &str) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(repo().join("tests/snapshots").join(dir));
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(&regex_escape(&repo().display().to_string()), "[REPO]");
    s.add_filter(
        &regex_escape(&std::env::temp_dir().display().to_string()),
        "[TMP]",
    );
    s.add_filter(r"kiln-test-([a-z-]+)-[0-9]+-[0-9]+", "kiln-test-$1");
    s.add_filter(r"sha256:[0-9a-f]{64}", "sha256:[DIGEST]");
    s.add_filter(r"\b[0-9]+\.[0-9]+s\b", "[SECS]s");
    s
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// Every malformed fixture: kiln's whole output (exit code, diagnostics with positions, source
/// lines, hints) against its snapshot in tests/snapshots/invalid. Update with
/// `INSTA_UPDATE=always cargo nextest run --test templates malformed` and review the diff.
#[test]
fn every_malformed_template_reports_its_expected_error() {
    let dir = repo().join("tests/fixtures/invalid");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let settings = snapshot_settings("invalid");
    let _guard = settings.bind_to_scope();
    let mut checked = 0;
    for p in entries {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let out = kiln_in(&dir, &["validate", &name]);
        let all = text(&out);
        assert!(!all.contains("panicked"), "{name}: panicked\n{all}");
        assert_eq!(out.status.code(), Some(1), "{name}: {all}");
        insta::assert_snapshot!(
            name.clone(),
            format!("$ kiln validate {name}\nexit {}\n{all}", 1)
        );
        checked += 1;
    }
    assert!(checked >= 55, "only {checked} malformed fixtures");
}

/// What the CLI prints for the commands users read most, against tests/snapshots/cli.
#[test]
fn cli_output_matches_its_snapshots() {
    let dir = repo().join("tests/fixtures/valid");
    let ctx = Ctx::bare("cli-snapshots");
    let store = ctx.dir.join("store");
    let settings = snapshot_settings("cli");
    let _guard = settings.bind_to_scope();
    let cases: &[(&str, &[&str])] = &[
        ("validate", &["validate", "packer-docs-qemu.pkr.hcl"]),
        ("validate-json", &["validate", "packer-docs-qemu.json"]),
        (
            "validate-syntax-only",
            &["validate", "-syntax-only", "functions.pkr.hcl"],
        ),
        ("inspect", &["inspect", "packer-docs-qemu.pkr.hcl"]),
        ("images-empty-store", &["images"]),
        ("plugins-installed", &["plugins", "installed"]),
        ("unknown-flag", &["build", "--no-such-flag", "x.pkr.hcl"]),
        (
            "var-without-value",
            &["validate", "-var", "novalue", "packer-docs-qemu.pkr.hcl"],
        ),
        ("missing-template", &["validate", "does-not-exist.pkr.hcl"]),
        ("inspect-unknown-image", &["inspect", "no-such-image"]),
    ];
    for (name, args) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(*args)
            .current_dir(&dir)
            .env("KILN_STORE", &store)
            .env_remove("PKR_VAR_name")
            .output()
            .expect("kiln runs");
        insta::assert_snapshot!(
            *name,
            format!(
                "$ kiln {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
                args.join(" "),
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        );
    }
}

#[test]
fn every_valid_fixture_validates() {
    let dir = repo().join("tests/fixtures/valid");
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).expect("fixtures dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.ends_with(".pkr.hcl") || name.ends_with(".json") || e.path().is_dir())
            || name == "files"
        {
            continue;
        }
        let extra = std::fs::read_to_string(dir.join(format!("{name}.args"))).unwrap_or_default();
        let mut args: Vec<&str> = vec!["validate"];
        args.extend(extra.split_whitespace());
        args.push(&name);
        let out = kiln_in(&dir, &args);
        assert!(
            out.status.success(),
            "{name} should validate:\n{}",
            text(&out)
        );
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn templates_in_templates_dir_validate() {
    for t in ["templates/quickstart.pkr.hcl", "templates/quickstart.json"] {
        let out = kiln_in(&repo(), &["validate", t]);
        assert!(out.status.success(), "{t}: {}", text(&out));
    }
}

#[test]
fn unsupported_builders_are_left_out_with_only_and_named_without_it() {
    let dir = repo().join("tests/fixtures/valid");
    let out = kiln_in(&dir, &["validate", "split-dir"]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out);
    assert!(
        s.contains("builder type \"virtualbox-iso\" (virtualbox-iso.vb) is not built into kiln"),
        "{s}"
    );
    assert!(s.contains("-only='qemu.*'"), "{s}");
    let out = kiln_in(
        &dir,
        &["validate", "-except", "virtualbox-iso.*", "split-dir"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn functions_and_overrides_evaluate_as_packer_does() {
    let dir = repo().join("tests/fixtures/valid");
    let out = kiln_in(&dir, &["inspect", "functions.pkr.hcl"]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(
        s.contains("> qemu.renamed:"),
        "source block renames the build: {s}"
    );
    assert!(s.contains("shell-local"), "{s}");
    // The `except` provisioner is dropped for this build, the `only` one kept.
    assert_eq!(s.matches("      shell\n").count(), 1, "{s}");
    assert!(
        s.contains("var.home: \""),
        "env() works in variable defaults: {s}"
    );
}

#[test]
fn variable_precedence_follows_packer() {
    let ctx = Ctx::bare("precedence");
    ctx.write("t/vars.pkr.hcl", "variable \"a\" {\n  default = \"default\"\n}\nvariable \"b\" {\n  default = \"default\"\n}\nvariable \"c\" {\n  default = \"default\"\n}\nvariable \"d\" {\n  default = \"default\"\n}\nvariable \"e\" {\n  default = \"default\"\n}\n");
    ctx.write("t/s.pkr.hcl", "source \"qemu\" \"x\" {\n  iso_url = \"b\"\n  iso_checksum = \"none\"\n  ssh_username = \"root\"\n}\nbuild {\n  sources = [\"source.qemu.x\"]\n}\n");
    ctx.write(
        "t/z.auto.pkrvars.hcl",
        "c = \"auto\"\nd = \"auto\"\ne = \"auto\"\n",
    );
    ctx.write("f.pkrvars.hcl", "d = \"file\"\ne = \"file\"\n");
    let out = ctx
        .cmd(&[
            "inspect",
            "-var-file",
            "f.pkrvars.hcl",
            "-var",
            "e=flag",
            "t",
        ])
        .env("PKR_VAR_b", "env")
        .env("PKR_VAR_c", "env")
        .output()
        .expect("kiln runs");
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    for (name, want) in [
        ("a", "default"),
        ("b", "env"),
        ("c", "auto"),
        ("d", "file"),
        ("e", "flag"),
    ] {
        assert!(
            s.contains(&format!("var.{name}: \"{want}\"")),
            "var.{name} should be {want}: {s}"
        );
    }
}

#[test]
fn sensitive_values_are_masked_in_inspect_and_errors() {
    let ctx = Ctx::bare("sensitive");
    let t = ctx.write(
        "t.pkr.hcl",
        "variable \"pw\" {\n  type = string\n  sensitive = true\n}\nsource \"qemu\" \"x\" {\n  iso_url = \"b\"\n  iso_checksum = \"none\"\n  ssh_username = \"root\"\n  ssh_password = var.pw\n}\nbuild {\n  sources = [\"source.qemu.x\"]\n}\n",
    );
    let out = ctx.kiln(&[
        "inspect",
        "-var",
        "pw=hunter2-secret",
        t.to_str().unwrap_or_default(),
    ]);
    let s = text(&out);
    assert!(out.status.success(), "{s}");
    assert!(s.contains("var.pw: <sensitive>"), "{s}");
    assert!(!s.contains("hunter2-secret"), "{s}");
    // A build that fails early still never prints it.
    let out = ctx.kiln(&[
        "build",
        "-var",
        "pw=hunter2-secret",
        t.to_str().unwrap_or_default(),
    ]);
    assert!(!out.status.success());
    assert!(!text(&out).contains("hunter2-secret"), "{}", text(&out));
}

#[test]
fn usage_errors_exit_2_and_help_shows_examples() {
    let ctx = Ctx::bare("usage");
    assert_eq!(
        ctx.kiln(&["build", "--no-such-flag", "x"]).status.code(),
        Some(2)
    );
    assert_eq!(
        ctx.kiln(&["validate", "-var", "novalue", "x.pkr.hcl"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(ctx.kiln(&["frobnicate"]).status.code(), Some(2));
    for cmd in ["build", "validate", "inspect"] {
        let out = ctx.kiln(&[cmd, "--help"]);
        assert!(out.status.success());
        assert!(
            text(&out).contains("Examples:"),
            "{cmd} --help: {}",
            text(&out)
        );
    }
    let v = ctx.kiln(&["--version"]);
    assert!(v.status.success() && text(&v).contains(env!("CARGO_PKG_VERSION")));
    let missing = ctx.kiln(&["validate", "nope.pkr.hcl"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("cannot read template nope.pkr.hcl: no such file or directory"),
        "{}",
        text(&missing)
    );
}

#[test]
fn undeclared_var_flag_is_an_error_naming_the_closest() {
    let out = kiln_in(
        &repo(),
        &[
            "validate",
            "-var",
            "mesage=x",
            "templates/quickstart.pkr.hcl",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("did you mean var.message?"),
        "{}",
        text(&out)
    );
}

#[test]
fn syntax_only_skips_evaluation() {
    let dir = repo().join("tests/fixtures/invalid");
    assert!(kiln_in(
        &dir,
        &["validate", "-syntax-only", "undeclared_var.pkr.hcl"]
    )
    .status
    .success());
    assert_eq!(
        kiln_in(
            &dir,
            &["validate", "-syntax-only", "unclosed_block.pkr.hcl"]
        )
        .status
        .code(),
        Some(1)
    );
}

/// Mutated fixtures (bytes flipped, cut, repeated) must give errors, never a panic or a hang.
#[test]
fn mutated_templates_never_panic() {
    let ctx = Ctx::bare("mutate");
    let mut seeds = Vec::new();
    for sub in [
        "tests/fixtures/valid",
        "tests/fixtures/invalid",
        "templates",
    ] {
        for e in std::fs::read_dir(repo().join(sub)).expect("dir").flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if (n.ends_with(".pkr.hcl") || n.ends_with(".json")) && e.path().is_file() {
                seeds.push((n, std::fs::read(e.path()).expect("read")));
            }
        }
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..120 {
        let (name, data) = &seeds[(next() as usize) % seeds.len()];
        let mut d = data.clone();
        match next() % 4 {
            0 => d.truncate((next() as usize) % (d.len() + 1)),
            1 => {
                for _ in 0..4 {
                    let i = (next() as usize) % d.len().max(1);
                    if i < d.len() {
                        d[i] = b"{}[]\"=$%(),.\n\\\x00"[(next() % 15) as usize];
                    }
                }
            }
            2 => {
                let i = (next() as usize) % d.len().max(1);
                let chunk = d[i..].to_vec();
                d.extend_from_slice(&chunk);
            }
            _ => {
                let i = (next() as usize) % d.len().max(1);
                d.insert(i, b'{');
            }
        }
        let ext = if name.ends_with(".json") {
            "json"
        } else {
            "pkr.hcl"
        };
        let f = ctx.dir.join(format!("m{round}.{ext}"));
        std::fs::write(&f, &d).expect("write");
        let out = ctx.kiln(&["validate", f.to_str().unwrap_or_default()]);
        let s = text(&out);
        assert!(!s.contains("panicked"), "panic on mutation of {name}:\n{s}");
        assert!(
            matches!(out.status.code(), Some(0) | Some(1)),
            "exit {:?} on mutation of {name}:\n{s}",
            out.status.code()
        );
    }
}

#[test]
fn a_base_that_is_not_a_disk_is_refused_at_validate_and_a_missing_http_directory_at_build() {
    let ctx = Ctx::bare("notadisk");
    let tpl = |base: &str, extra: &str| {
        format!(
            "source \"qemu\" \"x\" {{\n  iso_url = \"{base}\"\n  iso_checksum = \"none\"\n  disk_image = true\n  ssh_username = \"root\"\n  ssh_password = \"x\"\n{extra}}}\nbuild {{\n  sources = [\"source.qemu.x\"]\n}}\n"
        )
    };
    let mut noise = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(ctx.dir.join("noise.img"), &noise).expect("write");
    std::fs::write(ctx.dir.join("zeros.img"), vec![0u8; 1 << 20]).expect("write");
    for bad in ["noise.img", "zeros.img"] {
        ctx.write("t.pkr.hcl", &tpl(bad, ""));
        let out = ctx.kiln(&["validate", "t.pkr.hcl"]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "t.pkr.hcl:2:3: base image (iso_url): {bad} is not a disk image"
            )),
            "{}",
            text(&out)
        );
    }
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(ctx.dir.join("real.qcow2"))
        .arg("16M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    ctx.write(
        "t.pkr.hcl",
        &tpl("real.qcow2", "  http_directory = \"nohttp\"\n"),
    );
    let out = ctx.kiln(&["validate", "t.pkr.hcl"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("http_directory nohttp is not a directory (yet)"),
        "{}",
        text(&out)
    );
    let out = ctx.kiln(&["build", "t.pkr.hcl"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("http_directory nohttp is not a directory: create it"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("started qemu"), "{}", text(&out));
}

#[test]
fn invalid_values_of_sensitive_variables_never_show_the_value() {
    let ctx = Ctx::bare("sensitive-errors");
    ctx.write(
        "s.pkr.hcl",
        "variable \"secret\" {\n  type      = number\n  sensitive = true\n}\nvariable \"lst\" {\n  type      = list(string)\n  sensitive = true\n  default   = []\n}\nsource \"qemu\" \"x\" {\n  iso_url      = \"base.qcow2\"\n  iso_checksum = \"none\"\n  disk_image   = true\n  ssh_username = \"root\"\n  ssh_password = \"x\"\n}\nbuild {\n  sources = [\"source.qemu.x\"]\n}\n",
    );
    ctx.write("a.pkrvars.hcl", "secret = \"s3cr3t-var-file\"\n");
    ctx.write("b.pkrvars.hcl", "secret = s3cr3t-bare\n");
    ctx.write("c.pkrvars.hcl", "secret = 1\nlst = \"s3cr3t-list\"\n");
    ctx.write("d.pkrvars.json", "{\"secret\": \"s3cr3t-json\"}\n");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case<'_>> = vec![
        (vec!["-var", "secret=s3cr3t-flag"], vec![]),
        (vec!["-var-file", "a.pkrvars.hcl"], vec![]),
        (vec!["-var-file", "b.pkrvars.hcl"], vec![]),
        (vec!["-var-file", "c.pkrvars.hcl"], vec![]),
        (vec!["-var-file", "d.pkrvars.json"], vec![]),
        (vec![], vec![("PKR_VAR_secret", "s3cr3t-env")]),
        (
            vec!["-var", "secret=1", "-var", "lst=s3cr3t-flag-list"],
            vec![],
        ),
        (
            vec![],
            vec![
                ("PKR_VAR_secret", "1"),
                ("PKR_VAR_lst", "[\"s3cr3t-env-list\", 5"),
            ],
        ),
    ];
    for (args, env) in cases {
        let mut cmd = ctx.cmd(&["validate"]);
        cmd.args(&args).arg("s.pkr.hcl");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("kiln");
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {all}");
        assert!(!all.contains("s3cr3t"), "{args:?} {env:?} leaked:\n{all}");
        assert!(
            all.contains("invalid value for sensitive variable")
                && all.contains("the value is not shown"),
            "{args:?} {env:?}: {all}"
        );
        assert!(!all.contains("has no value"), "{all}");
    }
}
