//! Waiting for a file descriptor with a precise timeout.
//!
//! A socket's receive timeout (SO_RCVTIMEO) counts in scheduler ticks: with HZ=250 a
//! 1 ms wait ends on the next 4 ms tick boundary or later, which made the control loop's
//! heartbeats and deadlines run several milliseconds late. `ppoll` sleeps on a
//! high-resolution timer instead (and a SCHED_FIFO thread gets no timer slack).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Waits until `fd` is readable or `timeout` has passed; returns whether it is readable.
/// An interrupted wait (EINTR) returns `Ok(false)`: the caller's loop checks its flags and
/// waits again.
///
/// # Errors
/// The `ppoll` error, other than EINTR.
pub fn readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    // SAFETY: pfd is one valid pollfd and ts a valid timespec, both live for the call; a
    // null signal mask leaves the thread's mask as it is.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Instant;

    #[test]
    fn times_out_precisely_and_sees_a_datagram() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let t0 = Instant::now();
        assert!(!readable(&a, Duration::from_micros(1500)).expect("ppoll"));
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_micros(1500),
            "woke early: {waited:?}"
        );
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        b.send_to(b"x", a.local_addr().expect("addr"))
            .expect("send");
        assert!(readable(&a, Duration::from_secs(5)).expect("ppoll"));
    }
}
