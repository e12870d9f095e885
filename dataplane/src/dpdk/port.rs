//! Ethernet ports: probe a device (a vdev string such as `net_af_packet0,iface=veth0`, or a
//! PCI address), configure its queues, and move bursts of mbufs.
//!
//! Control operations (link, stats, MACs) are on [`Port`] and take `&self`, so a control
//! thread can keep polling the link while a worker moves packets. A worker either borrows the
//! port mutably ([`Port::rx_burst`] / [`Port::tx_burst`]) or claims a queue as a
//! [`PortQueue`], which is `Send` and keeps the device alive, so two threads can never drive
//! the same queue.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dpdk_sys as ffi;

use super::error::{log_tap, DpdkError};
use super::mbuf::Burst;
use super::mempool::Mempool;

/// Ports owned by a live `Port` in this process. Probing a device that is already open
/// succeeds in DPDK (it swallows EEXIST for multi-process sync) and finds the same port, so
/// this is what stops a second `open` from reconfiguring, and then closing, a port in use.
static OWNED: [AtomicBool; ffi::RTE_MAX_ETHPORTS as usize] =
    [const { AtomicBool::new(false) }; ffi::RTE_MAX_ETHPORTS as usize];

/// How a port is set up by [`Port::open`].
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// Pool the rx queues allocate received packets from.
    pub mempool: Mempool,
    /// Number of rx queues (at least 1).
    pub rx_queues: u16,
    /// Number of tx queues (at least 1).
    pub tx_queues: u16,
    /// Rx ring size per queue; the driver may round it to what it supports.
    pub rx_descriptors: u16,
    /// Tx ring size per queue; the driver may round it to what it supports.
    pub tx_descriptors: u16,
    /// MTU to set before starting; `None` keeps the driver's default.
    pub mtu: Option<u16>,
    /// Receive frames for every destination MAC.
    pub promiscuous: bool,
    /// The tx queues' `tx_free_thresh`; `None` keeps the driver's default. Its meaning is
    /// the driver's: virtio frees sent mbufs only once more than `ring size - threshold`
    /// descriptors are used, so a threshold near the ring size frees them at once instead
    /// of holding up to a ring's worth out of the pool.
    pub tx_free_thresh: Option<u16>,
}

impl PortConfig {
    /// One rx and one tx queue of 1024 descriptors, default MTU, not promiscuous.
    pub fn new(mempool: Mempool) -> Self {
        Self {
            mempool,
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mtu: None,
            promiscuous: false,
            tx_free_thresh: None,
        }
    }
}

/// Link state as last known by the driver (no waiting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Carrier up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown or down).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Basic port counters (`rte_eth_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets the hardware dropped because rx queues were full.
    pub rx_missed: u64,
    /// Erroneous received packets.
    pub rx_errors: u64,
    /// Failed transmissions.
    pub tx_errors: u64,
    /// Rx mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// An Ethernet address.
pub type MacAddr = [u8; 6];

/// A probed, configured and started port. Dropping it (and every [`PortQueue`]) turns off
/// promiscuous mode if it was turned on here, stops and closes the port, and removes the
/// device.
#[derive(Debug)]
pub struct Port {
    inner: Arc<PortInner>,
}

struct PortInner {
    id: u16,
    name: String,
    devargs: String,
    device: *mut ffi::rte_device,
    rx_queues: u16,
    tx_queues: u16,
    /// Queue indexes held by a PortQueue.
    claimed: Box<[AtomicBool]>,
    started: AtomicBool,
    /// Promiscuous mode was turned on through this port: turned off again on close, since
    /// some drivers (af_packet) leave the kernel interface promiscuous otherwise.
    promiscuous_set: AtomicBool,
    /// Keeps the rx pool (and through it the EAL) alive as long as the port.
    _mempool: Mempool,
}

impl std::fmt::Debug for PortInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortInner")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("devargs", &self.devargs)
            .field("rx_queues", &self.rx_queues)
            .field("tx_queues", &self.tx_queues)
            .field("started", &self.started.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw rte_device pointer is only used in Drop; ethdev control functions may be
// called from any thread, and queue access is exclusive through &mut Port or a claimed
// PortQueue.
unsafe impl Send for PortInner {}
// SAFETY: shared access only reaches thread-safe control calls (link, stats, MACs); the
// hot-path calls need &mut Port or an owned PortQueue.
unsafe impl Sync for PortInner {}

impl Port {
    /// Probes `devargs` (a vdev string like `net_af_packet0,iface=veth0` or `net_null0`, or a
    /// PCI address with optional `,key=value` arguments), configures it as `cfg` says, and
    /// starts it.
    ///
    /// # Errors
    /// [`DpdkError::InvalidArgument`] for an empty string, a NUL byte, zero queues or an
    /// `iface=` naming an interface that does not exist in this network namespace;
    /// [`DpdkError::Call`] when DPDK refuses (unknown driver, bad driver arguments, device
    /// already open, queue setup failure), quoting what DPDK logged.
    pub fn open(devargs: &str, cfg: &PortConfig) -> Result<Port, DpdkError> {
        let action = format!("opening port '{devargs}'");
        validate_devargs(devargs, &action)?;
        if cfg.rx_queues == 0 || cfg.tx_queues == 0 {
            return Err(DpdkError::invalid(
                action,
                "a port needs at least one rx and one tx queue",
            ));
        }
        let c_devargs = CString::new(devargs)
            .map_err(|_| DpdkError::invalid(&action, "contains a NUL byte"))?;

        log_tap::clear();
        // SAFETY: EAL is initialised (cfg.mempool holds it alive); c_devargs is NUL-terminated
        // and copied by DPDK.
        let rc = unsafe { ffi::rte_dev_probe(c_devargs.as_ptr()) };
        if rc < 0 {
            return Err(DpdkError::from_errno(
                format!("{action}: probing the device"),
                rc,
            ));
        }
        let (id, device) = match find_port(&c_devargs, devargs) {
            Ok(found) => found,
            Err(e) => {
                // Nothing to close: no ethdev was found. Undo the probe by name.
                remove_by_name(devargs);
                return Err(e);
            }
        };
        let name = port_name(id)
            .unwrap_or_else(|| devargs.split(',').next().unwrap_or(devargs).to_owned());
        if OWNED[usize::from(id)].swap(true, Ordering::AcqRel) {
            // Someone else's port: leave it exactly as it is.
            return Err(DpdkError::Busy {
                action,
                reason: format!("the device is already open as port {id} ({name})"),
            });
        }

        // From here on, PortInner's Drop undoes the probe if anything fails.
        let inner = PortInner {
            id,
            name,
            devargs: devargs.to_owned(),
            device,
            rx_queues: cfg.rx_queues,
            tx_queues: cfg.tx_queues,
            claimed: (0..cfg.rx_queues.max(cfg.tx_queues))
                .map(|_| AtomicBool::new(false))
                .collect(),
            started: AtomicBool::new(false),
            promiscuous_set: AtomicBool::new(false),
            _mempool: cfg.mempool.clone(),
        };
        inner.configure(cfg, &action)?;
        let port = Port {
            inner: Arc::new(inner),
        };
        port.inner.start(&action)?;
        Ok(port)
    }

    /// DPDK's port id.
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// The ethdev name (e.g. `net_af_packet0`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The devargs the port was opened with.
    pub fn devargs(&self) -> &str {
        &self.inner.devargs
    }

    /// Number of rx queues.
    pub fn rx_queues(&self) -> u16 {
        self.inner.rx_queues
    }

    /// Number of tx queues.
    pub fn tx_queues(&self) -> u16 {
        self.inner.tx_queues
    }

    /// Receives up to the free room of `burst` from rx queue `queue`, appending to it; returns
    /// how many arrived. Returns 0 for a queue that does not exist or is claimed by a
    /// [`PortQueue`].
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, queue: u16, burst: &mut Burst<N>) -> usize {
        if queue >= self.inner.rx_queues || self.inner.is_claimed(queue) {
            return 0;
        }
        rx(self.inner.id, queue, burst)
    }

    /// Sends `burst` from its front on tx queue `queue`; returns how many the driver took.
    /// The rest stay in `burst` (retry, or free them as a counted drop). Sends nothing on a
    /// queue that does not exist or is claimed by a [`PortQueue`].
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, queue: u16, burst: &mut Burst<N>) -> usize {
        if queue >= self.inner.tx_queues || self.inner.is_claimed(queue) {
            return 0;
        }
        tx(self.inner.id, queue, burst)
    }

    /// Claims queue index `queue` (rx queue and tx queue of that index, where they exist)
    /// for one worker. The claim ends when the [`PortQueue`] is dropped.
    ///
    /// # Errors
    /// [`DpdkError::InvalidArgument`] for an index beyond the configured queues,
    /// [`DpdkError::Busy`] when it is already claimed.
    pub fn queue(&self, queue: u16) -> Result<PortQueue, DpdkError> {
        let action = || format!("claiming queue {queue} of port {}", self.inner.name);
        let Some(flag) = self.inner.claimed.get(usize::from(queue)) else {
            return Err(DpdkError::invalid(
                action(),
                format!(
                    "the port has {} rx and {} tx queues",
                    self.inner.rx_queues, self.inner.tx_queues
                ),
            ));
        };
        if flag.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::Busy {
                action: action(),
                reason: "another PortQueue holds it".to_owned(),
            });
        }
        Ok(PortQueue {
            port: Arc::clone(&self.inner),
            queue,
        })
    }

    /// Link state, without waiting for autonegotiation.
    ///
    /// # Errors
    /// [`DpdkError::Call`] if the driver cannot report it.
    pub fn link(&self) -> Result<LinkState, DpdkError> {
        let mut link = ffi::rte_eth_link::default();
        // SAFETY: the port is valid while self lives; link is a valid out-parameter.
        let rc = unsafe { ffi::rte_eth_link_get_nowait(self.inner.id, &mut link) };
        if rc < 0 {
            return Err(DpdkError::from_errno(
                format!("reading the link of port {}", self.inner.name),
                rc,
            ));
        }
        Ok(LinkState {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() != 0,
        })
    }

    /// The port's counters.
    ///
    /// # Errors
    /// [`DpdkError::Call`] if the driver cannot report them.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: the port is valid; s is a valid out-parameter.
        let rc = unsafe { ffi::rte_eth_stats_get(self.inner.id, &mut s) };
        if rc < 0 {
            return Err(DpdkError::from_errno(
                format!("reading the stats of port {}", self.inner.name),
                rc,
            ));
        }
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// The port's primary MAC address.
    ///
    /// # Errors
    /// [`DpdkError::Call`] if the driver cannot report it.
    pub fn mac(&self) -> Result<MacAddr, DpdkError> {
        let mut addr = ffi::rte_ether_addr::default();
        // SAFETY: the port is valid; addr is a valid out-parameter.
        let rc = unsafe { ffi::rte_eth_macaddr_get(self.inner.id, &mut addr) };
        if rc < 0 {
            return Err(DpdkError::from_errno(
                format!("reading the MAC of port {}", self.inner.name),
                rc,
            ));
        }
        Ok(addr.addr_bytes)
    }

    /// The current MTU.
    ///
    /// # Errors
    /// [`DpdkError::Call`] if the driver cannot report it.
    pub fn mtu(&self) -> Result<u16, DpdkError> {
        let mut mtu = 0u16;
        // SAFETY: the port is valid; mtu is a valid out-parameter.
        let rc = unsafe { ffi::rte_eth_dev_get_mtu(self.inner.id, &mut mtu) };
        if rc < 0 {
            return Err(DpdkError::from_errno(
                format!("reading the MTU of port {}", self.inner.name),
                rc,
            ));
        }
        Ok(mtu)
    }

    /// Sets the MTU. Needs `&mut` because some drivers only accept it on a stopped port.
    ///
    /// # Errors
    /// [`DpdkError::Call`] when the driver refuses (out of range, or only when stopped).
    pub fn set_mtu(&mut self, mtu: u16) -> Result<(), DpdkError> {
        self.inner.set_mtu(mtu)
    }

    /// Turns promiscuous mode on or off.
    ///
    /// # Errors
    /// [`DpdkError::Call`] when the driver refuses.
    pub fn promiscuous(&self, on: bool) -> Result<(), DpdkError> {
        self.inner.promiscuous(on)
    }

    /// Whether promiscuous mode is on.
    pub fn is_promiscuous(&self) -> bool {
        // SAFETY: the port is valid.
        unsafe { ffi::rte_eth_promiscuous_get(self.inner.id) == 1 }
    }

    /// Brings the link up (administratively), for drivers that support it.
    ///
    /// # Errors
    /// [`DpdkError::Call`] when the driver refuses or does not support it.
    pub fn set_link_up(&self) -> Result<(), DpdkError> {
        log_tap::clear();
        // SAFETY: the port is valid; the call does not touch the queues.
        let rc = unsafe { ffi::rte_eth_dev_set_link_up(self.inner.id) };
        check(rc, || {
            format!("setting the link of port {} up", self.inner.name)
        })
    }

    /// Takes the link down (administratively), for drivers that support it.
    ///
    /// # Errors
    /// [`DpdkError::Call`] when the driver refuses or does not support it.
    pub fn set_link_down(&self) -> Result<(), DpdkError> {
        log_tap::clear();
        // SAFETY: the port is valid; the call does not touch the queues.
        let rc = unsafe { ffi::rte_eth_dev_set_link_down(self.inner.id) };
        check(rc, || {
            format!("setting the link of port {} down", self.inner.name)
        })
    }

    /// Adds a secondary unicast MAC address to the port's filter (e.g. a proxied peer's MAC).
    ///
    /// # Errors
    /// [`DpdkError::Call`] when the driver refuses (table full: ENOSPC, unsupported: ENOTSUP).
    pub fn add_mac(&self, mac: MacAddr) -> Result<(), DpdkError> {
        let mut addr = ffi::rte_ether_addr { addr_bytes: mac };
        log_tap::clear();
        // SAFETY: the port is valid; addr is read during the call only.
        let rc = unsafe { ffi::rte_eth_dev_mac_addr_add(self.inner.id, &mut addr, 0) };
        check(rc, || {
            format!("adding MAC {} to port {}", fmt_mac(mac), self.inner.name)
        })
    }

    /// Removes a secondary MAC address added with [`Port::add_mac`].
    ///
    /// # Errors
    /// [`DpdkError::Call`] when the driver refuses (the primary MAC cannot be removed).
    pub fn remove_mac(&self, mac: MacAddr) -> Result<(), DpdkError> {
        let mut addr = ffi::rte_ether_addr { addr_bytes: mac };
        log_tap::clear();
        // SAFETY: the port is valid; addr is read during the call only.
        let rc = unsafe { ffi::rte_eth_dev_mac_addr_remove(self.inner.id, &mut addr) };
        check(rc, || {
            format!(
                "removing MAC {} from port {}",
                fmt_mac(mac),
                self.inner.name
            )
        })
    }

    /// Stops the port (no rx/tx until [`Port::start`]).
    ///
    /// # Errors
    /// [`DpdkError::Busy`] while a [`PortQueue`] is claimed; [`DpdkError::Call`] when the
    /// driver refuses.
    pub fn stop(&mut self) -> Result<(), DpdkError> {
        let action = format!("stopping port {}", self.inner.name);
        self.inner.ensure_unclaimed(&action)?;
        self.inner.stop(&action)
    }

    /// Starts a stopped port.
    ///
    /// # Errors
    /// [`DpdkError::Busy`] while a [`PortQueue`] is claimed; [`DpdkError::Call`] when the
    /// driver refuses.
    pub fn start(&mut self) -> Result<(), DpdkError> {
        let action = format!("starting port {}", self.inner.name);
        self.inner.ensure_unclaimed(&action)?;
        self.inner.start(&action)
    }
}

/// One queue index of a port, owned by one worker: the only way to drive that queue while
/// the [`Port`] is shared. Keeps the port open until dropped.
#[derive(Debug)]
pub struct PortQueue {
    port: Arc<PortInner>,
    queue: u16,
}

impl PortQueue {
    /// The port id.
    pub fn port_id(&self) -> u16 {
        self.port.id
    }

    /// The queue index.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receives into the free room of `burst`; returns how many arrived (0 if the port has no
    /// rx queue of this index).
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        if self.queue >= self.port.rx_queues {
            return 0;
        }
        rx(self.port.id, self.queue, burst)
    }

    /// Sends from the front of `burst`; returns how many the driver took, the rest stay (0
    /// if the port has no tx queue of this index).
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        if self.queue >= self.port.tx_queues {
            return 0;
        }
        tx(self.port.id, self.queue, burst)
    }
}

impl Drop for PortQueue {
    fn drop(&mut self) {
        self.port.claimed[usize::from(self.queue)].store(false, Ordering::Release);
    }
}

#[inline]
fn rx<const N: usize>(port: u16, queue: u16, burst: &mut Burst<N>) -> usize {
    let (space, room) = burst.rx_space();
    if room == 0 {
        return 0;
    }
    let room = u16::try_from(room).unwrap_or(u16::MAX);
    // SAFETY: the port is open and started or stopped (DPDK then returns 0), the caller has
    // exclusive use of this queue (&mut Port or an owned PortQueue), and `space` has `room`
    // writable pointer slots.
    let n = unsafe { ffi::nicproxy_rte_eth_rx_burst(port, queue, space, room) };
    let n = usize::from(n.min(room));
    // SAFETY: DPDK wrote n owned mbuf pointers at the start of the space.
    unsafe { burst.rx_filled(n) };
    n
}

#[inline]
fn tx<const N: usize>(port: u16, queue: u16, burst: &mut Burst<N>) -> usize {
    let (pending, len) = burst.tx_pending();
    if len == 0 {
        return 0;
    }
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    // SAFETY: as in rx; `pending` holds `len` owned mbuf pointers, of which DPDK takes
    // ownership of the first n it returns.
    let n = unsafe { ffi::nicproxy_rte_eth_tx_burst(port, queue, pending, len) };
    let n = usize::from(n.min(len));
    // SAFETY: DPDK took those n mbufs.
    unsafe { burst.tx_sent(n) };
    n
}

impl PortInner {
    fn is_claimed(&self, queue: u16) -> bool {
        self.claimed
            .get(usize::from(queue))
            .is_some_and(|c| c.load(Ordering::Acquire))
    }

    fn ensure_unclaimed(&self, action: &str) -> Result<(), DpdkError> {
        if self.claimed.iter().any(|c| c.load(Ordering::Acquire)) {
            return Err(DpdkError::Busy {
                action: action.to_owned(),
                reason: "a PortQueue of this port is still held by a worker".to_owned(),
            });
        }
        Ok(())
    }

    fn configure(&self, cfg: &PortConfig, action: &str) -> Result<(), DpdkError> {
        let id = self.id;
        let mut info = MaybeUninit::<ffi::rte_eth_dev_info>::zeroed();
        log_tap::clear();
        // SAFETY: the port is valid; info is a valid out-parameter (zeroed is a valid value).
        let rc = unsafe { ffi::rte_eth_dev_info_get(id, info.as_mut_ptr()) };
        check(rc, || format!("{action}: reading device info"))?;
        // SAFETY: initialised by DPDK (and zeroed before).
        let info = unsafe { info.assume_init() };
        if cfg.rx_queues > info.max_rx_queues || cfg.tx_queues > info.max_tx_queues {
            return Err(DpdkError::invalid(
                action,
                format!(
                    "{} rx / {} tx queues asked, the device supports {} / {}",
                    cfg.rx_queues, cfg.tx_queues, info.max_rx_queues, info.max_tx_queues
                ),
            ));
        }

        let mut conf = ffi::rte_eth_conf::default();
        if cfg.rx_queues > 1 && info.flow_type_rss_offloads != 0 {
            // Spread flows over the rx queues (one per worker) by the hash of every field the
            // device can hash. Devices without RSS (af_packet spreads its queues with the
            // kernel's PACKET_FANOUT hash instead) keep the default.
            conf.rxmode.mq_mode = ffi::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads;
        }
        // SAFETY: the port is valid and not started; conf is read during the call.
        let rc = unsafe { ffi::rte_eth_dev_configure(id, cfg.rx_queues, cfg.tx_queues, &conf) };
        check(rc, || {
            format!(
                "{action}: configuring {} rx / {} tx queues",
                cfg.rx_queues, cfg.tx_queues
            )
        })?;

        let (mut nb_rx, mut nb_tx) = (cfg.rx_descriptors, cfg.tx_descriptors);
        // SAFETY: the port is configured; both are valid in/out parameters.
        let rc = unsafe { ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nb_rx, &mut nb_tx) };
        check(rc, || format!("{action}: adjusting ring sizes"))?;

        // SAFETY: the port is valid.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
        // SOCKET_ID_ANY (-1) becomes u32::MAX, which DPDK reads back as SOCKET_ID_ANY.
        let socket = socket as u32;
        for q in 0..cfg.rx_queues {
            // SAFETY: the port is configured and stopped; a null rxconf means driver defaults;
            // the pool stays alive as long as the port (PortInner holds it).
            let rc = unsafe {
                ffi::rte_eth_rx_queue_setup(
                    id,
                    q,
                    nb_rx,
                    socket,
                    std::ptr::null(),
                    cfg.mempool.as_ptr(),
                )
            };
            check(rc, || {
                format!("{action}: setting up rx queue {q} ({nb_rx} descriptors)")
            })?;
        }
        let txconf = cfg.tx_free_thresh.map(|t| ffi::rte_eth_txconf {
            tx_free_thresh: t,
            ..info.default_txconf
        });
        let txconf_ptr = txconf.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
        for q in 0..cfg.tx_queues {
            // SAFETY: as above; txconf is null (driver defaults) or points to `txconf`,
            // which outlives the call.
            let rc = unsafe { ffi::rte_eth_tx_queue_setup(id, q, nb_tx, socket, txconf_ptr) };
            check(rc, || {
                format!("{action}: setting up tx queue {q} ({nb_tx} descriptors)")
            })?;
        }
        if let Some(mtu) = cfg.mtu {
            self.set_mtu(mtu)?;
        }
        if cfg.promiscuous {
            self.promiscuous(true)?;
        }
        Ok(())
    }

    fn start(&self, action: &str) -> Result<(), DpdkError> {
        log_tap::clear();
        // SAFETY: the port is configured; no queue is in use (checked by callers or fresh).
        let rc = unsafe { ffi::rte_eth_dev_start(self.id) };
        check(rc, || action.to_owned())?;
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    fn stop(&self, action: &str) -> Result<(), DpdkError> {
        log_tap::clear();
        // SAFETY: the port is valid; no queue is in use (callers check, or Drop: none left).
        let rc = unsafe { ffi::rte_eth_dev_stop(self.id) };
        check(rc, || action.to_owned())?;
        self.started.store(false, Ordering::Release);
        Ok(())
    }

    fn set_mtu(&self, mtu: u16) -> Result<(), DpdkError> {
        log_tap::clear();
        // SAFETY: the port is valid.
        let rc = unsafe { ffi::rte_eth_dev_set_mtu(self.id, mtu) };
        check(rc, || {
            format!("setting the MTU of port {} to {mtu}", self.name)
        })
    }

    fn promiscuous(&self, on: bool) -> Result<(), DpdkError> {
        log_tap::clear();
        // SAFETY: the port is valid.
        let rc = unsafe {
            if on {
                ffi::rte_eth_promiscuous_enable(self.id)
            } else {
                ffi::rte_eth_promiscuous_disable(self.id)
            }
        };
        check(rc, || {
            format!(
                "turning promiscuous mode {} on port {}",
                if on { "on" } else { "off" },
                self.name
            )
        })?;
        self.promiscuous_set.store(on, Ordering::Release);
        Ok(())
    }
}

impl Drop for PortInner {
    fn drop(&mut self) {
        // Last reference: no PortQueue and no Port is left, so no queue is in use.
        if self.promiscuous_set.load(Ordering::Acquire) {
            if let Err(e) = self.promiscuous(false) {
                tracing::warn!("{e}");
            }
        }
        if self.started.load(Ordering::Acquire) {
            if let Err(e) = self.stop(&format!("stopping port {} before closing it", self.name)) {
                tracing::warn!("{e}");
            }
        }
        // SAFETY: the port is stopped and nothing uses it any more; closed exactly once.
        let rc = unsafe { ffi::rte_eth_dev_close(self.id) };
        if rc < 0 {
            tracing::warn!(
                "{}",
                DpdkError::from_errno(format!("closing port {}", self.name), rc)
            );
        }
        let removed = if self.device.is_null() {
            true
        } else {
            // SAFETY: the device pointer came from dev_info of this port and devices live
            // until removed; its ports are closed, and it is removed exactly once.
            let rc = unsafe { ffi::rte_dev_remove(self.device) };
            if rc < 0 && rc != -libc::ENOENT {
                tracing::warn!(
                    "{}",
                    DpdkError::from_errno(format!("removing device '{}'", self.devargs), rc)
                );
            }
            rc >= 0 || rc == -libc::ENOENT
        };
        // The id may be reused by the next probe only once this port is really gone.
        if removed || rc >= 0 {
            OWNED[usize::from(self.id)].store(false, Ordering::Release);
        }
    }
}

/// Driver arguments that are flags (no `=value`). Any other argument without a value is
/// refused: DPDK 22.11's af_packet driver dereferences the missing value and crashes.
const FLAG_ARGS: &[&str] = &["persist"];

/// Rejects devargs that cannot work before DPDK sees them, with a message naming the cause.
fn validate_devargs(devargs: &str, action: &str) -> Result<(), DpdkError> {
    if devargs.trim().is_empty() {
        return Err(DpdkError::invalid(action, "the device string is empty"));
    }
    if devargs.contains('\0') {
        return Err(DpdkError::invalid(
            action,
            "the device string contains a NUL byte",
        ));
    }
    let mut parts = split_args(devargs);
    let name = parts.next().unwrap_or_default();
    if name.trim().is_empty() {
        return Err(DpdkError::invalid(
            action,
            "the device name (before the first ',') is empty",
        ));
    }
    for arg in parts {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (arg, None),
        };
        if key.is_empty() {
            return Err(DpdkError::invalid(
                action,
                format!("driver argument '{arg}' has no key (expected key=value)"),
            ));
        }
        if value.is_none() && !FLAG_ARGS.contains(&key) {
            return Err(DpdkError::invalid(
                action,
                format!("driver argument '{key}' has no value (expected {key}=value)"),
            ));
        }
        // Drivers bound to a kernel interface (af_packet, af_xdp, pcap) log only an ioctl
        // failure when it is missing; say it plainly instead.
        if key == "iface" {
            let iface = value.unwrap_or_default();
            if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
                return Err(DpdkError::invalid(
                    action,
                    format!("'{iface}' is not a valid interface name"),
                ));
            }
            let c_iface = CString::new(iface)
                .map_err(|_| DpdkError::invalid(action, "interface name contains a NUL byte"))?;
            // TAP and virtio-user create their interface; the others attach to one.
            let creates_iface = name.starts_with("net_tap") || name.starts_with("virtio_user");
            // SAFETY: c_iface is NUL-terminated; if_nametoindex only reads it.
            if !creates_iface && unsafe { libc::if_nametoindex(c_iface.as_ptr()) } == 0 {
                return Err(DpdkError::invalid(
                    action,
                    format!("interface '{iface}' does not exist in this network namespace"),
                ));
            }
        }
    }
    // These drivers only say "cannot attach" without their interface.
    if (name.starts_with("net_af_packet") || name.starts_with("net_af_xdp"))
        && !split_args(devargs).skip(1).any(|a| a.starts_with("iface="))
    {
        return Err(DpdkError::invalid(
            action,
            "this driver needs iface=<interface name>",
        ));
    }
    Ok(())
}

/// Splits devargs at commas that are not inside `[...]` (lists such as `representor=[0,2]`).
fn split_args(devargs: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    let mut start = 0usize;
    let mut done = false;
    let mut chars = devargs.char_indices();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        for (i, c) in chars.by_ref() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    let part = &devargs[start..i];
                    start = i + 1;
                    return Some(part);
                }
                _ => {}
            }
        }
        done = true;
        Some(&devargs[start..])
    })
}

/// The port DPDK made for `devargs`, and its device.
fn find_port(c_devargs: &CStr, devargs: &str) -> Result<(u16, *mut ffi::rte_device), DpdkError> {
    let action = || format!("opening port '{devargs}': finding the port the probe created");
    let mut id = None;
    let mut iter = MaybeUninit::<ffi::rte_dev_iterator>::zeroed();
    // SAFETY: iter is a valid out-parameter; c_devargs is NUL-terminated.
    if unsafe { ffi::rte_eth_iterator_init(iter.as_mut_ptr(), c_devargs.as_ptr()) } == 0 {
        // SAFETY: initialised by rte_eth_iterator_init.
        let next = unsafe { ffi::rte_eth_iterator_next(iter.as_mut_ptr()) };
        // RTE_MAX_ETHPORTS means no match.
        if u32::from(next) < ffi::RTE_MAX_ETHPORTS {
            id = Some(next);
        }
        // SAFETY: releases what init allocated; iter is not used afterwards.
        unsafe { ffi::rte_eth_iterator_cleanup(iter.as_mut_ptr()) };
    }
    if id.is_none() {
        let name = CString::new(devargs.split(',').next().unwrap_or(devargs))
            .map_err(|_| DpdkError::invalid(action(), "contains a NUL byte"))?;
        let mut port = 0u16;
        // SAFETY: name is NUL-terminated; port is a valid out-parameter.
        if unsafe { ffi::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut port) } == 0 {
            id = Some(port);
        }
    }
    let id = id.ok_or_else(|| DpdkError::from_errno(action(), libc::ENODEV))?;
    let mut info = MaybeUninit::<ffi::rte_eth_dev_info>::zeroed();
    // SAFETY: the port exists; info is a valid out-parameter.
    let rc = unsafe { ffi::rte_eth_dev_info_get(id, info.as_mut_ptr()) };
    // SAFETY: all-zero is a valid rte_eth_dev_info (null pointers, zero counts), and DPDK
    // only ever writes valid values over it.
    let info = unsafe { info.assume_init() };
    let device = if rc == 0 {
        info.device
    } else {
        std::ptr::null_mut()
    };
    Ok((id, device))
}

/// Undoes a probe that produced no usable port.
fn remove_by_name(devargs: &str) {
    let name = devargs.split(',').next().unwrap_or(devargs);
    let (Ok(bus), Ok(dev)) = (CString::new("vdev"), CString::new(name)) else {
        return;
    };
    // SAFETY: both strings are NUL-terminated; a device not on the vdev bus gives an error,
    // which is ignored (there is nothing else to undo).
    let _ = unsafe { ffi::rte_eal_hotplug_remove(bus.as_ptr(), dev.as_ptr()) };
}

fn port_name(id: u16) -> Option<String> {
    let mut buf = [0 as c_char; ffi::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes as the API requires.
    if unsafe { ffi::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: DPDK wrote a NUL-terminated name into buf.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn check(rc: i32, action: impl FnOnce() -> String) -> Result<(), DpdkError> {
    if rc < 0 {
        Err(DpdkError::from_errno(action(), rc))
    } else {
        Ok(())
    }
}

fn fmt_mac(m: MacAddr) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::{split_args, validate_devargs, DpdkError};

    fn reason(devargs: &str) -> String {
        match validate_devargs(devargs, "test") {
            Err(DpdkError::InvalidArgument { reason, .. }) => reason,
            other => panic!("{devargs:?}: expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn split_keeps_bracketed_lists_together() {
        let parts: Vec<&str> = split_args("0000:01:00.0,representor=[0,2-3],x=1").collect();
        assert_eq!(parts, ["0000:01:00.0", "representor=[0,2-3]", "x=1"]);
        let parts: Vec<&str> = split_args("net_null0").collect();
        assert_eq!(parts, ["net_null0"]);
        let parts: Vec<&str> = split_args("a,,b,").collect();
        assert_eq!(parts, ["a", "", "b", ""]);
        // Unbalanced brackets never panic.
        let parts: Vec<&str> = split_args("a,]]x=[[,b").collect();
        assert_eq!(parts, ["a", "]]x=[[,b"]);
    }

    #[test]
    fn accepts_well_formed_devargs() {
        for ok in [
            "net_null0",
            "net_null0,size=64,copy=1",
            "net_tap0,iface=lo,persist",
            "0000:01:00.0,representor=[0,2]",
            "net_af_packet0,iface=lo",
        ] {
            validate_devargs(ok, "test").unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn names_the_cause_of_malformed_devargs() {
        assert!(reason("").contains("empty"));
        assert!(reason(",iface=lo").contains("device name"));
        assert!(reason("net_af_packet0").contains("needs iface="));
        assert!(reason("net_af_packet0,iface").contains("'iface' has no value"));
        assert!(reason("net_null0,,").contains("has no key"));
        assert!(reason("net_null0,=5").contains("has no key"));
        assert!(reason("net_af_packet0,iface=").contains("not a valid interface name"));
        assert!(reason("net_af_packet0,iface=../x").contains("not a valid interface name"));
        assert!(reason("net_af_packet0,iface=np-no-such-if").contains("does not exist"));
        assert!(reason("net_null0\0").contains("NUL"));
    }
}
