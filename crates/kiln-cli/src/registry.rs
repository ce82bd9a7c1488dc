//! Registry commands (push, pull, login, logout) and the shared build cache behind
//! `--cache-from` / `--cache-to`.

use crate::exit::{CliError, Status};
use kiln_core::{Emitter, EventKind};
use kiln_registry::{cache_tag, Client, Credentials, Reference};
use kiln_store::{short, Store};
use std::io::{IsTerminal, Read};

type Done = Result<Status, CliError>;

fn progress_printer(verb: &'static str) -> impl FnMut(&str, u64, u64) {
    let mut last = String::new();
    move |digest: &str, done: u64, total: u64| {
        if done >= total && last != digest {
            last = digest.to_string();
            tell!("{verb} {} ({total} bytes)", short(digest));
        }
    }
}

pub fn push(store: &Store, image: &str, reference: &str, plain_http: bool) -> Done {
    let r = Reference::parse(reference)?;
    let id = store.resolve(image)?;
    let client = Client::new(&r.registry, plain_http, None)?;
    let r = if r.tag.is_none() && r.digest.is_none() {
        r.with_tag("latest")
    } else {
        r
    };
    let d = client.push(store, &id, &r, &mut progress_printer("pushed"))?;
    say!("pushed {} to {r} ({d})", short(&id));
    Ok(Status::Success)
}

pub fn pull(store: &Store, reference: &str, plain_http: bool) -> Done {
    let r = Reference::parse(reference)?;
    if r.digest.is_none() && r.tag.is_none() {
        tell!("warning: no tag or digest given; pulling {r}:latest");
    }
    let client = Client::new(&r.registry, plain_http, None)?;
    let local = r.to_string();
    match client.pull(store, &r, Some(&local), &mut progress_printer("pulled"))? {
        Some(id) => {
            say!("pulled {r} as image {} (tag {local})", short(&id));
            Ok(Status::Success)
        }
        None => Err(CliError::failed(format!(
            "{r} does not exist in the registry"
        ))),
    }
}

pub fn login(registry: &str, user: Option<String>, password_stdin: bool, plain_http: bool) -> Done {
    let Some(user) = user else {
        return Err(CliError::Usage("give the user name with -u USER".into()));
    };
    let secret = if password_stdin || !std::io::stdin().is_terminal() {
        let mut s = String::new();
        if std::io::stdin().read_to_string(&mut s).is_err() {
            return Err(CliError::failed("cannot read the password from stdin"));
        }
        s.trim_end_matches(['\n', '\r']).to_string()
    } else {
        return Err(CliError::Usage("pass the password on stdin: echo \"$PASSWORD\" | kiln login --password-stdin -u USER REGISTRY".into()));
    };
    let creds = Credentials { user, secret };
    let client = Client::new(registry, plain_http, Some(creds.clone()))?;
    client.ping()?;
    let f = kiln_registry::save_login(registry, &creds)?;
    say!(
        "login succeeded; credentials for {registry} saved in {}",
        f.display()
    );
    Ok(Status::Success)
}

pub fn logout(registry: &str) -> Done {
    if kiln_registry::remove_login(registry)? {
        say!("removed the credentials for {registry}");
        Ok(Status::Success)
    } else {
        Err(CliError::failed(format!(
            "kiln has no credentials for {registry}"
        )))
    }
}

/// The shared build cache: entries are tagged `kiln-cache-<cache key>` in one repository.
pub struct RegistryCache {
    pub from: Option<Reference>,
    pub to: Option<Reference>,
    pub plain_http: bool,
}

impl RegistryCache {
    fn client(&self, r: &Reference) -> kiln_core::Result<Client> {
        Client::new(&r.registry, self.plain_http, None)
            .map_err(|e| kiln_core::Error::other("shared cache", e))
    }
}

impl kiln_core::engine::RemoteCache for RegistryCache {
    fn fetch(&self, key: &str, store: &Store, em: &Emitter) -> kiln_core::Result<Option<String>> {
        let Some(from) = &self.from else {
            return Ok(None);
        };
        let r = from.with_tag(&cache_tag(key));
        em.say(format!("looking up the cache key in {}", from));
        let client = self.client(&r)?;
        client
            .pull(store, &r, None, &mut |_, done, total| {
                em.emit(EventKind::Progress {
                    what: "download".into(),
                    done,
                    total,
                })
            })
            .map_err(|e| kiln_core::Error::other(format!("shared cache {from}"), e))
    }

    fn publish(&self, key: &str, id: &str, store: &Store, em: &Emitter) -> kiln_core::Result<()> {
        let Some(to) = &self.to else { return Ok(()) };
        let r = to.with_tag(&cache_tag(key));
        let client = self.client(&r)?;
        client
            .push(store, id, &r, &mut |_, done, total| {
                em.emit(EventKind::Progress {
                    what: "upload".into(),
                    done,
                    total,
                })
            })
            .map_err(|e| kiln_core::Error::other(format!("shared cache {to}"), e))?;
        em.say(format!(
            "uploaded image {} to the shared cache {to}",
            short(id)
        ));
        Ok(())
    }
}

pub fn cache_from_args(
    from: &Option<String>,
    to: &Option<String>,
    plain_http: bool,
) -> Result<Option<RegistryCache>, String> {
    let parse = |s: &Option<String>| -> Result<Option<Reference>, String> {
        match s {
            Some(s) => {
                let r = Reference::parse(s).map_err(|e| e.to_string())?;
                if r.tag.is_some() || r.digest.is_some() {
                    return Err(format!("{s}: a cache is a repository, without a tag or digest (kiln names entries by cache key)"));
                }
                Ok(Some(r))
            }
            None => Ok(None),
        }
    };
    let (from, to) = (parse(from)?, parse(to)?);
    if from.is_none() && to.is_none() {
        return Ok(None);
    }
    for r in from.iter().chain(to.iter()) {
        Client::new(&r.registry, plain_http, None).map_err(|e| e.to_string())?;
    }
    Ok(Some(RegistryCache {
        from,
        to,
        plain_http,
    }))
}
