//! A small static file server for the web app, bound to 127.0.0.1: it serves `www/` (with the wasm
//! package in `www/pkg/`), the models under `/models/<id>/`, the chat models (GGUF) as `/llm/<id>.gguf`
//! and the example data under `/data/`.
//! It only answers GET and HEAD of known files; the page itself makes no other requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// What the server serves.
#[derive(Debug, Clone)]
pub struct Site {
    /// The static app (index.html, app.js, worker.js, style.css, pkg/).
    pub www: PathBuf,
    /// Model folders by id: served as /models/<id>/{config.json, model.safetensors, tokenizer.json}.
    pub models: Vec<(String, String, PathBuf)>,
    /// Example data files: served as /data/<file name>.
    pub data: Vec<PathBuf>,
    /// Chat models (GGUF files) by id: served as /llm/<id>.gguf.
    pub llms: Vec<(String, String, PathBuf)>,
}

const MODEL_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
/// A sentence-transformers folder's pooling files, served when the folder has them.
const POOLING_FILES: [&str; 2] = ["modules.json", "1_Pooling/config.json"];

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "jsonl" => "application/x-ndjson; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

impl Site {
    /// The index of models and data the page offers (served as /index.json).
    pub fn index(&self) -> serde_json::Value {
        let models: Vec<serde_json::Value> = self
            .models
            .iter()
            .map(|(id, name, dir)| {
                let bytes: u64 = MODEL_FILES.iter().filter_map(|f| std::fs::metadata(dir.join(f)).ok()).map(|m| m.len()).sum();
                let pooling: serde_json::Map<String, serde_json::Value> = POOLING_FILES
                    .iter()
                    .filter(|f| dir.join(f).is_file())
                    .map(|f| (f.to_string(), format!("models/{id}/{f}").into()))
                    .collect();
                serde_json::json!({"id": id, "name": name, "bytes": bytes, "files": MODEL_FILES.iter().map(|f| format!("models/{id}/{f}")).collect::<Vec<_>>(), "pooling": pooling})
            })
            .collect();
        let data: Vec<serde_json::Value> = self
            .data
            .iter()
            .filter_map(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| serde_json::json!({"name": n, "url": format!("data/{n}")}))
            })
            .collect();
        let chat_models: Vec<serde_json::Value> = self
            .llms
            .iter()
            .map(|(id, name, file)| {
                let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
                serde_json::json!({"id": id, "name": name, "bytes": bytes, "url": format!("llm/{id}.gguf")})
            })
            .collect();
        serde_json::json!({"models": models, "data": data, "chat_models": chat_models})
    }

    /// Maps a request path to a file, refusing anything outside the served folders.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "index.html" } else { rel };
        let safe = |p: &str| Path::new(p).components().all(|c| matches!(c, Component::Normal(_)));
        if !safe(rel) {
            return None;
        }
        if let Some(rest) = rel.strip_prefix("models/") {
            let (id, file) = rest.split_once('/')?;
            let (_, _, dir) = self.models.iter().find(|(i, _, _)| i == id)?;
            return (MODEL_FILES.contains(&file) || POOLING_FILES.contains(&file)).then(|| dir.join(file));
        }
        if let Some(file) = rel.strip_prefix("llm/") {
            let id = file.strip_suffix(".gguf")?;
            return self.llms.iter().find(|(i, _, _)| i == id).map(|(_, _, p)| p.clone());
        }
        if let Some(name) = rel.strip_prefix("data/") {
            return self.data.iter().find(|p| p.file_name().and_then(|n| n.to_str()) == Some(name)).cloned();
        }
        let p = self.www.join(rel);
        p.is_file().then_some(p)
    }
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn handle(mut stream: TcpStream, site: &Site) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers (requests carry no body we accept).
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", false);
    }
    let head = method == "HEAD";
    if path.split('?').next() == Some("/index.json") {
        let body = site.index().to_string();
        return respond(&mut stream, "200 OK", "application/json", body.as_bytes(), head);
    }
    match site.resolve(path) {
        Some(file) => match std::fs::File::open(&file) {
            Ok(mut f) => {
                let mut body = vec![];
                f.read_to_end(&mut body)?;
                respond(&mut stream, "200 OK", content_type(&file.to_string_lossy()), &body, head)
            }
            Err(_) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", head),
        },
        None => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", head),
    }
}

/// Binds 127.0.0.1:`port` (0 picks a free port) and returns the listener with its URL.
pub fn bind(port: u16) -> Result<(TcpListener, String)> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| Error::invalid(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::invalid(e.to_string()))?;
    Ok((listener, format!("http://{addr}/")))
}

/// Serves forever, one thread per connection.
pub fn serve(listener: TcpListener, site: Site) -> Result<()> {
    let site = Arc::new(site);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, &site);
        });
    }
    Ok(())
}
