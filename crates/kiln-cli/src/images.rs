//! Commands on the image store: images, inspect IMAGE, verify, tag, rm, gc, export.

use kiln_store::{short, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Opens (creating if needed) the store for a command that writes images: build, pull.
pub fn open(store: &Option<PathBuf>) -> Result<Store, ExitCode> {
    open_with(store, Store::open)
}

/// Opens an existing store, creating nothing: for every other command.
pub fn open_existing(store: &Option<PathBuf>) -> Result<Store, ExitCode> {
    open_with(store, Store::open_existing)
}

fn open_with(
    store: &Option<PathBuf>,
    how: fn(&Path) -> kiln_store::Result<Store>,
) -> Result<Store, ExitCode> {
    let root = store.clone().unwrap_or_else(kiln_store::default_root);
    how(&root).map_err(|e| {
        eprintln!(
            "error: cannot open the image store at {}: {e}",
            root.display()
        );
        ExitCode::from(1)
    })
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
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

pub fn images(store: Option<&Store>) -> ExitCode {
    let list = match store.map(Store::images).transpose() {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => return fail(e),
    };
    println!(
        "{:<20} {:<20} {:<20} {:>10}  {:<20}  TEMPLATE",
        "TAG", "IMAGE ID", "DISK", "SIZE", "CREATED"
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
        println!(
            "{:<20} {:<20} {:<20} {:>10}  {:<20}  {}",
            tags,
            short(&img.id),
            disk,
            size,
            created,
            template
        );
    }
    ExitCode::SUCCESS
}

pub fn inspect(store: &Store, name: &str) -> ExitCode {
    let id = match store.resolve(name) {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    let m = match store.read_json(&id) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let cfg = m["config"]["digest"].as_str().map(|d| store.read_json(d));
    let out = serde_json::json!({
        "id": id,
        "manifest": m,
        "config": match cfg { Some(Ok(c)) => c, Some(Err(e)) => serde_json::Value::from(e.to_string()), None => serde_json::Value::Null },
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    ExitCode::SUCCESS
}

pub fn verify(store: &Store, names: &[String]) -> ExitCode {
    let mut ids = Vec::new();
    for n in names {
        match store.resolve(n) {
            Ok(id) => ids.push(id),
            Err(e) => return fail(e),
        }
    }
    match store.verify(&ids) {
        Ok(problems) if problems.is_empty() => {
            let n = if ids.is_empty() {
                store.images().map(|i| i.len()).unwrap_or(0)
            } else {
                ids.len()
            };
            println!(
                "verified {n} image{}: every blob matches its digest",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!("{} corrupt or missing blob{} in {}: rebuild the affected images (kiln build -force)", problems.len(), if problems.len() == 1 { "" } else { "s" }, store.root().display());
            ExitCode::from(1)
        }
        Err(e) => fail(e),
    }
}

pub fn tag(store: &Store, image: &str, name: &str) -> ExitCode {
    match store
        .resolve(image)
        .and_then(|id| store.tag(&id, name).map(|()| id))
    {
        Ok(id) => {
            println!("tagged {} as {name}", short(&id));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn rm(store: &Store, image: &str) -> ExitCode {
    match store
        .resolve(image)
        .and_then(|id| store.remove(&id).map(|n| (id, n)))
    {
        Ok((id, _)) => {
            println!("removed {} (its blobs are freed by `kiln gc`)", short(&id));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn gc(store: &Store, untagged: bool) -> ExitCode {
    if untagged {
        match store.remove_untagged() {
            Ok(n) => println!(
                "removed {n} untagged image{} from the index",
                if n == 1 { "" } else { "s" }
            ),
            Err(e) => return fail(e),
        }
    }
    match store.gc() {
        Ok((n, bytes)) => {
            println!(
                "removed {n} unreferenced blob{}, {} freed",
                if n == 1 { "" } else { "s" },
                human(bytes)
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub fn export(store: &Store, image: &str, out: &Path, format: &str) -> ExitCode {
    let id = match store.resolve(image) {
        Ok(id) => id,
        Err(e) => return fail(e),
    };
    let m = match store.read_json(&id) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let Some(digest) = m["layers"][0]["digest"].as_str() else {
        return fail(format!("image {id} has no disk"));
    };
    if let Err(e) = store.verify_blob(digest) {
        return fail(e);
    }
    let src_format = m["layers"][0]["mediaType"]
        .as_str()
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("qcow2");
    let blob = match store.blob_path(digest) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let tmp = out.with_extension("kiln-part");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", src_format, "-O", format])
        .arg(blob)
        .arg(&tmp)
        .status();
    match st {
        Ok(s) if s.success() => match std::fs::rename(&tmp, out) {
            Ok(()) => {
                println!("exported {} to {} ({format})", short(&id), out.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("cannot write {}: {e}", out.display())),
        },
        Ok(s) => {
            let _ = std::fs::remove_file(&tmp);
            fail(format!("qemu-img convert to {format} failed ({s})"))
        }
        Err(e) => fail(format!("cannot run qemu-img (install qemu-utils): {e}")),
    }
}
