//! `localtune serve` under abuse: oversized heads, idle and slow clients, other Host names, many slow
//! downloads at once, a full queue. Each test starts the real binary on 127.0.0.1 (a free port) over
//! a throw-away site and watches its memory through /proc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bytes of the big data file: every byte known, so a download can be checked whole.
fn big_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"0123456789abcdef,\n"[(i * 7 + i / 977) % 18]).collect()
}

const BIG: usize = 24 << 20;

fn start(name: &str, extra: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("localtune-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www/pkg")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("www/index.html"), "<!doctype html><title>t</title>").unwrap();
    std::fs::write(dir.join("www/pkg/localtune_bg.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.join("data/big.csv"), big_bytes(BIG)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(["serve", "--port", "0", "--no-default-model", "--www"])
        .arg(dir.join("www"))
        .arg("--data")
        .arg(dir.join("data"))
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // The rest of what it prints is read and dropped, so it never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port =
        line.trim().rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap_or_else(|_| panic!("{line}"));
    Server { child, port, dir }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Sends `request` as it is and returns the status code, the head and the body.
    fn raw(&self, request: &str) -> (u16, String, Vec<u8>) {
        let mut s = self.connect();
        s.write_all(request.as_bytes()).unwrap();
        let mut all = vec![];
        s.read_to_end(&mut all).unwrap();
        split_response(&all)
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.raw(&format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port))
    }
}

fn split_response(all: &[u8]) -> (u16, String, Vec<u8>) {
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {all:?}"));
    let head = String::from_utf8(all[..end].to_vec()).unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head, all[end + 4..].to_vec())
}

#[test]
fn answers_its_own_host_only_with_the_security_headers() {
    let server = start("hosts", &[]);
    let (code, head, body) = server.get("/");
    assert_eq!(code, 200, "{head}");
    assert_eq!(body, b"<!doctype html><title>t</title>");
    assert!(head.contains("Content-Security-Policy: default-src 'self';"), "{head}");
    assert!(head.contains("frame-ancestors 'none'"), "{head}");
    assert!(head.contains("X-Frame-Options: DENY"), "{head}");
    let (code, head, body) =
        server.raw(&format!("HEAD /data/big.csv HTTP/1.1\r\nhost: localhost:{}\r\n\r\n", server.port));
    assert_eq!(code, 200);
    assert!(head.contains(&format!("Content-Length: {BIG}")), "{head}");
    assert!(body.is_empty());
    for (request, want) in [
        ("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_string(), 421),
        (format!("GET / HTTP/1.1\r\nHost: rebind.example:{}\r\n\r\n", server.port), 421),
        ("GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n".to_string(), 421),
        ("GET / HTTP/1.0\r\n\r\n".to_string(), 400),
        (format!("POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 2\r\n\r\nhi", server.port), 405),
        (format!("GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", server.port), 404),
        (format!("GET /data/../www/index.html HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", server.port), 404),
        (format!("GET /models/x/config.json HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", server.port), 404),
        (format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nHost: evil.example\r\n\r\n", server.port), 400),
        (format!("GET / HTTP/1.1\r\nHost : 127.0.0.1:{}\r\n\r\n", server.port), 400),
    ] {
        let (code, head, _) = server.raw(&request);
        assert_eq!(code, want, "{request:?} → {head}");
        assert!(head.contains("frame-ancestors 'none'"), "{head}");
    }
}

#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let server = start("stdout", &[]);
    // A port known beforehand, so nobody needs to read what this server prints.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_localtune"))
        .args(["serve", "--port", &port.to_string(), "--no-default-model", "--www"])
        .arg(server.dir.join("www"))
        .arg("--data")
        .arg(server.dir.join("data"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    // It prints before it serves: once it answers, it has written into the closed pipe and lived.
    let t = Instant::now();
    let answered = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes());
            let mut all = vec![];
            let _ = s.read_to_end(&mut all);
            break all.starts_with(b"HTTP/1.1 200");
        }
        if t.elapsed() > Duration::from_secs(10) || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered && alive, "the server stopped when its stdout closed (answered {answered}, alive {alive})");
}

/// A client that asks for a big file and stops reading is dropped after the timeout: its worker
/// is not held for ever by a full socket.
#[test]
fn a_stalled_download_is_dropped() {
    let server = start("stalled", &["--timeout", "1"]);
    let mut s = server.connect();
    s.write_all(format!("GET /data/big.csv HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", server.port).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got < BIG, "a stalled client still got the whole file ({got} bytes)");
    assert_eq!(server.get("/").0, 200);
}

#[test]
fn a_huge_head_is_cut_off_and_costs_no_memory() {
    let server = start("huge", &[]);
    server.get("/");
    let before = server.rss_kib();
    // 100 MB of header lines: the server stops reading at its cap and answers 431 (or the client's
    // own writes fail when it closes: either way it must not buffer what it is sent).
    let mut s = server.connect();
    let line = format!("X-Fill: {}\r\n", "a".repeat(1000));
    let mut sent = 0usize;
    let started = Instant::now();
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", server.port).as_bytes());
    while sent < 100 << 20 {
        if s.write_all(line.as_bytes()).is_err() {
            break;
        }
        sent += line.len();
    }
    let mut reply = vec![];
    let _ = s.read_to_end(&mut reply);
    if !reply.is_empty() {
        assert_eq!(split_response(&reply).0, 431);
    }
    let after = server.rss_kib();
    eprintln!(
        "huge head: {sent} bytes accepted by the socket in {:?}; server RSS {before} → {after} KiB",
        started.elapsed()
    );
    assert!(sent < 50 << 20, "the server kept reading a {sent}-byte head");
    assert!(after < before + 8 * 1024, "RSS grew from {before} to {after} KiB");
    assert_eq!(server.get("/").0, 200, "the server stopped answering");
}

#[test]
fn idle_and_trickling_clients_are_dropped() {
    let server = start("idle", &["--timeout", "1"]);
    // Connects and says nothing.
    let mut idle = server.connect();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "an idle client got an answer");
    assert!(t.elapsed() < Duration::from_secs(4), "idle connection held {:?}", t.elapsed());
    // Sends a header line every 300 ms, forever (slowloris): the head's deadline still holds.
    let mut slow = server.connect();
    let t = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let closed = loop {
        std::thread::sleep(Duration::from_millis(300));
        if slow.write_all(b"X-Slow: 1\r\n").is_err() || t.elapsed() > Duration::from_secs(6) {
            break t.elapsed();
        }
        // A closed socket shows as EOF on a non-blocking peek.
        slow.set_nonblocking(true).unwrap();
        let gone = matches!(slow.peek(&mut buf), Ok(0));
        slow.set_nonblocking(false).unwrap();
        if gone {
            break t.elapsed();
        }
    };
    assert!(closed < Duration::from_secs(4), "a trickling client held a worker for {closed:?}");
    assert_eq!(server.get("/").0, 200);
}

/// The load test: 20 slow downloads of a 24 MB file at once, while 8 clients make 400 quick requests.
/// The old server read each file whole into memory (20 × 24 MB); this one streams it.
#[test]
fn slow_downloads_stream_while_the_rest_is_served() {
    let server = start("load", &["--timeout", "5"]);
    server.get("/");
    let before = server.rss_kib();
    let port = server.port;
    let t = Instant::now();
    let downloads: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(format!("GET /data/big.csv HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes())
                    .unwrap();
                // Checked as it arrives (20 copies of 24 MB held here would measure this process).
                let want = big_bytes(BIG);
                let (mut head, mut got, mut same) = (vec![], 0usize, true);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    let mut chunk = &buf[..n];
                    let mut rest = vec![];
                    if !head.ends_with(b"\r\n\r\n") {
                        head.extend_from_slice(chunk);
                        let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        rest = head.split_off(end + 4);
                        chunk = &rest;
                    }
                    same &= got + chunk.len() <= BIG && want[got..got + chunk.len()] == *chunk;
                    got += chunk.len();
                    std::thread::sleep(Duration::from_millis(1 + i % 3));
                }
                (String::from_utf8_lossy(&head).into_owned(), got, same)
            })
        })
        .collect();
    let quick: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut worst = Duration::ZERO;
                for _ in 0..50 {
                    let t = Instant::now();
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    s.write_all(format!("GET /index.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
                        .unwrap();
                    let mut all = vec![];
                    s.read_to_end(&mut all).unwrap();
                    assert_eq!(split_response(&all).0, 200);
                    worst = worst.max(t.elapsed());
                }
                worst
            })
        })
        .collect();
    let mut peak = before;
    while downloads.iter().any(|d| !d.is_finished()) {
        peak = peak.max(server.rss_kib());
        std::thread::sleep(Duration::from_millis(20));
    }
    for d in downloads {
        let (head, got, same) = d.join().unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(got == BIG && same, "a download came back with {got} of {BIG} bytes, same bytes: {same}");
    }
    let worst = quick.into_iter().map(|q| q.join().unwrap()).max().unwrap();
    eprintln!(
        "load: 20 × {} MiB downloads and 400 quick requests in {:?}; slowest quick request {worst:?}; server RSS {before} KiB, peak {peak} KiB",
        BIG >> 20,
        t.elapsed()
    );
    assert!(peak < before + 32 * 1024, "RSS went from {before} to {peak} KiB while streaming");
}

#[test]
fn a_full_queue_answers_busy_and_recovers() {
    let server = start("busy", &["--workers", "2", "--timeout", "2"]);
    // 2 workers and a queue of 8: twelve silent clients fill both, the next hears 503 at once.
    let silent: Vec<TcpStream> = (0..12).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (code, head, _) = server.get("/");
    assert_eq!(code, 503, "{head}");
    assert!(head.contains("Retry-After"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(silent);
    // The silent clients hung up: their workers are free again within the timeout.
    let t = Instant::now();
    loop {
        let (code, _, _) = server.get("/");
        if code == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still busy after the clients left");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Random request heads (a fixed-seed generator: bytes, broken request lines, odd headers): every
/// one is answered or closed, and the server still serves a valid request afterwards.
#[test]
fn garbage_requests_are_survived() {
    let server = start("garbage", &["--timeout", "1"]);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let pieces: [&[u8]; 12] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"/",
        b"/index.html",
        b"/../",
        b" HTTP/1.1",
        b"\r\n",
        b"\n",
        b"Host: ",
        b"127.0.0.1",
        b"\x00\xff",
    ];
    let cases = 300;
    let t = Instant::now();
    for i in 0..cases {
        let mut req = vec![];
        for _ in 0..(next() % 12) {
            let r = next();
            if r % 5 == 0 {
                req.extend((0..r % 40).map(|_| next() as u8));
            } else {
                req.extend_from_slice(pieces[(r % 12) as usize]);
            }
        }
        req.extend_from_slice(if i % 2 == 0 { b"\r\n\r\n" } else { b"" });
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&req);
        if i % 2 == 1 {
            // No blank line: the client then hangs up, mid-head.
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut reply = vec![];
        let _ = s.read_to_end(&mut reply);
        if !reply.is_empty() {
            assert!(reply.starts_with(b"HTTP/1.1 "), "case {i}: {:?} → {:?}", req, String::from_utf8_lossy(&reply));
        }
    }
    eprintln!("garbage: {cases} random requests in {:?}", t.elapsed());
    assert_eq!(server.get("/").0, 200, "the server stopped answering");
    let mut child = server;
    assert!(child.child.try_wait().unwrap().is_none(), "the server exited");
}
