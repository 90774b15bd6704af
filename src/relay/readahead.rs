//! A socket that reads ahead while data flows and holds nothing while idle:
//! the agent WebSocket asks for small reads (its buffer is kept small so that
//! an idle link costs little), and output arriving at hundreds of MB/s would
//! otherwise cost one system call per small read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time once a read has filled its caller's
/// buffer (more is likely waiting); allocated then, freed once the socket has
/// nothing more to give.
pub const READ_AHEAD: usize = 256 * 1024;

/// `S`, with reads served from a buffer of its own while data flows.
pub struct ReadAhead<S> {
    /// The socket.
    inner: S,
    /// Read from the socket; no allocation while the link is quiet.
    buf: Vec<u8>,
    /// How much of `buf` has been handed over.
    start: usize,
    /// The last read filled its caller's buffer: read ahead next time.
    busy: bool,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`; nothing is allocated until data flows.
    pub fn new(inner: S) -> Self {
        Self { inner, buf: Vec::new(), start: 0, busy: false }
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Hands over what is buffered; false when nothing is.
    fn serve(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let held = &self.buf[self.start..];
        if held.is_empty() {
            return false;
        }
        let n = held.len().min(out.remaining());
        out.put_slice(&held[..n]);
        self.start += n;
        true
    }

    /// Refills the buffer from the socket (ready with 0 bytes at its end).
    fn refill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() < READ_AHEAD {
            self.buf = Vec::with_capacity(READ_AHEAD);
        }
        self.buf.clear();
        self.start = 0;
        // Into the buffer's spare room: nothing zeroed first.
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.buf);
        if !matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            // Quiet (or ended): let the buffer go.
            (self.buf, self.busy) = (Vec::new(), false);
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.serve(out) {
            return Poll::Ready(Ok(()));
        }
        if this.busy {
            if ready!(this.refill(cx))? > 0 {
                this.serve(out);
            }
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
        this.busy = out.filled().len() > before && out.remaining() == 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes written in pieces come out whole and in order through small
    /// reads, and a quiet socket leaves nothing allocated.
    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_a_quiet_link_holds_no_buffer() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(reader);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let write = tokio::spawn(async move {
            for piece in sent.chunks(70_001) {
                writer.write_all(piece).await.unwrap();
            }
            writer
        });
        let mut got = Vec::new();
        let mut small = [0u8; 2048];
        while got.len() < data.len() {
            let n = reader.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert!(got == data, "the bytes differ");
        let mut writer = write.await.unwrap();
        // Nothing more to read: the next read waits, and lets the buffer go.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), reader.read(&mut small)).await;
        assert!(pending.is_err());
        assert_eq!(reader.buf.capacity(), 0, "a quiet link holds no read-ahead buffer");
        writer.write_all(b"late").await.unwrap();
        drop(writer);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"late");
    }
}
