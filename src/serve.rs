//! A small static file server for the web app, bound to 127.0.0.1: it serves `www/` (with the wasm
//! package in `www/pkg/`), the models under `/models/<id>/`, the chat models (GGUF) as `/llm/<id>.gguf`
//! and the example data under `/data/`.
//! It only answers GET and HEAD of known files; the page itself makes no other requests.

use std::io::{Read, Write};
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

/// The Hugging Face hub id a model folder's card (README.md) gives in its usage lines
/// (`SentenceTransformer('org/name')`, `from_pretrained("org/name")`): what an adapter should name
/// as its base, so that PEFT's AutoPeftModel finds it. None without a card that says.
pub fn hub_id(dir: &Path) -> Option<String> {
    let mut card = String::new();
    std::fs::File::open(dir.join("README.md")).ok()?.take(1 << 20).read_to_string(&mut card).ok()?;
    for call in ["SentenceTransformer(", "from_pretrained("] {
        for (at, _) in card.match_indices(call) {
            let rest = &card[at + call.len()..];
            let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else { continue };
            let Some(id) = rest[1..].split(q).next() else { continue };
            let ok =
                |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if let Some((org, name)) = id.split_once('/') {
                if ok(org) && ok(name) {
                    return Some(id.to_string());
                }
            }
        }
    }
    None
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
                serde_json::json!({"id": id, "name": name, "hub_id": hub_id(dir), "bytes": bytes, "files": MODEL_FILES.iter().map(|f| format!("models/{id}/{f}")).collect::<Vec<_>>(), "pooling": pooling})
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

/// How much the server gives one client, and how many it serves at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Worker threads, started once; each serves one connection at a time.
    pub workers: usize,
    /// Connections accepted and waiting for a worker; beyond this a client gets 503 at once.
    pub queue: usize,
    /// The request line and headers together, at most (431 beyond).
    pub head_bytes: usize,
    /// The whole request head must arrive within this, and a client that takes no bytes of a
    /// response for this long is dropped.
    pub timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { workers: 32, queue: 128, head_bytes: 16 * 1024, timeout: std::time::Duration::from_secs(10) }
    }
}

/// The page's Content-Security-Policy, sent as a header on every response (a meta tag does not
/// reach the worker scripts), with frame-ancestors, which only a header can carry.
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; img-src 'self' data: blob:; style-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The slowest download the server waits for, in bytes per second (a 90 MB model: 6 minutes).
const MIN_RATE: u64 = 256 * 1024;

/// Bytes read from or written to a socket at a time.
const CHUNK: usize = 64 * 1024;

fn header(status: &str, ctype: &str, len: u64) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: {CSP}\r\nX-Frame-Options: DENY\r\n\
         Referrer-Policy: no-referrer\r\nCross-Origin-Resource-Policy: same-origin\r\nConnection: close\r\n\r\n"
    )
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    stream.write_all(header(status, ctype, body.len() as u64).as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// Closes after an early answer (431, 503) so the client can read it: closing a socket with
/// unread request bytes resets the connection, and a reset can discard the answer on its way. So
/// stop sending, then read and drop what the client still sends, a little and briefly.
fn linger(stream: &mut TcpStream, max_bytes: usize, time: std::time::Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let end = std::time::Instant::now() + time;
    let (mut buf, mut read) = ([0u8; 4096], 0);
    while read < max_bytes {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// A request head that cannot be answered as asked.
#[derive(Debug, PartialEq)]
enum HeadError {
    /// The client went away or stalled before the head was complete: close without an answer.
    Gone,
    TooLarge,
    Malformed,
}

/// Reads the request line and headers (nothing after them: no request we answer has a body),
/// at most `limits.head_bytes`, all within `limits.timeout`.
fn read_head(stream: &mut TcpStream, limits: &Limits) -> std::result::Result<String, HeadError> {
    let deadline = std::time::Instant::now() + limits.timeout;
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(HeadError::Gone);
        }
        stream.set_read_timeout(Some(left)).map_err(|_| HeadError::Gone)?;
        // Never read past the cap: a client sending megabytes of header costs us head_bytes.
        let want = buf.len().min(limits.head_bytes + 1 - head.len());
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => n,
        };
        let old = head.len();
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head, old) {
            if end > limits.head_bytes {
                return Err(HeadError::TooLarge);
            }
            head.truncate(end);
            return String::from_utf8(head).map_err(|_| HeadError::Malformed);
        }
        if head.len() > limits.head_bytes {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (after its blank line), looking only at what `old` bytes did not cover.
fn head_end(head: &[u8], old: usize) -> Option<usize> {
    let find = |pat: &[u8]| {
        let from = old.saturating_sub(pat.len() - 1);
        head[from..].windows(pat.len()).position(|w| w == pat).map(|i| from + i + pat.len())
    };
    // CRLF heads, and the bare-LF heads (and their mixes) that RFC 9112 asks servers to accept.
    [&b"\r\n\r\n"[..], b"\n\n", b"\n\r\n"].iter().filter_map(|p| find(p)).min()
}

/// The Host header's value among the header lines: `None` for malformed heads (a line without a
/// colon, a name with spaces, a folded line, two Host headers: RFC 9112 answers them with 400), and
/// `Some(None)` when there is no Host header.
fn host_header<'a>(lines: impl Iterator<Item = &'a str>) -> Option<Option<&'a str>> {
    let mut host = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return None;
        }
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            host = Some(value);
        }
    }
    Some(host)
}

/// Whether a Host header names this server: 127.0.0.1 or localhost, on our port when it gives one.
/// Any other name (a DNS-rebinding page that resolves its own domain to 127.0.0.1) is refused.
fn host_ok(host: &str, port: u16) -> bool {
    let host = host.trim();
    let (name, given) = match host.rsplit_once(':') {
        Some((n, p)) => match p.parse::<u16>() {
            Ok(p) => (n, Some(p)),
            Err(_) => return false,
        },
        None => (host, None),
    };
    (name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost")) && given.is_none_or(|p| p == port)
}

fn handle(mut stream: TcpStream, site: &Site, limits: &Limits, port: u16, buf: &mut [u8]) -> std::io::Result<()> {
    stream.set_write_timeout(Some(limits.timeout))?;
    let head = match read_head(&mut stream, limits) {
        Ok(h) => h,
        Err(HeadError::Gone) => return Ok(()),
        Err(HeadError::TooLarge) => {
            let msg = format!("request line and headers over {} bytes\n", limits.head_bytes);
            respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", msg.as_bytes(), false)?;
            linger(&mut stream, 1 << 20, std::time::Duration::from_millis(500));
            return Ok(());
        }
        Err(HeadError::Malformed) => {
            return respond(&mut stream, "400 Bad Request", "text/plain", b"request head is not UTF-8\n", false)
        }
    };
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or("");
    let Some(host) = host_header(lines) else {
        return respond(&mut stream, "400 Bad Request", "text/plain", b"malformed header lines\n", false);
    };
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    match host {
        None => return respond(&mut stream, "400 Bad Request", "text/plain", b"no Host header\n", false),
        Some(h) if !host_ok(h, port) => {
            let msg = format!("this server answers only http://127.0.0.1:{port}/ and http://localhost:{port}/\n");
            return respond(&mut stream, "421 Misdirected Request", "text/plain", msg.as_bytes(), false);
        }
        Some(_) => {}
    }
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", false);
    }
    let head_only = method == "HEAD";
    if path.split('?').next() == Some("/index.json") {
        let body = site.index().to_string();
        return respond(&mut stream, "200 OK", "application/json", body.as_bytes(), head_only);
    }
    let Some(path) = site.resolve(path) else {
        return respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", head_only);
    };
    let Ok(mut file) = std::fs::File::open(&path) else {
        return respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", head_only);
    };
    // Streamed in chunks: a download costs one buffer, whatever the file's size. It must also end
    // by a deadline (the timeout, plus the file at MIN_RATE): a client that keeps reading a trickle
    // would otherwise hold a worker for hours, each write resetting the write timeout.
    let len = file.metadata()?.len();
    stream.write_all(header("200 OK", content_type(&path.to_string_lossy()), len).as_bytes())?;
    if !head_only {
        let deadline = std::time::Instant::now() + limits.timeout + std::time::Duration::from_secs(len / MIN_RATE);
        let mut left = len;
        while left > 0 {
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "download too slow"));
            }
            let n = file.read(&mut buf[..CHUNK.min(left as usize)])?;
            if n == 0 {
                break; // the file shrank while we sent it; the client sees a short body
            }
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    stream.flush()
}

/// Binds 127.0.0.1:`port` (0 picks a free port) and returns the listener with its URL.
pub fn bind(port: u16) -> Result<(TcpListener, String)> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| Error::invalid(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::invalid(e.to_string()))?;
    Ok((listener, format!("http://{addr}/")))
}

/// Serves forever: `limits.workers` threads started here take accepted connections from a
/// bounded queue; when it is full, a new client is told 503 at once instead of piling up.
pub fn serve(listener: TcpListener, site: Site, limits: Limits) -> Result<()> {
    if limits.workers == 0 {
        return Err(Error::invalid("serve needs at least one worker"));
    }
    let port = listener.local_addr().map_err(|e| Error::invalid(e.to_string()))?.port();
    let site = Arc::new(site);
    let (tx, rx) = std::sync::mpsc::sync_channel::<TcpStream>(limits.queue);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..limits.workers {
        let (site, rx, limits) = (site.clone(), rx.clone(), limits.clone());
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let next = rx.lock().map(|r| r.recv());
                    let Ok(Ok(stream)) = next else { return };
                    // A fault in one request must not take a worker away from the rest.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let _ = handle(stream, &site, &limits, port, &mut buf);
                    }));
                }
            })
            .map_err(|e| Error::invalid(format!("cannot start the server's worker threads: {e}")))?;
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // Out of file descriptors (or another accept error): wait a little instead of spinning.
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        match tx.try_send(stream) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(mut stream)) => {
                let _ = stream.set_write_timeout(Some(std::time::Duration::from_millis(200)));
                let busy = header("503 Service Unavailable", "text/plain", 5)
                    .replace("\r\n\r\n", "\r\nRetry-After: 1\r\n\r\n");
                let _ = stream.write_all(format!("{busy}busy\n").as_bytes());
                // Brief, on the accepting thread: a flood of clients is slowed down, not queued.
                linger(&mut stream, 16 * 1024, std::time::Duration::from_millis(50));
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(Error::invalid("the server's workers stopped"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{head_end, host_ok};

    #[test]
    fn head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 0), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
        // The blank line split across two reads.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 25), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }

    #[test]
    fn a_model_card_names_the_hub_id() {
        let dir = std::env::temp_dir().join(format!("localtune-card-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(super::hub_id(&dir), None);
        let card = "# all-MiniLM-L6-v2\n```python\nmodel = SentenceTransformer('sentence-transformers/all-MiniLM-L6-v2')\n```\n";
        std::fs::write(dir.join("README.md"), card).unwrap();
        assert_eq!(super::hub_id(&dir).as_deref(), Some("sentence-transformers/all-MiniLM-L6-v2"));
        std::fs::write(
            dir.join("README.md"),
            "from_pretrained(path) and from_pretrained(\"a b/c\") then AutoModel.from_pretrained(\"org/m-1.5\")",
        )
        .unwrap();
        assert_eq!(super::hub_id(&dir).as_deref(), Some("org/m-1.5"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_header_lines_are_refused() {
        use super::host_header;
        assert_eq!(host_header(["Host: a", "X-Y: z"].into_iter()), Some(Some(" a")));
        assert_eq!(host_header(["Accept: */*"].into_iter()), Some(None));
        for bad in [&["Host: a", "host: b"][..], &["Host : a"], &[" Host: a"], &["no colon"], &[": x"]] {
            assert_eq!(host_header(bad.iter().copied()), None, "{bad:?}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\r\n", 0), Some(25));
    }

    #[test]
    fn host_names_this_server_only() {
        for ok in ["127.0.0.1", "127.0.0.1:8080", "localhost", "LocalHost:8080", " localhost:8080 "] {
            assert!(host_ok(ok, 8080), "{ok}");
        }
        for bad in
            ["evil.example", "evil.example:8080", "127.0.0.1:8081", "localhost:x", "127.0.0.2", "", "localhost.evil"]
        {
            assert!(!host_ok(bad, 8080), "{bad}");
        }
    }
}
