//! A minimal HTTP/1.1 client over a tokio `TcpStream`: one request at a time on a kept-alive
//! connection, `Content-Length` and chunked bodies, and a chunk-by-chunk reader for SSE; connections
//! can come from a chosen loopback source address. What the soak's LongPoll, SSE and API
//! workers need, and nothing more.

use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub struct Conn {
    stream: TcpStream,
    host: String,
    /// Read but not yet consumed.
    buf: Vec<u8>,
}

pub struct Head {
    pub status: u16,
    /// The header lines, lower-cased.
    lower: String,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.lower.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    }
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Result<Conn, String> {
        let stream = match source {
            Some(ip) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
                .map_err(|e| format!("socket: {e}"))?;
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .map_err(|e| format!("bind {ip}: {e}"))?;
                socket.connect(addr).await
            }
            None => TcpStream::connect(addr).await,
        }
        .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            host: addr.to_string(),
            buf: Vec::new(),
        })
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method != "GET" || !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads more bytes into the buffer; an error at EOF.
    async fn fill(&mut self) -> Result<(), String> {
        let mut tmp = [0u8; 8192];
        let n = self
            .stream
            .read(&mut tmp)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..p]).into_owned());
            }
            self.fill().await?;
        }
    }

    pub async fn read_head(&mut self) -> Result<Head, String> {
        let status_line = self.line().await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut lower = String::new();
        loop {
            let l = self.line().await?;
            if l.is_empty() {
                break;
            }
            lower.push_str(&l.to_ascii_lowercase());
            lower.push('\n');
        }
        Ok(Head { status, lower })
    }

    pub async fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, String> {
        if head.chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.next_chunk().await? {
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        match head.header("content-length") {
            Some(n) => {
                let n = n.parse().map_err(|_| format!("bad content-length {n}"))?;
                self.take(n).await
            }
            None => {
                // Until the server closes.
                while self.fill().await.is_ok() {}
                Ok(std::mem::take(&mut self.buf))
            }
        }
    }

    /// The next chunk of a chunked body; `None` after the last.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        let line = self.line().await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            while !self.line().await?.is_empty() {}
            return Ok(None);
        }
        let data = self.take(size).await?;
        self.take(2).await?;
        Ok(Some(data))
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        self.send(method, path, headers, body).await?;
        let head = self.read_head().await?;
        let body = self.read_body(&head).await?;
        Ok(Response {
            status: head.status,
            body,
        })
    }
}
