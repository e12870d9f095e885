//! The link watcher: a thread of its own that polls the NIC's carrier, carries out carrier
//! changes on the kernel interface, and keeps the kernel interface's address list (for the
//! announcements) fresh, all over netlink.
//!
//! Netlink link requests wait for the kernel's RTNL lock, which is global across network
//! namespaces; on a machine where interfaces come and go, a request can wait for seconds
//! (seen in the lab: `ip link set` taking up to 4 s). On the control thread such a wait
//! would stop heartbeats and make every peer declare this node dead. Here it can only delay
//! the link detector itself. `IFLA_CARRIER` is read, not `IFF_RUNNING`: the carrier changes
//! the moment the cable (or veth peer) goes, while the operational state follows later, from
//! the kernel's deferred link-watch work (seen at over 400 ms in the lab).

use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use dataplane::sys::netlink::Netlink;

/// How often the kernel interface's addresses are read again.
const ADDRESS_REFRESH: Duration = Duration::from_millis(250);
/// How long a raised carrier may wait for the kernel's operational state "up" before it is
/// reported anyway (with a warning).
const OPER_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The NIC's carrier, on every change (and once at start).
    NicCarrier(bool),
    /// A carrier change asked of the kernel interface was carried out: for `true`, the
    /// kernel has also made the interface operationally up, so it can send (its deferred
    /// link-watch work swaps the queue discipline in; before that, whatever it sends is
    /// dropped).
    KernelCarrierSet(bool),
    /// The kernel interface's addresses, on every change (and once at start).
    Addresses(Vec<IpAddr>),
    /// A request failed; the text says which.
    Failed(&'static str),
}

enum Command {
    SetKernelCarrier(bool),
}

/// The control thread's handle.
pub struct LinkWatcher {
    commands: Sender<Command>,
    /// Events for the control loop.
    pub events: Receiver<LinkEvent>,
}

impl LinkWatcher {
    /// Starts watching. `nic_if` is the ifindex whose carrier is the NIC's link state (for
    /// kernel-backed vdevs), or `None` when the NIC's link comes from DPDK (polled by the
    /// control thread, no RTNL involved). Both sockets must already be in the right
    /// namespace.
    pub fn start(
        mut nl: Netlink,
        nic_if: Option<u32>,
        kernel_if: u32,
        poll: Duration,
    ) -> std::io::Result<LinkWatcher> {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("np-linkwatch".into())
            .spawn(move || {
                super::raise_aux_thread();
                let mut last = None;
                let mut addrs: Option<Vec<IpAddr>> = None;
                let mut next_addrs = Instant::now();
                // A raised carrier waiting for the kernel's operational state: since when.
                let mut raising: Option<Instant> = None;
                loop {
                    if Instant::now() >= next_addrs {
                        next_addrs = Instant::now() + ADDRESS_REFRESH;
                        match nl.addresses(kernel_if) {
                            Ok(mut a) => {
                                a.sort();
                                if addrs.as_ref() != Some(&a) {
                                    addrs = Some(a.clone());
                                    if ev_tx.send(LinkEvent::Addresses(a)).is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => tracing::warn!("{e}"),
                        }
                    }
                    loop {
                        match cmd_rx.try_recv() {
                            Ok(Command::SetKernelCarrier(on)) => {
                                raising = None;
                                let ev = match nl.set_carrier(kernel_if, on) {
                                    Ok(()) if on => {
                                        raising = Some(Instant::now());
                                        continue;
                                    }
                                    Ok(()) => LinkEvent::KernelCarrierSet(false),
                                    Err(e) => {
                                        tracing::error!("{e}");
                                        LinkEvent::Failed("setting the kernel interface's carrier")
                                    }
                                };
                                if ev_tx.send(ev).is_err() {
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                    }
                    if let Some(since) = raising {
                        let up = match nl.oper_up(kernel_if) {
                            Ok(up) => up,
                            Err(e) => {
                                tracing::warn!("{e}");
                                false
                            }
                        };
                        let late = since.elapsed() >= OPER_UP_TIMEOUT;
                        if late && !up {
                            tracing::warn!(
                                "the kernel interface is not operationally up {OPER_UP_TIMEOUT:?} after its carrier was raised; reporting the carrier anyway"
                            );
                        }
                        if up || late {
                            raising = None;
                            if ev_tx.send(LinkEvent::KernelCarrierSet(true)).is_err() {
                                return;
                            }
                        }
                    }
                    if let Some(idx) = nic_if {
                        let up = match nl.carrier(idx) {
                            Ok(up) => up,
                            Err(e) => {
                                tracing::warn!("reading the NIC's carrier: {e}");
                                false
                            }
                        };
                        if last != Some(up) {
                            last = Some(up);
                            if ev_tx.send(LinkEvent::NicCarrier(up)).is_err() {
                                return;
                            }
                        }
                    }
                    std::thread::sleep(poll);
                }
            })?;
        Ok(LinkWatcher {
            commands: cmd_tx,
            events: ev_rx,
        })
    }

    /// Asks for the kernel interface's carrier to be set; the result arrives as an event.
    pub fn set_kernel_carrier(&self, on: bool) {
        let _ = self.commands.send(Command::SetKernelCarrier(on));
    }
}
