//! What people see: the live display on a real pseudo-terminal, plain lines in CI that name
//! their build, JSON events for tools, Packer's machine-readable lines, `kiln fmt`, completions.

mod common;

use common::{repo, text, Ctx};
use std::collections::BTreeSet;
use std::process::Command;

fn two_builds(ctx: &Ctx) -> std::path::PathBuf {
    let ok = ctx.source("good", "");
    let bad = ctx.source("bad", "");
    ctx.write(
        "two.pkr.hcl",
        &format!(
            "{ok}\n{bad}\nbuild {{\n  sources = [\"source.qemu.good\", \"source.qemu.bad\"]\n  provisioner \"shell\" {{\n    inline = [\"echo hello from ${{source.name}}\", \"test ${{source.name}} = good\"]\n  }}\n}}\n"
        ),
    )
}

#[test]
fn parallel_builds_in_ci_mode_attribute_every_line() {
    let ctx = Ctx::new("attrib");
    let t = two_builds(&ctx);
    let out = ctx.kiln(&["build", "-timestamp-ui", t.to_str().unwrap_or_default()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one build fails: {}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut in_summary = false;
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.contains("==> builds finished") {
            in_summary = true;
            continue;
        }
        if in_summary {
            continue;
        }
        // "<RFC 3339> ==> good: ..." or "<RFC 3339>     bad: ..."
        let (ts, rest) = line.split_once(' ').unwrap_or(("", line));
        assert!(ts.len() == 20 && ts.ends_with('Z'), "timestamped: {line}");
        let rest = rest.trim_start();
        let rest = rest.strip_prefix("==> ").unwrap_or(rest);
        assert!(
            rest.starts_with("good: ") || rest.starts_with("bad: "),
            "line not attributable to a build: {line}"
        );
    }
    assert!(stdout.contains("good: hello from good"), "{stdout}");
    assert!(stdout.contains("bad: hello from bad"), "{stdout}");
    assert!(
        !stdout.contains("\x1b["),
        "no escape codes when not on a terminal"
    );
    assert!(ctx.qemu_pids().is_empty());
}

#[test]
fn json_events_cover_every_kind_and_parse_line_by_line() {
    let ctx = Ctx::new("json");
    let t = two_builds(&ctx);
    let out = ctx.kiln(&["build", "--json", t.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let mut kinds = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["v"], 1, "{line}");
        assert!(
            v["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(v["build"] == "good" || v["build"] == "bad", "{line}");
        kinds.insert(v["type"].as_str().unwrap_or_default().to_string());
    }
    for k in [
        "build-started",
        "phase",
        "step",
        "message",
        "output",
        "waiting",
        "progress",
        "artifact",
        "warning",
        "error",
        "build-finished",
    ] {
        assert!(kinds.contains(k), "no {k} event; saw {kinds:?}");
    }
    // Every kind is documented.
    let doc = std::fs::read_to_string(repo().join("docs/events.md")).expect("docs/events.md");
    for k in &kinds {
        assert!(
            doc.contains(&format!("`{k}`")),
            "docs/events.md does not document {k}"
        );
    }
}

#[test]
fn machine_readable_output_is_packers_format() {
    let ctx = Ctx::new("machine");
    let ok = ctx.source("mr", "");
    let t = ctx.write("mr.pkr.hcl", &format!("{ok}\nbuild {{\n  sources = [\"source.qemu.mr\"]\n  provisioner \"shell\" {{\n    inline = [\"echo a,b\"]\n  }}\n}}\n"));
    let out = ctx.kiln(&["build", "-machine-readable", t.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    for line in s.lines() {
        let f: Vec<&str> = line.splitn(4, ',').collect();
        assert!(
            f.len() >= 3 && f[0].parse::<u64>().is_ok(),
            "timestamp,target,type,...: {line}"
        );
    }
    assert!(
        s.contains(",mr,ui,message,    mr: a%!(PACKER_COMMA)b"),
        "{s}"
    );
    assert!(s.contains(",mr,artifact-count,1"), "{s}");
    assert!(s.contains(",mr,artifact,0,end"), "{s}");
}

#[test]
fn terminal_progress_draws_updates_and_leaves_a_clean_summary() {
    let ctx = Ctx::new("pty");
    let ok = ctx.source("tty", "");
    let t = ctx.write("tty.pkr.hcl", &format!("{ok}\nbuild {{\n  sources = [\"source.qemu.tty\"]\n  provisioner \"shell\" {{\n    inline = [\"echo visible-output\", \"sleep 1\"]\n  }}\n}}\n"));
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let cmdline = format!("{kiln} build {}", t.display());
    // util-linux `script` runs kiln on a real pseudo-terminal and records what it drew.
    let rec = ctx.dir.join("typescript");
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &cmdline])
        .arg(&rec)
        .current_dir(&ctx.dir)
        .env("KILN_WORK_DIR", &ctx.work)
        .env("KILN_STORE", ctx.dir.join("store"))
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .output()
        .expect("script runs");
    let drawn = std::fs::read_to_string(&rec).unwrap_or_default();
    assert!(out.status.success(), "{drawn}");
    // A spinner line for the build was drawn and redrawn (cursor movement, several frames).
    assert!(
        drawn.contains("\x1b[2K") || drawn.contains("\x1b[1A"),
        "no redraws: {drawn:?}"
    );
    let frames = ["⠁", "⠂", "⠄", "⡀", "⢀", "⠠", "⠐", "⠈"]
        .iter()
        .filter(|f| drawn.contains(*f))
        .count();
    assert!(frames >= 3, "the spinner did not animate: {drawn:?}");
    assert!(
        drawn.contains("provisioner 1/1 shell"),
        "the current step is shown: {drawn:?}"
    );
    assert!(
        drawn.contains("visible-output"),
        "provisioner output scrolls above the bars"
    );
    assert!(
        drawn.contains("\x1b[3"),
        "build names are coloured on a terminal"
    );
    // After the summary nothing is redrawn: the display is cleared before it.
    let tail = drawn.rsplit("builds finished").next().unwrap_or("");
    assert!(tail.contains("built"), "{tail:?}");
    assert!(
        !["⠁", "⠂", "⠄", "⡀", "⢀", "⠠", "⠐", "⠈"]
            .iter()
            .any(|f| tail.contains(*f)),
        "spinner left after the summary: {tail:?}"
    );
}

#[test]
fn fmt_is_idempotent_and_keeps_templates_valid() {
    let ctx = Ctx::bare("fmt");
    let mut copied = Vec::new();
    for sub in [
        "templates",
        "tests/fixtures/valid",
        "tests/fixtures/invalid",
    ] {
        for e in std::fs::read_dir(repo().join(sub)).expect("dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".pkr.hcl") && e.path().is_file() {
                let Ok(text) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                if kiln_parse_ok(&text) {
                    let dest = ctx.write(&format!("{}/{name}", sub.replace('/', "_")), &text);
                    copied.push((e.path(), dest));
                }
            }
        }
    }
    assert!(copied.len() >= 20, "only {} templates", copied.len());
    let first = ctx.kiln(&["fmt", "-recursive", "."]);
    assert!(first.status.success(), "{}", text(&first));
    let check = ctx.kiln(&["fmt", "-check", "-recursive", "."]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "second run changes nothing: {}",
        text(&check)
    );
    // Formatting never changes meaning: every valid template inspects the same before and after.
    for (orig, formatted) in &copied {
        if !orig.to_string_lossy().contains("/valid/")
            && !orig.to_string_lossy().contains("/templates/")
        {
            continue;
        }
        let dir = orig.parent().expect("parent");
        let before = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["inspect", orig.to_str().unwrap_or_default()])
            .current_dir(dir)
            .output()
            .expect("inspect");
        let after = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["inspect", formatted.to_str().unwrap_or_default()])
            .current_dir(dir)
            .output()
            .expect("inspect");
        let norm = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stdout)
                .replace(&*orig.to_string_lossy(), "T")
                .replace(&*formatted.to_string_lossy(), "T")
        };
        if before.status.success() && !orig.to_string_lossy().contains("functions") {
            assert_eq!(
                norm(&before),
                norm(&after),
                "fmt changed the meaning of {}",
                orig.display()
            );
        }
    }
    // -check on an unformatted file exits 3 and names it; -diff shows the change.
    let messy = ctx.write(
        "messy/m.pkr.hcl",
        "variable \"a\" {\ndefault=1\n    type = number\n}\n",
    );
    let c = ctx.kiln(&["fmt", "-check", messy.to_str().unwrap_or_default()]);
    assert_eq!(c.status.code(), Some(3));
    assert!(text(&c).contains("m.pkr.hcl"));
    let d = ctx.kiln(&[
        "fmt",
        "-diff",
        "-write=false",
        messy.to_str().unwrap_or_default(),
    ]);
    assert!(text(&d).contains("+  default = 1"), "{}", text(&d));
    assert!(
        std::fs::read_to_string(&messy)
            .expect("read")
            .contains("default=1"),
        "-write=false leaves the file alone"
    );
}

fn kiln_parse_ok(text: &str) -> bool {
    !text.contains('\0') && hcl_parses(text)
}

fn hcl_parses(text: &str) -> bool {
    // The invalid fixtures include syntax errors, which fmt refuses: only those that parse.
    let ctx_dir = std::env::temp_dir().join(format!("kiln-fmt-probe-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&ctx_dir);
    let f = ctx_dir.join("p.pkr.hcl");
    std::fs::write(&f, text).is_ok()
        && Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["validate", "-syntax-only"])
            .arg(&f)
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_are_generated_for_each_shell() {
    let ctx = Ctx::bare("completions");
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let out = ctx.kiln(&["completions", shell]);
        assert!(out.status.success());
        assert!(text(&out).contains(needle), "{shell}: {}", text(&out));
    }
}

#[test]
fn debug_pauses_before_each_provisioner_on_a_terminal() {
    let ctx = Ctx::new("debugpause");
    let ok = ctx.source("dbg", "");
    let t = ctx.write("dbg.pkr.hcl", &format!("{ok}\nbuild {{\n  sources = [\"source.qemu.dbg\"]\n  provisioner \"shell\" {{\n    inline = [\"echo first\"]\n  }}\n  provisioner \"shell\" {{\n    inline = [\"echo second\"]\n  }}\n}}\n"));
    let cmdline = format!(
        "{} build -debug {}",
        env!("CARGO_BIN_EXE_kiln"),
        t.display()
    );
    let rec = ctx.dir.join("typescript");
    // Two Enters, typed ahead: kiln reads one at each pause.
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmdline])
        .arg(&rec)
        .current_dir(&ctx.dir)
        .env("KILN_WORK_DIR", &ctx.work)
        .env("KILN_STORE", ctx.dir.join("store"))
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("script runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(b"\n\n");
        // Keep stdin open until kiln is done, so script does not hang up the terminal early.
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        drop(stdin);
        let drawn = std::fs::read_to_string(&rec).unwrap_or_default();
        assert!(status.success(), "{drawn}");
        assert!(drawn.contains("next is provisioner 1/2 shell"), "{drawn}");
        assert!(drawn.contains("next is provisioner 2/2 shell"), "{drawn}");
        assert!(drawn.contains("press Enter to continue"), "{drawn}");
        let first = drawn.find("next is provisioner 2/2").unwrap_or(0);
        assert!(
            drawn[..first].contains("dbg: first"),
            "the first provisioner ran before the second pause: {drawn}"
        );
    }
}

#[test]
fn a_closed_stdout_ends_kiln_quietly_without_a_panic() {
    // `kiln … | head -1`: the reader is gone before kiln writes (the sleep orders it).
    let ctx = Ctx::bare("closed-stdout");
    let t = ctx.write(
        "t.pkr.hcl",
        "source \"null\" \"x\" {\n  communicator = \"none\"\n}\nbuild {\n  sources = [\"source.null.x\"]\n}\n",
    );
    let kiln = env!("CARGO_BIN_EXE_kiln");
    for args in [
        "version",
        "images",
        "completions bash",
        &format!("inspect {}", t.display()),
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{{ sleep 0.3; {kiln} {args}; echo \"rc=$?\" >&2; }} | true"
            ))
            .env("KILN_STORE", ctx.dir.join("store"))
            .output()
            .expect("sh runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rc=0"), "kiln {args}: {err}");
        assert!(!err.contains("panicked"), "kiln {args}: {err}");
    }
}
