//! The lab's record of everything that happened, fed by the agents' event lines, and the
//! queries the scenarios and the report make on it. Times are microseconds on the shared
//! realtime clock (see `agent::now_us`).
//!
//! Event lines (one per line, fields separated by spaces):
//!
//! | line | from | meaning |
//! |---|---|---|
//! | `p <seq> <us>` | station | probe `seq` sent |
//! | `r <seq> <us>` | station | echo of probe `seq` received |
//! | `tcp connected <us>` | station | transfer connected |
//! | `tcp sent <us> <bytes>` | station | all written, write side shut |
//! | `tcp closed <us>` | station | the sink closed after reading all |
//! | `tcp error <us> <what...>` | station | the transfer failed |
//! | `ready <us>` | node | echo and sink listening |
//! | `sink accepted <us>` | node | transfer accepted |
//! | `b <us> <bytes>` | node | total bytes received so far (every 10 ms) |
//! | `sink eof <us> <bytes>` | node | the station closed; total received |
//! | `sink error <us> <what...>` | node | the transfer failed |
//! | `c <us> <1\|0\|->` | node | carrier of the kernel interface changed |
//! | `f <us> <mac> <port\|->` | switch | the bridge's port for a MAC changed |
//! | `l <us> <port> <1\|0>` | switch | a bridge port was set up (1) or down (0) |
//! | `s <us> <port> <state>` | switch | a bridge port's state changed (3: forwarding) |

/// One probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe {
    /// When it was sent.
    pub sent_us: Option<u64>,
    /// When its echo came back.
    pub recv_us: Option<u64>,
}

/// A change of the bridge's port for a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEvent {
    /// When it was seen.
    pub t_us: u64,
    /// The MAC.
    pub mac: String,
    /// The port; None once forgotten.
    pub port: Option<String>,
}

/// What the lab did, for the plot and the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// A's NIC cut at the switch.
    Cut,
    /// A's NIC restored.
    Restore,
    /// A proxy's daemon killed.
    Kill,
    /// Proxies cut off the fabric.
    Isolate,
    /// One proxy's fabric restored.
    Reconnect,
}

/// One action of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// When it took effect (the command returned).
    pub t_us: u64,
    /// What.
    pub kind: MarkKind,
    /// Label for the plot, e.g. "cut 1".
    pub label: String,
}

/// The TCP transfer's milestones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tcp {
    /// The station connected.
    pub connected_us: Option<u64>,
    /// The station wrote this many bytes in all and shut its write side.
    pub sent_bytes: Option<u64>,
    /// The sink closed after reading everything.
    pub closed_us: Option<u64>,
    /// The sink saw the end of the stream after this many bytes.
    pub eof_bytes: Option<u64>,
    /// Errors on either side.
    pub errors: Vec<String>,
}

/// Everything recorded.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Probes by sequence number.
    pub probes: Vec<Probe>,
    /// FDB changes of watched MACs.
    pub fdb: Vec<FdbEvent>,
    /// Carrier changes of a's kernel interface: Some(on), or None when unreadable.
    pub carrier: Vec<(u64, Option<bool>)>,
    /// (time, total bytes received by the sink).
    pub tcp_bins: Vec<(u64, u64)>,
    /// (time, port, up): a switch port was set up or down.
    pub links: Vec<(u64, String, bool)>,
    /// (time, port, state): a switch port's bridge state changed.
    pub port_states: Vec<(u64, String, u8)>,
    /// TCP milestones.
    pub tcp: Tcp,
    /// The node agent is listening.
    pub node_ready: bool,
    /// What the lab did.
    pub marks: Vec<Mark>,
    /// Lines that did not parse (a bug in an agent), kept for the report.
    pub bad_lines: u64,
}

impl Timeline {
    /// Records one event line from an agent.
    pub fn apply_line(&mut self, line: &str) {
        if self.try_apply(line).is_none() {
            self.bad_lines += 1;
        }
    }

    fn try_apply(&mut self, line: &str) -> Option<()> {
        let mut f = line.split(' ');
        let kind = f.next()?;
        let num = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
        match kind {
            "p" | "r" => {
                let seq = usize::try_from(num(f.next())?).ok()?;
                let t = num(f.next())?;
                // Bound the table: a bogus sequence number must not allocate gigabytes.
                if seq > self.probes.len() + 1_000_000 {
                    return None;
                }
                if self.probes.len() <= seq {
                    self.probes.resize(seq + 1, Probe::default());
                }
                if kind == "p" {
                    self.probes[seq].sent_us = Some(t);
                } else {
                    self.probes[seq].recv_us.get_or_insert(t);
                }
            }
            "f" => {
                let t_us = num(f.next())?;
                let mac = f.next()?.to_string();
                let port = f.next()?;
                self.fdb.push(FdbEvent {
                    t_us,
                    mac,
                    port: (port != "-").then(|| port.to_string()),
                });
            }
            "c" => {
                let t = num(f.next())?;
                let v = match f.next()? {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                };
                self.carrier.push((t, v));
            }
            "l" => {
                let t = num(f.next())?;
                let port = f.next()?.to_string();
                let up = match f.next()? {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                };
                self.links.push((t, port, up));
            }
            "s" => {
                let t = num(f.next())?;
                let port = f.next()?.to_string();
                let state = f.next()?.parse().ok()?;
                self.port_states.push((t, port, state));
            }
            "b" => {
                let t = num(f.next())?;
                let bytes = num(f.next())?;
                self.tcp_bins.push((t, bytes));
            }
            "ready" => self.node_ready = true,
            "tcp" => match f.next()? {
                "connected" => self.tcp.connected_us = Some(num(f.next())?),
                "sent" => {
                    let _t = num(f.next())?;
                    self.tcp.sent_bytes = Some(num(f.next())?);
                }
                "closed" => self.tcp.closed_us = Some(num(f.next())?),
                "error" => {
                    let _t = num(f.next())?;
                    self.tcp
                        .errors
                        .push(format!("station: {}", f.collect::<Vec<_>>().join(" ")));
                }
                _ => return None,
            },
            "sink" => match f.next()? {
                "accepted" => {}
                "eof" => {
                    let _t = num(f.next())?;
                    self.tcp.eof_bytes = Some(num(f.next())?);
                }
                "error" => {
                    let _t = num(f.next())?;
                    self.tcp
                        .errors
                        .push(format!("sink: {}", f.collect::<Vec<_>>().join(" ")));
                }
                _ => return None,
            },
            _ => return None,
        }
        Some(())
    }

    /// When a switch port was seen going to `up` within `[from, to]`: when a cut or a
    /// restore issued at `from` and confirmed at `to` took effect (to within a millisecond).
    pub fn link_change(&self, port: &str, up: bool, from: u64, to: u64) -> Option<u64> {
        self.links
            .iter()
            .find(|(t, p, u)| *t >= from && *t <= to && p == port && *u == up)
            .map(|(t, _, _)| *t)
    }

    /// When switch port `port` was first seen forwarding (bridge state 3) at or after `after`.
    pub fn forwarding_at(&self, port: &str, after: u64) -> Option<u64> {
        let before = self
            .port_states
            .iter()
            .rev()
            .find(|(t, p, _)| *t < after && p == port);
        if before.is_some_and(|(_, _, s)| *s == 3) {
            return Some(after);
        }
        self.port_states
            .iter()
            .find(|(t, p, s)| *t >= after && p == port && *s == 3)
            .map(|(t, _, _)| *t)
    }

    /// The port the bridge has for `mac` now (as last reported).
    pub fn fdb_port(&self, mac: &str) -> Option<&str> {
        self.fdb
            .iter()
            .rev()
            .find(|e| e.mac == mac)
            .and_then(|e| e.port.as_deref())
    }

    /// When the bridge first had `mac` on `port` at or after `after`.
    pub fn fdb_at(&self, mac: &str, port: &str, after: u64) -> Option<u64> {
        // The state at `after` counts too: a report from before it may still hold.
        let before = self
            .fdb
            .iter()
            .rev()
            .find(|e| e.mac == mac && e.t_us < after);
        if before.is_some_and(|e| e.port.as_deref() == Some(port)) {
            return Some(after);
        }
        self.fdb
            .iter()
            .find(|e| e.mac == mac && e.t_us >= after && e.port.as_deref() == Some(port))
            .map(|e| e.t_us)
    }

    /// The first probe sent at or after `t` that was answered: (sent, received).
    pub fn first_answered_after(&self, t: u64) -> Option<(u64, u64)> {
        self.probes
            .iter()
            .filter_map(|p| Some((p.sent_us?, p.recv_us?)))
            .find(|(s, _)| *s >= t)
    }

    /// Whether the last `n` probes sent at least `grace_us` ago were all answered.
    pub fn answering(&self, n: usize, now_us: u64, grace_us: u64) -> bool {
        let settled = self
            .probes
            .iter()
            .rev()
            .filter(|p| p.sent_us.is_some_and(|s| s + grace_us <= now_us))
            .take(n)
            .collect::<Vec<_>>();
        settled.len() == n && settled.iter().all(|p| p.recv_us.is_some())
    }

    /// Probes sent in `[from, to)` that were never answered.
    pub fn lost_in(&self, from: u64, to: u64) -> u64 {
        self.probes
            .iter()
            .filter(|p| p.sent_us.is_some_and(|s| s >= from && s < to) && p.recv_us.is_none())
            .count() as u64
    }

    /// Probes sent in `[from, to)`.
    pub fn sent_in(&self, from: u64, to: u64) -> u64 {
        self.probes
            .iter()
            .filter(|p| p.sent_us.is_some_and(|s| s >= from && s < to))
            .count() as u64
    }

    /// The longest stretch between two answered probes (by send time) within `[from, to)`,
    /// in µs.
    pub fn longest_gap(&self, from: u64, to: u64) -> u64 {
        let mut prev: Option<u64> = None;
        let mut worst = 0;
        for s in self
            .probes
            .iter()
            .filter(|p| p.recv_us.is_some())
            .filter_map(|p| p.sent_us)
        {
            if s >= to {
                break;
            }
            if let Some(p) = prev {
                if s >= from {
                    worst = worst.max(s - p);
                }
            }
            prev = Some(s);
        }
        worst
    }

    /// When a's kernel interface first had this carrier state at or after `after`.
    pub fn carrier_at(&self, on: bool, after: u64) -> Option<u64> {
        let before = self.carrier.iter().rev().find(|(t, _)| *t < after);
        if before.is_some_and(|(_, v)| *v == Some(on)) {
            return Some(after);
        }
        self.carrier
            .iter()
            .find(|(t, v)| *t >= after && *v == Some(on))
            .map(|(t, _)| *t)
    }

    /// The carrier now, as last reported.
    pub fn carrier_now(&self) -> Option<bool> {
        self.carrier.last().and_then(|(_, v)| *v)
    }

    /// Bytes the sink had received by time `t`.
    pub fn tcp_bytes_at(&self, t: u64) -> u64 {
        self.tcp_bins
            .iter()
            .rev()
            .find(|(bt, _)| *bt <= t)
            .map_or(0, |(_, b)| *b)
    }

    /// Bytes the sink has received so far.
    pub fn tcp_bytes(&self) -> u64 {
        self.tcp_bins.last().map_or(0, |(_, b)| *b)
    }

    /// Adds a mark.
    pub fn mark(&mut self, t_us: u64, kind: MarkKind, label: impl Into<String>) {
        self.marks.push(Mark {
            t_us,
            kind,
            label: label.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(lines: &[&str]) -> Timeline {
        let mut t = Timeline::default();
        for l in lines {
            t.apply_line(l);
        }
        t
    }

    #[test]
    fn parses_every_event_and_counts_junk() {
        let t = timeline(&[
            "p 0 1000",
            "r 0 1200",
            "r 1 2300", // the echo can be read before the send is logged
            "p 1 2000",
            "p 2 3000",
            "f 1500 02:00:00:77:00:01 pa",
            "f 2500 02:00:00:77:00:01 -",
            "c 10 1",
            "c 20 -",
            "b 3000 5000",
            "l 400 pa 0",
            "l 900 pa 1",
            "l 950 pa x",
            "s 960 pa 3",
            "ready 1",
            "tcp connected 5",
            "tcp sent 9 12345",
            "tcp closed 10",
            "tcp error 11 writing: Broken pipe",
            "sink accepted 6",
            "sink eof 9 12345",
            "sink error 12 Connection reset by peer",
            "p 99999999999 1",
            "zz",
            "p x 1",
            "",
        ]);
        assert_eq!(t.probes.len(), 3);
        assert_eq!(
            t.probes[1],
            Probe {
                sent_us: Some(2000),
                recv_us: Some(2300)
            }
        );
        assert_eq!(t.probes[2].recv_us, None);
        assert_eq!(t.fdb.len(), 2);
        assert_eq!(t.fdb_port("02:00:00:77:00:01"), None);
        assert_eq!(t.carrier, vec![(10, Some(true)), (20, None)]);
        assert_eq!(t.tcp_bytes(), 5000);
        assert!(t.node_ready);
        assert_eq!(t.tcp.sent_bytes, Some(12345));
        assert_eq!(t.tcp.eof_bytes, Some(12345));
        assert_eq!(t.tcp.closed_us, Some(10));
        assert_eq!(t.tcp.errors.len(), 2);
        assert_eq!(t.bad_lines, 5);
        assert_eq!(t.link_change("pa", false, 300, 500), Some(400));
        assert_eq!(t.link_change("pa", false, 500, 1000), None);
        assert_eq!(t.link_change("pa", true, 500, 1000), Some(900));
        assert_eq!(t.link_change("pb", true, 0, 1000), None);
        assert_eq!(t.port_states, vec![(960, "pa".to_string(), 3)]);
        assert_eq!(t.forwarding_at("pa", 900), Some(960));
        assert_eq!(t.forwarding_at("pa", 990), Some(990));
        assert_eq!(t.forwarding_at("pb", 0), None);
    }

    #[test]
    fn probe_queries() {
        let mut lines = Vec::new();
        // Probes every 1000 µs from t=0; 10..=19 lost (a 10 ms outage).
        for seq in 0..40u64 {
            lines.push(format!("p {seq} {}", seq * 1000));
            if !(10..20).contains(&seq) {
                lines.push(format!("r {seq} {}", seq * 1000 + 300));
            }
        }
        let t = timeline(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(t.lost_in(0, 40_000), 10);
        assert_eq!(t.lost_in(15_000, 40_000), 5);
        assert_eq!(t.sent_in(0, 10_000), 10);
        assert_eq!(t.first_answered_after(9_500), Some((20_000, 20_300)));
        assert_eq!(t.longest_gap(0, 40_000), 11_000);
        assert!(t.answering(5, 40_000, 1000));
        assert!(!t.answering(25, 40_000, 1000));
        assert_eq!(t.first_answered_after(50_000), None);
    }

    #[test]
    fn fdb_and_carrier_queries_see_the_state_in_force() {
        let t = timeline(&[
            "f 100 m pa",
            "f 200 m -",
            "f 300 m pb",
            "f 900 m pa",
            "c 100 1",
            "c 500 0",
            "c 700 1",
        ]);
        assert_eq!(t.fdb_at("m", "pb", 150), Some(300));
        assert_eq!(t.fdb_at("m", "pb", 400), Some(400), "already there");
        assert_eq!(t.fdb_at("m", "pb", 950), None, "moved away before");
        assert_eq!(t.fdb_at("m", "pa", 950), Some(950));
        assert_eq!(t.fdb_at("m", "pa", 400), Some(900));
        assert_eq!(t.fdb_port("m"), Some("pa"));
        assert_eq!(t.carrier_at(false, 200), Some(500));
        assert_eq!(t.carrier_at(true, 600), Some(700));
        assert_eq!(t.carrier_at(true, 800), Some(800));
        assert_eq!(t.carrier_now(), Some(true));
    }
}
