//! Brings up the dataplane for a node: EAL, packet pool, the NIC, the kernel exception port
//! (both inside `dataplane.netns` when set), the fabric (UDP socket, or the verbs device,
//! its registration of the pool and its listener), the steering table and the workers.
//!
//! N workers (one per `dataplane.cores` entry, at least one): worker `i` owns queue pair
//! `i` of the NIC and of the kernel port, so each polls and sends on its own queues with no
//! sharing. The NIC spreads flows over its queues (RSS where the device hashes; af_packet
//! with `qpairs=N`, which the kernel's fanout hash spreads); the kernel port, a multi-queue
//! TAP (or virtio-user with N queues), spreads the kernel's flows the same way. The fabric is
//! driven by worker 0 alone: a UDP socket or a completion queue is one receive source, and
//! splitting it would need one socket or CQ per worker on both ends of every session, which
//! management traffic does not need. The other workers pass what they steer to a session
//! to worker 0 through a lock-free ring each ([`dataplane::worker::relay`]). Every worker has
//! its own table reader; control publishes each snapshot to all of them.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dataplane::counters::CountersSnapshot;
use dataplane::dpdk::{Eal, Mempool, Port, PortConfig};
use dataplane::fabric::udp::UdpFabric;
use dataplane::steer::{
    table_channel, DomainId, DomainInfo, MacTable, MacTableBuilder, PublishError, SessionId,
    TablePublisher, Uplink,
};
use dataplane::sys::netns;
use dataplane::wire::MacAddr;
use dataplane::worker::{self, FabricIo, Polling, UdpIo, WorkerHandle, WorkerSetup};

use super::DaemonError;
use crate::config::{Config, FabricBackend, KernelBackend, Polling as CfgPolling};

/// The running dataplane, as the control thread sees it.
pub struct Dataplane {
    /// The NIC (control polls its link state; the worker owns its queue).
    pub nic: Port,
    /// The kernel exception port (TAP or virtio-user): the workers own its queues, control
    /// its MAC filter.
    pub kernel: Port,
    /// The packet pool.
    pub pool: Mempool,
    /// The workers; worker 0 drives the fabric.
    pub workers: Vec<WorkerHandle>,
    /// Control's mutable copy of the steering table.
    pub table: MacTableBuilder,
    /// One per worker, in worker order.
    publishers: Vec<TablePublisher>,
    /// Per worker: the newest table its ring had no room for, and since when one has been
    /// waiting (see [`Dataplane::flush_tables`]).
    pending: Vec<Option<(Box<MacTable>, Instant)>>,
    /// Which backend the kernel port uses.
    pub kernel_backend: KernelBackend,
    /// With `fabric.backend = "verbs"`: control's side of the fabric, until the daemon
    /// takes it.
    #[cfg(feature = "verbs")]
    pub verbs: Option<super::fabric_verbs::VerbsStart>,
    // Keeps EAL up until everything above is gone (declared last: dropped last).
    _eal: Eal,
}

/// Whether a devargs string names a virtual device rather than a PCI device.
fn is_vdev(devargs: &str) -> bool {
    devargs.starts_with("net_") || devargs.starts_with("virtio_user") || devargs.starts_with("eth_")
}

/// The EAL command line for this node.
pub fn eal_args(cfg: &Config) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // --in-memory (no files in /var/run/dpdk) needs hugepages; without them, --no-shconf
    // gives the same isolation between the nodes of one machine.
    let no_huge = cfg.dataplane.eal_args.iter().any(|a| a == "--no-huge");
    let mut args = vec![
        if no_huge {
            "--no-shconf"
        } else {
            "--in-memory"
        }
        .to_string(),
        format!(
            "--file-prefix={}",
            super::eal_file_prefix(&cfg.node.id, std::process::id())
        ),
        // The main lcore is the control thread; let it float over every CPU rather than pin
        // it to CPU 0, where it would compete with a pinned worker.
        format!("--lcores=0@(0-{})", cpus - 1),
        "--log-level=*:warning".to_string(),
    ];
    if is_vdev(&cfg.nic.devargs) {
        args.push("--no-pci".to_string());
    }
    args.extend(cfg.dataplane.eal_args.iter().cloned());
    args
}

/// The kernel interface behind a kernel-backed NIC vdev (af_packet, af_xdp), whose carrier
/// is the NIC's link state: those PMDs report their own start/stop state as the link, not
/// the interface's carrier.
pub fn kernel_backed_iface(devargs: &str) -> Option<&str> {
    let (driver, args) = devargs.split_once(',')?;
    if !(driver.starts_with("net_af_packet") || driver.starts_with("net_af_xdp")) {
        return None;
    }
    args.split(',').find_map(|kv| kv.strip_prefix("iface="))
}

/// Number of workers: one per configured core, at least one.
pub fn worker_count(cfg: &Config) -> usize {
    cfg.dataplane.cores.len().max(1)
}

/// The NIC's devargs, with `qpairs=N` added for an af_packet NIC that does not name it, so
/// that each of N workers gets a queue pair.
fn nic_devargs(cfg: &Config, workers: usize) -> String {
    let d = &cfg.nic.devargs;
    if workers > 1 && d.starts_with("net_af_packet") && !d.contains("qpairs=") {
        format!("{d},qpairs={workers}")
    } else {
        d.clone()
    }
}

/// Descriptors of each virtio-user queue of the kernel port.
const VIRTIO_QUEUE_SIZE: u16 = 1024;

/// The devargs of the kernel exception port.
fn kernel_devargs(cfg: &Config, backend: KernelBackend) -> String {
    let mac = cfg
        .kernel
        .macs
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    match backend {
        KernelBackend::VirtioUser => format!(
            "virtio_user0,path=/dev/vhost-net,iface={},mac={mac},queue_size={VIRTIO_QUEUE_SIZE},queues={}",
            cfg.kernel.name,
            worker_count(cfg)
        ),
        _ => format!("net_tap0,iface={},mac={mac}", cfg.kernel.name),
    }
}

impl Dataplane {
    /// Starts everything; the workers run when this returns.
    pub fn start(cfg: &Config) -> Result<Dataplane, DaemonError> {
        let n = worker_count(cfg);
        let queues = u16::try_from(n)
            .map_err(|_| DaemonError::Unsupported("more workers than a port has queue indexes"))?;
        let eal = Eal::init(&eal_args(cfg))?;
        let pool = Mempool::new(&eal, "np-pool", cfg.dataplane.mbufs, 256, 2048 + 128)?;

        // The NIC and the kernel interface live in dataplane.netns, if set; the fabric
        // below stays in the namespace the daemon started in.
        let ns = match &cfg.dataplane.netns {
            Some(name) => Some(netns::enter(name)?),
            None => None,
        };
        let mut nic_cfg = PortConfig::new(pool.clone());
        nic_cfg.mtu = Some(cfg.nic.mtu);
        nic_cfg.promiscuous = true;
        (nic_cfg.rx_queues, nic_cfg.tx_queues) = (queues, queues);
        let nic = Port::open(&nic_devargs(cfg, n), &nic_cfg)?;

        let kernel_backend = cfg.kernel.backend.resolve();
        let mut k_cfg = PortConfig::new(pool.clone());
        k_cfg.mtu = Some(cfg.kernel.mtu);
        (k_cfg.rx_queues, k_cfg.tx_queues) = (queues, queues);
        if kernel_backend == KernelBackend::VirtioUser {
            // virtio frees sent mbufs lazily, once the ring is nearly full: up to a ring's
            // worth (1,000 per queue) would sit out of the pool, and the pool's in-use count
            // (metrics, leak checks) would swing by that much. Free them on every burst.
            k_cfg.tx_free_thresh = Some(VIRTIO_QUEUE_SIZE - 4);
        }
        let kernel = Port::open(&kernel_devargs(cfg, kernel_backend), &k_cfg)?;
        if kernel_backend == KernelBackend::VirtioUser {
            // The tap that virtio-user creates over vhost-kernel stays down, where the TAP
            // PMD brings its interface up: the kernel would send nothing on it.
            let ifindex = dataplane::sys::netlink::if_index(&cfg.kernel.name)?;
            dataplane::sys::netlink::Netlink::open()?.set_up(ifindex)?;
        }
        if let Some(ns) = ns {
            ns.leave()?;
        }

        let table = initial_table(cfg)?;
        let (publishers, readers): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| table_channel(table_snapshot(&table), 8))
            .unzip();

        #[cfg(feature = "verbs")]
        let mut verbs = None;
        let fabric = match cfg.fabric.backend {
            FabricBackend::Udp => {
                let peers: Vec<(SessionId, IpAddr)> = cfg
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (SessionId(i as u16), p.address.ip()))
                    .collect();
                let sock = UdpFabric::bind(cfg.fabric.address, &peers)?;
                FabricIo::Udp(UdpIo::new(sock, pool.clone()))
            }
            #[cfg(feature = "verbs")]
            FabricBackend::Verbs => {
                let (io, start) = super::fabric_verbs::start_fabric(cfg, &pool)?;
                verbs = Some(start);
                FabricIo::Verbs(io)
            }
            #[cfg(not(feature = "verbs"))]
            FabricBackend::Verbs => {
                return Err(DaemonError::Unsupported(
                    "fabric.backend = \"verbs\" needs nicproxy built with the verbs feature",
                ))
            }
        };
        let polling = match cfg.dataplane.polling {
            CfgPolling::Busy => Polling::Busy,
            CfgPolling::Adaptive => Polling::ADAPTIVE,
        };
        let mut fabric = Some(fabric);
        let mut workers = Vec::with_capacity(n);
        for (i, (reader, relay)) in readers.into_iter().zip(worker::relays(n)).enumerate() {
            let q = u16::try_from(i).unwrap_or(u16::MAX);
            let setup = WorkerSetup {
                name: format!("np-worker{i}"),
                core: cfg.dataplane.cores.get(i).map(|&c| usize::from(c)),
                polling,
                nic: nic.queue(q)?,
                kernel: kernel.queue(q)?,
                fabric: fabric.take().unwrap_or(FabricIo::None),
                relay,
                table: reader,
                drain_interval: Duration::from_micros(100),
            };
            // A worker that fails to start stops the ones already running (their handles
            // stop them on drop).
            workers.push(worker::spawn(&eal, setup)?);
        }
        Ok(Dataplane {
            nic,
            kernel,
            pool,
            workers,
            table,
            pending: publishers.iter().map(|_| None).collect(),
            publishers,
            kernel_backend,
            #[cfg(feature = "verbs")]
            verbs,
            _eal: eal,
        })
    }

    /// Publishes the current table to every worker and frees the tables they gave back.
    /// Never waits: a worker whose ring is full (it is descheduled, or stuck) gets the
    /// table from [`Dataplane::flush_tables`] once it has caught up. Only the newest table
    /// matters to it, so a later publish replaces the one waiting. (This used to wait up to
    /// 50 ms for the worker, and a control thread stalled that long missed its peers'
    /// heartbeats; seen in the lab when a session flapped under load.)
    pub fn publish(&mut self) {
        let snapshot = self.table.build();
        for i in 0..self.publishers.len() {
            let since = self.pending[i].take().map_or_else(Instant::now, |(_, t)| t);
            self.offer(i, Box::new((*snapshot).clone()), since);
        }
    }

    /// Retries the tables still waiting for their worker; call once per control loop pass.
    pub fn flush_tables(&mut self) {
        for i in 0..self.pending.len() {
            if let Some((table, since)) = self.pending[i].take() {
                self.offer(i, table, since);
            }
        }
    }

    fn offer(&mut self, i: usize, table: Box<MacTable>, since: Instant) {
        let publisher = &mut self.publishers[i];
        publisher.reclaim();
        match publisher.publish(table) {
            Ok(()) => {
                let waited = since.elapsed();
                if waited > STALLED_WORKER {
                    tracing::warn!("worker {i} took a table update after {waited:?}");
                }
            }
            Err(PublishError::Full { table, .. }) => self.pending[i] = Some((table, since)),
            Err(PublishError::Disconnected { .. }) => {
                tracing::error!("worker {i} is gone; the table update was not applied");
            }
        }
    }

    /// Each worker's counters, in worker order.
    pub fn counters_per_worker(&self) -> Vec<CountersSnapshot> {
        self.workers.iter().map(WorkerHandle::counters).collect()
    }

    /// Whether every worker thread is still running.
    pub fn workers_running(&self) -> bool {
        self.workers.iter().all(WorkerHandle::is_running)
    }

    /// Control's ends of frame capture, one per worker in worker order (each worker records
    /// the frames it steers); empty once taken.
    pub fn take_captures(&mut self) -> Vec<dataplane::worker::capture::CaptureControl> {
        self.workers
            .iter_mut()
            .filter_map(WorkerHandle::take_capture)
            .collect()
    }

    /// Stops the workers and closes the ports.
    pub fn stop(&mut self) {
        for w in self.workers.drain(..) {
            let name = w.name().to_owned();
            if let Err(e) = w.stop() {
                tracing::error!("stopping {name}: {e}");
            }
        }
    }
}

/// A worker that takes no table for this long is reported when it finally does.
const STALLED_WORKER: Duration = Duration::from_millis(50);

fn table_snapshot(b: &MacTableBuilder) -> Box<MacTable> {
    let mut b = b.clone();
    b.build()
}

/// The table before any path is chosen: own MACs go to the kernel, nothing leaves yet.
fn initial_table(cfg: &Config) -> Result<MacTableBuilder, DaemonError> {
    let mut t = MacTableBuilder::new();
    t.set_mtu(usize::from(cfg.kernel.mtu.max(cfg.nic.mtu)))?;
    let mut untagged = None;
    for d in &cfg.domains {
        let id = DomainId(d.id);
        match d.vlan {
            Some(v) => {
                t.map_vlan(v, id)?;
            }
            None => untagged = Some(id),
        }
        t.set_domain(
            id,
            DomainInfo {
                uplink: Uplink::None,
                kernel: true,
                sessions: Default::default(),
            },
        )?;
        for m in &cfg.kernel.macs {
            t.add_local(id, MacAddr(m.0))?;
        }
    }
    t.set_untagged_domain(untagged)?;
    Ok(t)
}
