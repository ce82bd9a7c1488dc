//! `shell-local` (provisioner and post-processor) and `breakpoint`: things that run on the host.

use crate::shell::packer_env;
use kiln_core::config::{decode, ExitStatus, Flag, Text};
use kiln_core::placeholders::fill;
use kiln_core::process::Guarded;
use kiln_core::{Artifact, Communicator, Error, PostProcessor, Provisioner, Result, StepCx};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShellLocalConfig {
    pub inline: Option<Vec<Text>>,
    pub inline_shebang: Option<Text>,
    pub script: Option<Text>,
    pub scripts: Option<Vec<Text>>,
    pub command: Option<Text>,
    pub environment_vars: Option<Vec<Text>>,
    pub env: Option<std::collections::BTreeMap<String, Text>>,
    pub execute_command: Option<Vec<Text>>,
    pub env_var_format: Option<Text>,
    pub only_on: Option<Vec<Text>>,
    pub use_linux_pathing: Option<Flag>,
    pub valid_exit_codes: Option<Vec<ExitStatus>>,
    pub tempfile_extension: Option<Text>,
}

pub struct ShellLocal {
    scripts: Vec<(String, String)>,
    env: Vec<(String, String)>,
    execute_command: Vec<String>,
    valid_exit_codes: Vec<i32>,
    skip: bool,
}

pub fn shell_local(c: &Component) -> std::result::Result<ShellLocal, Diagnostics> {
    let cfg: ShellLocalConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    let mut scripts = Vec::new();
    let shebang = cfg
        .inline_shebang
        .as_deref()
        .unwrap_or("/bin/sh -e")
        .to_string();
    if let Some(lines) = &cfg.inline {
        scripts.push((
            "inline script".into(),
            format!(
                "#!{shebang}\n{}\n",
                lines
                    .iter()
                    .map(|l| l.0.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        ));
    }
    if let Some(cmd) = &cfg.command {
        scripts.push(("command".into(), format!("#!{shebang}\n{}\n", cmd.0)));
    }
    let mut files: Vec<String> = cfg.script.iter().map(|s| s.0.clone()).collect();
    files.extend(cfg.scripts.iter().flatten().map(|s| s.0.clone()));
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(body) => scripts.push((f, body)),
            Err(e) => d.push(Diagnostic::error(
                format!("cannot read script {f}: {e}"),
                Some(
                    c.span_of(if cfg.script.is_some() {
                        "script"
                    } else {
                        "scripts"
                    })
                    .clone(),
                ),
            )),
        }
    }
    if scripts.is_empty() && !d.has_errors() {
        d.push(Diagnostic::error(
            "shell-local needs one of inline, command, script or scripts",
            Some(c.span.clone()),
        ));
    }
    let env =
        crate::shell::environment(c, cfg.environment_vars.as_deref(), cfg.env.as_ref(), &mut d);
    if d.has_errors() {
        return Err(d);
    }
    let skip = cfg
        .only_on
        .as_ref()
        .is_some_and(|os| !os.iter().any(|o| o.0 == std::env::consts::OS));
    Ok(ShellLocal {
        scripts,
        env,
        execute_command: cfg.execute_command.map_or_else(
            || {
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "{{.Vars}} {{.Script}}".into(),
                ]
            },
            |v| v.into_iter().map(|t| t.0).collect(),
        ),
        valid_exit_codes: cfg
            .valid_exit_codes
            .map_or_else(|| vec![0], |v| v.iter().map(|n| n.0).collect()),
        skip,
    })
}

impl ShellLocal {
    fn run(&self, cx: &StepCx<'_>, extra_env: &[(String, String)]) -> Result<()> {
        if self.skip {
            cx.em
                .say("shell-local: skipped (only_on does not include this OS)");
            return Ok(());
        }
        // Holds kiln.pid: a later kiln removes it if this one was SIGKILLed (and the supervisor
        // removes it itself when it sees kiln die).
        let work = kiln_core::workdir::WorkDir::create(&std::env::temp_dir(), "kiln-shell-local")?;
        let dir = work.path().to_path_buf();
        let mut env = packer_env(cx);
        env.extend(self.env.iter().cloned());
        env.extend(extra_env.iter().cloned());
        for (i, (name, body)) in self.scripts.iter().enumerate() {
            cx.cancel.check()?;
            let path = dir.join(format!("script-{i}.sh"));
            std::fs::write(&path, body)
                .map_err(|e| Error::io("cannot write shell-local script", e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("chmod shell-local script", e))?;
            let mut vars = cx.vars.clone();
            let vars_str = env
                .iter()
                .map(|(k, v)| format!("{k}='{}'", v.replace('\'', "'\"'\"'")))
                .collect::<Vec<_>>()
                .join(" ");
            vars.insert("Vars".into(), vars_str);
            vars.insert("Script".into(), path.display().to_string());
            vars.insert("Command".into(), path.display().to_string());
            let argv: Vec<String> = self
                .execute_command
                .iter()
                .map(|a| fill(a, &vars))
                .collect();
            if argv.is_empty() {
                return Err(Error::failed("execute_command is empty"));
            }
            let code = run_host(&argv, &env, &dir, &format!("shell-local {name}"), cx)?;
            if !self.valid_exit_codes.contains(&code) {
                return Err(Error::failed(format!(
                    "shell-local {name} exited with status {code}"
                )));
            }
        }
        Ok(())
    }
}

impl Provisioner for ShellLocal {
    fn kind(&self) -> &str {
        "shell-local"
    }
    fn key_inputs(&self) -> Result<serde_json::Value> {
        let scripts: Vec<serde_json::Value> = self
            .scripts
            .iter()
            .map(|(_, body)| kiln_core::text_digest(body))
            .collect();
        Ok(
            serde_json::json!({"scripts": scripts, "env": self.env, "execute_command": self.execute_command}),
        )
    }
    fn provision(&self, _comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
        self.run(cx, &[])
    }
}

impl PostProcessor for ShellLocal {
    fn kind(&self) -> &str {
        "shell-local"
    }
    fn process(&self, a: &Artifact, cx: &StepCx<'_>) -> Result<Artifact> {
        let files = a
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        self.run(
            cx,
            &[
                ("KILN_ARTIFACT_FILES".into(), files),
                ("KILN_ARTIFACT_ID".into(), a.id.clone()),
            ],
        )?;
        Ok(a.clone())
    }
}

/// Runs `argv` on the host with `env` added, in its own process group (killed whole on
/// cancel, on error and if kiln dies; `scratch` is removed with it if kiln dies), each line it
/// prints (stdout and stderr) as build output;
/// returns its exit status (-1 for a signal).
pub(crate) fn run_host(
    argv: &[String],
    env: &[(String, String)],
    scratch: &std::path::Path,
    what: &str,
    cx: &StepCx<'_>,
) -> Result<i32> {
    let (reader, writer) = std::io::pipe().map_err(|e| Error::io("pipe", e))?;
    let writer2 = writer.try_clone().map_err(|e| Error::io("pipe", e))?;
    let mut child = Guarded::spawn_group(
        argv,
        |cmd: &mut Command| {
            cmd.envs(env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(writer)
                .stderr(writer2);
        },
        Some(scratch),
        what.to_string(),
    )?;
    let pid = child.id();
    let _hook = cx
        .cancel
        .on_cancel(move || kiln_core::process::kill_group(pid));
    for line in BufReader::new(reader).lines() {
        match line {
            Ok(l) => cx.em.output(&l),
            Err(_) => break,
        }
    }
    let st = child.wait()?;
    cx.cancel.check()?;
    Ok(st.code().unwrap_or(-1))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BreakpointConfig {
    pub note: Option<Text>,
    pub disable: Option<Flag>,
}

pub struct Breakpoint {
    note: String,
    disable: bool,
}

pub fn breakpoint(c: &Component) -> std::result::Result<Breakpoint, Diagnostics> {
    let cfg: BreakpointConfig = decode(c, &[])?;
    Ok(Breakpoint {
        note: cfg.note.map(|t| t.0).unwrap_or_default(),
        disable: cfg.disable.is_some_and(|f| f.0),
    })
}

impl Provisioner for Breakpoint {
    fn kind(&self) -> &str {
        "breakpoint"
    }
    fn key_inputs(&self) -> Result<serde_json::Value> {
        // A pause changes nothing in the image.
        Ok(serde_json::json!({}))
    }
    fn provision(&self, _comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
        if self.disable {
            cx.em.say("breakpoint disabled");
            return Ok(());
        }
        if !cx.interactive {
            cx.em.warn(format!(
                "breakpoint skipped: stdin is not a terminal ({})",
                self.note
            ));
            return Ok(());
        }
        cx.em.say(format!(
            "breakpoint: {} — press Enter to continue",
            self.note
        ));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
            let _ = tx.send(());
        });
        loop {
            if rx
                .recv_timeout(std::time::Duration::from_millis(100))
                .is_ok()
            {
                return Ok(());
            }
            cx.cancel.check()?;
        }
    }
}
