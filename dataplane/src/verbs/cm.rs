//! Connection setup by IP address with rdma_cm: [`Listener`] and [`Connection`].
//!
//! Every connection has its own rdma_cm event channel, read non-blocking and waited on
//! with `poll(2)` under a deadline, so an unreachable or silent peer gives an error within
//! the caller's timeout instead of a hang. After setup the same channel reports the peer's
//! disconnect and device removal, which [`Connection::status`] turns into a
//! [`DownReason`] for the control plane.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::os::raw::c_int;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rdma_core_sys as sys;

use super::device::{no_device_or_os, Context};
use super::error::{Result, VerbsError};
use super::qp::{QpSetup, QpState, QueuePair};

/// Largest private data [`Connection::connect`] can carry (RoCE/IB CM request, minus
/// rdma_cm's header and our length byte).
pub const CONNECT_PRIVATE_DATA_MAX: usize = 55;
/// Largest private data [`Listener::accept`] can carry (CM reply, minus our length byte).
pub const ACCEPT_PRIVATE_DATA_MAX: usize = 195;
/// Largest reason [`Listener::accept_vetted`] sends with a reject (an IB CM reject's
/// private data, 148 bytes, minus our length byte, kept short of the limit).
pub const REJECT_PRIVATE_DATA_MAX: usize = 140;
/// What the CM delivers at most (an IB CM reply's private data).
const PRIVATE_DATA_BUF: usize = 196;
const LISTEN_BACKLOG: c_int = 16;

// ---------------------------------------------------------------------------------- fds

pub(crate) fn set_nonblocking(fd: RawFd, op: &'static str) -> Result<()> {
    // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(VerbsError::last_os(op));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(VerbsError::last_os(op));
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes (`None`: forever). True if readable.
pub(crate) fn wait_readable(
    fd: RawFd,
    timeout: Option<Duration>,
    op: &'static str,
) -> Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms: c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so a sub-millisecond rest still waits instead of spinning.
                c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(VerbsError::Os {
                op: op.into(),
                source: err,
            });
        }
    }
}

// ---------------------------------------------------------------------- socket addresses

fn to_sockaddr(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write(ptr::addr_of_mut!(ss).cast::<libc::sockaddr_in>(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write(ptr::addr_of_mut!(ss).cast::<libc::sockaddr_in6>(), sin6) };
        }
    }
    ss
}

/// # Safety
/// `sa` points to a valid sockaddr of at least the size its family implies.
unsafe fn from_sockaddr(sa: *const sys::sockaddr) -> Option<SocketAddr> {
    // SAFETY: the caller guarantees a readable sockaddr; the family field comes first.
    let family = c_int::from(unsafe { (*sa).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn unspecified_like(ip: IpAddr) -> SocketAddr {
    match ip {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

// ------------------------------------------------------------------------ event channel

/// An rdma_cm event channel, non-blocking.
struct EventChannel(NonNull<sys::rdma_event_channel>);

/// The parts of an rdma_cm event we keep after acknowledging it.
struct Event {
    kind: sys::rdma_cm_event_type::Type,
    status: i32,
    id: *mut sys::rdma_cm_id,
    private: [u8; PRIVATE_DATA_BUF],
    private_len: usize,
}

impl Event {
    fn name(&self) -> &'static str {
        event_name(self.kind)
    }

    /// Our framing: one length byte, then the caller's bytes (the CM pads to its size).
    fn user_private_data(&self) -> Vec<u8> {
        match self.private[..self.private_len].split_first() {
            Some((&n, rest)) if usize::from(n) <= rest.len() => rest[..usize::from(n)].to_vec(),
            _ => Vec::new(),
        }
    }

    fn error(&self, op: impl Into<Cow<'static, str>>) -> VerbsError {
        VerbsError::CmEvent {
            op: op.into(),
            event: self.name(),
            status: self.status,
            status_text: status_text(self.kind, self.status),
        }
    }
}

fn event_name(kind: sys::rdma_cm_event_type::Type) -> &'static str {
    // SAFETY: rdma_event_str returns a pointer to a static string for any value.
    let s = unsafe { std::ffi::CStr::from_ptr(sys::rdma_event_str(kind)) };
    s.to_str().unwrap_or("RDMA_CM_EVENT_?")
}

fn status_text(kind: sys::rdma_cm_event_type::Type, status: i32) -> String {
    if kind == sys::rdma_cm_event_type::RDMA_CM_EVENT_REJECTED && status > 0 {
        return reject_reason(status).into_owned();
    }
    if status < 0 {
        return io::Error::from_raw_os_error(-status).to_string();
    }
    if status == 0 {
        return "no error".to_owned();
    }
    format!("status {status}")
}

/// The IB CM reject reason of a reject sent by the peer's application (rdma_reject).
const CONSUMER_REJECT: i32 = 28;

/// IB CM reject reasons (IBTA 12.6.7.2) that a RoCE peer sends.
fn reject_reason(status: i32) -> Cow<'static, str> {
    match status {
        1 => "no QP available".into(),
        3 => "no resources".into(),
        4 => "timeout".into(),
        5 => "unsupported request".into(),
        6 | 7 => "invalid communication id".into(),
        8 => "no listener on that port (invalid service id)".into(),
        9 => "invalid transport type".into(),
        10 => "stale connection".into(),
        12 => "invalid GID".into(),
        28 => "rejected by the peer application".into(),
        other => format!("reject reason {other}").into(),
    }
}

// SAFETY: the channel is a file descriptor wrapper; rdma_get_cm_event on it is thread safe
// (the kernel hands each event to one reader).
unsafe impl Send for EventChannel {}
// SAFETY: see Send.
unsafe impl Sync for EventChannel {}

impl EventChannel {
    fn new(op: &'static str) -> Result<Self> {
        // SAFETY: no arguments; returns NULL with errno on failure.
        let ch = unsafe { sys::rdma_create_event_channel() };
        let Some(ch) = NonNull::new(ch) else {
            return Err(no_device_or_os(op, io::Error::last_os_error()));
        };
        let me = Self(ch);
        set_nonblocking(me.fd(), op)?;
        Ok(me)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the channel is valid while self lives; fd is a plain field.
        unsafe { (*self.0.as_ptr()).fd }
    }

    /// Takes one event if one is pending, copies what we need and acknowledges it.
    fn try_get(&self, op: &'static str) -> Result<Option<Event>> {
        let mut ev: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is valid; the fd is non-blocking, so this returns EAGAIN
        // instead of sleeping.
        let rc = unsafe { sys::rdma_get_cm_event(self.0.as_ptr(), &mut ev) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ if err.raw_os_error() == Some(libc::ENODATA) => Ok(None),
                _ => Err(VerbsError::Os {
                    op: op.into(),
                    source: err,
                }),
            };
        }
        // SAFETY: rdma_get_cm_event succeeded, so ev points to a valid event until it is
        // acknowledged below; for connection events, `param.conn` is the active member and
        // its private data pointer covers private_data_len bytes.
        let out = unsafe {
            let e = &*ev;
            let mut out = Event {
                kind: e.event,
                status: e.status,
                id: e.id,
                private: [0; PRIVATE_DATA_BUF],
                private_len: 0,
            };
            let conn = &e.param.conn;
            if !conn.private_data.is_null() {
                let n = usize::from(conn.private_data_len).min(PRIVATE_DATA_BUF);
                ptr::copy_nonoverlapping(
                    conn.private_data.cast::<u8>(),
                    out.private.as_mut_ptr(),
                    n,
                );
                out.private_len = n;
            }
            out
        };
        // SAFETY: ev is the event just taken, acknowledged exactly once; nothing from it is
        // used afterwards (the id pointer stays valid: ids outlive their events).
        unsafe { sys::rdma_ack_cm_event(ev) };
        Ok(Some(out))
    }

    /// Waits for the next event until `deadline`; `op` names the step in a timeout error.
    fn wait(&self, deadline: Instant, allowed: Duration, op: impl Fn() -> String) -> Result<Event> {
        const OP: &str = "waiting for an rdma_cm event";
        loop {
            if let Some(ev) = self.try_get(OP)? {
                return Ok(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(self.fd(), Some(left), OP)? {
                return Err(VerbsError::Timeout {
                    op: op().into(),
                    timeout: allowed,
                });
            }
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id on this channel is destroyed before it (field and local
        // variable order), and the channel is destroyed once.
        unsafe { sys::rdma_destroy_event_channel(self.0.as_ptr()) };
    }
}

// --------------------------------------------------------------------------------- ids

/// An id together with the channel its events go to. Field order is drop order: the id
/// must be destroyed while its channel still exists.
struct Endpoint {
    id: CmId,
    channel: EventChannel,
}

/// An rdma_cm id; destroyed on drop (after its QP, which the owner destroys).
struct CmId(NonNull<sys::rdma_cm_id>);

// SAFETY: librdmacm allows calls on an id from any thread; we only make them from the
// owner's methods.
unsafe impl Send for CmId {}
// SAFETY: the shared methods (disconnect, address reads) are safe to call concurrently.
unsafe impl Sync for CmId {}

impl CmId {
    fn new(channel: &EventChannel, op: &'static str) -> Result<Self> {
        let mut id: *mut sys::rdma_cm_id = ptr::null_mut();
        // SAFETY: the channel is valid; the id is written through a valid pointer.
        let rc = unsafe {
            sys::rdma_create_id(
                channel.0.as_ptr(),
                &mut id,
                ptr::null_mut(),
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        match NonNull::new(id) {
            Some(id) if rc == 0 => Ok(Self(id)),
            _ => Err(no_device_or_os(op, io::Error::last_os_error())),
        }
    }

    fn as_ptr(&self) -> *mut sys::rdma_cm_id {
        self.0.as_ptr()
    }

    fn verbs(&self) -> *mut sys::ibv_context {
        // SAFETY: the id is valid; verbs is set by rdma_cm once bound or resolved.
        unsafe { (*self.0.as_ptr()).verbs }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is valid and its route's source address is a sockaddr_storage.
        unsafe {
            from_sockaddr(ptr::addr_of!(
                (*self.0.as_ptr()).route.addr.__bindgen_anon_1.src_addr
            ))
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is valid and its route's destination is a sockaddr_storage.
        unsafe {
            from_sockaddr(ptr::addr_of!(
                (*self.0.as_ptr()).route.addr.__bindgen_anon_2.dst_addr
            ))
        }
    }

    /// The device rdma_cm bound the id to, as a [`Context`] (None if not bound to one).
    fn context(&self, op: &'static str) -> Result<Option<Context>> {
        let v = self.verbs();
        if v.is_null() {
            return Ok(None);
        }
        Context::from_cm_verbs(v, op).map(Some)
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the owner destroyed the id's QP first and acknowledged every event it
        // took; the id is destroyed once.
        let rc = unsafe { sys::rdma_destroy_id(self.0.as_ptr()) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "destroying an rdma_cm id failed");
        }
    }
}

fn ms(d: Duration) -> c_int {
    c_int::try_from(d.as_millis()).unwrap_or(c_int::MAX).max(1)
}

/// Resolves `remote` (from `local` if given) on `id` and waits for the answer.
fn resolve_addr(
    id: &CmId,
    channel: &EventChannel,
    local: Option<IpAddr>,
    remote: SocketAddr,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    let mut dst = to_sockaddr(remote);
    let mut src = local.map(|ip| to_sockaddr(SocketAddr::new(ip, 0)));
    let src_ptr = src.as_mut().map_or(ptr::null_mut(), |s| {
        ptr::addr_of_mut!(*s).cast::<sys::sockaddr>()
    });
    let left = deadline.saturating_duration_since(Instant::now());
    // SAFETY: the id is valid; the addresses are valid sockaddr_storage values that
    // rdma_resolve_addr copies before returning.
    let rc = unsafe {
        sys::rdma_resolve_addr(
            id.as_ptr(),
            src_ptr,
            ptr::addr_of_mut!(dst).cast::<sys::sockaddr>(),
            ms(left),
        )
    };
    if rc != 0 {
        return Err(VerbsError::last_os(format!(
            "resolving the RDMA address of {remote}{}",
            local.map(|l| format!(" from {l}")).unwrap_or_default()
        )));
    }
    let ev = channel.wait(deadline, timeout, || {
        format!("resolving the RDMA address of {remote} (no answer: is the address reachable?)")
    })?;
    if ev.kind != sys::rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED {
        return Err(ev.error(format!("resolving the RDMA address of {remote}")));
    }
    Ok(())
}

pub(crate) fn device_of_local_addr(ip: IpAddr) -> Result<Context> {
    const OP: &str = "finding the RDMA device of a local address";
    let channel = EventChannel::new(OP)?;
    let id = CmId::new(&channel, OP)?;
    let mut sa = to_sockaddr(SocketAddr::new(ip, 0));
    // SAFETY: the id is valid and sa a valid sockaddr that rdma_bind_addr copies.
    let rc =
        unsafe { sys::rdma_bind_addr(id.as_ptr(), ptr::addr_of_mut!(sa).cast::<sys::sockaddr>()) };
    if rc != 0 {
        return Err(VerbsError::last_os(format!(
            "binding rdma_cm to {ip} to find its RDMA device"
        )));
    }
    id.context(OP)?.ok_or_else(|| {
        VerbsError::invalid(
            format!("finding the RDMA device of {ip}"),
            "the address is not on an RDMA device's netdev (no rxe / HCA port has it)",
        )
    })
}

pub(crate) fn device_of_route(
    local: Option<IpAddr>,
    remote: SocketAddr,
    timeout: Duration,
) -> Result<Context> {
    const OP: &str = "finding the RDMA device of a route";
    let deadline = Instant::now() + timeout;
    let channel = EventChannel::new(OP)?;
    let id = CmId::new(&channel, OP)?;
    resolve_addr(&id, &channel, local, remote, deadline, timeout)?;
    id.context(OP)?
        .ok_or_else(|| VerbsError::invalid(OP, "rdma_cm resolved the address to no device"))
}

// ----------------------------------------------------------------------------- listener

/// A passive rdma_cm endpoint bound to an IP address and port.
pub struct Listener {
    ep: Endpoint,
    addr: SocketAddr,
    ctx: Option<Context>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("device", &self.ctx.as_ref().map(Context::name))
            .finish()
    }
}

impl Listener {
    /// Binds to `addr` (port 0 picks a free port) and listens.
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        const OP: &str = "creating an rdma_cm listener";
        let channel = EventChannel::new(OP)?;
        let id = CmId::new(&channel, OP)?;
        let one: c_int = 1;
        // SAFETY: the id is valid; the option value is a readable c_int of the given size.
        // Reuse lets a restarted daemon listen again while old connections time out.
        let rc = unsafe {
            sys::rdma_set_option(
                id.as_ptr(),
                sys::RDMA_OPTION_ID as c_int,
                sys::RDMA_OPTION_ID_REUSEADDR as c_int,
                ptr::addr_of!(one).cast_mut().cast(),
                mem::size_of::<c_int>(),
            )
        };
        if rc != 0 {
            return Err(VerbsError::last_os(format!(
                "setting SO_REUSEADDR on the rdma_cm listener for {addr}"
            )));
        }
        let mut sa = to_sockaddr(addr);
        // SAFETY: the id is valid and sa is a valid sockaddr that rdma_bind_addr copies.
        let rc = unsafe {
            sys::rdma_bind_addr(id.as_ptr(), ptr::addr_of_mut!(sa).cast::<sys::sockaddr>())
        };
        if rc != 0 {
            return Err(VerbsError::last_os(format!(
                "binding an rdma_cm listener to {addr}"
            )));
        }
        // SAFETY: the id is bound.
        if unsafe { sys::rdma_listen(id.as_ptr(), LISTEN_BACKLOG) } != 0 {
            return Err(VerbsError::last_os(format!(
                "listening with rdma_cm on {addr}"
            )));
        }
        let ctx = id.context(OP)?;
        let bound = id.local_addr().unwrap_or(addr);
        Ok(Self {
            ep: Endpoint { id, channel },
            addr: bound,
            ctx,
        })
    }

    /// The bound address, with the real port if 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device the listening address belongs to (None when bound to a wildcard
    /// address: then each connection's device is known only when it arrives).
    pub fn context(&self) -> Option<&Context> {
        self.ctx.as_ref()
    }

    /// Readable when a connection request is pending.
    pub fn fd(&self) -> RawFd {
        self.ep.channel.fd()
    }

    /// Waits up to `timeout` for a connection request, then accepts it with a QP made
    /// from `setup` (which must be on the request's device) and waits up to `timeout`
    /// again for the connection to be established. `private_data` (at most
    /// [`ACCEPT_PRIVATE_DATA_MAX`] bytes) reaches the peer's
    /// [`Connection::peer_private_data`].
    pub fn accept(
        &self,
        setup: &QpSetup,
        private_data: &[u8],
        timeout: Duration,
    ) -> Result<Connection> {
        self.accept_with(setup, private_data, timeout, |_| Ok(()))
    }

    /// [`Listener::accept`], calling `prepare` on the new QP before the connection is
    /// accepted: the place to pre-post the receive ring, so the peer's first sends never
    /// meet an empty receive queue.
    pub fn accept_with(
        &self,
        setup: &QpSetup,
        private_data: &[u8],
        timeout: Duration,
        prepare: impl FnOnce(&QueuePair) -> Result<()>,
    ) -> Result<Connection> {
        self.accept_vetted(setup, private_data, timeout, |_, _| Ok(()), prepare)
    }

    /// [`Listener::accept_with`], first asking `vet` about the request: it gets the
    /// peer's address and private data, and an `Err(reason)` turns the request away with
    /// `rdma_reject` before any QP exists (the connecting side gets
    /// [`VerbsError::Rejected`] naming the reason, cut to [`REJECT_PRIVATE_DATA_MAX`]
    /// bytes) and returns [`VerbsError::Refused`]. An unknown peer is thus never accepted
    /// and then disconnected.
    pub fn accept_vetted(
        &self,
        setup: &QpSetup,
        private_data: &[u8],
        timeout: Duration,
        vet: impl FnOnce(SocketAddr, &[u8]) -> std::result::Result<(), String>,
        prepare: impl FnOnce(&QueuePair) -> Result<()>,
    ) -> Result<Connection> {
        const OP: &str = "waiting for an rdma_cm connection request";
        let framed = frame_private_data(
            private_data,
            ACCEPT_PRIVATE_DATA_MAX,
            "accepting an rdma_cm connection",
        )?;
        // Created before the request's id so that it is dropped after it on every path.
        let channel =
            EventChannel::new("creating an rdma_cm event channel for an accepted connection")?;
        let deadline = Instant::now() + timeout;
        let req = loop {
            let ev = self.ep.channel.wait(deadline, timeout, || {
                format!("waiting for an rdma_cm connection request on {}", self.addr)
            })?;
            match ev.kind {
                sys::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST => break ev,
                sys::rdma_cm_event_type::RDMA_CM_EVENT_DEVICE_REMOVAL => {
                    return Err(ev.error(format!("listening on {}", self.addr)))
                }
                // Late events of earlier, failed accepts: nothing to do.
                _ => continue,
            }
        };
        let Some(new_id) = NonNull::new(req.id) else {
            return Err(VerbsError::invalid(OP, "connection request without an id"));
        };
        let peer_private = req.user_private_data();
        // The request's event is acknowledged, so the id may be migrated and destroyed.
        let id = CmId(new_id);
        let peer = id
            .peer_addr()
            .unwrap_or_else(|| unspecified_like(self.addr.ip()));
        let op_accept = || {
            format!(
                "accepting the rdma_cm connection from {peer} on {}",
                self.addr
            )
        };
        if id.verbs() != setup.context().as_ptr() {
            let dev = id.context(OP).ok().flatten().map(|c| c.name().to_owned());
            // SAFETY: the id is a valid, unaccepted request.
            unsafe { sys::rdma_reject(id.as_ptr(), ptr::null(), 0) };
            return Err(VerbsError::invalid(
                op_accept(),
                format!(
                    "the request arrived on device {} but the QP setup belongs to {}",
                    dev.as_deref().unwrap_or("?"),
                    setup.context().name()
                ),
            ));
        }
        if let Err(reason) = vet(peer, &peer_private) {
            let mut cut = reason.len().min(REJECT_PRIVATE_DATA_MAX);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            let framed =
                frame_private_data(&reason.as_bytes()[..cut], REJECT_PRIVATE_DATA_MAX, OP)?;
            let len = u8::try_from(framed.len()).unwrap_or(u8::MAX);
            // SAFETY: the id is a valid, unaccepted request; the private data is valid for
            // the call (librdmacm copies it). The id is destroyed when `id` drops.
            let rc = unsafe { sys::rdma_reject(id.as_ptr(), framed.as_ptr().cast(), len) };
            if rc != 0 {
                return Err(VerbsError::last_os(format!(
                    "rejecting the rdma_cm connection request from {peer} ({reason})"
                )));
            }
            return Err(VerbsError::Refused { peer, reason });
        }
        // SAFETY: both are valid; the id has no unacknowledged events.
        if unsafe { sys::rdma_migrate_id(id.as_ptr(), channel.0.as_ptr()) } != 0 {
            return Err(VerbsError::last_os(op_accept()));
        }
        // The connection owns id and channel from here on, and tears them down in order.
        let ep = Endpoint { id, channel };
        let conn = Connection::with_qp(setup, ep, peer, peer_private, &op_accept)?;
        prepare(&conn.qp)?;
        let param = conn_param(setup, &framed);
        // SAFETY: the id is valid with a QP; param and the private data it points to are
        // valid for the call (librdmacm copies them).
        if unsafe { sys::rdma_accept(conn.ep.id.as_ptr(), ptr::addr_of!(param).cast_mut()) } != 0 {
            return Err(VerbsError::last_os(op_accept()));
        }
        let deadline = Instant::now() + timeout;
        let ev = conn.ep.channel.wait(deadline, timeout, || {
            format!(
                "{}: waiting for the connection to be established",
                op_accept()
            )
        })?;
        if ev.kind != sys::rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED {
            return Err(ev.error(op_accept()));
        }
        conn.established.store(true, Ordering::Release);
        conn.tune_established(setup);
        Ok(conn)
    }
}

fn frame_private_data(data: &[u8], max: usize, op: &'static str) -> Result<Vec<u8>> {
    if data.len() > max {
        return Err(VerbsError::invalid(
            op,
            format!("{} bytes of private data, at most {max} fit", data.len()),
        ));
    }
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(u8::try_from(data.len()).unwrap_or(u8::MAX));
    v.extend_from_slice(data);
    Ok(v)
}

fn conn_param(setup: &QpSetup, framed: &[u8]) -> sys::rdma_conn_param {
    sys::rdma_conn_param {
        private_data: framed.as_ptr().cast(),
        private_data_len: u8::try_from(framed.len()).unwrap_or(u8::MAX),
        responder_resources: 1,
        initiator_depth: 1,
        flow_control: 0,
        retry_count: setup.config().retry_count,
        rnr_retry_count: setup.config().rnr_retry_count,
        srq: 0,
        qp_num: 0,
    }
}

// --------------------------------------------------------------------------- connection

/// Why a connection is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DownReason {
    /// The peer disconnected (or its CM timed the connection out).
    PeerDisconnected = 1,
    /// The local RDMA device went away.
    DeviceRemoved = 2,
    /// The local address moved to another device.
    AddressChanged = 3,
    /// The QP is in the error state (a failed work request: retries or RNR retries
    /// exceeded, protection error...).
    QpError = 4,
    /// [`Connection::disconnect`] was called.
    LocalDisconnect = 5,
}

impl DownReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::PeerDisconnected,
            2 => Self::DeviceRemoved,
            3 => Self::AddressChanged,
            4 => Self::QpError,
            5 => Self::LocalDisconnect,
            _ => return None,
        })
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PeerDisconnected => "the peer disconnected",
            Self::DeviceRemoved => "the RDMA device was removed",
            Self::AddressChanged => "the local address changed device",
            Self::QpError => "the queue pair is in the error state",
            Self::LocalDisconnect => "disconnected locally",
        })
    }
}

/// Health of a connection, as [`Connection::status`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnStatus {
    /// Established and the QP can send.
    Up,
    /// Must be re-established.
    Down(DownReason),
}

/// An established RC connection: the QP plus the rdma_cm id and event channel that
/// report on it. Dropping it disconnects, then destroys the QP, releases the CQs and PD,
/// destroys the id, then the channel.
pub struct Connection {
    // Field order is drop order: the QP's CQ and PD references go before the id, the id
    // before its channel. The QP itself is destroyed in Drop::drop, before all of them.
    qp: QueuePair,
    ep: Endpoint,
    local: SocketAddr,
    peer: SocketAddr,
    peer_private: Vec<u8>,
    established: AtomicBool,
    down: AtomicU8,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("qp", &self.qp)
            .field(
                "down",
                &DownReason::from_u8(self.down.load(Ordering::Relaxed)),
            )
            .finish()
    }
}

impl Connection {
    /// Connects to a [`Listener`] at `remote`, leaving from the local address `local` (or
    /// wherever the routing table says), with a QP made from `setup` (which must be on
    /// the device the route leaves by: see [`Context::open_by_addr`]). Everything (address
    /// and route resolution, the CM handshake) finishes within `timeout` or fails: an
    /// unreachable peer or a port without listener gives an error, never a hang.
    /// `private_data` (at most [`CONNECT_PRIVATE_DATA_MAX`] bytes) reaches the listener's
    /// side as [`Connection::peer_private_data`].
    pub fn connect(
        setup: &QpSetup,
        local: Option<IpAddr>,
        remote: SocketAddr,
        private_data: &[u8],
        timeout: Duration,
    ) -> Result<Self> {
        Self::connect_with(setup, local, remote, private_data, timeout, |_| Ok(()))
    }

    /// [`Connection::connect`], calling `prepare` on the new QP before the connect request
    /// goes out: the place to pre-post the receive ring.
    pub fn connect_with(
        setup: &QpSetup,
        local: Option<IpAddr>,
        remote: SocketAddr,
        private_data: &[u8],
        timeout: Duration,
        prepare: impl FnOnce(&QueuePair) -> Result<()>,
    ) -> Result<Self> {
        const OP: &str = "connecting with rdma_cm";
        let framed = frame_private_data(private_data, CONNECT_PRIVATE_DATA_MAX, OP)?;
        let deadline = Instant::now() + timeout;
        let channel = EventChannel::new(OP)?;
        let id = CmId::new(&channel, OP)?;
        resolve_addr(&id, &channel, local, remote, deadline, timeout)?;
        let op = || format!("connecting to {remote} over RDMA");
        if id.verbs() != setup.context().as_ptr() {
            let dev = id.context(OP)?.map(|c| c.name().to_owned());
            return Err(VerbsError::invalid(
                op(),
                format!(
                    "the route leaves by device {} but the QP setup belongs to {}",
                    dev.as_deref().unwrap_or("?"),
                    setup.context().name()
                ),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: the id is valid and its address resolved.
        if unsafe { sys::rdma_resolve_route(id.as_ptr(), ms(left)) } != 0 {
            return Err(VerbsError::last_os(format!(
                "resolving the RDMA route to {remote}"
            )));
        }
        let ev = channel.wait(deadline, timeout, || {
            format!("resolving the RDMA route to {remote}")
        })?;
        if ev.kind != sys::rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED {
            return Err(ev.error(format!("resolving the RDMA route to {remote}")));
        }
        let conn = Self::with_qp(setup, Endpoint { id, channel }, remote, Vec::new(), &op)?;
        prepare(&conn.qp)?;
        let param = conn_param(setup, &framed);
        // SAFETY: the id is valid with a QP; param and its private data are valid for
        // the call (librdmacm copies them).
        if unsafe { sys::rdma_connect(conn.ep.id.as_ptr(), ptr::addr_of!(param).cast_mut()) } != 0 {
            return Err(VerbsError::last_os(op()));
        }
        let ev = conn.ep.channel.wait(deadline, timeout, || {
            format!("connecting to {remote} over RDMA: waiting for the peer to accept")
        })?;
        match ev.kind {
            sys::rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED => {
                let mut conn = conn;
                conn.peer_private = ev.user_private_data();
                conn.established.store(true, Ordering::Release);
                conn.tune_established(setup);
                Ok(conn)
            }
            sys::rdma_cm_event_type::RDMA_CM_EVENT_REJECTED => {
                let why = if ev.status > 0 {
                    reject_reason(ev.status)
                } else {
                    status_text(ev.kind, ev.status).into()
                };
                // A listener that refused us (accept_vetted) says why in the private data.
                let said = ev.user_private_data();
                let reason = if ev.status == CONSUMER_REJECT && !said.is_empty() {
                    format!("{why}: {}", String::from_utf8_lossy(&said)).into()
                } else {
                    why
                };
                Err(VerbsError::Rejected {
                    peer: remote,
                    reason,
                })
            }
            _ => Err(ev.error(op())),
        }
    }

    /// Creates the QP on `id` and wraps everything into a connection (not yet established).
    fn with_qp(
        setup: &QpSetup,
        ep: Endpoint,
        peer: SocketAddr,
        peer_private: Vec<u8>,
        op: &dyn Fn() -> String,
    ) -> Result<Self> {
        let id = &ep.id;
        let mut attr = setup.init_attr();
        // SAFETY: the id is valid and bound to the PD's device (checked by the callers);
        // attr names live CQs of that device. rdma_create_qp writes the granted caps back.
        let rc = unsafe { sys::rdma_create_qp(id.as_ptr(), setup.pd().as_ptr(), &mut attr) };
        if rc != 0 {
            return Err(VerbsError::last_os(format!(
                "{}: creating the queue pair",
                op()
            )));
        }
        // SAFETY: rdma_create_qp succeeded, so id->qp is the new QP.
        let Some(qp) = NonNull::new(unsafe { (*id.as_ptr()).qp }) else {
            return Err(VerbsError::invalid(op(), "rdma_create_qp left no QP"));
        };
        // SAFETY: qp was just created with setup's PD and CQs; the connection destroys it
        // (rdma_destroy_qp) before anything it holds.
        let qp = unsafe { QueuePair::from_raw(qp, setup, attr.cap.max_inline_data) };
        let local = id
            .local_addr()
            .unwrap_or_else(|| unspecified_like(peer.ip()));
        Ok(Self {
            qp,
            ep,
            local,
            peer,
            peer_private,
            established: AtomicBool::new(false),
            down: AtomicU8::new(0),
        })
    }

    /// Settings rdma_cm gives no way to choose before the QP reaches RTS.
    fn tune_established(&self, setup: &QpSetup) {
        // rdma_cm leaves the responder's RNR NAK timer at code 0, which means 655 ms: one
        // momentarily empty receive queue would stall the peer that long.
        if let Err(e) = self.qp.set_min_rnr_timer(setup.config().min_rnr_timer) {
            tracing::warn!(peer = %self.peer, error = %e, "could not shorten the RNR timer");
        }
    }

    /// The queue pair: post sends and receives here.
    pub fn qp(&self) -> &QueuePair {
        &self.qp
    }

    /// The device the connection runs on.
    pub fn context(&self) -> &Context {
        self.qp.pd().context()
    }

    /// Our address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// What the peer sent with its connect request (on the accepting side) or with its
    /// accept (on the connecting side).
    pub fn peer_private_data(&self) -> &[u8] {
        &self.peer_private
    }

    /// Readable when rdma_cm has news about the connection (disconnect, device removal):
    /// put it into the control plane's epoll set and call [`Connection::status`].
    pub fn event_fd(&self) -> RawFd {
        self.ep.channel.fd()
    }

    fn mark_down(&self, r: DownReason) {
        // The first reason wins: later ones are consequences.
        let _ = self
            .down
            .compare_exchange(0, r as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    fn drain_events(&self) -> Result<()> {
        const OP: &str = "reading rdma_cm events of a connection";
        while let Some(ev) = self.ep.channel.try_get(OP)? {
            use sys::rdma_cm_event_type as t;
            match ev.kind {
                t::RDMA_CM_EVENT_DISCONNECTED => {
                    self.mark_down(DownReason::PeerDisconnected);
                    if self.established.swap(false, Ordering::AcqRel) {
                        // Answer the peer's disconnect request (DREP) so its side closes
                        // at once instead of after CM retries; failure means it is gone.
                        // SAFETY: the id is valid; it was connected.
                        unsafe { sys::rdma_disconnect(self.ep.id.as_ptr()) };
                    }
                }
                t::RDMA_CM_EVENT_DEVICE_REMOVAL => self.mark_down(DownReason::DeviceRemoved),
                t::RDMA_CM_EVENT_ADDR_CHANGE => self.mark_down(DownReason::AddressChanged),
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads pending rdma_cm events and the QP state: `Up`, or why the connection is
    /// down. Costs a few syscalls: call it when [`Connection::event_fd`] is readable, a
    /// work completion failed, or heartbeats stopped, not per packet.
    pub fn status(&self) -> Result<ConnStatus> {
        self.drain_events()?;
        if let Some(r) = DownReason::from_u8(self.down.load(Ordering::Acquire)) {
            return Ok(ConnStatus::Down(r));
        }
        if self.qp.state()? == QpState::Error {
            self.mark_down(DownReason::QpError);
            return Ok(ConnStatus::Down(DownReason::QpError));
        }
        Ok(ConnStatus::Up)
    }

    /// Waits up to `timeout` for the connection to go down; `None` if it is still up.
    pub fn wait_down(&self, timeout: Duration) -> Result<Option<DownReason>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let ConnStatus::Down(r) = self.status()? {
                return Ok(Some(r));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // The QP state has no fd: look again at least every 50 ms.
            wait_readable(
                self.event_fd(),
                Some(left.min(Duration::from_millis(50))),
                "waiting for a connection to go down",
            )?;
        }
    }

    /// Disconnects: the QP goes to the error state (posted requests are flushed) and the
    /// peer gets a disconnect event.
    pub fn disconnect(&self) -> Result<()> {
        self.mark_down(DownReason::LocalDisconnect);
        if self.established.swap(false, Ordering::AcqRel) {
            // SAFETY: the id is valid and connected.
            if unsafe { sys::rdma_disconnect(self.ep.id.as_ptr()) } != 0 {
                return Err(VerbsError::last_os(format!(
                    "disconnecting from {}",
                    self.peer
                )));
            }
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.established.swap(false, Ordering::AcqRel) {
            // SAFETY: the id is valid and connected; failure only means the peer is
            // already gone.
            unsafe { sys::rdma_disconnect(self.ep.id.as_ptr()) };
        }
        // SAFETY: the QP was created by rdma_create_qp on this id and is destroyed once,
        // before the id (field order) and after the disconnect that used it.
        unsafe { sys::rdma_destroy_qp(self.ep.id.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_sockaddr() {
        for a in [
            "10.99.0.1:18515".parse::<SocketAddr>().expect("v4"),
            "[fe80::1%3]:4791".parse::<SocketAddr>().expect("v6"),
        ] {
            let ss = to_sockaddr(a);
            // SAFETY: ss is a valid sockaddr_storage holding a sockaddr of a's family.
            let back = unsafe { from_sockaddr(ptr::addr_of!(ss).cast::<sys::sockaddr>()) };
            assert_eq!(back, Some(a));
        }
    }

    #[test]
    fn private_data_is_framed_and_unframed_despite_cm_padding() {
        let framed = frame_private_data(b"peer-7", CONNECT_PRIVATE_DATA_MAX, "t").expect("fits");
        let mut ev = Event {
            kind: 0,
            status: 0,
            id: ptr::null_mut(),
            private: [0xEE; PRIVATE_DATA_BUF],
            private_len: 56, // the CM pads a request's private data to its full size
        };
        ev.private[..framed.len()].copy_from_slice(&framed);
        assert_eq!(ev.user_private_data(), b"peer-7");
        // A length byte that claims more than arrived gives nothing, not a panic.
        ev.private[0] = 200;
        assert!(ev.user_private_data().is_empty());
        ev.private_len = 0;
        assert!(ev.user_private_data().is_empty());
        let err = frame_private_data(&[0; 56], CONNECT_PRIVATE_DATA_MAX, "connecting")
            .expect_err("too long");
        assert!(err
            .to_string()
            .contains("56 bytes of private data, at most 55 fit"));
    }

    #[test]
    fn cm_statuses_read_as_text() {
        use sys::rdma_cm_event_type as t;
        assert_eq!(
            status_text(t::RDMA_CM_EVENT_REJECTED, 8),
            "no listener on that port (invalid service id)"
        );
        assert!(status_text(t::RDMA_CM_EVENT_UNREACHABLE, -libc::ETIMEDOUT).contains("timed out"));
        assert_eq!(
            event_name(t::RDMA_CM_EVENT_ESTABLISHED),
            "RDMA_CM_EVENT_ESTABLISHED"
        );
    }
}
