//! Both directions of a byte stream (an L4 connection, an upgraded
//! tunnel) copied with buffers that are reused, not made per connection.
//!
//! tokio's `copy_bidirectional_with_sizes` allocates and zero-fills its
//! two buffers for every connection: with 64 KiB each that is 2.6–2.9 µs
//! of `memset` per connection on this project's VM, ~5% of what a short
//! L4 connection costs (bench/RESULTS.md), and its API takes no buffers.
//! So this is tokio's copy loop (read, write all, flush when the reader
//! would block, shut the writer down at EOF; per direction, both polled
//! by one future) over buffers kept in a small per-thread stock. A buffer
//! is zeroed once, when the stock first makes it; afterwards it is only
//! ever overwritten by reads, and only the bytes the latest read filled
//! are written out. (A reader that claimed to fill more than it did
//! would send the previous connection's bytes instead of tokio's zeros;
//! the readers here are tokio's `TcpStream`, hyper's upgraded stream
//! through `TokioIo`, and `Guarded`, which all report what they read.)
//! The I/O types charge tokio's cooperative budget on every read and
//! write, so a busy copy still yields.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per read (per direction): larger than tokio's 8 KiB default,
/// which costs a syscall per 8 KiB on bulk transfers.
pub const BUFFER: usize = 64 * 1024;

/// Idle buffers a thread keeps (2 MiB at most): a worker's connections
/// end and start all the time, so its stock stays small and warm.
const STOCK: usize = 32;

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A [`BUFFER`]-sized buffer from this thread's stock, given back when
/// dropped (to the stock of the thread that drops it, if it has room).
struct Buffer(Box<[u8]>);

impl Buffer {
    fn take() -> Buffer {
        let spare = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten();
        Buffer(spare.unwrap_or_else(|| vec![0; BUFFER].into_boxed_slice()))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < STOCK {
                s.push(buf);
            }
        });
    }
}

enum Stage {
    Copying,
    ShuttingDown,
    Done,
}

/// One direction: what was read and not yet written is `buf[pos..cap]`.
struct Direction {
    buf: Buffer,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    stage: Stage,
    copied: u64,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            buf: Buffer::take(),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            stage: Stage::Copying,
            copied: 0,
        }
    }

    /// Copies from `r` to `w` until `r` ends, then shuts `w` down; the
    /// bytes copied.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self.stage {
                Stage::Copying => {
                    if self.pos == self.cap && !self.read_done {
                        let mut read = ReadBuf::new(&mut self.buf.0);
                        match Pin::new(&mut *r).poll_read(cx, &mut read) {
                            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {
                                continue;
                            }
                            Poll::Ready(r) => r?,
                            Poll::Pending => {
                                // Nothing to read now: push out what was
                                // written before waiting.
                                if self.need_flush {
                                    ready!(Pin::new(&mut *w).poll_flush(cx))?;
                                    self.need_flush = false;
                                }
                                return Poll::Pending;
                            }
                        }
                        let n = read.filled().len();
                        (self.pos, self.cap) = (0, n);
                        self.read_done = n == 0;
                    }
                    while self.pos < self.cap {
                        let n = match ready!(
                            Pin::new(&mut *w).poll_write(cx, &self.buf.0[self.pos..self.cap])
                        ) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            r => r?,
                        };
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        if n > self.cap - self.pos {
                            // A writer that claims more than it was given
                            // would leave this loop neither reading nor
                            // writing, holding the worker: end the copy.
                            return Poll::Ready(Err(io::Error::other(
                                "writer reported more bytes than it was given",
                            )));
                        }
                        self.pos += n;
                        self.copied += n as u64;
                        self.need_flush = true;
                    }
                    if self.read_done {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.stage = Stage::ShuttingDown;
                    }
                }
                Stage::ShuttingDown => {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.stage = Stage::Done;
                }
                Stage::Done => return Poll::Ready(Ok(self.copied)),
            }
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both have ended (each end's EOF
/// shuts the other's write side, so a half-close passes through) or
/// either fails; the bytes copied each way. What
/// `tokio::io::copy_bidirectional` does, over reused buffers.
pub async fn both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut up, mut down) = (Direction::new(), Direction::new());
    poll_fn(|cx| {
        let a_to_b = up.poll(cx, a, b)?;
        let b_to_a = down.poll(cx, b, a)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_a_half_close_passes_and_buffers_are_reused() {
        // client <-> (a | b) <-> server, over in-memory pipes.
        let (mut client, mut a) = tokio::io::duplex(BUFFER);
        let (mut b, mut server) = tokio::io::duplex(BUFFER);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let copy = tokio::spawn(async move { both_ways(&mut a, &mut b).await });
        let client_side = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap(); // half-close
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        // The server sees the client's EOF, then answers.
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        server
            .write_all(b"answer after the half-close")
            .await
            .unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), b"answer after the half-close");
        let (up, down) = copy.await.unwrap().unwrap();
        assert_eq!((up, down), (300_000, 27));
        // The copy's two buffers went back to the stock of the thread
        // that ran it, full of the 300 KB's bytes; the next copy on it
        // takes them again and sends only what it reads.
        let first = SPARE.with(|s| s.borrow().len());
        assert!(first >= 2, "{first} buffers in stock after the copy");
        let (mut client, mut a) = tokio::io::duplex(BUFFER);
        let (mut b, mut server) = tokio::io::duplex(BUFFER);
        let copy = tokio::spawn(async move { both_ways(&mut a, &mut b).await });
        client.write_all(b"short").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"short", "only the new read's bytes");
        drop(server);
        drop(client);
        copy.await.unwrap().unwrap();
        assert_eq!(SPARE.with(|s| s.borrow().len()), first, "reused, not made");
    }

    #[tokio::test]
    async fn a_write_error_ends_the_copy_with_it() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, server) = tokio::io::duplex(64);
        drop(server);
        client.write_all(b"to nowhere").await.unwrap();
        let r = both_ways(&mut a, &mut b).await;
        assert_eq!(
            r.map_err(|e| e.kind()).unwrap_err(),
            io::ErrorKind::BrokenPipe
        );
    }
}
