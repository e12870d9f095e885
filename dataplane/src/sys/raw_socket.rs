//! An AF_PACKET raw socket bound to one interface: sends and receives whole Ethernet frames
//! through the kernel. Used by tests and the lab traffic tools as the kernel-side peer of a
//! DPDK port. Needs CAP_NET_RAW.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Why a raw socket operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} on interface '{iface}': {source}")]
pub struct RawSocketError {
    /// What was being attempted.
    pub action: &'static str,
    /// The interface name.
    pub iface: String,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// A raw packet socket bound to one interface, receiving every protocol.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
    iface: String,
}

impl RawSocket {
    /// Opens a socket bound to `iface`. Frames the socket itself sends are not received back.
    ///
    /// # Errors
    /// The interface does not exist (ENODEV), the caller lacks CAP_NET_RAW (EPERM), or the
    /// socket cannot be made.
    pub fn bind(iface: &str) -> Result<RawSocket, RawSocketError> {
        Self::bind_protocol(iface, libc::ETH_P_ALL as u16)
    }

    /// Like [`bind`](Self::bind), but receives only frames of one ethertype (e.g.
    /// `ETH_P_ARP`), so a listener for one protocol is not woken by every frame.
    pub fn bind_protocol(iface: &str, ethertype: u16) -> Result<RawSocket, RawSocketError> {
        let err = |action, source| RawSocketError {
            action,
            iface: iface.to_owned(),
            source,
        };
        let c_iface = CString::new(iface).map_err(|_| {
            err(
                "checking the interface name",
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?;
        // SAFETY: c_iface is NUL-terminated and only read.
        let ifindex = unsafe { libc::if_nametoindex(c_iface.as_ptr()) };
        if ifindex == 0 {
            return Err(err("looking up the interface", io::Error::last_os_error()));
        }
        let ifindex = i32::try_from(ifindex).map_err(|_| {
            err(
                "looking up the interface",
                io::Error::from(io::ErrorKind::InvalidData),
            )
        })?;

        // Protocol 0: receive nothing until bound, so no frame of another interface slips in.
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err(
                "opening an AF_PACKET socket",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: raw is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = RawSocket {
            fd,
            ifindex,
            iface: iface.to_owned(),
        };

        // Best effort: kernels before 4.20 lack it, and recv() filters outgoing frames anyway.
        let _ = sock.setsockopt(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1);

        let addr = sock.sockaddr(ethertype.to_be());
        // SAFETY: addr is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err(
                "binding the AF_PACKET socket",
                io::Error::last_os_error(),
            ));
        }
        Ok(sock)
    }

    /// The interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The interface index.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// Sends one frame (destination MAC first; the kernel adds no header). Returns the bytes
    /// sent.
    ///
    /// # Errors
    /// ENOBUFS/EAGAIN when the interface queue is full, EMSGSIZE for a frame above the MTU.
    pub fn send(&self, frame: &[u8]) -> Result<usize, RawSocketError> {
        // SAFETY: frame is a valid readable buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        usize::try_from(n).map_err(|_| self.err("sending a frame", io::Error::last_os_error()))
    }

    /// Sends one frame without waiting: when the interface's queue and this socket's send
    /// buffer are full (the kernel interface's reader, a DPDK worker, is behind), the frame
    /// is refused with EAGAIN rather than the caller put to sleep. For the control thread,
    /// whose heartbeats must not wait for the dataplane.
    ///
    /// # Errors
    /// EAGAIN/ENOBUFS when the queue is full, EMSGSIZE for a frame above the MTU.
    pub fn send_nowait(&self, frame: &[u8]) -> Result<usize, RawSocketError> {
        // SAFETY: frame is a valid readable buffer of frame.len() bytes.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| self.err("sending a frame", io::Error::last_os_error()))
    }

    /// Receives one incoming frame into `buf`, waiting up to `timeout`. Returns `Ok(None)` on
    /// timeout, else the frame's full length (larger than `buf.len()` if it was truncated).
    ///
    /// # Errors
    /// A failed poll or recvfrom (other than EINTR).
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>, RawSocketError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            // Round sub-millisecond waits up, so a short timeout still waits rather than spins.
            let ms = if ms == 0 && !left.is_zero() { 1 } else { ms };
            // SAFETY: pfd is one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.err("waiting for a frame", e));
            }
            if rc == 0 {
                return Ok(None);
            }
            // SAFETY: an all-zero sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
            let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf is writable for buf.len() bytes; from/from_len describe a valid
            // sockaddr_ll buffer. MSG_TRUNC makes the kernel report the real frame length.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                    std::ptr::from_mut(&mut from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) {
                    continue;
                }
                return Err(self.err("receiving a frame", e));
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }

    /// Puts the interface in promiscuous mode for as long as this socket lives (or until
    /// turned off), so frames for other MACs are received too.
    ///
    /// # Errors
    /// The kernel refuses the membership change.
    pub fn set_promiscuous(&self, on: bool) -> Result<(), RawSocketError> {
        let mreq = libc::packet_mreq {
            mr_ifindex: self.ifindex,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        let opt = if on {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        // SAFETY: mreq is a valid packet_mreq of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                opt,
                std::ptr::from_ref(&mreq).cast(),
                mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(self.err("changing promiscuous mode", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Sets the receive buffer to `bytes`, past `net.core.rmem_max` when privileged
    /// (SO_RCVBUFFORCE), so bursts are not dropped while the reader is busy.
    ///
    /// # Errors
    /// The kernel refuses both SO_RCVBUFFORCE and SO_RCVBUF.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<(), RawSocketError> {
        let v = i32::try_from(bytes).unwrap_or(i32::MAX);
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v)
            .or_else(|_| self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, v))
            .map_err(|e| self.err("setting the receive buffer size", e))
    }

    fn setsockopt(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: value is a valid int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn sockaddr(&self, protocol_be: u16) -> libc::sockaddr_ll {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol_be;
        addr.sll_ifindex = self.ifindex;
        addr
    }

    fn err(&self, action: &'static str, source: io::Error) -> RawSocketError {
        RawSocketError {
            action,
            iface: self.iface.clone(),
            source,
        }
    }
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
