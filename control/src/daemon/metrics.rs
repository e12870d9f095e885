//! Prometheus metrics. The control thread owns the registry and updates it as events happen
//! (sessions, RTT samples, failovers) and, at scrape time, from the workers' counters. A small
//! HTTP thread serves `GET /metrics` and asks the control thread for the text over a channel,
//! so a scrape never touches the dataplane and a slow scraper never delays the control loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use ::dataplane::counters::{CountersSnapshot, DropReason};
use ::dataplane::worker::PORT_NAMES;

/// A scrape request: where to send the text.
pub struct ScrapeRequest {
    /// Reply channel.
    pub reply: SyncSender<String>,
}

/// Every metric nicproxy exports.
pub struct Metrics {
    registry: Registry,
    rx_packets: IntCounterVec,
    rx_bytes: IntCounterVec,
    tx_packets: IntCounterVec,
    tx_bytes: IntCounterVec,
    drops: IntCounterVec,
    drop_reasons: IntCounterVec,
    last: Vec<CountersSnapshot>,
    /// 1 while the session with a peer is up.
    pub session_up: IntGaugeVec,
    /// Heartbeat round trips.
    pub rtt: HistogramVec,
    /// The longest silence of each up session since start (the detection margin).
    pub max_rx_gap: GaugeVec,
    /// The latest the control loop ran after a timer was due, since start.
    pub control_loop_max_lag: Gauge,
    /// Path changes away from the NIC.
    pub failovers: IntCounter,
    /// From the failure detected to the new proxy's ack.
    pub failover_duration: Histogram,
    /// 1 on the active path of each owned MAC.
    pub active_path: IntGaugeVec,
    /// Mbufs out of the pool.
    pub mempool_in_use: IntGauge,
    /// Clients this node proxies for.
    pub clients: IntGauge,
    /// Control messages rejected, by reason.
    pub control_rejects: IntGaugeVec,
    /// GARP/NA frames sent.
    pub announcements: IntGauge,
    /// Kernel interface carrier (1 on).
    pub carrier: IntGauge,
    /// The verbs fabric's own counters (`nicproxy_verbs_*_total`), by counter.
    verbs: IntCounterVec,
    verbs_last: Vec<u64>,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// Creates and registers every metric, labelled with the node id.
    pub fn new(node: &str) -> Metrics {
        let mut labels = std::collections::HashMap::new();
        labels.insert("node".to_string(), node.to_string());
        let registry =
            Registry::new_custom(Some("nicproxy".into()), Some(labels)).expect("valid prefix");
        let r = &registry;
        let port = &["worker", "port"];
        let ms = |v: &[f64]| v.iter().map(|x| x / 1e3).collect::<Vec<_>>();
        Metrics {
            rx_packets: reg(
                r,
                IntCounterVec::new(
                    Opts::new("rx_packets_total", "Frames received, per worker and port"),
                    port,
                )
                .expect("valid"),
            ),
            rx_bytes: reg(
                r,
                IntCounterVec::new(
                    Opts::new("rx_bytes_total", "Bytes received, per worker and port"),
                    port,
                )
                .expect("valid"),
            ),
            tx_packets: reg(
                r,
                IntCounterVec::new(
                    Opts::new("tx_packets_total", "Frames sent, per worker and port"),
                    port,
                )
                .expect("valid"),
            ),
            tx_bytes: reg(
                r,
                IntCounterVec::new(
                    Opts::new("tx_bytes_total", "Bytes sent, per worker and port"),
                    port,
                )
                .expect("valid"),
            ),
            drops: reg(
                r,
                IntCounterVec::new(
                    Opts::new("drops_total", "Frames dropped, per worker and port"),
                    port,
                )
                .expect("valid"),
            ),
            drop_reasons: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "drop_reasons_total",
                        "Frames dropped, per worker and reason",
                    ),
                    &["worker", "reason"],
                )
                .expect("valid"),
            ),
            last: Vec::new(),
            session_up: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "session_up",
                        "1 while the fabric session with the peer is up",
                    ),
                    &["peer"],
                )
                .expect("valid"),
            ),
            rtt: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "heartbeat_rtt_seconds",
                        "Heartbeat round-trip time per peer",
                    )
                    .buckets(ms(&[0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0])),
                    &["peer"],
                )
                .expect("valid"),
            ),
            max_rx_gap: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "session_max_rx_gap_seconds",
                        "Longest silence between two control messages of an up session since \
                         start; a session is declared down when it exceeds \
                         timers.heartbeat_ms x timers.multiplier",
                    ),
                    &["peer"],
                )
                .expect("valid"),
            ),
            control_loop_max_lag: reg(
                r,
                Gauge::new(
                    "control_loop_max_lag_seconds",
                    "Latest the control loop ran after one of its timers was due, since start",
                )
                .expect("valid"),
            ),
            failovers: reg(
                r,
                IntCounter::new(
                    "failovers_total",
                    "Path changes from the NIC or a proxy to another proxy",
                )
                .expect("valid"),
            ),
            failover_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "failover_duration_seconds",
                        "From the failure detected to the new proxy's acknowledgement",
                    )
                    .buckets(ms(&[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0])),
                )
                .expect("valid"),
            ),
            active_path: reg(
                r,
                IntGaugeVec::new(
                    Opts::new("active_path", "1 for the path that carries each owned MAC"),
                    &["mac", "path"],
                )
                .expect("valid"),
            ),
            mempool_in_use: reg(
                r,
                IntGauge::new("mempool_in_use", "Mbufs out of the packet pool").expect("valid"),
            ),
            clients: reg(
                r,
                IntGauge::new("proxy_clients", "Peers whose MACs this node carries")
                    .expect("valid"),
            ),
            control_rejects: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "control_rejects",
                        "Control messages rejected since start, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            announcements: reg(
                r,
                IntGauge::new(
                    "announcements_sent",
                    "Gratuitous ARP and unsolicited NA frames sent since start",
                )
                .expect("valid"),
            ),
            carrier: reg(
                r,
                IntGauge::new("kernel_carrier", "Carrier of the kernel interface (1 on)")
                    .expect("valid"),
            ),
            verbs: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "verbs_work_requests_total",
                        "Verbs fabric work requests and completions per worker: sends inline / \
                         gathered from the mbuf / signalled, completions early / stale / in \
                         error, sessions added / removed",
                    ),
                    &["worker", "kind"],
                )
                .expect("valid"),
            ),
            verbs_last: Vec::new(),
            registry,
        }
    }

    /// Folds worker `worker`'s verbs fabric counters (absolute) into the metrics.
    #[cfg(feature = "verbs")]
    pub fn update_verbs(&mut self, worker: usize, c: &::dataplane::fabric::verbs::VerbsCounters) {
        let now = [
            ("inline_send", c.inline_sends),
            ("gather_send", c.gather_sends),
            ("signalled_send", c.signalled),
            ("early_completion", c.early),
            ("stale_completion", c.stale),
            ("error_completion", c.errors),
            ("session_added", c.added),
            ("session_removed", c.removed),
        ];
        let wl = worker.to_string();
        for (k, &(kind, v)) in now.iter().enumerate() {
            let slot = k + worker * now.len();
            if self.verbs_last.len() <= slot {
                self.verbs_last.resize(slot + 1, 0);
            }
            let last = &mut self.verbs_last[slot];
            // Exported even at zero, so dashboards see the series from the first scrape.
            self.verbs
                .with_label_values(&[wl.as_str(), kind])
                .inc_by(v.saturating_sub(*last));
            *last = v;
        }
    }

    /// Folds the workers' absolute counters into the Prometheus counters.
    pub fn update_counters(&mut self, workers: &[CountersSnapshot]) {
        self.last.resize(workers.len(), CountersSnapshot::default());
        for (w, (now, last)) in workers.iter().zip(self.last.iter_mut()).enumerate() {
            let wl = w.to_string();
            for (p, name) in PORT_NAMES.iter().enumerate() {
                let Some(n) = now.ports.get(p) else { continue };
                // Before the first scrape there is no previous snapshot: count from zero.
                let l = last.ports.get(p).cloned().unwrap_or_default();
                let l2 = [wl.as_str(), *name];
                self.rx_packets
                    .with_label_values(&l2)
                    .inc_by(n.rx_packets.saturating_sub(l.rx_packets));
                self.rx_bytes
                    .with_label_values(&l2)
                    .inc_by(n.rx_bytes.saturating_sub(l.rx_bytes));
                self.tx_packets
                    .with_label_values(&l2)
                    .inc_by(n.tx_packets.saturating_sub(l.tx_packets));
                self.tx_bytes
                    .with_label_values(&l2)
                    .inc_by(n.tx_bytes.saturating_sub(l.tx_bytes));
                self.drops
                    .with_label_values(&l2)
                    .inc_by(n.drops.saturating_sub(l.drops));
            }
            for r in DropReason::ALL {
                let (a, b) = (now.drops_for(r), last.drops_for(r));
                if a > b {
                    self.drop_reasons
                        .with_label_values(&[wl.as_str(), r.name()])
                        .inc_by(a - b);
                }
            }
            *last = now.clone();
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `addr`; returns the channel the control loop answers.
pub fn serve(addr: SocketAddr) -> Result<Receiver<ScrapeRequest>, super::DaemonError> {
    let listener = TcpListener::bind(addr).map_err(|e| super::DaemonError::Io {
        action: format!("binding the metrics endpoint to {addr}"),
        source: e,
    })?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("np-metrics".into())
        .spawn(move || {
            super::raise_aux_thread();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                // Read the whole request head, to its blank line (a client may write it in
                // pieces), at most 2 KiB and within the read timeout: closing with part of
                // it unread makes the kernel reset the connection, and the client loses the
                // answer (seen with a client that sent its headers in a second write).
                let mut req = [0u8; 2048];
                let mut n = 0;
                while n < req.len() && !head_complete(&req[..n]) {
                    match conn.read(&mut req[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                let line = String::from_utf8_lossy(&req[..n]);
                let (status, ctype, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") {
                    let (reply, wait) = mpsc::sync_channel(1);
                    if tx.send(ScrapeRequest { reply }).is_err() {
                        return;
                    }
                    match wait.recv_timeout(Duration::from_secs(2)) {
                        Ok(text) => ("200 OK", "text/plain; version=0.0.4", text),
                        Err(_) => ("503 Service Unavailable", "text/plain", "control thread busy\n".into()),
                    }
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".into())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .map_err(|e| super::DaemonError::Io {
            action: "starting the metrics thread".into(),
            source: e,
        })?;
    Ok(rx)
}

/// Whether `buf` holds a whole HTTP request head (up to its empty line).
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}
