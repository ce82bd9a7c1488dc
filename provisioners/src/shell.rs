//! The `shell` provisioner: uploads inline commands or scripts and runs them in the guest.

use kiln_core::config::{decode, Dur, ExitStatus, Flag, Text};
use kiln_core::placeholders::fill;
use kiln_core::{Communicator, Error, Provisioner, Result, Source, StepCx};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ShellConfig {
    pub inline: Option<Vec<Text>>,
    pub inline_shebang: Option<Text>,
    pub script: Option<Text>,
    pub scripts: Option<Vec<Text>>,
    pub environment_vars: Option<Vec<Text>>,
    pub env: Option<BTreeMap<String, Text>>,
    pub env_var_format: Option<Text>,
    pub execute_command: Option<Text>,
    pub expect_disconnect: Option<Flag>,
    pub valid_exit_codes: Option<Vec<ExitStatus>>,
    pub remote_folder: Option<Text>,
    pub remote_file: Option<Text>,
    pub remote_path: Option<Text>,
    pub skip_clean: Option<Flag>,
    pub pause_after: Option<Dur>,
    pub start_retry_timeout: Option<Dur>,
    pub binary: Option<Flag>,
    pub use_env_var_file: Option<Flag>,
}

pub struct Shell {
    scripts: Vec<(String, ScriptBody)>,
    env: Vec<(String, String)>,
    env_var_format: String,
    execute_command: String,
    expect_disconnect: bool,
    valid_exit_codes: Vec<i32>,
    remote_folder: String,
    remote_file: Option<String>,
    remote_path: Option<String>,
    skip_clean: bool,
    pause_after: Option<Duration>,
    start_retry_timeout: Duration,
}

enum ScriptBody {
    Inline(String),
    File(PathBuf),
}

pub fn from_component(c: &Component) -> std::result::Result<Shell, Diagnostics> {
    let cfg: ShellConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    let mut scripts = Vec::new();
    let sources = usize::from(cfg.inline.is_some())
        + usize::from(cfg.script.is_some())
        + usize::from(cfg.scripts.is_some());
    if sources != 1 {
        d.push(Diagnostic::error(
            "the shell provisioner needs exactly one of inline, script or scripts",
            Some(c.span.clone()),
        ));
    }
    if let Some(lines) = &cfg.inline {
        let shebang = cfg.inline_shebang.as_deref().unwrap_or("/bin/sh -e");
        let body = format!(
            "#!{shebang}\n{}\n",
            lines
                .iter()
                .map(|l| l.0.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        scripts.push(("inline script".to_string(), ScriptBody::Inline(body)));
    }
    let mut files: Vec<String> = cfg.script.iter().map(|s| s.0.clone()).collect();
    files.extend(cfg.scripts.iter().flatten().map(|s| s.0.clone()));
    for f in files {
        let p = PathBuf::from(&f);
        if !p.is_file() {
            let key = if cfg.script.is_some() {
                "script"
            } else {
                "scripts"
            };
            d.push(
                Diagnostic::error(
                    format!("script {f} does not exist"),
                    Some(c.span_of(key).clone()),
                )
                .with_hint("paths are relative to the directory kiln runs in"),
            );
        }
        scripts.push((f, ScriptBody::File(p)));
    }
    let env = environment(c, cfg.environment_vars.as_deref(), cfg.env.as_ref(), &mut d);
    if d.has_errors() {
        return Err(d);
    }
    Ok(Shell {
        scripts,
        env,
        env_var_format: cfg
            .env_var_format
            .map_or_else(|| "%s='%s' ".to_string(), |t| t.0),
        execute_command: cfg.execute_command.map_or_else(
            || "chmod +x {{.Path}}; {{.Vars}} {{.Path}}".to_string(),
            |t| t.0,
        ),
        expect_disconnect: cfg.expect_disconnect.is_some_and(|f| f.0),
        valid_exit_codes: cfg
            .valid_exit_codes
            .map_or_else(|| vec![0], |v| v.iter().map(|n| n.0).collect()),
        remote_folder: cfg
            .remote_folder
            .map_or_else(|| "/tmp".to_string(), |t| t.0),
        remote_file: cfg.remote_file.map(|t| t.0),
        remote_path: cfg.remote_path.map(|t| t.0),
        skip_clean: cfg.skip_clean.is_some_and(|f| f.0),
        pause_after: cfg.pause_after.map(|d| d.0),
        start_retry_timeout: cfg
            .start_retry_timeout
            .map_or(Duration::from_secs(300), |d| d.0),
    })
}

/// `KEY='value' ` pairs, values quoted for the shell.
fn env_string(format: &str, pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\'', "'\"'\"'");
            format.replacen("%s", k, 1).replacen("%s", &v, 1)
        })
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// `environment_vars` (`KEY=value` strings) followed by the `env` map, as the shell and
/// shell-local steps take them; malformed entries become diagnostics.
pub fn environment(
    c: &Component,
    vars: Option<&[Text]>,
    map: Option<&BTreeMap<String, Text>>,
    d: &mut Diagnostics,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for v in vars.into_iter().flatten() {
        match v.split_once('=') {
            Some((k, val)) => env.push((k.to_string(), val.to_string())),
            None => d.push(Diagnostic::error(
                format!("environment_vars entry {:?} must be KEY=value", v.0),
                Some(c.span_of("environment_vars").clone()),
            )),
        }
    }
    env.extend(
        map.into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone())),
    );
    env
}

/// Base environment every provisioner sees, as Packer sets it.
pub fn packer_env(cx: &StepCx<'_>) -> Vec<(String, String)> {
    let mut env = vec![
        ("PACKER_BUILD_NAME".to_string(), cx.build_name.to_string()),
        (
            "PACKER_BUILDER_TYPE".to_string(),
            cx.builder_type.to_string(),
        ),
    ];
    if let (Some(ip), Some(port)) = (cx.vars.get("HTTPIP"), cx.vars.get("HTTPPort")) {
        env.push(("PACKER_HTTP_ADDR".to_string(), format!("{ip}:{port}")));
        env.push(("PACKER_HTTP_IP".to_string(), ip.clone()));
        env.push(("PACKER_HTTP_PORT".to_string(), port.clone()));
    }
    env
}

impl Shell {
    fn remote_path(&self, i: usize) -> String {
        if let Some(p) = &self.remote_path {
            return if self.scripts.len() > 1 {
                format!("{p}.{i}")
            } else {
                p.clone()
            };
        }
        let file = match &self.remote_file {
            Some(f) if self.scripts.len() == 1 => f.clone(),
            _ => format!("script_{}_{i}.sh", std::process::id()),
        };
        format!("{}/{file}", self.remote_folder.trim_end_matches('/'))
    }

    fn run_one(
        &self,
        comm: &mut dyn Communicator,
        cx: &StepCx<'_>,
        i: usize,
        name: &str,
        body: &ScriptBody,
    ) -> Result<()> {
        let remote = self.remote_path(i);
        let start = Instant::now();
        // The guest may still be coming back (e.g. after an expected reboot): retry the upload.
        loop {
            let r = match body {
                ScriptBody::Inline(s) => comm.upload(&Source::Bytes(s.as_bytes()), &remote, 0o755),
                ScriptBody::File(p) => comm.upload(&Source::File(p), &remote, 0o755),
            };
            match r {
                Ok(()) => break,
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                Err(e @ (Error::Io { .. } | Error::Fatal(_))) => return Err(e),
                Err(e) if start.elapsed() < self.start_retry_timeout => {
                    cx.em
                        .debug(format!("upload of {name} failed ({e}); retrying"));
                    comm.reset();
                    cx.cancel.sleep(Duration::from_secs(1))?;
                }
                Err(e) => {
                    return Err(Error::failed(format!(
                        "cannot upload {name} to {remote}: {e}"
                    )))
                }
            }
        }
        let mut env = packer_env(cx);
        env.extend(self.env.iter().cloned());
        let mut vars = cx.vars.clone();
        vars.insert("Vars".into(), env_string(&self.env_var_format, &env));
        vars.insert("Path".into(), remote.clone());
        let cmd = fill(&self.execute_command, &vars);
        cx.em.debug(format!("running {name}: {cmd}"));
        let em = cx.em;
        match comm.exec(&cmd, &mut |l| em.output(l)) {
            Ok(code) if self.valid_exit_codes.contains(&code) => {}
            Ok(code) => {
                return Err(Error::failed(format!(
                    "{name} exited with status {code} (valid_exit_codes: {:?})",
                    self.valid_exit_codes
                )));
            }
            Err(Error::Disconnected(why)) if self.expect_disconnect => {
                cx.em.say(format!(
                    "{name}: the guest disconnected, as expected ({why})"
                ));
                comm.reset();
                return Ok(());
            }
            Err(Error::Disconnected(why)) => {
                return Err(Error::failed(format!("the guest disconnected while running {name} ({why}); set expect_disconnect = true if the script reboots it")));
            }
            Err(e) => return Err(e),
        }
        if !self.skip_clean {
            let _ = comm.exec(
                &format!("rm -f {}", kiln_ssh::shell_quote(&remote)),
                &mut |_| {},
            );
        }
        Ok(())
    }
}

impl Provisioner for Shell {
    fn kind(&self) -> &str {
        "shell"
    }

    fn key_inputs(&self) -> Result<serde_json::Value> {
        let mut scripts = Vec::new();
        for (name, body) in &self.scripts {
            let digest = match body {
                ScriptBody::Inline(s) => kiln_core::text_digest(s),
                ScriptBody::File(p) => kiln_core::digest_path(p)?.into(),
            };
            scripts.push(serde_json::json!({"name": name, "digest": digest}));
        }
        Ok(serde_json::json!({
            "scripts": scripts,
            "env": self.env,
            "env_var_format": self.env_var_format,
            "execute_command": self.execute_command,
            "expect_disconnect": self.expect_disconnect,
            "valid_exit_codes": self.valid_exit_codes,
            "remote_folder": self.remote_folder,
            "remote_file": self.remote_file,
            "remote_path": self.remote_path,
            "skip_clean": self.skip_clean,
        }))
    }

    fn provision(&self, comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
        let comm = comm.ok_or_else(|| {
            Error::failed(
                "the shell provisioner needs a communicator (communicator = \"none\" has none)",
            )
        })?;
        for (i, (name, body)) in self.scripts.iter().enumerate() {
            cx.cancel.check()?;
            self.run_one(comm, cx, i, name, body)?;
        }
        if let Some(p) = self.pause_after {
            cx.cancel.sleep(p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_quoted_for_the_shell() {
        let s = env_string(
            "%s='%s' ",
            &[("A".into(), "it's".into()), ("B".into(), "x y".into())],
        );
        assert_eq!(s, "A='it'\"'\"'s' B='x y'");
    }
}
