//! The `null` builder, as Packer's: no VM. It connects to a machine that already runs (the
//! communicator's `ssh_host`), runs the provisioners there, and produces no image, so its builds
//! are neither stored nor cached. Used to test provisioners against an existing host.

use kiln_core::config::{decode, warn_inert};
use kiln_core::plugins::{BuildContext, Made};
use kiln_core::{
    BuildMeta, Builder, Built, Cancel, Communicator, Emitter, Machine, Output, Publish, Result,
};
use kiln_ssh::options::SshOptions;
use kiln_ssh::{SshComm, SshConfig};
use kiln_template::{Component, Diagnostic, Diagnostics};
use std::collections::BTreeMap;
use std::path::Path;

pub struct NullBuilder {
    ssh: Option<SshConfig>,
}

/// The table's constructor: the communicator's options and nothing else.
pub fn make(c: &Component, _: &BuildContext<'_>) -> Made<dyn Builder> {
    let opts: SshOptions = decode(c, &[])?;
    let mut warnings = Diagnostics::default();
    warn_inert(c, kiln_ssh::options::INERT, &mut warnings);
    let comm = opts.resolve(c)?;
    if let Some(ssh) = &comm.ssh {
        let mut d = Diagnostics::default();
        if opts.ssh_host.is_none() {
            d.push(
                Diagnostic::error(
                    "the null builder needs ssh_host: the machine to provision",
                    Some(c.span.clone()),
                )
                .with_hint("set ssh_host = \"192.0.2.10\" (and ssh_port if it is not 22)"),
            );
        }
        if ssh.password.is_none() && ssh.private_key_file.is_none() && !ssh.agent_auth {
            d.push(
                Diagnostic::error("the null builder needs ssh_password, ssh_private_key_file or ssh_agent_auth: kiln cannot give an existing machine a temporary key", Some(c.span.clone())),
            );
        }
        if d.has_errors() {
            return Err(d);
        }
    }
    Ok((Box::new(NullBuilder { ssh: comm.ssh }), warnings))
}

impl Builder for NullBuilder {
    fn kind(&self) -> &str {
        "null"
    }
    fn preflight(&self, _: bool) -> Result<()> {
        Ok(())
    }
    fn publish(&self) -> Option<Publish> {
        None
    }
    fn key_inputs(&self, _: &Emitter, _: &Cancel) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    fn launch(&self, em: &Emitter, cancel: &Cancel) -> Result<Box<dyn Machine>> {
        let mut vars = BTreeMap::new();
        let comm = match &self.ssh {
            Some(cfg) => {
                em.say(format!("connecting to {}:{} over SSH", cfg.host, cfg.port));
                vars.insert("SSHHost".into(), cfg.host.clone());
                vars.insert("SSHPort".into(), cfg.port.to_string());
                let c =
                    SshComm::connect(cfg.clone(), em.clone(), cancel.clone(), Box::new(|| None))?;
                em.say("connected");
                Some(c)
            }
            None => None,
        };
        Ok(Box::new(NullMachine {
            host_key: comm.as_ref().and_then(|c| c.host_key().map(str::to_string)),
            comm,
            vars,
            access: self.ssh.as_ref().map_or_else(
                || "no communicator".into(),
                |c| format!("ssh -p {} {}@{}", c.port, c.user, c.host),
            ),
        }))
    }
}

struct NullMachine {
    comm: Option<SshComm>,
    vars: BTreeMap<String, String>,
    access: String,
    host_key: Option<String>,
}

impl Machine for NullMachine {
    fn communicator(&mut self) -> Option<&mut dyn Communicator> {
        self.comm.as_mut().map(|c| c as &mut dyn Communicator)
    }
    fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }
    fn access(&self) -> String {
        self.access.clone()
    }
    fn shutdown(self: Box<Self>, _: &Emitter, _: &Cancel, _: &Path) -> Result<Built> {
        // The machine is not ours: it keeps running.
        Ok(Built {
            output: Output::Nothing,
            meta: BuildMeta {
                ssh_host_key: self.host_key,
                ..BuildMeta::default()
            },
        })
    }
}
