//! `ansible` (the host's `ansible-playbook` against the guest) and `ansible-local`
//! (`ansible-playbook` inside the guest, on playbooks kiln uploads), with Packer's option names.
//!
//! Where kiln departs: Packer's `ansible` runs an SSH server on the host (its "proxy adapter")
//! that relays ansible's commands over the communicator. kiln has no such adapter: ansible
//! connects to the guest's own SSH server at the address kiln connected to (the host port forward
//! of a qemu guest) with the communicator's user and key, whatever `use_proxy` says. Commands run
//! as the communicator's user either way, as with Packer's default. The adapter's own options
//! (`local_port`, `ssh_host_key_file`, `ssh_authorized_key_file`, `ansible_proxy_key_type`,
//! `sftp_command`) are accepted with a warning that says so.

use crate::file::upload_dir;
use crate::local::run_host;
use kiln_core::config::{decode, key, warn_inert, Flag, Port, Text};
use kiln_core::placeholders::fill;
use kiln_core::workdir::WorkDir;
use kiln_core::{Communicator, Endpoint, Error, Provisioner, Result, Source, StepCx};
use kiln_ssh::shell_quote;
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `ansible` provisioner's options, declared once (`Serialize` is the cache key's view:
/// `skip_serializing` = cannot change the disk; files and directories count by content).
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct AnsibleConfig {
    /// The ansible-playbook to run (default `ansible-playbook`).
    pub command: Text,
    /// More arguments for ansible-playbook, as they are (no shell).
    #[serde(serialize_with = "key::args")]
    pub extra_arguments: Vec<Text>,
    /// `KEY=value` environment for ansible-playbook and ansible-galaxy.
    pub ansible_env_vars: Vec<Text>,
    /// The playbook (required). Its whole directory (roles/, templates/, files/, vars) counts in
    /// the cache key by content.
    #[serde(serialize_with = "key::file")]
    pub playbook_file: Option<Text>,
    /// ssh options for ansible (`--ssh-extra-args`, default `-o IdentitiesOnly=yes`).
    pub ansible_ssh_extra_args: Vec<Text>,
    /// Groups the host is put in.
    pub groups: Vec<Text>,
    /// Groups written to the inventory with no host.
    pub empty_groups: Vec<Text>,
    /// The host's name in the inventory (default `default`).
    pub host_alias: Text,
    /// `ansible_user`; with `use_proxy = false` ansible connects as this user (default: the
    /// communicator's).
    pub user: Option<Text>,
    /// Packer's adapter port. Not acted on (no adapter).
    #[serde(skip_serializing)]
    pub local_port: Option<Port>,
    /// Packer's adapter host key. Not acted on (no adapter).
    #[serde(skip_serializing)]
    pub ssh_host_key_file: Option<Text>,
    /// Packer's adapter client key. Not acted on (no adapter).
    #[serde(skip_serializing)]
    pub ssh_authorized_key_file: Option<Text>,
    /// Packer's adapter key type. Not acted on (no adapter).
    #[serde(skip_serializing)]
    pub ansible_proxy_key_type: Option<Text>,
    /// Packer's adapter SFTP server command. Not acted on (no adapter).
    #[serde(skip_serializing)]
    pub sftp_command: Option<Text>,
    /// Do not run `command --version` before the build.
    #[serde(skip_serializing)]
    pub skip_version_check: Flag,
    /// Let ansible transfer files with SFTP (default: scp, `ANSIBLE_SCP_IF_SSH=True`).
    pub use_sftp: Flag,
    /// Where the generated inventory is written (a directory with `group_vars`/`host_vars`);
    /// counts by content.
    #[serde(serialize_with = "key::path_or_tree")]
    pub inventory_directory: Option<Text>,
    /// One host line of the generated inventory, a Go template over `.HostAlias`, `.Host`,
    /// `.User`, `.Port` and the build's values.
    pub inventory_file_template: Option<Text>,
    /// An inventory to use instead of generating one; counts by content.
    #[serde(serialize_with = "key::path_or_tree")]
    pub inventory_file: Option<Text>,
    /// Keep the generated inventory file.
    #[serde(skip_serializing)]
    pub keep_inventory_file: Flag,
    /// A requirements file for ansible-galaxy, installed before the playbook; counts by content.
    #[serde(serialize_with = "key::file")]
    pub galaxy_file: Option<Text>,
    /// The ansible-galaxy to run (default `ansible-galaxy`).
    pub galaxy_command: Text,
    /// `ansible-galaxy install -f`.
    pub galaxy_force_install: Flag,
    /// `ansible-galaxy install --force-with-deps`.
    pub galaxy_force_with_deps: Flag,
    /// Where galaxy installs roles (`-p`). What galaxy installs counts through galaxy_file; the
    /// directory counts by content only without one.
    #[serde(skip_serializing)]
    pub roles_path: Option<Text>,
    /// Where galaxy installs collections (`-p`); in the key as roles_path is.
    #[serde(skip_serializing)]
    pub collections_path: Option<Text>,
    /// Packer's switch between its adapter and a direct connection. kiln always connects
    /// directly; `false` also makes `user` the user ansible connects as.
    pub use_proxy: Option<Flag>,
    /// WinRM only: kiln has no WinRM communicator.
    #[serde(skip_serializing)]
    pub ansible_winrm_use_http: Option<Flag>,
}

impl Default for AnsibleConfig {
    fn default() -> Self {
        AnsibleConfig {
            command: Text("ansible-playbook".into()),
            extra_arguments: Vec::new(),
            ansible_env_vars: Vec::new(),
            playbook_file: None,
            ansible_ssh_extra_args: Vec::new(),
            groups: Vec::new(),
            empty_groups: Vec::new(),
            host_alias: Text("default".into()),
            user: None,
            local_port: None,
            ssh_host_key_file: None,
            ssh_authorized_key_file: None,
            ansible_proxy_key_type: None,
            sftp_command: None,
            skip_version_check: Flag(false),
            use_sftp: Flag(false),
            inventory_directory: None,
            inventory_file_template: None,
            inventory_file: None,
            keep_inventory_file: Flag(false),
            galaxy_file: None,
            galaxy_command: Text("ansible-galaxy".into()),
            galaxy_force_install: Flag(false),
            galaxy_force_with_deps: Flag(false),
            roles_path: None,
            collections_path: None,
            use_proxy: None,
            ansible_winrm_use_http: None,
        }
    }
}

const INERT: &[(&str, &str)] = &[
    (
        "local_port",
        "kiln runs no SSH proxy adapter: ansible connects to the guest's SSH server directly",
    ),
    (
        "ssh_host_key_file",
        "kiln runs no SSH proxy adapter: ansible connects to the guest's SSH server directly",
    ),
    (
        "ssh_authorized_key_file",
        "kiln runs no SSH proxy adapter: ansible authenticates with the communicator's key",
    ),
    (
        "ansible_proxy_key_type",
        "kiln runs no SSH proxy adapter: ansible authenticates with the communicator's key",
    ),
    (
        "sftp_command",
        "kiln runs no SSH proxy adapter: the guest's own SSH server serves SFTP",
    ),
    ("ansible_winrm_use_http", "kiln has no WinRM communicator"),
];

pub struct Ansible {
    cfg: AnsibleConfig,
    playbook: PathBuf,
    /// `ansible-playbook --version`, read by preflight (also in the cache key).
    version: OnceLock<String>,
}

/// Which file or directory an option names must exist, and be a file (or a directory).
fn must_exist(c: &Component, key: &str, v: Option<&Text>, dir: bool, d: &mut Diagnostics) {
    let Some(v) = v else { return };
    let p = Path::new(v.as_str());
    let why = match std::fs::metadata(p) {
        Err(e) => Some(format!("{key}: {} cannot be read: {e}", p.display())),
        Ok(m) if dir && !m.is_dir() => Some(format!("{key}: {} must be a directory", p.display())),
        Ok(m) if !dir && m.is_dir() => Some(format!("{key}: {} must be a file", p.display())),
        Ok(_) => None,
    };
    if let Some(why) = why {
        d.push(Diagnostic::error(why, Some(c.span_of(key).clone())));
    }
}

pub fn ansible(c: &Component) -> std::result::Result<(Ansible, Diagnostics), Diagnostics> {
    let cfg: AnsibleConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    match &cfg.playbook_file {
        None => d.push(Diagnostic::error(
            "the ansible provisioner needs playbook_file",
            Some(c.span.clone()),
        )),
        Some(p) => must_exist(c, "playbook_file", Some(p), false, &mut d),
    }
    must_exist(c, "galaxy_file", cfg.galaxy_file.as_ref(), false, &mut d);
    must_exist(
        c,
        "inventory_directory",
        cfg.inventory_directory.as_ref(),
        true,
        &mut d,
    );
    for (i, e) in cfg.ansible_env_vars.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            d.push(Diagnostic::error(
                format!("ansible_env_vars[{i}] {:?} is not KEY=value", e.as_str()),
                Some(c.span_of("ansible_env_vars").clone()),
            ));
        }
    }
    if d.has_errors() {
        return Err(d);
    }
    let mut warnings = Diagnostics::default();
    warn_inert(c, INERT, &mut warnings);
    let playbook = cfg
        .playbook_file
        .as_ref()
        .map(|p| std::path::absolute(p.as_str()).unwrap_or_else(|_| PathBuf::from(p.as_str())))
        .unwrap_or_default();
    Ok((
        Ansible {
            cfg,
            playbook,
            version: OnceLock::new(),
        },
        warnings,
    ))
}

/// The version `command --version` prints: `ansible-playbook [core 2.14.18]` or
/// `ansible-playbook 2.9.27`.
fn parse_version(out: &str) -> Option<String> {
    let first = out.lines().next()?;
    first
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_string)
}

/// `true` when an `-e`/`--extra-vars` value sets `name` (as `name=...` or a JSON/YAML key).
fn sets_var(args: &[String], name: &str) -> bool {
    args.iter().any(|a| {
        a.split(['=', ' ', '"', '\'', '{', ',', ':'])
            .any(|w| w == name)
    })
}

/// Splits `a=1 b="two words"` as ansible's key=value extra vars.
fn kv_pairs(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut k = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            k.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || k.is_empty() {
            return None;
        }
        let mut v = String::new();
        let mut quote = None;
        while let Some(&c) = chars.peek() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => v.push(c),
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => break,
                None => v.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return None;
        }
        out.insert(k, v);
    }
}

/// Moves every `-e`/`--extra-vars` value holding a sensitive value into a 0600 file in `dir`
/// passed as `@file`, so no secret is on ansible's command line; any other argument holding one
/// is refused.
fn hide_secrets(args: Vec<String>, dir: &Path, cx: &StepCx<'_>) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter().peekable();
    let mut n = 0;
    while let Some(a) = it.next() {
        let (flag, value) = if a == "-e" || a == "--extra-vars" {
            match it.peek() {
                Some(v) if cx.em.holds_secret(v) => (Some(a), it.next().unwrap_or_default()),
                _ => (None, a),
            }
        } else if let Some(v) = a
            .strip_prefix("--extra-vars=")
            .or_else(|| a.strip_prefix("-e"))
        {
            if cx.em.holds_secret(v) {
                (Some("-e".to_string()), v.to_string())
            } else {
                (None, a)
            }
        } else {
            (None, a)
        };
        match flag {
            Some(flag) => {
                let body = if value.trim_start().starts_with('{') || value.starts_with('@') {
                    value.clone()
                } else {
                    let map = kv_pairs(&value).ok_or_else(|| {
                        Error::failed(
                            "an --extra-vars argument with a sensitive value is not key=value pairs or JSON: write it as JSON so kiln can pass it in a file",
                        )
                    })?;
                    serde_json::to_string(&map).map_err(|e| Error::failed(e.to_string()))?
                };
                if body.starts_with('@') {
                    return Err(Error::failed(
                        "an --extra-vars @file argument names a sensitive value",
                    ));
                }
                let path = dir.join(format!("extra-vars-{n}.json"));
                n += 1;
                write_private(&path, body.as_bytes())?;
                out.push(flag);
                out.push(format!("@{}", path.display()));
            }
            None if cx.em.holds_secret(&value) => {
                return Err(Error::failed(
                    "a sensitive value in the ansible provisioner's extra_arguments would be on ansible-playbook's command line: pass it with --extra-vars (kiln moves those into a private file)",
                ));
            }
            None => out.push(value),
        }
    }
    Ok(out)
}

fn write_private(path: &Path, body: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    f.write_all(body)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// `KEY=value` strings into pairs.
fn env_pairs(list: &[Text]) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The build's values every ansible run gets as extra vars, as Packer passes them.
fn packer_extra_vars(cx: &StepCx<'_>) -> Vec<String> {
    let mut v = vec![
        "-e".into(),
        format!("packer_build_name=\"{}\"", cx.build_name),
        "-e".into(),
        format!("packer_builder_type={}", cx.builder_type),
    ];
    if let Some(addr) = cx.vars.get("HTTPAddr") {
        v.push("-e".into());
        v.push(format!("packer_http_addr={addr}"));
    }
    v
}

/// Shows a command line with the values of `…password…=`/`…secret…=` arguments hidden, as Packer
/// does (sensitive template values are hidden by the emitter as well).
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| match a.split_once('=') {
            Some((k, _))
                if k.to_ascii_lowercase().contains("password")
                    || k.to_ascii_lowercase().contains("secret") =>
            {
                format!("{k}=*****")
            }
            _ => a.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Ansible {
    fn endpoint(&self, comm: Option<&mut dyn Communicator>) -> Result<Endpoint> {
        let ep = comm.and_then(|c| c.endpoint()).ok_or_else(|| {
            Error::failed(
                "the ansible provisioner needs the SSH communicator (communicator = \"ssh\")",
            )
        })?;
        if ep.private_key_file.is_none() && !ep.agent_auth {
            return Err(Error::failed(
                "the ansible provisioner needs a key to reach the guest, and this build logs in with a password only: set ssh_private_key_file, or leave the password out so kiln uses a temporary key",
            ));
        }
        Ok(ep)
    }

    fn inventory(&self, ep: &Endpoint, user: &str, cx: &StepCx<'_>, dir: &Path) -> Result<String> {
        let mut vars = cx.vars.clone();
        vars.insert("HostAlias".into(), self.cfg.host_alias.to_string());
        vars.insert("Host".into(), ep.host.clone());
        vars.insert("Port".into(), ep.port.to_string());
        vars.insert("User".into(), user.to_string());
        let line = match &self.cfg.inventory_file_template {
            Some(t) => fill(t, &vars),
            None => format!(
                "{} ansible_host={} ansible_user={} ansible_port={}\n",
                self.cfg.host_alias.as_str(),
                ep.host,
                user,
                ep.port
            ),
        };
        let mut body = line.clone();
        for g in &self.cfg.groups {
            body.push_str(&format!("[{}]\n{line}", g.as_str()));
        }
        for g in &self.cfg.empty_groups {
            body.push_str(&format!("[{}]\n", g.as_str()));
        }
        // In inventory_directory when set (beside its group_vars), else in the step's work dir,
        // or in the temp dir when it is kept (the work dir goes with the step).
        let shared = match &self.cfg.inventory_directory {
            Some(d) => Some(PathBuf::from(d.as_str())),
            None if self.cfg.keep_inventory_file.0 => Some(std::env::temp_dir()),
            None => None,
        };
        let path = match shared {
            Some(d) => {
                let mut i = 0u32;
                loop {
                    let p = d.join(format!("kiln-ansible-inventory-{}-{i}", std::process::id()));
                    if !p.exists() {
                        break p;
                    }
                    i += 1;
                }
            }
            None => dir.join("inventory"),
        };
        write_private(&path, body.as_bytes())?;
        Ok(path.display().to_string())
    }

    fn galaxy(&self, env: &[(String, String)], dir: &Path, cx: &StepCx<'_>) -> Result<()> {
        let Some(file) = &self.cfg.galaxy_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(file.as_str())
            .map_err(|e| Error::io(format!("cannot read galaxy_file {}", file.as_str()), e))?;
        let has = |k: &str| text.lines().any(|l| l.starts_with(k));
        let mut runs = Vec::new();
        if has("roles:") || !has("collections:") {
            runs.push((vec!["install", "-r"], &self.cfg.roles_path));
        }
        if has("collections:") {
            runs.push((
                vec!["collection", "install", "-r"],
                &self.cfg.collections_path,
            ));
        }
        for (words, path) in runs {
            let mut argv: Vec<String> = std::iter::once(self.cfg.galaxy_command.to_string())
                .chain(words.iter().map(|w| (*w).to_string()))
                .chain(std::iter::once(file.to_string()))
                .collect();
            if self.cfg.galaxy_force_install.0 {
                argv.push("-f".into());
            }
            if self.cfg.galaxy_force_with_deps.0 {
                argv.push("--force-with-deps".into());
            }
            if let Some(p) = path {
                argv.push("-p".into());
                argv.push(p.to_string());
            }
            cx.em.say(format!("running {}", shown(&argv)));
            let code = run_host(&argv, env, dir, "ansible-galaxy", cx)?;
            if code != 0 {
                return Err(Error::failed(format!(
                    "{} exited with status {code}",
                    self.cfg.galaxy_command.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// Ends the ssh connection masters ansible left (ControlPersist keeps one per host for 60 s):
/// no ssh process outlives the step.
fn stop_masters(cp_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cp_dir) else {
        return;
    };
    for e in entries.flatten() {
        let _ = std::process::Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", e.path().display()))
            .args(["-O", "exit", "kiln-ansible"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Provisioner for Ansible {
    fn kind(&self) -> &str {
        "ansible"
    }
    fn key_inputs(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(&self.cfg).map_err(|e| Error::failed(e.to_string()))?;
        // The playbook's whole directory by content, but not where galaxy installs into: that
        // is galaxy_file's (a reinstall rewrites its install dates).
        let installed: Vec<PathBuf> = [&self.cfg.roles_path, &self.cfg.collections_path]
            .into_iter()
            .flatten()
            .map(|p| PathBuf::from(p.as_str()))
            .collect();
        let dir = self.playbook.parent().unwrap_or(Path::new("."));
        if self.cfg.galaxy_file.is_some() {
            v["playbook_dir"] = serde_json::json!(kiln_core::digest_path_except(dir, &installed)?);
        } else {
            v["playbook_dir"] = serde_json::json!(kiln_core::digest_path(dir)?);
            let paths: Vec<String> = installed
                .iter()
                .map(|p| kiln_core::digest_path(p).unwrap_or_else(|_| p.display().to_string()))
                .collect();
            v["role_and_collection_paths"] = serde_json::json!(paths);
        }
        v["ansible_version"] = serde_json::json!(self.version.get());
        Ok(v)
    }
    fn preflight(&self) -> Result<()> {
        if self.cfg.skip_version_check.0 {
            return Ok(());
        }
        let cmd = self.cfg.command.as_str();
        let out = std::process::Command::new(cmd)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                Error::failed(format!(
                    "cannot run {cmd} --version ({e}): install ansible (Debian: apt-get install ansible), set command to its path, or set skip_version_check = true if a provisioner installs it"
                ))
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = parse_version(&text)
            .filter(|_| out.status.success())
            .ok_or_else(|| {
                Error::failed(format!(
                    "{cmd} --version printed no version (exit {}): {}",
                    out.status.code().unwrap_or(-1),
                    text.lines().next().unwrap_or("")
                ))
            })?;
        let _ = self.version.set(v);
        Ok(())
    }
    fn provision(&self, comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
        let ep = self.endpoint(comm)?;
        let proxy = self.cfg.use_proxy.is_none_or(|f| f.0);
        let user = match (&self.cfg.user, proxy) {
            (Some(u), false) => u.to_string(),
            (Some(u), true) if u.as_str() != ep.user => {
                cx.em.warn(format!(
                    "ansible: the playbook runs as the communicator's user {:?}, not {:?}, as with Packer's proxy (use_proxy = false connects as user)",
                    ep.user,
                    u.as_str()
                ));
                ep.user.clone()
            }
            _ => ep.user.clone(),
        };
        // Holds the inventory, secret extra vars and ansible's ssh sockets; removed after, and by
        // the next kiln if this one is killed.
        let work = WorkDir::create(&std::env::temp_dir(), "kiln-ansible")?;
        let dir = work.path().to_path_buf();
        let cp_dir = dir.join("cp");
        std::fs::create_dir_all(&cp_dir)
            .map_err(|e| Error::io("cannot create ssh socket dir", e))?;
        let mut env = vec![
            ("ANSIBLE_HOST_KEY_CHECKING".to_string(), "False".to_string()),
            (
                "ANSIBLE_SSH_CONTROL_PATH_DIR".to_string(),
                cp_dir.display().to_string(),
            ),
        ];
        if !self.cfg.use_sftp.0 {
            env.push(("ANSIBLE_SCP_IF_SSH".into(), "True".into()));
        }
        env.extend(env_pairs(&self.cfg.ansible_env_vars));
        let result = (|| {
            self.galaxy(&env, &dir, cx)?;
            let generated = self.cfg.inventory_file.is_none();
            let inventory = match &self.cfg.inventory_file {
                Some(f) => f.to_string(),
                None => self.inventory(&ep, &user, cx, &dir)?,
            };
            let extra: Vec<String> = self
                .cfg
                .extra_arguments
                .iter()
                .map(|a| fill(a, cx.vars))
                .collect();
            let mut args = packer_extra_vars(cx);
            if ep.private_key_file.is_some() || ep.agent_auth {
                let ssh_args = if self.cfg.ansible_ssh_extra_args.is_empty() {
                    "'-o IdentitiesOnly=yes'".to_string()
                } else {
                    format!(
                        "'{}'",
                        self.cfg
                            .ansible_ssh_extra_args
                            .iter()
                            .map(|a| a.as_str())
                            .collect::<Vec<_>>()
                            .join("' '")
                    )
                };
                if !(ep.agent_auth && self.cfg.ansible_ssh_extra_args.is_empty()) {
                    args.push("--ssh-extra-args".into());
                    args.push(ssh_args);
                }
            }
            args.extend(extra);
            if let Some(k) = &ep.private_key_file {
                if !sets_var(&args, "ansible_password") {
                    args.push("-e".into());
                    args.push(format!("ansible_ssh_private_key_file={}", k.display()));
                }
            }
            args.push("-i".into());
            args.push(inventory.clone());
            args.push(self.playbook.display().to_string());
            let args = hide_secrets(args, &dir, cx)?;
            let argv: Vec<String> = std::iter::once(self.cfg.command.to_string())
                .chain(args)
                .collect();
            cx.em.say(format!("running {}", shown(&argv)));
            let code = run_host(&argv, &env, &dir, "ansible-playbook", cx);
            if generated && self.cfg.keep_inventory_file.0 {
                cx.em.say(format!("kept the inventory file {inventory}"));
            } else if generated && self.cfg.inventory_directory.is_some() {
                let _ = std::fs::remove_file(&inventory);
            }
            match code? {
                0 => Ok(()),
                n => Err(Error::failed(format!(
                    "{} exited with status {n}",
                    self.cfg.command.as_str()
                ))),
            }
        })();
        stop_masters(&cp_dir);
        result
    }
}

/// The `ansible-local` provisioner's options.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct AnsibleLocalConfig {
    /// How ansible-playbook is run in the guest (default
    /// `ANSIBLE_FORCE_COLOR=1 PYTHONUNBUFFERED=1 ansible-playbook`).
    pub command: Text,
    /// More arguments, as they are.
    #[serde(serialize_with = "key::args")]
    pub extra_arguments: Vec<Text>,
    /// The playbook, uploaded to the staging directory; counts by content.
    #[serde(serialize_with = "key::file")]
    pub playbook_file: Option<Text>,
    /// Playbooks run in order (exclusive with playbook_file); each counts by content.
    #[serde(serialize_with = "key::files")]
    pub playbook_files: Vec<Text>,
    /// A directory uploaded whole to the staging directory (playbooks, roles, vars); counts by
    /// content.
    #[serde(serialize_with = "key::path_or_tree")]
    pub playbook_dir: Option<Text>,
    /// More directories uploaded beside the playbook; each counts by content.
    #[serde(serialize_with = "key::files")]
    pub playbook_paths: Vec<Text>,
    /// Role directories uploaded to `roles/`; each counts by content.
    #[serde(serialize_with = "key::files")]
    pub role_paths: Vec<Text>,
    /// Collection directories uploaded to `collections/`; each counts by content.
    #[serde(serialize_with = "key::files")]
    pub collection_paths: Vec<Text>,
    /// A `group_vars` directory; counts by content.
    #[serde(serialize_with = "key::path_or_tree")]
    pub group_vars: Option<Text>,
    /// A `host_vars` directory; counts by content.
    #[serde(serialize_with = "key::path_or_tree")]
    pub host_vars: Option<Text>,
    /// Where files go in the guest (default `/tmp/packer-provisioner-ansible-local/<unique>`).
    pub staging_directory: Option<Text>,
    /// Remove the staging directory afterwards.
    pub clean_staging_directory: Flag,
    /// An inventory file uploaded and used instead of `127.0.0.1`; counts by content.
    #[serde(serialize_with = "key::file")]
    pub inventory_file: Option<Text>,
    /// Groups `127.0.0.1` is put in.
    pub inventory_groups: Vec<Text>,
    /// A requirements file for ansible-galaxy in the guest; counts by content.
    #[serde(serialize_with = "key::file")]
    pub galaxy_file: Option<Text>,
    /// The ansible-galaxy to run in the guest (default `ansible-galaxy`).
    pub galaxy_command: Text,
    /// Where galaxy installs roles in the guest (default `<staging>/galaxy_roles`).
    pub galaxy_roles_path: Option<Text>,
    /// Where galaxy installs collections in the guest (default `<staging>/galaxy_collections`).
    pub galaxy_collections_path: Option<Text>,
    /// `ansible-galaxy install -f`.
    pub galaxy_force_install: Flag,
}

impl Default for AnsibleLocalConfig {
    fn default() -> Self {
        AnsibleLocalConfig {
            command: Text("ANSIBLE_FORCE_COLOR=1 PYTHONUNBUFFERED=1 ansible-playbook".into()),
            extra_arguments: Vec::new(),
            playbook_file: None,
            playbook_files: Vec::new(),
            playbook_dir: None,
            playbook_paths: Vec::new(),
            role_paths: Vec::new(),
            collection_paths: Vec::new(),
            group_vars: None,
            host_vars: None,
            staging_directory: None,
            clean_staging_directory: Flag(false),
            inventory_file: None,
            inventory_groups: Vec::new(),
            galaxy_file: None,
            galaxy_command: Text("ansible-galaxy".into()),
            galaxy_roles_path: None,
            galaxy_collections_path: None,
            galaxy_force_install: Flag(false),
        }
    }
}

pub struct AnsibleLocal {
    cfg: AnsibleLocalConfig,
}

pub fn ansible_local(c: &Component) -> std::result::Result<AnsibleLocal, Diagnostics> {
    let cfg: AnsibleLocalConfig = decode(c, &[])?;
    let mut d = Diagnostics::default();
    match (&cfg.playbook_file, cfg.playbook_files.is_empty()) {
        (None, true) => d.push(Diagnostic::error(
            "the ansible-local provisioner needs playbook_file or playbook_files",
            Some(c.span.clone()),
        )),
        (Some(_), false) => d.push(Diagnostic::error(
            "playbook_file and playbook_files cannot both be set",
            Some(c.span_of("playbook_files").clone()),
        )),
        _ => {}
    }
    must_exist(
        c,
        "playbook_file",
        cfg.playbook_file.as_ref(),
        false,
        &mut d,
    );
    for p in &cfg.playbook_files {
        must_exist(c, "playbook_files", Some(p), false, &mut d);
    }
    must_exist(c, "playbook_dir", cfg.playbook_dir.as_ref(), true, &mut d);
    for (key, list) in [
        ("playbook_paths", &cfg.playbook_paths),
        ("role_paths", &cfg.role_paths),
        ("collection_paths", &cfg.collection_paths),
    ] {
        for p in list {
            must_exist(c, key, Some(p), true, &mut d);
        }
    }
    must_exist(c, "group_vars", cfg.group_vars.as_ref(), true, &mut d);
    must_exist(c, "host_vars", cfg.host_vars.as_ref(), true, &mut d);
    must_exist(
        c,
        "inventory_file",
        cfg.inventory_file.as_ref(),
        false,
        &mut d,
    );
    must_exist(c, "galaxy_file", cfg.galaxy_file.as_ref(), false, &mut d);
    if d.has_errors() {
        return Err(d);
    }
    Ok(AnsibleLocal { cfg })
}

fn file_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl AnsibleLocal {
    fn run(
        &self,
        comm: &mut dyn Communicator,
        cx: &StepCx<'_>,
        what: &str,
        cmd: &str,
    ) -> Result<()> {
        cx.em.say(format!("running {what}"));
        let code = comm.exec(cmd, &mut |l| cx.em.output(l))?;
        cx.cancel.check()?;
        if code != 0 {
            return Err(Error::failed(format!(
                "{what} exited with status {code} in the guest"
            )));
        }
        Ok(())
    }

    /// Uploads what the playbooks need; returns the playbooks' paths in the guest.
    fn stage(
        &self,
        comm: &mut dyn Communicator,
        cx: &StepCx<'_>,
        staging: &str,
    ) -> Result<Vec<String>> {
        let q = shell_quote;
        self.run(comm, cx, "mkdir", &format!("mkdir -p {}", q(staging)))?;
        if let Some(d) = &self.cfg.playbook_dir {
            upload_dir(comm, cx, Path::new(d.as_str()), staging)?;
        }
        for p in &self.cfg.playbook_paths {
            upload_dir(
                comm,
                cx,
                Path::new(p.as_str()),
                &format!("{staging}/{}", file_name(p)),
            )?;
        }
        for p in &self.cfg.role_paths {
            upload_dir(
                comm,
                cx,
                Path::new(p.as_str()),
                &format!("{staging}/roles/{}", file_name(p)),
            )?;
        }
        for p in &self.cfg.collection_paths {
            upload_dir(
                comm,
                cx,
                Path::new(p.as_str()),
                &format!("{staging}/collections/{}", file_name(p)),
            )?;
        }
        if let Some(d) = &self.cfg.group_vars {
            upload_dir(
                comm,
                cx,
                Path::new(d.as_str()),
                &format!("{staging}/group_vars"),
            )?;
        }
        if let Some(d) = &self.cfg.host_vars {
            upload_dir(
                comm,
                cx,
                Path::new(d.as_str()),
                &format!("{staging}/host_vars"),
            )?;
        }
        let mut playbooks = Vec::new();
        for p in self
            .cfg
            .playbook_file
            .iter()
            .chain(&self.cfg.playbook_files)
        {
            let remote = format!("{staging}/{}", file_name(p));
            comm.upload(&Source::File(Path::new(p.as_str())), &remote, 0o644)?;
            playbooks.push(remote);
        }
        Ok(playbooks)
    }
}

impl Provisioner for AnsibleLocal {
    fn kind(&self) -> &str {
        "ansible-local"
    }
    fn key_inputs(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&self.cfg).map_err(|e| Error::failed(e.to_string()))
    }
    fn provision(&self, comm: Option<&mut dyn Communicator>, cx: &StepCx<'_>) -> Result<()> {
        let comm = comm.ok_or_else(|| {
            Error::failed("the ansible-local provisioner needs a communicator to reach the guest")
        })?;
        let q = shell_quote;
        let staging = self.cfg.staging_directory.as_ref().map_or_else(
            || {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                format!(
                    "/tmp/packer-provisioner-ansible-local/kiln-{}-{nanos:08x}",
                    std::process::id()
                )
            },
            |s| s.to_string(),
        );
        let result = (|| {
            let playbooks = self.stage(comm, cx, &staging)?;
            let inventory = match &self.cfg.inventory_file {
                Some(f) => {
                    let remote = format!("{staging}/{}", file_name(f));
                    comm.upload(&Source::File(Path::new(f.as_str())), &remote, 0o644)?;
                    remote
                }
                None => {
                    let mut body = String::new();
                    if self.cfg.inventory_groups.is_empty() {
                        body.push_str("127.0.0.1\n");
                    }
                    for g in &self.cfg.inventory_groups {
                        body.push_str(&format!("[{}]\n127.0.0.1\n", g.as_str()));
                    }
                    let remote = format!("{staging}/packer-provisioner-ansible-local-inventory");
                    comm.upload(&Source::Bytes(body.as_bytes()), &remote, 0o644)?;
                    remote
                }
            };
            if let Some(g) = &self.cfg.galaxy_file {
                let remote = format!("{staging}/{}", file_name(g));
                comm.upload(&Source::File(Path::new(g.as_str())), &remote, 0o644)?;
                let text = std::fs::read_to_string(g.as_str())
                    .map_err(|e| Error::io(format!("cannot read galaxy_file {}", g.as_str()), e))?;
                let has = |k: &str| text.lines().any(|l| l.starts_with(k));
                let force = if self.cfg.galaxy_force_install.0 {
                    " -f"
                } else {
                    ""
                };
                let gc = self.cfg.galaxy_command.as_str();
                if has("roles:") || !has("collections:") {
                    let p = self
                        .cfg
                        .galaxy_roles_path
                        .as_ref()
                        .map_or_else(|| format!("{staging}/galaxy_roles"), |p| p.to_string());
                    self.run(
                        comm,
                        cx,
                        "ansible-galaxy install",
                        &format!(
                            "cd {} && {gc} install -r {}{force} -p {}",
                            q(&staging),
                            q(&remote),
                            q(&p)
                        ),
                    )?;
                }
                if has("collections:") {
                    let p = self.cfg.galaxy_collections_path.as_ref().map_or_else(
                        || format!("{staging}/galaxy_collections"),
                        |p| p.to_string(),
                    );
                    self.run(
                        comm,
                        cx,
                        "ansible-galaxy collection install",
                        &format!(
                            "cd {} && {gc} collection install -r {}{force} -p {}",
                            q(&staging),
                            q(&remote),
                            q(&p)
                        ),
                    )?;
                }
            }
            let mut extra = format!(
                " --extra-vars \"packer_build_name={} packer_builder_type={}",
                cx.build_name, cx.builder_type
            );
            if let Some(addr) = cx.vars.get("HTTPAddr") {
                extra.push_str(&format!(" packer_http_addr={addr}"));
            }
            extra.push('"');
            for a in &self.cfg.extra_arguments {
                extra.push(' ');
                extra.push_str(&fill(a, cx.vars));
            }
            for pb in playbooks {
                let cmd = format!(
                    "cd {} && {} {}{extra} -c local -i {}",
                    q(&staging),
                    self.cfg.command.as_str(),
                    q(&pb),
                    q(&inventory)
                );
                self.run(
                    comm,
                    cx,
                    &format!("ansible-playbook {}", file_name(&pb)),
                    &cmd,
                )?;
            }
            Ok(())
        })();
        if self.cfg.clean_staging_directory.0 {
            let _ = comm.exec(&format!("rm -rf {}", q(&staging)), &mut |_| {});
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_old_and_new_ansible() {
        assert_eq!(
            parse_version("ansible-playbook [core 2.14.18]\n  config file = None").as_deref(),
            Some("2.14.18")
        );
        assert_eq!(
            parse_version("ansible-playbook 2.9.27\n").as_deref(),
            Some("2.9.27")
        );
        assert_eq!(parse_version("usage: ansible-playbook"), None);
    }

    #[test]
    fn key_value_extra_vars() {
        let m = kv_pairs("a=1 b=\"two words\" c='x=y'").expect("parses");
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "two words");
        assert_eq!(m["c"], "x=y");
        assert_eq!(kv_pairs("novalue"), None);
        assert_eq!(kv_pairs("a=\"open"), None);
    }

    #[test]
    fn password_arguments_are_hidden_when_shown() {
        let argv = ["ansible-playbook", "-e", "db_password=hunter2", "-e", "x=1"].map(String::from);
        assert_eq!(shown(&argv), "ansible-playbook -e db_password=***** -e x=1");
        assert!(sets_var(&["ansible_password=x".into()], "ansible_password"));
        assert!(!sets_var(
            &["my_ansible_password_x=1".into()],
            "ansible_password"
        ));
    }
}
