//! A small blocking HTTP/1.1 client for plugins that ask a service (multinet's
//! inventory backend): `GET` over plain TCP with one deadline for the whole exchange,
//! bodies framed by `Content-Length`, `chunked` or the end of the connection, and a cap
//! on their size. No async runtime, no TLS, no redirects, no keep-alive.
//!
//! Errors carry CNI codes so a plugin can pass them on: a deadline that ran out, a
//! name that does not resolve or a server that cannot be reached is code 11 (try again
//! later: the condition may clear); an answer that is not HTTP, is framed wrongly or is
//! too large is code 6 (the content cannot be decoded). An HTTP error status is not an
//! error here: the caller reads [`Response::status`].

use crate::error::{cni_err, Code};
use anyhow::Result;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest header block we read; real servers send a few hundred bytes.
const MAX_HEADER: usize = 64 << 10;

/// What a request may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole exchange (resolve, connect, send, receive) must finish within this.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// An `http://host[:port][/path][?query]` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host as written (an IPv6 literal without its brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, at least "/".
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url> {
        let bad = |why: &str| cni_err(Code::InvalidConfig, format!("URL {s:?} {why}"));
        let rest = match s.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("http://") => &s[7..],
            _ => return Err(bad("is not an http:// URL (https is not supported)")),
        };
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("contains whitespace or control characters"));
        }
        let (authority, target) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // A fragment is never sent.
        let target = target.split('#').next().unwrap_or("");
        let target = if target.starts_with('/') {
            target.to_string()
        } else {
            format!("/{target}")
        };
        if authority.contains('@') {
            return Err(bad("has user information (not supported)"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '[' in its host"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("has junk after ']'"))?,
                ),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if host.contains(':') && !authority.starts_with('[') {
            return Err(bad("has an IPv6 host without brackets ([addr]:port)"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("has an invalid port {p:?}")))?,
        };
        Ok(Url {
            host: host.to_string(),
            port,
            target,
        })
    }

    /// The URL with `key=value` added to its query (both percent-encoded).
    pub fn with_query(&self, key: &str, value: &str) -> Url {
        let sep = if self.target.contains('?') {
            if self.target.ends_with('?') || self.target.ends_with('&') {
                ""
            } else {
                "&"
            }
        } else {
            "?"
        };
        Url {
            target: format!(
                "{}{sep}{}={}",
                self.target,
                query_escape(key),
                query_escape(value)
            ),
            ..self.clone()
        }
    }

    fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// Percent-encoding of a query component (Go's `url.QueryEscape`: space as '+').
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `GET url`, all of it within `limits`.
pub fn get(url: &Url, limits: Limits) -> Result<Response> {
    let deadline = Instant::now() + limits.timeout;
    let what = format!("GET http://{}{}", url.host_header(), url.target);
    let timed_out = || {
        cni_err(
            Code::TryAgainLater,
            format!("{what}: no complete answer within {:?}", limits.timeout),
        )
    };
    let addrs = resolve(url, deadline).map_err(|e| match e {
        None => timed_out(),
        Some(msg) => cni_err(Code::TryAgainLater, format!("{what}: {msg}")),
    })?;
    let mut stream = None;
    let mut last_err = String::from("no address");
    for a in addrs {
        let Some(left) = remaining(deadline) else {
            return Err(timed_out());
        };
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => return Err(timed_out()),
            Err(e) => last_err = format!("cannot connect to {a}: {e}"),
        }
    }
    let Some(stream) = stream else {
        return Err(cni_err(Code::TryAgainLater, format!("{what}: {last_err}")));
    };
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        pos: 0,
        deadline,
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cnibox/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.target,
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    );
    conn.write_all(request.as_bytes())
        .map_err(|e| conn.io_error(&what, e, timed_out))?;
    read_response(&mut conn, limits.max_body).map_err(|e| match e {
        Fail::Io(e) => conn.io_error(&what, e, timed_out),
        Fail::Bad(msg) => cni_err(Code::Decode, format!("{what}: {msg}")),
    })
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// Resolve on a helper thread so a slow resolver counts against the deadline too.
/// `Err(None)`: the deadline ran out.
fn resolve(url: &Url, deadline: Instant) -> std::result::Result<Vec<SocketAddr>, Option<String>> {
    if let Ok(ip) = url.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, url.port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (host, port) = (url.host.clone(), url.port);
    std::thread::spawn(move || {
        let r = (host.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>());
        let _ = tx.send(r);
    });
    let left = remaining(deadline).ok_or(None)?;
    match rx.recv_timeout(left) {
        Ok(Ok(a)) if !a.is_empty() => Ok(a),
        Ok(Ok(_)) => Err(Some(format!("{:?} resolves to no address", url.host))),
        Ok(Err(e)) => Err(Some(format!("cannot resolve {:?}: {e}", url.host))),
        Err(_) => Err(None),
    }
}

enum Fail {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn bad<T>(msg: impl Into<String>) -> std::result::Result<T, Fail> {
    Err(Fail::Bad(msg.into()))
}

/// A connection read through a buffer, every read and write bounded by the deadline.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    deadline: Instant,
}

impl Conn {
    fn left(&self) -> std::io::Result<Duration> {
        remaining(self.deadline).ok_or_else(|| std::io::Error::from(ErrorKind::TimedOut))
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let left = self.left()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write_all(data)
    }

    /// Read more into the buffer; `Ok(false)` at the end of the stream.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let left = self.left()?;
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// One CRLF- (or LF-) terminated line, without its terminator.
    fn line(&mut self, max: usize, what: &str) -> std::result::Result<String, Fail> {
        loop {
            if let Some(i) = self.pending().iter().position(|b| *b == b'\n') {
                let raw = &self.pending()[..i];
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                let Ok(s) = std::str::from_utf8(raw) else {
                    return bad(format!("the {what} is not text"));
                };
                let s = s.to_string();
                self.pos += i + 1;
                return Ok(s);
            }
            if self.pending().len() > max {
                return bad(format!("the {what} is longer than {max} bytes"));
            }
            if !self.fill()? {
                return bad(format!("the connection closed in the middle of the {what}"));
            }
        }
    }

    /// Exactly `n` bytes appended to `out`.
    fn take(&mut self, n: usize, out: &mut Vec<u8>) -> std::result::Result<(), Fail> {
        let mut need = n;
        while need > 0 {
            if self.pending().is_empty() && !self.fill()? {
                return bad("the connection closed before the end of the body");
            }
            let k = need.min(self.pending().len());
            out.extend_from_slice(&self.pending()[..k]);
            self.pos += k;
            need -= k;
        }
        Ok(())
    }

    fn io_error(
        &self,
        what: &str,
        e: std::io::Error,
        timed_out: impl Fn() -> anyhow::Error,
    ) -> anyhow::Error {
        if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
            || remaining(self.deadline).is_none()
        {
            return timed_out();
        }
        cni_err(
            Code::TryAgainLater,
            format!("{what}: connection failed: {e}"),
        )
    }
}

fn read_response(conn: &mut Conn, max_body: usize) -> std::result::Result<Response, Fail> {
    let too_big = || Fail::Bad(format!("the body is larger than {max_body} bytes"));
    let mut header_bytes = 0;
    // Informational answers (100 Continue) precede the real one.
    let (status, headers) = loop {
        let status_line = conn.line(MAX_HEADER, "status line")?;
        let mut parts = status_line.splitn(3, ' ');
        let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
            return bad(format!("not an HTTP answer: {status_line:?}"));
        };
        if !proto.starts_with("HTTP/1.") {
            return bad(format!("not an HTTP/1.x answer: {status_line:?}"));
        }
        let status = match code.parse::<u16>() {
            Ok(c) if (100..=999).contains(&c) && code.len() == 3 => c,
            _ => return bad(format!("bad status code in {status_line:?}")),
        };
        let mut headers = Vec::new();
        loop {
            let l = conn.line(MAX_HEADER, "header block")?;
            header_bytes += l.len() + 2;
            if header_bytes > MAX_HEADER {
                return bad(format!(
                    "the header block is longer than {MAX_HEADER} bytes"
                ));
            }
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                return bad(format!("malformed header line {l:?}"));
            };
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let mut body = Vec::new();
    let te = header("transfer-encoding").join(",").to_ascii_lowercase();
    if status == 204 || status == 304 {
        return Ok(Response { status, body });
    }
    if !te.is_empty() {
        if te.rsplit(',').map(str::trim).next() != Some("chunked") {
            return bad(format!("unsupported Transfer-Encoding {te:?}"));
        }
        loop {
            let l = conn.line(1024, "chunk size line")?;
            let size = l.split(';').next().unwrap_or("").trim();
            let Ok(n) = usize::from_str_radix(size, 16) else {
                return bad(format!("bad chunk size {l:?}"));
            };
            if n == 0 {
                // Trailers, up to the empty line.
                while !conn.line(MAX_HEADER, "trailer")?.is_empty() {}
                break;
            }
            if body.len().saturating_add(n) > max_body {
                return Err(too_big());
            }
            conn.take(n, &mut body)?;
            if !conn.line(2, "chunk terminator")?.is_empty() {
                return bad("a chunk is longer than its size line says");
            }
        }
    } else if let Some(cl) = header("content-length").first() {
        let lens = header("content-length");
        if lens.iter().any(|l| l != cl) {
            return bad("conflicting Content-Length headers");
        }
        let Ok(n) = cl.parse::<usize>() else {
            return bad(format!("bad Content-Length {cl:?}"));
        };
        if n > max_body {
            return Err(too_big());
        }
        conn.take(n, &mut body)?;
    } else {
        // No framing: the body runs to the end of the connection.
        loop {
            body.extend_from_slice(conn.pending());
            conn.pos = conn.buf.len();
            if body.len() > max_body {
                return Err(too_big());
            }
            if !conn.fill()? {
                break;
            }
        }
    }
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code_of;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        let u = Url::parse("http://10.0.0.1:8080/api/pods?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 8080));
        assert_eq!(u.target, "/api/pods?x=1");
        assert_eq!(
            u.with_query("podName", "a b&c").target,
            "/api/pods?x=1&podName=a+b%26c"
        );
        let u = Url::parse("HTTP://[::1]/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.host_header()),
            ("::1", 80, "[::1]".into())
        );
        let u = Url::parse("http://inventory.local").unwrap();
        assert_eq!(u.with_query("podName", "p").target, "/?podName=p");
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://x:0/",
            "http://x:99999/",
            "http://u@x/",
            "http://[::1/",
            "http://x /",
            "http://::1/",
        ] {
            let e = Url::parse(bad).unwrap_err();
            assert_eq!(code_of(&e), Some(7), "{bad}");
        }
    }

    /// Serve one connection with `answer` (after reading the request), on loopback.
    fn serve(answer: Vec<u8>) -> (Url, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            let _ = s.write_all(&answer);
            String::from_utf8(req).unwrap()
        });
        (
            Url::parse(&format!("http://127.0.0.1:{port}/p")).unwrap(),
            h,
        )
    }

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(5),
        max_body: 1000,
    };

    #[test]
    fn content_length_body() {
        let (u, h) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA".to_vec());
        let r = get(&u.with_query("podName", "p1"), LIMITS).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /p?podName=p1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nHost: 127.0.0.1:"), "{req}");
    }

    #[test]
    fn chunked_body_and_informational_answer() {
        let (u, _h) = serve(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
                .to_vec(),
        );
        let r = get(&u, LIMITS).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
    }

    #[test]
    fn body_to_end_of_connection() {
        let (u, _h) = serve(b"HTTP/1.0 200 OK\n\n{\"a\":1}".to_vec());
        assert_eq!(get(&u, LIMITS).unwrap().body, b"{\"a\":1}");
    }

    #[test]
    fn malformed_answers_are_decode_errors() {
        let big = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1001).into_bytes();
        let mut unframed_big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        unframed_big.resize(3000, b'x');
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"SSH-2.0-OpenSSH\r\n".to_vec(), "not an HTTP"),
            (b"HTTP/1.1 abc OK\r\n\r\n".to_vec(), "bad status code"),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n".to_vec(),
                "malformed header",
            ),
            (big, "larger than 1000"),
            (unframed_big, "larger than 1000"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nabc".to_vec(),
                "larger than 1000",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
                "closed before the end",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
                "unsupported",
            ),
            (b"".to_vec(), "closed in the middle of the status line"),
        ];
        for (answer, want) in cases {
            let (u, _h) = serve(answer.clone());
            let e = get(&u, LIMITS).unwrap_err();
            assert_eq!(code_of(&e), Some(6), "{e:#}");
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
    }

    #[test]
    fn silent_server_runs_into_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        // Accepted by the kernel's backlog, never answered.
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let e = get(&u, limits).unwrap_err();
        assert_eq!(code_of(&e), Some(11), "{e:#}");
        assert!(
            format!("{e:#}").contains("no complete answer within"),
            "{e:#}"
        );
        drop(l);
    }

    #[test]
    fn dripping_server_runs_into_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            // One byte at a time: every read succeeds, the whole never arrives in time.
            for _ in 0..100 {
                if s.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let e = get(&u, limits).unwrap_err();
        assert_eq!(code_of(&e), Some(11), "{e:#}");
        h.join().unwrap();
    }

    #[test]
    fn refused_connection_is_try_again_later() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = Url::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        drop(l);
        let e = get(&u, LIMITS).unwrap_err();
        assert_eq!(code_of(&e), Some(11), "{e:#}");
        assert!(format!("{e:#}").contains("cannot connect"), "{e:#}");
    }
}
