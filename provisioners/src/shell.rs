//! The `shell` provisioner: uploads inline commands or scripts and runs them in the guest.

use kiln_core::config::{decode, Dur, ExitStatus, Flag, Text};
use kiln_core::placeholders::fill;
use kiln_core::{Communicator, Error, Provisioner, Result, Source, StepCx};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The shell provisioner's options, declared once: typed fields, static defaults in `Default`,
/// and `Serialize` as the cache key's view (`skip_serializing` = cannot change the disk; the
/// scripts enter the key by content through `Shell::scripts`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ShellConfig {
    /// Commands, run as one script.
    #[serde(skip_serializing)]
    pub inline: Option<Vec<Text>>,
    /// The interpreter line of the inline script (default `/bin/sh -e`).
    #[serde(skip_serializing)]
    pub inline_shebang: Option<Text>,
    /// A local script to upload and run.
    #[serde(skip_serializing)]
    pub script: Option<Text>,
    /// Local scripts, run in order.
    #[serde(skip_serializing)]
    pub scripts: Option<Vec<Text>>,
    /// `KEY=value` entries for the scripts' environment.
    #[serde(skip_serializing)]
    pub environment_vars: Option<Vec<Text>>,
    /// More environment, as a map.
    #[serde(skip_serializing)]
    pub env: Option<BTreeMap<String, Text>>,
    /// How one variable is written before the command (default `%s='%s' `).
    pub env_var_format: Text,
    /// How a script is run (default `chmod +x {{.Path}}; {{.Vars}} {{.Path}}`).
    pub execute_command: Text,
    /// A disconnect while the script runs (a reboot) is success.
    pub expect_disconnect: Flag,
    /// Exit statuses that count as success (default `[0]`).
    pub valid_exit_codes: Vec<ExitStatus>,
    /// Where scripts are uploaded (default `/tmp`).
    pub remote_folder: Text,
    /// The uploaded script's name (one script).
    pub remote_file: Option<Text>,
    /// The uploaded script's whole path.
    pub remote_path: Option<Text>,
    /// Leave the uploaded script in the guest.
    pub skip_clean: Flag,
    /// Wait after the scripts ran.
    #[serde(skip_serializing)]
    pub pause_after: Option<Dur>,
    /// How long to retry the upload while the guest comes back (default 5m).
    #[serde(skip_serializing)]
    pub start_retry_timeout: Dur,
    /// Accepted; not acted on (scripts are uploaded as they are).
    pub binary: Option<Flag>,
    /// Accepted; not acted on (variables are passed on the command line).
    pub use_env_var_file: Option<Flag>,
}

impl Default for ShellConfig {
    fn default() -> Self {
        ShellConfig {
            inline: None,
            inline_shebang: None,
            script: None,
            scripts: None,
            environment_vars: None,
            env: None,
            env_var_format: Text("%s='%s' ".into()),
            execute_command: Text("chmod +x {{.Path}}; {{.Vars}} {{.Path}}".into()),
            expect_disconnect: Flag(false),
            valid_exit_codes: vec![ExitStatus(0)],
            remote_folder: Text("/tmp".into()),
            remote_file: None,
            remote_path: None,
            skip_clean: Flag(false),
            pause_after: None,
            start_retry_timeout: Dur(Duration::from_secs(300)),
            binary: None,
            use_env_var_file: None,
        }
    }
}

pub struct Shell {
    cfg: ShellConfig,
    /// (name, body) of each script, inline first.
    scripts: Vec<(String, ScriptBody)>,
    /// environment_vars then env, resolved.
    env: Vec<(String, String)>,
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
        // A character device (`script = "/dev/null"`, an empty default some templates use) is
        // read once, as Packer reads it; a device that never ends is refused.
        if let Some(body) = char_device_text(&p) {
            match body {
                Ok(text) => scripts.push((f, ScriptBody::Inline(text))),
                Err(why) => {
                    let key = if cfg.script.is_some() {
                        "script"
                    } else {
                        "scripts"
                    };
                    d.push(Diagnostic::error(
                        format!("script {f}: {why}"),
                        Some(c.span_of(key).clone()),
                    ));
                }
            }
            continue;
        }
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
    Ok(Shell { cfg, scripts, env })
}

/// The text of a character device, read up to 1 MiB; `None` when `p` is not one.
fn char_device_text(p: &std::path::Path) -> Option<std::result::Result<String, String>> {
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(p).ok()?;
    if !meta.file_type().is_char_device() {
        return None;
    }
    let mut buf = Vec::new();
    let read = std::fs::File::open(p)
        .and_then(|f| f.take((1 << 20) + 1).read_to_end(&mut buf))
        .map_err(|e| format!("cannot read it: {e}"));
    Some(read.and_then(|n| {
        if n > 1 << 20 {
            Err("it is a device that does not end (more than 1 MiB): name a file".into())
        } else {
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }))
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
        if let Some(p) = &self.cfg.remote_path {
            return if self.scripts.len() > 1 {
                format!("{p}.{i}")
            } else {
                p.0.clone()
            };
        }
        let file = match &self.cfg.remote_file {
            Some(f) if self.scripts.len() == 1 => f.0.clone(),
            _ => format!("script_{}_{i}.sh", std::process::id()),
        };
        format!("{}/{file}", self.cfg.remote_folder.trim_end_matches('/'))
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
                Err(e) if start.elapsed() < self.cfg.start_retry_timeout.0 => {
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
        vars.insert("Vars".into(), env_string(&self.cfg.env_var_format, &env));
        vars.insert("Path".into(), remote.clone());
        let cmd = fill(&self.cfg.execute_command, &vars);
        cx.em.debug(format!("running {name}: {cmd}"));
        let em = cx.em;
        match comm.exec(&cmd, &mut |l| em.output(l)) {
            Ok(code) if self.cfg.valid_exit_codes.iter().any(|v| v.0 == code) => {}
            Ok(code) => {
                return Err(Error::failed(format!(
                    "{name} exited with status {code} (valid_exit_codes: {:?})",
                    self.cfg
                        .valid_exit_codes
                        .iter()
                        .map(|v| v.0)
                        .collect::<Vec<_>>()
                )));
            }
            Err(Error::Disconnected(why)) if self.cfg.expect_disconnect.0 => {
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
        if !self.cfg.skip_clean.0 {
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
        // The options as their fields declare; scripts by content; the resolved environment.
        let options = serde_json::to_value(&self.cfg).map_err(|e| Error::other("cache key", e))?;
        Ok(serde_json::json!({
            "scripts": scripts,
            "env": self.env,
            "options": options,
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
        if let Some(p) = self.cfg.pause_after.map(|d| d.0) {
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

#[cfg(test)]
mod key_rule {
    use super::*;

    fn key(pairs: &[(&str, serde_json::Value)]) -> serde_json::Value {
        from_component(&Component::from_pairs("shell", pairs))
            .map_err(|d| d.to_string())
            .and_then(|s| s.key_inputs().map_err(|e| e.to_string()))
            .expect("a key")
    }

    #[test]
    fn the_shell_key_has_the_scripts_by_content_and_only_options_that_change_the_guest() {
        let inline = ("inline", serde_json::json!(["echo hi"]));
        let base = key(std::slice::from_ref(&inline));
        assert_eq!(
            base["scripts"][0]["digest"],
            kiln_core::text_digest("#!/bin/sh -e\necho hi\n"),
            "inline commands count by their text"
        );
        assert_eq!(base["options"]["valid_exit_codes"], serde_json::json!([0]));
        for (k, v) in [
            ("execute_command", serde_json::Value::from("sudo {{.Path}}")),
            ("expect_disconnect", true.into()),
            ("environment_vars", serde_json::json!(["A=1"])),
            ("valid_exit_codes", serde_json::json!([0, 2])),
        ] {
            assert_ne!(
                key(&[inline.clone(), (k, v)]),
                base,
                "{k} must be in the key"
            );
        }
        // A character device such as /dev/null is a script (an empty one), not a missing file.
        let empty = key(&[("script", serde_json::json!("/dev/null"))]);
        assert_eq!(empty["scripts"][0]["digest"], kiln_core::text_digest(""));
        let zero = Component::from_pairs("shell", &[("script", "/dev/zero".into())]);
        let err = from_component(&zero)
            .err()
            .map(|d| d.to_string())
            .unwrap_or_default();
        assert!(err.contains("does not end"), "{err}");
        for (k, v) in [
            ("pause_after", serde_json::Value::from("5s")),
            ("start_retry_timeout", "1m".into()),
        ] {
            assert_eq!(
                key(&[inline.clone(), (k, v)]),
                base,
                "{k} must not be in the key"
            );
        }
    }
}
