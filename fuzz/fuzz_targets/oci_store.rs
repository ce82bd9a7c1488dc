//! A store whose index.json and one manifest blob are arbitrary: every command's reading path
//! (images, resolve, verify, blobs_of) and gc must error or act, never panic, and gc must never
//! delete a blob it was not sure is unreferenced: the one real image's blobs always survive.
//! Run: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run oci_store -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixture {
    root: std::path::PathBuf,
    store: kiln_store::Store,
    /// The real image's blobs (digest, bytes), put back after each input.
    blobs: Vec<(String, Vec<u8>)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-fuzz-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let store = kiln_store::Store::open(&root).expect("store");
        let t = store.temp_dir().expect("tmp");
        let disk = t.path().join("disk");
        std::fs::write(&disk, b"disk").expect("disk");
        let (id, _) = store
            .commit_image(&kiln_store::NewImage {
                disk: &disk,
                disk_media_type: "application/vnd.kiln.disk.raw",
                disk_title: "d.raw",
                config: &serde_json::json!({}),
                cache_key: Some("k"),
                tag: Some("real"),
                created: "now",
            })
            .expect("commit");
        let blobs = store
            .blobs_of(&id)
            .expect("blobs")
            .into_iter()
            .map(|d| {
                let b = store.read_blob(&d).expect("read");
                (d, b)
            })
            .collect();
        Fixture { root, store, blobs }
    })
}

fn listing(root: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let s = &f.store;
    let real_index = std::fs::read(f.root.join("index.json")).expect("index");
    // The input as a manifest blob, and as the index.
    let m = s.put_bytes(data).expect("put");
    let _ = s.blobs_of(&m.digest);
    let text = String::from_utf8_lossy(data);
    std::fs::write(f.root.join("index.json"), data).expect("write index");
    let _ = s.images();
    let _ = s.resolve("real");
    let _ = s.resolve(&text);
    let _ = s.verify(&[]);
    let before = listing(&f.root);
    match s.gc() {
        // Refused: nothing deleted.
        Err(_) => assert_eq!(before, listing(&f.root), "gc failed but deleted blobs"),
        // Done: every blob of every listed image is still there.
        Ok(_) => {
            for img in s.images().expect("gc read the index, so can images") {
                for b in s.blobs_of(&img.id).expect("gc read every manifest") {
                    assert!(s.has_blob(&b), "gc deleted {b}, which image {} references", img.id);
                }
            }
        }
    }
    std::fs::write(f.root.join("index.json"), &real_index).expect("restore");
    for (d, b) in &f.blobs {
        if !s.has_blob(d) {
            s.put_bytes(b).expect("put back");
        }
    }
    s.gc().expect("gc of the real store");
    for (d, _) in &f.blobs {
        assert!(s.has_blob(d), "the real image lost blob {d}");
    }
});
