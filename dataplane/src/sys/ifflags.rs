//! Reads an interface's flags with `SIOCGIFFLAGS`. `IFF_RUNNING` is the operational state
//! (carrier up), which is what the NIC detector needs for kernel-backed vdevs (af_packet,
//! af_xdp). The kernel answers this ioctl under RCU, without the RTNL lock that every
//! netlink link query waits for: on a machine where other interfaces are being created or
//! torn down, a 2 ms netlink poll could stall the control thread long enough for its peers
//! to declare it dead (seen in the lab).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A probe of one interface's flags, in the network namespace it was created in.
#[derive(Debug)]
pub struct IfFlagsProbe {
    sock: OwnedFd,
    req: libc::ifreq,
    name: String,
}

// SAFETY: the ifreq only holds the interface name (plain bytes) between calls.
unsafe impl Send for IfFlagsProbe {}

impl IfFlagsProbe {
    /// A probe of interface `name` (looked up at each call, by name, in the namespace the
    /// probe was created in).
    pub fn new(name: &str) -> io::Result<IfFlagsProbe> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
        }
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero ifreq is valid (empty name, zero union).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let probe = IfFlagsProbe {
            sock,
            req,
            name: name.to_string(),
        };
        probe.flags()?;
        Ok(probe)
    }

    fn flags(&self) -> io::Result<libc::c_short> {
        let mut req = self.req;
        // SAFETY: `req` is a valid ifreq holding a NUL-terminated name; SIOCGIFFLAGS writes
        // only ifru_flags within it.
        let rc = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("reading the flags of {}: {e}", self.name)));
        }
        // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
        Ok(unsafe { req.ifr_ifru.ifru_flags })
    }

    /// Whether the interface is up and has carrier (`IFF_UP` and `IFF_RUNNING`).
    pub fn running(&self) -> io::Result<bool> {
        let f = i32::from(self.flags()?);
        Ok(f & libc::IFF_UP != 0 && f & libc::IFF_RUNNING != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_runs_and_bad_names_fail() {
        assert!(IfFlagsProbe::new("lo").and_then(|p| p.running()).expect("lo"));
        assert!(IfFlagsProbe::new("no-such-if9").is_err());
        assert!(IfFlagsProbe::new("").is_err());
        assert!(IfFlagsProbe::new("a-name-far-too-long-for-linux").is_err());
    }
}
