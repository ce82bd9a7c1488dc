//! Components without a guest of their own: the `http` data source against a server the test runs
//! on loopback and `null`, evaluated before
//! sources and used in locals, options and provisioners (their results count in the cache key);
//! the `file` builder and the `artifice` post-processor.

mod common;

use common::{text, Ctx};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A one-thread HTTP server: answers every request with `(status, body)` from `reply` and keeps
/// each request's head and body.
struct Server {
    port: u16,
    reply: Arc<Mutex<(u16, String)>>,
    seen: Arc<Mutex<Vec<String>>>,
}

fn serve() -> Server {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let reply = Arc::new(Mutex::new((200, String::new())));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (r, s) = (reply.clone(), seen.clone());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let mut rd = BufReader::new(conn.try_clone().expect("clone"));
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if rd.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            let _ = rd.read_exact(&mut body);
            head.push_str(&String::from_utf8_lossy(&body));
            s.lock().expect("lock").push(head);
            let (status, text) = r.lock().expect("lock").clone();
            let mut c = conn;
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nX-Reply: a\r\nX-Reply: b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    Server { port, reply, seen }
}

fn template(ctx: &Ctx, port: u16) -> String {
    format!(
        r#"data "http" "motd" {{
  url             = "http://127.0.0.1:{port}/motd"
  method          = "POST"
  request_headers = {{ X-Kiln = local.header }}
  request_body    = "ping"
}}
data "null" "greeting" {{
  input = "${{local.motd.greeting}} (${{data.http.motd.status_code}}, ${{data.http.motd.response_headers["x-reply"]}})"
}}
locals {{
  header = "from-kiln"
  motd   = jsondecode(data.http.motd.body)
}}
{}
build {{
  sources = ["source.qemu.data"]
  provisioner "shell" {{
    inline = ["echo '${{data.null.greeting.output}}' > /root/motd"]
  }}
}}
"#,
        ctx.source("data", &format!("memory = {}", 256))
    )
}

#[test]
fn http_and_null_data_sources_feed_expressions_and_the_cache_key() {
    let ctx = Ctx::new("data");
    let srv = serve();
    *srv.reply.lock().expect("lock") = (200, r#"{"greeting": "v1"}"#.into());
    ctx.write("data.pkr.hcl", &template(&ctx, srv.port));
    let disk = ctx.dir.join("out-data/disk.qcow2");
    let first = ctx.kiln(&["build", "data.pkr.hcl"]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        ctx.read_from_image(&disk, "/root/motd").as_deref(),
        Some("v1 (200, a, b)\n")
    );
    let req = srv.seen.lock().expect("lock")[0].clone();
    assert!(req.starts_with("POST /motd "), "{req}");
    assert!(
        req.to_ascii_lowercase().contains("x-kiln: from-kiln"),
        "{req}"
    );
    assert!(req.ends_with("ping"), "{req}");

    // Same response: a cache hit. A changed response changes the option that uses it: rebuilt.
    std::fs::remove_dir_all(ctx.dir.join("out-data")).expect("rm");
    let again = ctx.kiln(&["build", "data.pkr.hcl"]);
    assert!(text(&again).contains("up to date"), "{}", text(&again));
    *srv.reply.lock().expect("lock") = (200, r#"{"greeting": "v2"}"#.into());
    std::fs::remove_dir_all(ctx.dir.join("out-data")).expect("rm");
    let changed = ctx.kiln(&["build", "data.pkr.hcl"]);
    assert!(changed.status.success(), "{}", text(&changed));
    assert_eq!(
        ctx.read_from_image(&disk, "/root/motd").as_deref(),
        Some("v2 (200, a, b)\n")
    );
}

#[test]
fn a_data_source_that_fails_is_reported_at_its_block_before_anything_boots() {
    let ctx = Ctx::bare("data-bad");
    let srv = serve();
    *srv.reply.lock().expect("lock") = (404, "gone".into());
    ctx.write(
        "bad.pkr.hcl",
        &format!(
            "data \"http\" \"x\" {{\n  url = \"http://127.0.0.1:{}/missing\"\n}}\ndata \"null\" \"loop\" {{\n  input = data.null.loop.output\n}}\ndata \"http\" \"typo\" {{\n  uri = \"x\"\n}}\n",
            srv.port
        ),
    );
    let out = ctx.kiln(&["validate", "bad.pkr.hcl"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains(&format!(
            "bad.pkr.hcl:1:1: data.http.x: GET http://127.0.0.1:{}/missing answered 404",
            srv.port
        )),
        "{t}"
    );
    assert!(
        t.contains(
            "bad.pkr.hcl:4:1: data source data.null.loop depends on itself through data.null.loop"
        ),
        "{t}"
    );
    assert!(
        t.contains("bad.pkr.hcl:8:3") && t.contains("did you mean `url`?"),
        "{t}"
    );
}

#[test]
fn the_file_builder_writes_its_target_and_artifice_hands_new_files_on() {
    let ctx = Ctx::bare("file-builder");
    ctx.write(
        "f.pkr.hcl",
        r#"variable "who" {
  default = "kiln"
}
source "file" "greeting" {
  content = "hello ${var.who}\n"
  target  = "out/hello.txt"
}
build {
  sources = ["source.file.greeting"]
  post-processors {
    post-processor "shell-local" {
      inline = ["gzip -k out/hello.txt"]
    }
    post-processor "artifice" {
      files = ["out/hello.txt.gz"]
    }
    post-processor "checksum" {
      checksum_types = ["sha256"]
      output         = "out/sum.txt"
    }
  }
}
"#,
    );
    let out = ctx.kiln(&["build", "f.pkr.hcl"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(ctx.dir.join("out/hello.txt"))
            .ok()
            .as_deref(),
        Some("hello kiln\n")
    );
    let sums = std::fs::read_to_string(ctx.dir.join("out/sum.txt")).expect("checksum written");
    assert!(
        sums.contains("hello.txt.gz") && !sums.contains("hello.txt\n"),
        "{sums}"
    );

    // A failing step leaves no target behind.
    std::fs::remove_dir_all(ctx.dir.join("out")).expect("rm");
    ctx.write(
        "bad.pkr.hcl",
        "source \"file\" \"g\" {\n  content = \"x\"\n  target  = \"out/never.txt\"\n}\nbuild {\n  sources = [\"source.file.g\"]\n  provisioner \"shell-local\" {\n    inline = [\"exit 3\"]\n  }\n}\n",
    );
    let bad = ctx.kiln(&["build", "bad.pkr.hcl"]);
    assert!(!bad.status.success(), "{}", text(&bad));
    assert!(!ctx.dir.join("out/never.txt").exists());
    ctx.write(
        "both.pkr.hcl",
        "source \"file\" \"g\" {\n  source  = \"a.txt\"\n  content = \"x\"\n}\nbuild {\n  sources = [\"source.file.g\"]\n}\n",
    );
    let both = ctx.kiln(&["validate", "both.pkr.hcl"]);
    let t = text(&both);
    assert_eq!(both.status.code(), Some(1), "{t}");
    assert!(
        t.contains("both.pkr.hcl:3:3: the file builder takes source or content, not both"),
        "{t}"
    );
    assert!(
        t.contains("both.pkr.hcl:1:1: the file builder needs target"),
        "{t}"
    );
    ctx.write(
        "missing.pkr.hcl",
        "source \"file\" \"g\" {\n  source = \"missing.txt\"\n  target = \"out/x\"\n}\nbuild {\n  sources = [\"source.file.g\"]\n  post-processor \"artifice\" {}\n}\n",
    );
    let missing = ctx.kiln(&["validate", "missing.pkr.hcl"]);
    let t = text(&missing);
    assert_eq!(missing.status.code(), Some(1), "{t}");
    assert!(
        t.contains("missing.pkr.hcl:2:3: source missing.txt cannot be read"),
        "{t}"
    );
    assert!(
        t.contains("missing.pkr.hcl:7:3: the artifice post-processor needs files"),
        "{t}"
    );
}
