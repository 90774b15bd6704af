//! A minimal HTTP/1.1 client over one kept-alive TCP connection: the least
//! work a caller can do per request, so the figures are the relay's.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::{TcpSocket, TcpStream};

/// One kept-alive connection to the relay.
pub struct Conn {
    /// The socket, buffered both ways.
    io: BufStream<TcpStream>,
    /// `Host` header value.
    host: String,
    /// The trailers of the last chunked body read, as lines.
    pub trailers: String,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Whether the relay said it closes the connection after this answer.
    pub closed: bool,
}

impl Conn {
    /// Connects to `to` from `from` (any loopback address: the relay counts
    /// rate limits per address, so callers can stand for different clients).
    pub async fn open(to: SocketAddr, from: IpAddr) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = socket.connect(to).await.with_context(|| format!("connecting to {to}"))?;
        tcp.set_nodelay(true)?;
        Ok(Self { io: BufStream::new(tcp), host: to.to_string(), trailers: String::new() })
    }

    /// Writes a POST of a JSON body.
    async fn send(&mut self, path: &str, body: &str, accept: &str) -> anyhow::Result<()> {
        // Raw output tells how it ended in trailers, sent to those who ask.
        let te = if accept == "application/octet-stream" { "te: trailers\r\n" } else { "" };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: {accept}\r\n{te}content-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.io.write_all(head.as_bytes()).await?;
        self.io.write_all(body.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads a status line and headers: status, content length, chunked,
    /// `Connection: close`.
    async fn head(&mut self) -> anyhow::Result<(u16, Option<usize>, bool, bool)> {
        let mut line = String::new();
        if self.io.read_line(&mut line).await? == 0 {
            bail!("the relay closed the connection");
        }
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("a status line")?;
        let (mut length, mut chunked, mut closed) = (None, false, false);
        loop {
            line.clear();
            self.io.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                return Ok((status, length, chunked, closed));
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                closed = value.to_ascii_lowercase().contains("close");
            }
        }
    }

    /// POSTs `body` to `path` and reads the whole answer.
    pub async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<Response> {
        self.send(path, body, "application/json").await?;
        let (status, length, chunked, closed) = self.head().await?;
        let mut body = Vec::new();
        if chunked {
            while let Some(chunk) = self.chunk().await? {
                body.extend_from_slice(&chunk);
            }
        } else {
            body.resize(length.context("a content-length")?, 0);
            self.io.read_exact(&mut body).await?;
        }
        Ok(Response { status, body, closed })
    }

    /// POSTs `body` asking for an event stream; calls `each` with every chunk
    /// of the stream as it arrives. The status.
    pub async fn stream(&mut self, path: &str, body: &str, each: impl FnMut(&[u8])) -> anyhow::Result<u16> {
        self.streamed(path, body, "text/event-stream", each).await
    }

    /// POSTs `body` asking for raw output; calls `each` with every chunk of
    /// it as it arrives. The status; how it ended is in [`Self::trailers`].
    pub async fn raw(&mut self, path: &str, body: &str, each: impl FnMut(&[u8])) -> anyhow::Result<u16> {
        self.streamed(path, body, "application/octet-stream", each).await
    }

    async fn streamed(
        &mut self,
        path: &str,
        body: &str,
        accept: &str,
        mut each: impl FnMut(&[u8]),
    ) -> anyhow::Result<u16> {
        self.send(path, body, accept).await?;
        let (status, length, chunked, _) = self.head().await?;
        if !chunked {
            let mut rest = vec![0; length.unwrap_or(0)];
            self.io.read_exact(&mut rest).await?;
            each(&rest);
            return Ok(status);
        }
        while let Some(chunk) = self.chunk().await? {
            each(&chunk);
        }
        Ok(status)
    }

    /// One chunk of a chunked body; `None` at the last.
    async fn chunk(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        self.io.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).context("a chunk size")?;
        if size == 0 {
            // The trailers, if any, then an empty line.
            self.trailers.clear();
            loop {
                line.clear();
                self.io.read_line(&mut line).await?;
                if line.trim_end().is_empty() {
                    return Ok(None);
                }
                self.trailers.push_str(&line);
            }
        }
        let mut data = vec![0; size + 2];
        self.io.read_exact(&mut data).await?;
        data.truncate(size);
        Ok(Some(data))
    }
}
