//! The data sources kiln has built in (Packer's `http` and `null`), and their table. They run
//! while the template is read, before any source or build; what they return reaches the cache key
//! through the options whose expressions use it.

use kiln_template::DataSourceRow;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// Every data source kiln has.
pub const DATA_SOURCES: &[DataSourceRow] = &[
    DataSourceRow {
        name: "http",
        summary: "an HTTP request's response body and headers",
        options: &["url", "method", "request_headers", "request_body"],
        eval: http,
    },
    DataSourceRow {
        name: "null",
        summary: "its input, as output (for tests and placeholders)",
        options: &["input"],
        eval: null,
    },
];

fn null(args: &Map<String, Value>) -> Result<Value, String> {
    let input = args
        .get("input")
        .cloned()
        .ok_or("needs `input` (its output is the same value)")?;
    Ok(json!({ "input": input, "output": input }))
}

const METHODS: &[&str] = &["HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];

fn http(args: &Map<String, Value>) -> Result<Value, String> {
    let url = match args.get("url") {
        Some(Value::String(u)) if !u.is_empty() => u.clone(),
        Some(_) => return Err("url must be a non-empty string".into()),
        None => return Err("needs `url`".into()),
    };
    let method = match args.get("method") {
        None | Some(Value::Null) => "GET".to_string(),
        Some(Value::String(m)) if METHODS.contains(&m.to_ascii_uppercase().as_str()) => {
            m.to_ascii_uppercase()
        }
        Some(other) => {
            return Err(format!(
                "method {other} is not one of {}",
                METHODS.join(", ")
            ))
        }
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    match args.get("request_headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(format!("request_headers.{k} must be a string")),
                };
                headers.push((k.clone(), v));
            }
        }
        Some(_) => return Err("request_headers must be a map of strings".into()),
    }
    let body = match args.get("request_body") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("request_body must be a string".into()),
    };
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method.as_str())
        .uri(url.as_str());
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(body.unwrap_or_default())
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let mut resp = agent
        .run(req)
        .map_err(|e| format!("{method} {url} failed: {e}"))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(format!(
            "{method} {url} answered {status}: the URL must answer with a 2xx status, as Packer requires"
        ));
    }
    let mut response_headers = Map::new();
    for (k, v) in resp.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match response_headers.get_mut(k.as_str()) {
            // Repeated headers are joined with ", " (RFC 2616), as Packer does.
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                response_headers.insert(k.as_str().to_string(), Value::String(v));
            }
        }
    }
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| format!("{method} {url}: cannot read the body: {e}"))?;
    Ok(json!({
        "url": url,
        "body": String::from_utf8_lossy(&text),
        "status_code": status,
        "response_headers": response_headers,
        // Packer's name for the response's headers.
        "request_headers": response_headers,
    }))
}
