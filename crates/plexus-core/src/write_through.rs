//! Non-blocking vectored writes to a connection's raw TCP socket, for the write-through
//! fan-out: when a connection's outbox is empty and its task is not writing, the fan-out
//! writes a broadcast's frame (WebSocket header + the shared payload) straight to the socket
//! with one `sendmsg`, instead of queueing it and waking the connection's task
//! (see [`Outbox::push_publication`](crate::outbox::Outbox::push_publication) and
//! "Write-through fan-out" in `BENCHMARKS.md`).
//!
//! This module holds the crate's only `unsafe` code for it: one `sendmsg(2)` call on a file
//! descriptor. What keeps it sound is outside this file and worth stating here:
//! - a [`RawSocket`] is taken from a live plain-TCP stream at accept ([`RawSocket::of`]), and
//!   handed to the outbox of the WebSocket that owns that stream;
//! - the outbox only writes to it while holding its lock, and the WebSocket transport clears
//!   it ([`Outbox::detach_socket`](crate::outbox::Outbox::detach_socket)) under that lock
//!   before the stream is closed (its loop's end, and the `Socket`'s teardown when the task is
//!   dropped), so a descriptor number reused by a later connection is never written.
//!
//! Writing to a wrong descriptor would not be memory-unsafe (the kernel checks it), only a
//! protocol error for some other peer; the lock discipline above is what rules it out.

use std::io;

/// The descriptor of a connection's plain TCP socket (never a TLS stream: its bytes must go
/// through the TLS session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSocket(i32);

impl RawSocket {
    /// The descriptor of `stream`. The caller hands it only to the outbox of the connection
    /// that owns `stream` (see the module's documentation).
    #[cfg(unix)]
    pub fn of(stream: &tokio::net::TcpStream) -> Self {
        use std::os::fd::AsRawFd;
        RawSocket(stream.as_raw_fd())
    }

    /// Writes `head` then `body` with one non-blocking `sendmsg` (no `SIGPIPE`). Returns the
    /// bytes written (possibly fewer than both: the rest is the caller's), or the error
    /// (`WouldBlock` when the socket's send buffer is full).
    #[cfg(unix)]
    pub fn send(self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        let mut iov = [
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: body.as_ptr() as *mut libc::c_void,
                iov_len: body.len(),
            },
        ];
        // SAFETY: a zeroed msghdr is valid (no name, no control data); `msg_iov` points at two
        // iovecs that describe the live slices `head` and `body`, which sendmsg only reads
        // and which outlive the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Not available: every write takes the connection's task.
    #[cfg(not(unix))]
    pub fn send(self, _head: &[u8], _body: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}
