//! Network namespaces: running a piece of set-up inside a named namespace (`ip netns add`
//! creates them under /run/netns) and coming back.
//!
//! A network namespace is a property of a thread, not of a process: `setns(2)` moves only
//! the calling thread, and sockets, TAP devices and af_packet bindings belong to the
//! namespace their creating thread was in, for their whole life. So a daemon can open its
//! NIC, its kernel interface and their netlink and packet sockets inside a node's namespace,
//! return, and create its fabric sockets (UDP, rdma_cm) in the namespace it started in;
//! every fd keeps working from any thread afterwards. Threads spawned while inside inherit
//! the namespace, so spawn long-lived threads only after returning.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// What went wrong entering or leaving a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name cannot be a file under /run/netns.
    #[error("network namespace name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Opening the namespace file (or our own) failed.
    #[error("opening network namespace {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` refused.
    #[error("{action}: setns: {source}")]
    Setns {
        /// Entering or leaving, and which namespace.
        action: String,
        /// The errno (EPERM without CAP_SYS_ADMIN, EINVAL if the file is no net namespace).
        #[source]
        source: io::Error,
    },
}

/// Checks that `name` names a file directly under /run/netns.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name == "." || name == ".." {
        return Err("may not be . or ..");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("may not contain '/' or NUL");
    }
    if name.len() > 255 {
        return Err("longer than 255 bytes");
    }
    Ok(())
}

/// The file of a named namespace.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

/// The calling thread is inside another network namespace until [`NetnsGuard::leave`]
/// (or drop) brings it back to the one it was in before.
#[derive(Debug)]
pub struct NetnsGuard {
    home: Option<File>,
    name: String,
}

fn setns(fd: &File, action: impl FnOnce() -> String) -> Result<(), NetnsError> {
    // SAFETY: setns only reads the fd, which `fd` keeps open for the call; it changes the
    // calling thread's namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetnsError::Setns {
            action: action(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `name` (a file under /run/netns).
pub fn enter(name: &str) -> Result<NetnsGuard, NetnsError> {
    check_name(name).map_err(|reason| NetnsError::BadName {
        name: name.to_owned(),
        reason,
    })?;
    // Our own namespace first, so there is a way back before we leave.
    let own = PathBuf::from("/proc/thread-self/ns/net");
    let home = File::open(&own).map_err(|source| NetnsError::Open { path: own, source })?;
    let path = path_of(name);
    let target = File::open(&path).map_err(|source| NetnsError::Open { path, source })?;
    setns(&target, || format!("entering network namespace {name}"))?;
    Ok(NetnsGuard {
        home: Some(home),
        name: name.to_owned(),
    })
}

impl NetnsGuard {
    /// The namespace the thread is in.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the thread to the namespace it was in before [`enter`].
    pub fn leave(mut self) -> Result<(), NetnsError> {
        self.go_home()
    }

    fn go_home(&mut self) -> Result<(), NetnsError> {
        match self.home.take() {
            Some(home) => setns(&home, || {
                format!("returning from network namespace {}", self.name)
            }),
            None => Ok(()),
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = self.go_home() {
            // Nothing sane is left to do on this thread: whatever it creates next would land
            // in the wrong namespace. Say so loudly; callers use `leave` to see the error.
            tracing::error!("{e}");
        }
    }
}

/// Runs `f` inside the namespace `name`, then returns the thread to where it was.
pub fn run_in<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let guard = enter(name)?;
    let out = f();
    guard.leave()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("node-a").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
        let err = enter("../etc").expect_err("a path is no name");
        assert!(err.to_string().contains("may not contain '/'"), "{err}");
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let name = format!("np-missing-{}", std::process::id());
        let err = enter(&name).expect_err("no such namespace");
        let text = err.to_string();
        assert!(
            text.contains(&name) && text.contains("No such file"),
            "{text}"
        );
    }

    /// Enters a namespace made for the test, sees its own loopback-only world, and comes
    /// back to a namespace that still has the interfaces it had before. Needs root; skipped
    /// (with a note) without it.
    #[test]
    fn enters_and_returns() {
        let name = format!("np-nstest-{}", std::process::id());
        let made = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !made {
            eprintln!("skipped: cannot create a network namespace (not root?)");
            return;
        }
        struct Del(String);
        impl Drop for Del {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _del = Del(name.clone());
        let ino = || {
            std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .expect("own namespace")
        };
        // A socket made inside keeps that namespace after the thread left it: there lo is
        // still down, so sending to itself fails, while a socket made at home works.
        let (before, inside, sock, after) = std::thread::spawn({
            let name = name.clone();
            move || {
                let before = ino();
                let (inside, sock) = run_in(&name, || {
                    (
                        ino(),
                        std::net::UdpSocket::bind("127.0.0.1:0").expect("bind inside"),
                    )
                })
                .expect("enter and leave");
                (before, inside, sock, ino())
            }
        })
        .join()
        .expect("thread");
        assert_ne!(inside, before);
        assert_eq!(after, before);
        let to_self = |s: &std::net::UdpSocket| s.send_to(b"x", s.local_addr().expect("bound"));
        assert!(to_self(&sock).is_err(), "lo is down in the fresh namespace");
        let home = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind at home");
        assert!(to_self(&home).is_ok());
    }
}
