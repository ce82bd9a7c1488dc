//! The SSH communicator's options, named as in Packer (`ssh_*`, `temporary_key_pair_*`, and the
//! `winrm_*` names Windows templates carry), declared once here for every builder that connects
//! over SSH. `resolve` turns them into an `SshConfig` and reports every problem at its attribute.

use crate::{SshConfig, Transfer};
use kiln_core::config::{Attempts, Dur, Flag, Num, Port, Text};
use kiln_template::{Component, Diagnostic, Diagnostics};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

kiln_core::choice! {
    /// How kiln reaches the guest (`communicator`).
    pub enum CommunicatorKind {
        Ssh = "ssh",
        None = "none",
        Winrm = "winrm",
    }
}

kiln_core::choice! {
    /// The temporary key pair's type (`temporary_key_pair_type`).
    pub enum KeyType {
        Ed25519 = "ed25519",
        Rsa = "rsa",
        Ecdsa = "ecdsa",
        Dsa = "dsa",
    }
}

/// The communicator table: every communicator a template can name, and whether kiln has it.
pub const COMMUNICATORS: &[(CommunicatorKind, bool)] = &[
    (CommunicatorKind::Ssh, true),
    (CommunicatorKind::None, true),
    (CommunicatorKind::Winrm, false),
];

/// `Serialize` is the cache key's view: only `ssh_username` (the user provisioners run as)
/// can change the disk; credentials, timeouts and ports cannot.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SshOptions {
    /// How kiln reaches the guest: `ssh` (default) or `none` (no provisioners that need a
    /// connection; the guest powers itself off). `winrm` is not built in.
    #[serde(skip_serializing)]
    pub communicator: Option<CommunicatorKind>,
    /// Where to connect; default 127.0.0.1 (the forwarded port of QEMU's user network).
    #[serde(skip_serializing)]
    pub ssh_host: Option<Text>,
    /// The guest's SSH port (default 22); the host side is forwarded by QEMU.
    #[serde(skip_serializing)]
    pub ssh_port: Option<Port>,
    /// The user to log in as (required with `communicator = "ssh"`).
    pub ssh_username: Option<Text>,
    /// Password authentication. Sensitive: never logged.
    #[serde(skip_serializing)]
    pub ssh_password: Option<Text>,
    /// A private key file to authenticate with.
    #[serde(skip_serializing)]
    pub ssh_private_key_file: Option<Text>,
    /// How long to keep trying to connect (default 5m).
    #[serde(skip_serializing)]
    pub ssh_timeout: Option<Dur>,
    /// Deprecated name of `ssh_timeout`.
    #[serde(skip_serializing)]
    pub ssh_wait_timeout: Option<Dur>,
    /// Handshakes to try on a guest that answers but fails them (default 10).
    #[serde(skip_serializing)]
    pub ssh_handshake_attempts: Option<Attempts>,
    /// Request a pseudo-terminal for commands.
    #[serde(skip_serializing)]
    pub ssh_pty: Option<Flag>,
    /// `scp` (default) or `sftp`; kiln falls back to `cat >` when the guest has neither.
    #[serde(skip_serializing)]
    pub ssh_file_transfer_method: Option<Transfer>,
    /// Interval of SSH keep-alive messages (default 5s).
    #[serde(skip_serializing)]
    pub ssh_keep_alive_interval: Option<Dur>,
    /// How long one remote command or transfer may take when its step sets no `timeout`
    /// (default: no limit).
    #[serde(skip_serializing)]
    pub ssh_read_write_timeout: Option<Dur>,
    /// Remove the temporary key from `~/.ssh/authorized_keys` before shutdown.
    #[serde(skip_serializing)]
    pub ssh_clear_authorized_keys: Option<Flag>,
    /// kiln extension: the host key the guest must present (`SHA256:…` or a public key line).
    #[serde(skip_serializing)]
    pub ssh_host_key: Option<Text>,
    /// Authenticate with the keys of the running SSH agent (`$SSH_AUTH_SOCK`); no temporary
    /// key is made.
    #[serde(skip_serializing)]
    pub ssh_agent_auth: Option<Flag>,
    /// kiln never forwards the SSH agent into the guest, so `true` is what it always does
    /// (Packer forwards by default).
    #[serde(skip_serializing)]
    pub ssh_disable_agent_forwarding: Option<Flag>,
    /// Ciphers to offer, in order (checked against what libssh2 supports at validate).
    #[serde(skip_serializing)]
    pub ssh_ciphers: Option<Vec<Text>>,
    /// Key exchange algorithms to offer, in order.
    #[serde(skip_serializing)]
    pub ssh_key_exchange_algorithms: Option<Vec<Text>>,
    /// An OpenSSH certificate for ssh_private_key_file (`ssh-keygen -s`), for guests whose sshd
    /// trusts a user CA (`TrustedUserCAKeys`).
    #[serde(skip_serializing)]
    pub ssh_certificate_file: Option<Text>,
    /// A host to reach ssh_host:ssh_port through (a `direct-tcpip` channel, as `ssh -J`).
    #[serde(skip_serializing)]
    pub ssh_bastion_host: Option<Text>,
    /// The bastion's SSH port (default 22).
    #[serde(skip_serializing)]
    pub ssh_bastion_port: Option<Port>,
    /// The bastion's user (default ssh_username).
    #[serde(skip_serializing)]
    pub ssh_bastion_username: Option<Text>,
    /// The bastion's password.
    #[serde(skip_serializing)]
    pub ssh_bastion_password: Option<Text>,
    /// The bastion's private key.
    #[serde(skip_serializing)]
    pub ssh_bastion_private_key_file: Option<Text>,
    /// Authenticate to the bastion with the SSH agent's keys.
    #[serde(skip_serializing)]
    pub ssh_bastion_agent_auth: Option<Flag>,
    /// Accepted; not acted on (keyboard-interactive authentication).
    #[serde(skip_serializing)]
    pub ssh_bastion_interactive: Option<Flag>,
    /// An OpenSSH certificate for ssh_bastion_private_key_file.
    #[serde(skip_serializing)]
    pub ssh_bastion_certificate_file: Option<Text>,
    /// A SOCKS5 proxy kiln's SSH connections go through.
    #[serde(skip_serializing)]
    pub ssh_proxy_host: Option<Text>,
    /// The proxy's port (default 1080).
    #[serde(skip_serializing)]
    pub ssh_proxy_port: Option<Port>,
    /// The proxy's user (username/password authentication, RFC 1929).
    #[serde(skip_serializing)]
    pub ssh_proxy_username: Option<Text>,
    /// The proxy's password.
    #[serde(skip_serializing)]
    pub ssh_proxy_password: Option<Text>,
    /// `REMOTE_PORT:HOST:PORT`: the guest's 127.0.0.1:REMOTE_PORT reaches HOST:PORT as this
    /// machine sees it, while the build runs (as `ssh -R`).
    #[serde(skip_serializing)]
    pub ssh_remote_tunnels: Option<Vec<Text>>,
    /// `LOCAL_PORT:HOST:PORT`: this machine's 127.0.0.1:LOCAL_PORT reaches HOST:PORT as the guest
    /// sees it, while the build runs (as `ssh -L`).
    #[serde(skip_serializing)]
    pub ssh_local_tunnels: Option<Vec<Text>>,
    /// Accepted; not acted on yet.
    #[serde(skip_serializing)]
    pub ssh_keypair_name: Option<Text>,
    /// The temporary key pair's type when no password or key is given (default ed25519).
    #[serde(skip_serializing)]
    pub temporary_key_pair_type: Option<KeyType>,
    /// The temporary key pair's size in bits (rsa, ecdsa).
    #[serde(skip_serializing)]
    pub temporary_key_pair_bits: Option<Num>,
    /// The temporary key's comment, by which ssh_clear_authorized_keys finds it (default
    /// `kiln-temporary-BUILD`).
    #[serde(skip_serializing)]
    pub temporary_key_pair_name: Option<Text>,
    /// Wait this long after connecting before the first provisioner.
    #[serde(skip_serializing)]
    pub pause_before_ssh: Option<Dur>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_username: Option<Text>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_password: Option<Text>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_host: Option<Text>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_port: Option<Port>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_timeout: Option<Dur>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_use_ssl: Option<Flag>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_insecure: Option<Flag>,
    /// Accepted so Windows templates validate; the winrm communicator is not built in.
    #[serde(skip_serializing)]
    pub winrm_use_ntlm: Option<Flag>,
}

/// Options accepted for compatibility that kiln does not act on yet (named in a warning).
pub const INERT: &[(&str, &str)] = &[
    ("ssh_bastion_interactive", "kiln authenticates to the bastion with a key, the agent or a password, not keyboard-interactive"),
    ("ssh_keypair_name", "it names a key pair of a cloud account, which the qemu and null builders have none of; use ssh_private_key_file"),
];

/// What the communicator options resolve to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kind: CommunicatorKind,
    /// `None` with `communicator = "none"`.
    pub ssh: Option<SshConfig>,
    /// No key or password given: kiln makes a key pair of this type (and bits) for the build.
    pub temp_key: Option<(KeyType, Option<u64>)>,
    pub clear_authorized_keys: bool,
    pub pause_before: Option<Duration>,
    /// temporary_key_pair_name, if given.
    pub temp_key_name: Option<String>,
}

/// The tunnels of an option that parse (the others were reported by resolve).
fn tunnels(v: &Option<Vec<Text>>) -> Vec<(u16, String, u16)> {
    v.iter()
        .flatten()
        .filter_map(|s| crate::relay::parse_tunnel(&s.0))
        .collect()
}

impl SshOptions {
    /// Packer's defaults applied; every problem reported at its attribute.
    pub fn resolve(&self, c: &Component) -> Result<Resolved, Diagnostics> {
        let mut d = Diagnostics::default();
        let mut err = |key: &str, msg: String, hint: Option<&str>| {
            let mut x = Diagnostic::error(msg, Some(c.span_of(key).clone()));
            if let Some(h) = hint {
                x = x.with_hint(h);
            }
            d.push(x);
        };
        if self.ssh_bastion_host.is_some()
            && self.ssh_bastion_password.is_none()
            && self.ssh_bastion_private_key_file.is_none()
            && !self.ssh_bastion_agent_auth.is_some_and(|f| f.0)
        {
            err(
                "ssh_bastion_host",
                "the bastion needs a way to log in".into(),
                Some("set ssh_bastion_private_key_file, ssh_bastion_password or ssh_bastion_agent_auth = true"),
            );
        }
        for (cert, key, key_name) in [
            (
                &self.ssh_certificate_file,
                &self.ssh_private_key_file,
                "ssh_private_key_file",
            ),
            (
                &self.ssh_bastion_certificate_file,
                &self.ssh_bastion_private_key_file,
                "ssh_bastion_private_key_file",
            ),
        ] {
            let name = if key_name == "ssh_private_key_file" {
                "ssh_certificate_file"
            } else {
                "ssh_bastion_certificate_file"
            };
            if let Some(c) = cert {
                if key.is_none() {
                    err(
                        name,
                        format!("{name} certifies a key, and {key_name} is not set"),
                        Some("set the private key the certificate was signed for"),
                    );
                }
                if let Err(e) = std::fs::metadata(&c.0) {
                    err(name, format!("cannot read {}: {e}", c.0), None);
                }
            }
        }
        if let Some(k) = &self.ssh_bastion_private_key_file {
            if let Err(e) = std::fs::metadata(&k.0) {
                err(
                    "ssh_bastion_private_key_file",
                    format!("cannot read {}: {e}", k.0),
                    None,
                );
            }
        }
        for key in ["ssh_local_tunnels", "ssh_remote_tunnels"] {
            let list = if key == "ssh_local_tunnels" {
                &self.ssh_local_tunnels
            } else {
                &self.ssh_remote_tunnels
            };
            for spec in list.iter().flatten() {
                if crate::relay::parse_tunnel(&spec.0).is_none() {
                    err(
                        key,
                        format!("{:?} is not PORT:HOST:PORT", spec.0),
                        Some("write it as Packer does, e.g. \"8080:localhost:80\""),
                    );
                }
            }
        }
        let kind = self.communicator.unwrap_or(CommunicatorKind::Ssh);
        if !COMMUNICATORS.iter().any(|(k, have)| *k == kind && *have) {
            err(
                "communicator",
                format!("the {kind} communicator is not built into kiln"),
                Some("use communicator = \"ssh\" or \"none\""),
            );
        }
        let t = |o: &Option<Text>| o.as_ref().map(|t| t.0.clone());
        let ssh = (kind == CommunicatorKind::Ssh).then(|| SshConfig {
            host: t(&self.ssh_host).unwrap_or_else(|| "127.0.0.1".into()),
            port: self.ssh_port.map_or(22, |p| p.0),
            user: t(&self.ssh_username).unwrap_or_default(),
            password: t(&self.ssh_password),
            private_key_file: t(&self.ssh_private_key_file).map(PathBuf::from),
            certificate_file: t(&self.ssh_certificate_file).map(PathBuf::from),
            timeout: self
                .ssh_timeout
                .or(self.ssh_wait_timeout)
                .map_or(Duration::from_secs(300), |d| d.0),
            handshake_attempts: self.ssh_handshake_attempts.map_or(10, |n| n.0),
            pty: self.ssh_pty.is_some_and(|f| f.0),
            transfer: self.ssh_file_transfer_method.unwrap_or(Transfer::Scp),
            keep_alive: self
                .ssh_keep_alive_interval
                .map_or(Duration::from_secs(5), |d| d.0),
            host_key: t(&self.ssh_host_key),
            ciphers: self
                .ssh_ciphers
                .iter()
                .flatten()
                .map(|c| c.0.clone())
                .collect(),
            kex: self
                .ssh_key_exchange_algorithms
                .iter()
                .flatten()
                .map(|c| c.0.clone())
                .collect(),
            agent_auth: self.ssh_agent_auth.is_some_and(|f| f.0),
            local_tunnels: tunnels(&self.ssh_local_tunnels),
            remote_tunnels: tunnels(&self.ssh_remote_tunnels),
            proxy: t(&self.ssh_proxy_host).map(|host| crate::Socks {
                host,
                port: self.ssh_proxy_port.map_or(1080, |p| p.0),
                user: t(&self.ssh_proxy_username),
                password: t(&self.ssh_proxy_password),
            }),
            bastion: t(&self.ssh_bastion_host).map(|host| crate::Bastion {
                host,
                port: self.ssh_bastion_port.map_or(22, |p| p.0),
                user: t(&self.ssh_bastion_username)
                    .or_else(|| t(&self.ssh_username))
                    .unwrap_or_default(),
                password: t(&self.ssh_bastion_password),
                private_key_file: t(&self.ssh_bastion_private_key_file).map(PathBuf::from),
                certificate_file: t(&self.ssh_bastion_certificate_file).map(PathBuf::from),
                agent_auth: self.ssh_bastion_agent_auth.is_some_and(|f| f.0),
            }),
            read_write_timeout: self
                .ssh_read_write_timeout
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
        });
        if let Some(cfg) = &ssh {
            if !cfg.ciphers.is_empty() || !cfg.kex.is_empty() {
                let (ciphers, kex) = crate::supported_algorithms();
                for (key, want, have) in [
                    ("ssh_ciphers", &cfg.ciphers, &ciphers),
                    ("ssh_key_exchange_algorithms", &cfg.kex, &kex),
                ] {
                    for w in want.iter().filter(|w| !have.contains(&w.as_str())) {
                        d.push(
                            Diagnostic::error(
                                format!("{key}: {w:?} is not an algorithm kiln's SSH (libssh2) supports"),
                                Some(c.span_of(key).clone()),
                            )
                            .with_hint(format!("supported: {}", have.join(", "))),
                        );
                    }
                }
            }
            if let Some(n) = &self.temporary_key_pair_name {
                let plain = !n.is_empty()
                    && n.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "._@-".contains(ch));
                if !plain {
                    d.push(Diagnostic::error(
                        format!("temporary_key_pair_name {:?} must be letters, digits and . _ @ - (it marks the key in authorized_keys)", n.0),
                        Some(c.span_of("temporary_key_pair_name").clone()),
                    ));
                }
            }
            if self.ssh_username.is_none() {
                d.push(
                    Diagnostic::error(
                        "ssh_username is required with the ssh communicator",
                        Some(c.span.clone()),
                    )
                    .with_hint("add ssh_username = \"root\" (or the guest's user)"),
                );
            }
            if let Some(key) = &cfg.private_key_file {
                if let Err(e) = std::fs::File::open(key) {
                    d.push(Diagnostic::error(
                        format!("ssh_private_key_file {} cannot be read: {e}", key.display()),
                        Some(c.span_of("ssh_private_key_file").clone()),
                    ));
                }
            }
            if let Some(k) = cfg.host_key.as_deref() {
                if let Err(m) = crate::host_key_fingerprint(k) {
                    d.push(Diagnostic::error(
                        m.to_string(),
                        Some(c.span_of("ssh_host_key").clone()),
                    ));
                }
            }
        }
        if d.has_errors() {
            return Err(d);
        }
        Ok(Resolved {
            kind,
            temp_key: ssh
                .as_ref()
                .filter(|c| c.password.is_none() && c.private_key_file.is_none() && !c.agent_auth)
                .map(|_| {
                    (
                        self.temporary_key_pair_type.unwrap_or(KeyType::Ed25519),
                        self.temporary_key_pair_bits.map(|b| b.0),
                    )
                }),
            ssh,
            clear_authorized_keys: self.ssh_clear_authorized_keys.is_some_and(|f| f.0),
            temp_key_name: t(&self.temporary_key_pair_name),
            pause_before: self.pause_before_ssh.map(|d| d.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::config::decode;

    fn resolve(pairs: &[(&str, &str)]) -> Result<Resolved, String> {
        let pairs: Vec<(&str, serde_json::Value)> =
            pairs.iter().map(|(k, v)| (*k, (*v).into())).collect();
        let c = Component::from_pairs("null", &pairs);
        let o: SshOptions = decode(&c, &[]).map_err(|d| d.to_string())?;
        o.resolve(&c).map_err(|d| d.to_string())
    }

    #[test]
    fn ssh_options_resolve_with_packers_defaults() {
        let r = resolve(&[("ssh_username", "root"), ("ssh_password", "pw")]).expect("resolves");
        assert_eq!(r.kind, CommunicatorKind::Ssh);
        let c = r.ssh.expect("ssh");
        assert_eq!(
            (c.host.as_str(), c.port, c.handshake_attempts),
            ("127.0.0.1", 22, 10)
        );
        assert_eq!(c.transfer, Transfer::Scp);
        assert!(r.temp_key.is_none(), "a password needs no temporary key");
        let r = resolve(&[("ssh_username", "root"), ("temporary_key_pair_type", "rsa")])
            .expect("resolves");
        assert_eq!(r.temp_key, Some((KeyType::Rsa, None)));
        let r = resolve(&[("communicator", "none")]).expect("resolves");
        assert!(r.ssh.is_none() && r.temp_key.is_none());
        // ssh_timeout wins over its deprecated name.
        let r = resolve(&[
            ("ssh_username", "u"),
            ("ssh_wait_timeout", "1m"),
            ("ssh_timeout", "2m"),
        ])
        .expect("resolves");
        assert_eq!(r.ssh.map(|c| c.timeout), Some(Duration::from_secs(120)));
    }

    #[test]
    fn ciphers_and_key_exchange_are_checked_against_libssh2_and_agent_auth_needs_no_temp_key() {
        let mk = |pairs: Vec<(&str, serde_json::Value)>| Component::from_pairs("null", &pairs);
        let run = |c: &Component| {
            let o: SshOptions = decode(c, &[]).map_err(|d| d.to_string())?;
            o.resolve(c).map_err(|d| d.to_string())
        };
        let ok = mk(vec![
            ("ssh_username", "u".into()),
            (
                "ssh_ciphers",
                serde_json::json!(["aes256-ctr", "aes128-ctr"]),
            ),
            (
                "ssh_key_exchange_algorithms",
                serde_json::json!(["curve25519-sha256"]),
            ),
            ("ssh_agent_auth", true.into()),
        ]);
        let r = run(&ok).expect("resolves");
        let ssh = r.ssh.expect("ssh");
        assert_eq!(ssh.ciphers, ["aes256-ctr", "aes128-ctr"]);
        assert!(ssh.agent_auth);
        assert!(
            r.temp_key.is_none(),
            "the agent's keys, not a temporary one"
        );
        let bad = mk(vec![
            ("ssh_username", "u".into()),
            ("ssh_ciphers", serde_json::json!(["rot13"])),
        ]);
        let e = run(&bad).expect_err("unknown cipher");
        assert!(
            e.contains("ssh_ciphers: \"rot13\" is not an algorithm"),
            "{e}"
        );
        assert!(e.contains("supported: ") && e.contains("aes128-ctr"), "{e}");
    }

    #[test]
    fn what_the_communicator_cannot_use_is_an_error_that_says_why() {
        let e = resolve(&[]).expect_err("no user");
        assert!(e.contains("ssh_username is required"), "{e}");
        let e = resolve(&[("communicator", "winrm")]).expect_err("no winrm");
        assert!(
            e.contains("the winrm communicator is not built into kiln"),
            "{e}"
        );
        let e = resolve(&[("communicator", "sssh")]).expect_err("typo");
        assert!(e.contains("did you mean \"ssh\"?"), "{e}");
        let e = resolve(&[
            ("ssh_username", "u"),
            ("ssh_private_key_file", "/nonexistent/key"),
        ])
        .expect_err("unreadable key");
        assert!(
            e.contains("ssh_private_key_file /nonexistent/key cannot be read"),
            "{e}"
        );
        let e = resolve(&[("ssh_username", "u"), ("ssh_host_key", "SHA256:short")])
            .expect_err("bad fingerprint");
        assert!(e.contains("is not a SHA256 fingerprint"), "{e}");
        let e = resolve(&[
            ("ssh_username", "u"),
            ("temporary_key_pair_name", "x' ; rm -rf ~"),
        ])
        .expect_err("a name that would reach a shell");
        assert!(e.contains("must be letters, digits"), "{e}");
        let e = resolve(&[("ssh_username", "u"), ("ssh_port", "0")]).expect_err("port 0");
        assert!(
            e.contains("0 is out of range: it must be 1 to 65535"),
            "{e}"
        );
    }
}
