//! Commands on the image store: images, inspect IMAGE, verify, tag, rm, gc, export.

use crate::exit::{CliError, Status};
use kiln_store::{short, Store};
use std::path::{Path, PathBuf};

type Done = Result<Status, CliError>;

/// Opens (creating if needed) the store for a command that writes images: build, pull.
pub fn open(store: &Option<PathBuf>) -> Result<Store, CliError> {
    open_with(store, Store::open)
}

/// Opens an existing store, creating nothing: for every other command.
pub fn open_existing(store: &Option<PathBuf>) -> Result<Store, CliError> {
    open_with(store, Store::open_existing)
}

fn open_with(
    store: &Option<PathBuf>,
    how: fn(&Path) -> kiln_store::Result<Store>,
) -> Result<Store, CliError> {
    let root = store.clone().unwrap_or_else(kiln_store::default_root);
    how(&root).map_err(|source| CliError::OpenStore { root, source })
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

pub fn images(store: Option<&Store>) -> Done {
    let list = store.map(Store::images).transpose()?.unwrap_or_default();
    say!(
        "{:<20} {:<20} {:<20} {:>10}  {:<20}  TEMPLATE",
        "TAG",
        "IMAGE ID",
        "DISK",
        "SIZE",
        "CREATED"
    );
    for img in list.iter().rev() {
        let Some(store) = store else { break };
        let cfg = store.read_json(&img.id).ok().and_then(|m| {
            m["config"]["digest"]
                .as_str()
                .and_then(|d| store.read_json(d).ok())
        });
        let (disk, size, created, template) = match &cfg {
            Some(c) => (
                short(c["disk"]["digest"].as_str().unwrap_or("-")),
                human(c["disk"]["size"].as_u64().unwrap_or(0)),
                c["finishedAt"].as_str().unwrap_or("-").to_string(),
                c["template"]["files"][0]["path"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let tags = if img.tags.is_empty() {
            "<none>".to_string()
        } else {
            img.tags.join(",")
        };
        say!(
            "{:<20} {:<20} {:<20} {:>10}  {:<20}  {}",
            tags,
            short(&img.id),
            disk,
            size,
            created,
            template
        );
    }
    Ok(Status::Success)
}

pub fn inspect(store: &Store, name: &str) -> Done {
    let id = store.resolve(name)?;
    let m = store.read_json(&id)?;
    let cfg = m["config"]["digest"].as_str().map(|d| store.read_json(d));
    let out = serde_json::json!({
        "id": id,
        "manifest": m,
        "config": match cfg { Some(Ok(c)) => c, Some(Err(e)) => serde_json::Value::from(e.to_string()), None => serde_json::Value::Null },
    });
    say!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(Status::Success)
}

pub fn verify(store: &Store, names: &[String]) -> Done {
    let mut ids = Vec::new();
    for n in names {
        ids.push(store.resolve(n)?);
    }
    match store.verify(&ids)? {
        problems if problems.is_empty() => {
            let n = if ids.is_empty() {
                store.images().map(|i| i.len()).unwrap_or(0)
            } else {
                ids.len()
            };
            say!(
                "verified {n} image{}: every blob matches its digest",
                if n == 1 { "" } else { "s" }
            );
            Ok(Status::Success)
        }
        problems => {
            for p in &problems {
                tell!("error: {p}");
            }
            tell!("{} corrupt or missing blob{} in {}: rebuild the affected images (kiln build -force)", problems.len(), if problems.len() == 1 { "" } else { "s" }, store.root().display());
            Ok(Status::Failed)
        }
    }
}

pub fn tag(store: &Store, image: &str, name: &str) -> Done {
    let id = store.resolve(image)?;
    store.tag(&id, name)?;
    say!("tagged {} as {name}", short(&id));
    Ok(Status::Success)
}

pub fn rm(store: &Store, image: &str) -> Done {
    let id = store.resolve(image)?;
    store.remove(&id)?;
    say!("removed {} (its blobs are freed by `kiln gc`)", short(&id));
    Ok(Status::Success)
}

pub fn gc(store: &Store, untagged: bool) -> Done {
    if untagged {
        let n = store.remove_untagged()?;
        say!(
            "removed {n} untagged image{} from the index",
            if n == 1 { "" } else { "s" }
        );
    }
    let (n, bytes) = store.gc()?;
    say!(
        "removed {n} unreferenced blob{}, {} freed",
        if n == 1 { "" } else { "s" },
        human(bytes)
    );
    Ok(Status::Success)
}

pub fn export(store: &Store, image: &str, out: &Path, format: &str) -> Done {
    let id = store.resolve(image)?;
    let m = store.read_json(&id)?;
    let Some(digest) = m["layers"][0]["digest"].as_str() else {
        return Err(CliError::failed(format!("image {id} has no disk")));
    };
    store.verify_blob(digest)?;
    let src_format = m["layers"][0]["mediaType"]
        .as_str()
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("qcow2");
    let blob = store.blob_path(digest)?;
    let tmp = out.with_extension("kiln-part");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", src_format, "-O", format])
        .arg(blob)
        .arg(&tmp)
        .status();
    match st {
        Ok(s) if s.success() => {
            std::fs::rename(&tmp, out)
                .map_err(|e| CliError::io(format!("cannot write {}", out.display()), e))?;
            say!("exported {} to {} ({format})", short(&id), out.display());
            Ok(Status::Success)
        }
        Ok(s) => {
            let _ = std::fs::remove_file(&tmp);
            Err(CliError::failed(format!(
                "qemu-img convert to {format} failed ({s})"
            )))
        }
        Err(e) => Err(CliError::io("cannot run qemu-img (install qemu-utils)", e)),
    }
}
