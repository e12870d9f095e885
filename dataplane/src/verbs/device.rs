//! RDMA devices: listing them, and opening one as a [`Context`].
//!
//! Contexts come from librdmacm's own device list (`rdma_get_devices`), not from
//! `ibv_open_device`: rdma_cm binds every connection to its own context of the device, and a
//! queue pair can only be created with a PD of that same context. Taking our contexts from
//! the same list makes a PD made before connecting usable for the connection.
#![allow(unsafe_code)]

use std::borrow::Cow;
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::raw::c_int;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_core_sys as sys;

use super::cm;
use super::error::{Result, VerbsError};

/// The names of the RDMA devices the kernel offers (e.g. `rxe_a`, `mlx5_0`).
///
/// An empty list is an error ([`VerbsError::NoDevice`]) because nothing verbs-based can
/// work then; the caller may fall back to the UDP fabric.
pub fn device_names() -> Result<Vec<String>> {
    const OP: &str = "listing RDMA devices";
    let mut n: c_int = 0;
    // SAFETY: ibv_get_device_list only writes the count through the valid pointer.
    let list = unsafe { sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(no_device_or_os(OP, io::Error::last_os_error()));
    }
    let count = usize::try_from(n).unwrap_or(0);
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: the list holds `n` valid device pointers, then a NULL.
        let dev = unsafe { *list.add(i) };
        // SAFETY: dev is a valid device of the list, which is not freed yet; the name is
        // a NUL-terminated string inside it, copied before the list is freed.
        let name = unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: list came from ibv_get_device_list and is freed once; nothing from it is
    // used afterwards (the names were copied).
    unsafe { sys::ibv_free_device_list(list) };
    if names.is_empty() {
        return Err(VerbsError::NoDevice { op: OP.into() });
    }
    Ok(names)
}

/// The kernel's answers when there is no RDMA subsystem or no device at all.
pub(crate) fn no_device_or_os(op: impl Into<Cow<'static, str>>, err: io::Error) -> VerbsError {
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::ENODEV | libc::ENOENT | libc::ENXIO) => {
            VerbsError::NoDevice { op: op.into() }
        }
        _ => VerbsError::Os {
            op: op.into(),
            source: err,
        },
    }
}

/// librdmacm's array of device contexts. While it is held, librdmacm keeps every listed
/// device open (it counts references per list).
struct CmDeviceList {
    list: NonNull<*mut sys::ibv_context>,
    len: usize,
}

// SAFETY: the list is an immutable array of context pointers after creation, and
// rdma_free_devices takes librdmacm's internal lock, so it may run on any thread.
unsafe impl Send for CmDeviceList {}
// SAFETY: see Send; shared access only reads the array.
unsafe impl Sync for CmDeviceList {}

impl CmDeviceList {
    fn get(op: &'static str) -> Result<Arc<Self>> {
        let mut n: c_int = 0;
        // SAFETY: rdma_get_devices only writes the count through the valid pointer.
        let list = unsafe { sys::rdma_get_devices(&mut n) };
        let Some(list) = NonNull::new(list) else {
            return Err(no_device_or_os(op, io::Error::last_os_error()));
        };
        let me = Self {
            list,
            len: usize::try_from(n).unwrap_or(0),
        };
        if me.len == 0 {
            return Err(VerbsError::NoDevice { op: op.into() });
        }
        Ok(Arc::new(me))
    }

    fn contexts(&self) -> impl Iterator<Item = NonNull<sys::ibv_context>> + '_ {
        (0..self.len).filter_map(|i| {
            // SAFETY: the array holds `len` context pointers (then a NULL) and lives as
            // long as self.
            NonNull::new(unsafe { *self.list.as_ptr().add(i) })
        })
    }
}

impl Drop for CmDeviceList {
    fn drop(&mut self) {
        // SAFETY: the array came from rdma_get_devices and is freed exactly once here.
        unsafe { sys::rdma_free_devices(self.list.as_ptr()) };
    }
}

fn context_name(ctx: NonNull<sys::ibv_context>) -> String {
    // SAFETY: ctx is an open context of a held device list; its device pointer and the
    // device's NUL-terminated name stay valid while the list is held.
    let name = unsafe { CStr::from_ptr(sys::ibv_get_device_name((*ctx.as_ptr()).device)) };
    name.to_string_lossy().into_owned()
}

struct ContextInner {
    ctx: NonNull<sys::ibv_context>,
    name: String,
    _list: Arc<CmDeviceList>,
}

/// An open RDMA device. Cheap to clone; the device stays open while any clone, or any PD,
/// CQ, MR or connection made from it, is alive.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

// SAFETY: libibverbs contexts are thread safe (the providers lock internally), and the
// pointer is only used through verbs calls.
unsafe impl Send for ContextInner {}
// SAFETY: see Send.
unsafe impl Sync for ContextInner {}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        self.inner.ctx == other.inner.ctx
    }
}
impl Eq for Context {}

impl Context {
    /// Opens the RDMA device called `name` (as listed by `ibv_devices`).
    pub fn open(name: &str) -> Result<Self> {
        let list = CmDeviceList::get("opening an RDMA device")?;
        let found = list.contexts().find(|c| context_name(*c) == name);
        match found {
            Some(ctx) => Ok(Self::from_parts(ctx, list)),
            None => Err(VerbsError::DeviceNotFound {
                name: name.to_owned(),
                present: list
                    .contexts()
                    .map(context_name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Opens the RDMA device that owns the local address `ip` (the device rdma_cm binds
    /// to that address).
    pub fn open_by_addr(ip: IpAddr) -> Result<Self> {
        cm::device_of_local_addr(ip)
    }

    /// Opens the RDMA device that rdma_cm would use to reach `remote`, from `local` if
    /// given. Waits at most `timeout` for address resolution.
    pub fn open_for_route(
        local: Option<IpAddr>,
        remote: SocketAddr,
        timeout: std::time::Duration,
    ) -> Result<Self> {
        cm::device_of_route(local, remote, timeout)
    }

    /// The context that rdma_cm attached to one of its ids.
    pub(crate) fn from_cm_verbs(ptr: *mut sys::ibv_context, op: &'static str) -> Result<Self> {
        let list = CmDeviceList::get(op)?;
        let found = list.contexts().find(|c| c.as_ptr() == ptr);
        match found {
            Some(ctx) => Ok(Self::from_parts(ctx, list)),
            None => Err(VerbsError::invalid(
                op,
                "rdma_cm bound the id to a device missing from its own device list",
            )),
        }
    }

    fn from_parts(ctx: NonNull<sys::ibv_context>, list: Arc<CmDeviceList>) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                ctx,
                name: context_name(ctx),
                _list: list,
            }),
        }
    }

    /// The device's name, e.g. `rxe_a`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The raw context, for verbs calls this module does not wrap.
    pub fn as_ptr(&self) -> *mut sys::ibv_context {
        self.inner.ctx.as_ptr()
    }

    /// Attributes of port `port` (ports count from 1).
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        let mut attr = sys::ibv_port_attr::default();
        // SAFETY: the context is open (self holds it) and attr is a valid, writable
        // ibv_port_attr of the layout the shim's inline ibv_query_port expects.
        let rc = unsafe { sys::nicproxy_ibv_query_port(self.as_ptr(), port, &mut attr) };
        if rc != 0 {
            return Err(VerbsError::errno(
                format!("querying port {port} of RDMA device {}", self.name()),
                rc,
            ));
        }
        Ok(PortAttr {
            state: PortState::from_raw(attr.state),
            active_mtu: mtu_bytes(attr.active_mtu),
            max_mtu: mtu_bytes(attr.max_mtu),
            gid_table_len: attr.gid_tbl_len,
            lid: attr.lid,
            is_ethernet: u32::from(attr.link_layer) == sys::IBV_LINK_LAYER_ETHERNET,
        })
    }
}

/// What a port looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttr {
    /// Logical port state.
    pub state: PortState,
    /// MTU in use, bytes.
    pub active_mtu: u32,
    /// Largest MTU the port supports, bytes.
    pub max_mtu: u32,
    /// Entries in the GID table.
    pub gid_table_len: i32,
    /// Base LID (0 on RoCE).
    pub lid: u16,
    /// True for RoCE / iWARP (Ethernet link layer), false for InfiniBand.
    pub is_ethernet: bool,
}

/// Logical state of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// No link.
    Down,
    /// Link up, not yet configured by the subnet manager.
    Init,
    /// Configured, not yet active.
    Armed,
    /// Usable.
    Active,
    /// Active, deferred.
    ActiveDefer,
    /// A value this crate does not know.
    Other(u32),
}

impl PortState {
    fn from_raw(v: sys::ibv_port_state::Type) -> Self {
        use sys::ibv_port_state as s;
        match v {
            s::IBV_PORT_DOWN => Self::Down,
            s::IBV_PORT_INIT => Self::Init,
            s::IBV_PORT_ARMED => Self::Armed,
            s::IBV_PORT_ACTIVE => Self::Active,
            s::IBV_PORT_ACTIVE_DEFER => Self::ActiveDefer,
            other => Self::Other(other),
        }
    }
}

fn mtu_bytes(m: sys::ibv_mtu::Type) -> u32 {
    match m {
        1..=5 => 128 << m,
        _ => 0,
    }
}
