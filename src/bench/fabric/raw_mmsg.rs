//! The UDP suite's baseline: `sendmmsg`/`recvmmsg` called directly on the fabric's own
//! sockets, with no session table, counters or header: the floor the UDP fabric's
//! bookkeeping is measured against.
#![allow(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// Most datagrams per call, as the fabric's bursts.
pub const BURST: usize = dataplane::fabric::udp::BURST;
const BUF: usize = 2048;

/// All-zero C structs (and arrays of them) of integers and raw pointers.
fn zeroed<T: Zeroable>() -> T {
    // SAFETY: Zeroable is implemented only for the libc structs used here, arrays of them,
    // which are integers and raw pointers: all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Types for which all-zero bytes are a valid value.
trait Zeroable {}
impl Zeroable for [libc::sockaddr_in; BURST] {}
impl Zeroable for [libc::iovec; BURST] {}
impl Zeroable for [libc::mmsghdr; BURST] {}

/// Batched send and receive on two raw sockets (any thread may own it).
pub struct RawMmsg {
    fd: RawFd,
    dest: Box<libc::sockaddr_in>,
    store: Box<[[u8; BUF]; BURST]>,
    src: Box<[libc::sockaddr_in; BURST]>,
    tx_iov: Box<[libc::iovec; BURST]>,
    rx_iov: Box<[libc::iovec; BURST]>,
    tx: Box<[libc::mmsghdr; BURST]>,
    rx: Box<[libc::mmsghdr; BURST]>,
}

// SAFETY: the raw pointers in the headers point into this struct's own boxes (which move
// with it without their contents moving) or at caller data set per call.
unsafe impl Send for RawMmsg {}

impl RawMmsg {
    /// Sends on `fd` to `to` (IPv4), receives on `fd`.
    pub fn new(fd: RawFd, to: SocketAddr) -> Result<Self, String> {
        let IpAddr::V4(ip) = to.ip() else {
            return Err(format!("the raw baseline runs on IPv4, not {to}"));
        };
        let dest = Box::new(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        });
        let mut me = Self {
            fd,
            dest,
            store: Box::new([[0u8; BUF]; BURST]),
            src: Box::new(zeroed()),
            tx_iov: Box::new(zeroed()),
            rx_iov: Box::new(zeroed()),
            tx: Box::new(zeroed()),
            rx: Box::new(zeroed()),
        };
        for i in 0..BURST {
            me.rx_iov[i] = libc::iovec {
                iov_base: me.store[i].as_mut_ptr().cast(),
                iov_len: BUF,
            };
            let h = &mut me.tx[i].msg_hdr;
            h.msg_name = std::ptr::addr_of_mut!(*me.dest).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut me.tx_iov[i];
            h.msg_iovlen = 1;
            let h = &mut me.rx[i].msg_hdr;
            h.msg_name = std::ptr::addr_of_mut!(me.src[i]).cast();
            h.msg_iov = &mut me.rx_iov[i];
            h.msg_iovlen = 1;
        }
        Ok(me)
    }

    /// Sends `frames` (at most [`BURST`]) without blocking; returns how many went.
    pub fn send(&mut self, frames: &[&[u8]]) -> usize {
        let n = frames.len().min(BURST);
        for (iov, f) in self.tx_iov.iter_mut().zip(&frames[..n]) {
            *iov = libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            };
        }
        // SAFETY: tx[..n] point at `dest` and `tx_iov[..n]`, which point at the caller's
        // frames; all alive and unmoved for the call, and the kernel only reads them.
        let r = unsafe {
            libc::sendmmsg(
                self.fd,
                self.tx.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(r).unwrap_or(0)
    }

    /// Receives up to a burst without blocking; returns the datagrams' lengths in `lens`
    /// and how many arrived. The data is in [`RawMmsg::datagram`].
    pub fn recv(&mut self, lens: &mut [usize; BURST]) -> usize {
        for m in self.rx.iter_mut() {
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_flags = 0;
        }
        // SAFETY: rx holds BURST headers pointing at `src`, `rx_iov` and `store`, all owned
        // by self and unmoved for the call; the kernel writes within the lengths given.
        let k = unsafe {
            libc::recvmmsg(
                self.fd,
                self.rx.as_mut_ptr(),
                BURST as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let k = usize::try_from(k).unwrap_or(0);
        for (l, m) in lens.iter_mut().zip(&self.rx[..k]) {
            *l = m.msg_len as usize;
        }
        k
    }

    /// The bytes of received datagram `i` (valid until the next `recv`).
    pub fn datagram(&self, i: usize, len: usize) -> &[u8] {
        &self.store[i][..len.min(BUF)]
    }
}

/// Waits up to `ms` for `fd` to be readable (true if it is).
pub fn wait_readable(fd: RawFd, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// This thread's CPU time (user and system), which a neighbour on the shared cores does
/// not inflate the way it inflates wall time.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
