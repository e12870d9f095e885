//! `nicproxy capture`, the daemon's side: a capture request on the control socket, and the
//! stream of captured frames that answers it.
//!
//! The client sends one line, `capture mac=02:00:00:77:00:01 [count=N] [snaplen=N]` or
//! `capture session=<peer id> ...`. The daemon answers with one JSON line: an error
//! (`{"error": ...}`, then it closes), or the capture's description (`{"ok": true, "node":
//! ..., "filter": ..., "snaplen": ..., "interfaces": [...]}`), followed by a binary stream of
//! records, each a little-endian `u32` length and that many bytes:
//!
//! ```text
//! u64 timestamp (ns since the epoch) | u32 original length | u8 interface (0 nic,
//! 1 kernel, 2 fabric: where the worker received it) | u8 note length | note (UTF-8, e.g.
//! "in=fabric:b out=kernel") | frame bytes (cut to the snap length)
//! ```
//!
//! A length of 0 ends the stream; one JSON line follows with the totals (`frames`,
//! `captured`, `dropped`: frames lost because the capture ring was full, `ended`), then the
//! daemon closes. The stream ends when `count` frames were sent, when the client closes its
//! sending side (how the client stops a capture), when the worker stops, or when the
//! daemon is asked to stop.
//!
//! Every worker captures: each records the frames it steers into a ring of its own (a
//! frame is steered, so recorded, by exactly one worker; frames a worker hands to the
//! fabric's owner through the relay ring are not recorded again), and the capture thread
//! merges the rings into the one stream, each drain in time order. With several workers a
//! frame's note ends with the worker that steered it (`worker=1`): which queue a flow
//! landed on is what an operator asks of RSS.
//!
//! The capture runs on a thread of its own, never on the control thread: the workers'
//! record rings are drained every millisecond, and a slow client only fills those rings
//! (their frames are then counted as dropped); forwarding and failure detection never wait
//! for a capture. One capture runs at a time per daemon (each ring has one reader).

use std::io::{BufWriter, ErrorKind, Read, Write};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::dataplane::steer::{Decision, SessionId, Source};
use ::dataplane::wire::MacAddr;
use ::dataplane::worker::capture::{
    CaptureControl, CaptureFilter, CaptureStats, CapturedFrame, MAX_SNAPLEN, MIN_SNAPLEN,
};
use ::dataplane::worker::PORT_NAMES;

use crate::config::Config;

/// The first word of a capture request line.
pub const REQUEST: &str = "capture";
/// Snap length when the request names none: a whole frame of a 1500-byte MTU, with tags.
pub const DEFAULT_SNAPLEN: u16 = 2048;
/// Bytes of a record before its note.
const RECORD_FIXED: usize = 14;
/// Longest note.
const MAX_NOTE: usize = 255;
/// Longest record a well-formed stream carries.
pub const MAX_RECORD: usize = RECORD_FIXED + MAX_NOTE + MAX_SNAPLEN as usize;
/// Frames handed from the ring to the socket per pass (a pass also waits up to 1 ms for
/// the client to stop): up to 512,000 frames a second, beyond which the ring overflows and
/// counts drops rather than delay the stop conditions.
const BATCH: usize = 512;

/// What a capture takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFilter {
    /// Frames from or to this MAC.
    Mac(MacAddr),
    /// Frames from or to the session with this peer.
    Session(String),
}

/// A capture request, as the client sends it and the daemon reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Which frames.
    pub filter: RequestFilter,
    /// Stop after this many frames (none: until the client stops).
    pub count: Option<u64>,
    /// Bytes kept of each frame.
    pub snaplen: u16,
}

impl Request {
    /// Whether a control-socket line is a capture request.
    pub fn is_request(line: &str) -> bool {
        line.split_whitespace().next() == Some(REQUEST)
    }

    /// The request line (without the newline).
    pub fn to_line(&self) -> String {
        let mut s = match &self.filter {
            RequestFilter::Mac(m) => format!("{REQUEST} mac={m}"),
            RequestFilter::Session(p) => format!("{REQUEST} session={p}"),
        };
        if let Some(c) = self.count {
            s.push_str(&format!(" count={c}"));
        }
        s.push_str(&format!(" snaplen={}", self.snaplen));
        s
    }

    /// Parses a request line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        if words.next() != Some(REQUEST) {
            return Err(format!("not a capture request: {line:?}"));
        }
        let mut filter = None;
        let mut count = None;
        let mut snaplen = DEFAULT_SNAPLEN;
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {w:?}"))?;
            let dup = filter.is_some() && (k == "mac" || k == "session");
            if dup {
                return Err("give one filter: mac=... or session=...".into());
            }
            match k {
                "mac" => {
                    let m: MacAddr = v.parse().map_err(|e| format!("mac: {e}"))?;
                    filter = Some(RequestFilter::Mac(m));
                }
                "session" if v.is_empty() => return Err("session: give a peer id".into()),
                "session" => filter = Some(RequestFilter::Session(v.into())),
                "count" => {
                    count = Some(
                        v.parse::<u64>()
                            .ok()
                            .filter(|c| *c > 0)
                            .ok_or_else(|| format!("count: {v:?} is not a positive integer"))?,
                    );
                }
                "snaplen" => {
                    snaplen = v
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (MIN_SNAPLEN..=MAX_SNAPLEN).contains(s))
                        .ok_or_else(|| {
                            format!("snaplen: {v:?} is not in {MIN_SNAPLEN}..={MAX_SNAPLEN}")
                        })?;
                }
                _ => return Err(format!("unknown key {k:?} (mac, session, count, snaplen)")),
            }
        }
        Ok(Request {
            filter: filter.ok_or("give a filter: mac=... or session=<peer id>")?,
            count,
            snaplen,
        })
    }
}

/// One item of the record stream, as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamItem<'a> {
    /// A captured frame.
    Frame {
        /// When the worker steered it, since the epoch.
        time: Duration,
        /// Its length on the wire.
        orig_len: u32,
        /// Where the worker received it: an index into [`PORT_NAMES`].
        interface: u8,
        /// Its path, e.g. `in=nic out=kernel`.
        note: &'a str,
        /// What was kept of it.
        data: &'a [u8],
    },
    /// The end of the stream; the totals line follows.
    End,
}

/// Reads the next item from the front of `buf`: `Ok(None)` when `buf` does not hold a
/// whole item yet, otherwise the item and how many bytes it took. A malformed stream is an
/// error, never a panic.
pub fn next_item(buf: &[u8]) -> Result<Option<(StreamItem<'_>, usize)>, String> {
    let Some(len) = buf.get(0..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 {
        return Ok(Some((StreamItem::End, 4)));
    }
    if !(RECORD_FIXED..=MAX_RECORD).contains(&len) {
        return Err(format!("malformed capture stream: a record of {len} bytes"));
    }
    let Some(r) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&r[0..8]);
    let orig_len = u32::from_le_bytes([r[8], r[9], r[10], r[11]]);
    let interface = r[12];
    let note_len = usize::from(r[13]);
    if usize::from(interface) >= PORT_NAMES.len() || RECORD_FIXED + note_len > len {
        return Err("malformed capture stream: bad record header".into());
    }
    let note = std::str::from_utf8(&r[RECORD_FIXED..RECORD_FIXED + note_len])
        .map_err(|_| "malformed capture stream: note is not UTF-8".to_string())?;
    Ok(Some((
        StreamItem::Frame {
            time: Duration::from_nanos(u64::from_le_bytes(ts)),
            orig_len,
            interface,
            note,
            data: &r[RECORD_FIXED + note_len..],
        },
        4 + len,
    )))
}

/// Appends one frame's record to `out`.
fn encode(out: &mut Vec<u8>, f: &CapturedFrame<'_>, note: &str) {
    let mut end = note.len().min(MAX_NOTE);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    let note = &note.as_bytes()[..end];
    let len = RECORD_FIXED + note.len() + f.data.len();
    // len <= MAX_RECORD, far below 4 GiB.
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let ns = u64::try_from(f.time.as_nanos()).unwrap_or(u64::MAX);
    out.extend_from_slice(&ns.to_le_bytes());
    out.extend_from_slice(&f.orig_len.to_le_bytes());
    out.push(match f.source {
        Source::Nic => 0,
        Source::Kernel => 1,
        Source::Session(_) => 2,
    });
    // note.len() <= MAX_NOTE = 255.
    out.push(note.len() as u8);
    out.extend_from_slice(note);
    out.extend_from_slice(f.data);
}

/// The path of a frame in words, with sessions named by their peers, and the worker that
/// steered it when there are several.
fn note(f: &CapturedFrame<'_>, peers: &[String], worker: Option<usize>) -> String {
    let peer = |s: SessionId| {
        peers
            .get(usize::from(s.0))
            .cloned()
            .unwrap_or_else(|| format!("#{}", s.0))
    };
    let from = match f.source {
        Source::Nic => "nic".to_string(),
        Source::Kernel => "kernel".to_string(),
        Source::Session(s) => format!("fabric:{}", peer(s)),
    };
    let to = match f.decision {
        Decision::Kernel => "kernel".to_string(),
        Decision::Nic => "nic".to_string(),
        Decision::Session(s) => format!("fabric:{}", peer(s)),
        Decision::Flood(fl) => {
            let mut to: Vec<String> = Vec::new();
            if fl.kernel {
                to.push("kernel".into());
            }
            if fl.nic {
                to.push("nic".into());
            }
            to.extend(fl.sessions.iter().map(|s| format!("fabric:{}", peer(s))));
            format!("flood:{}", to.join(","))
        }
        Decision::Drop(r) => format!("drop:{}", r.name()),
    };
    match worker {
        Some(w) => format!("in={from} out={to} worker={w}"),
        None => format!("in={from} out={to}"),
    }
}

/// The frames of one drain of every worker's ring, encoded, to be written in time order.
#[derive(Default)]
struct Drain {
    bytes: Vec<u8>,
    records: Vec<(Duration, Range<usize>)>,
}

impl Drain {
    /// Takes up to `limit` frames from each worker's ring (at most `limit` are written: the
    /// earliest).
    fn fill(&mut self, ctls: &mut [CaptureControl], limit: usize, peers: &[String]) {
        self.bytes.clear();
        self.records.clear();
        let several = ctls.len() > 1;
        for (w, ctl) in ctls.iter_mut().enumerate() {
            ctl.poll(limit, |f| {
                let start = self.bytes.len();
                encode(&mut self.bytes, f, &note(f, peers, several.then_some(w)));
                self.records.push((f.time, start..self.bytes.len()));
            });
        }
        // Each ring is in time order; the merge is stable, so equal times keep worker order.
        self.records.sort_by_key(|(t, _)| *t);
        self.records.truncate(limit);
    }

    /// Writes the records in time order; returns how many.
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<usize> {
        for (_, r) in &self.records {
            out.write_all(&self.bytes[r.clone()])?;
        }
        Ok(self.records.len())
    }
}

/// Every worker's counts of the current capture, summed.
fn stats_of(ctls: &[CaptureControl]) -> CaptureStats {
    ctls.iter().fold(CaptureStats::default(), |a, c| {
        let s = c.stats();
        CaptureStats {
            captured: a.captured + s.captured,
            dropped: a.dropped + s.dropped,
        }
    })
}

/// Runs captures for the control socket: holds the workers' capture ends between captures.
#[derive(Clone)]
pub struct Service {
    control: Arc<Mutex<Option<Vec<CaptureControl>>>>,
    /// Whether there is a worker to capture from at all.
    has_worker: bool,
    node: String,
    peers: Arc<Vec<String>>,
}

impl Service {
    /// The service of a node; `controls` are the workers' capture ends, in worker order
    /// (none: captures are refused with a clear answer).
    pub fn new(cfg: &Config, controls: Vec<CaptureControl>) -> Service {
        Service {
            has_worker: !controls.is_empty(),
            control: Arc::new(Mutex::new((!controls.is_empty()).then_some(controls))),
            node: cfg.node.id.clone(),
            peers: Arc::new(cfg.peers.iter().map(|p| p.id.clone()).collect()),
        }
    }

    /// Answers one capture request line on `conn`: an error line, or a capture on a thread
    /// of its own. Returns at once.
    pub fn serve(&self, mut conn: UnixStream, line: &str) {
        let refuse = |conn: &mut UnixStream, msg: String| {
            let _ = writeln!(conn, "{}", serde_json::json!({ "error": msg }));
        };
        let req = match Request::parse(line) {
            Ok(r) => r,
            Err(e) => return refuse(&mut conn, e),
        };
        let filter = match &req.filter {
            RequestFilter::Mac(m) => CaptureFilter::Mac(*m),
            RequestFilter::Session(p) => match self.peers.iter().position(|x| x == p) {
                Some(i) => CaptureFilter::Session(SessionId(i as u16)),
                None => {
                    return refuse(
                        &mut conn,
                        format!(
                            "node {} has no session with peer {p:?} (its peers: {})",
                            self.node,
                            self.peers.join(", ")
                        ),
                    )
                }
            },
        };
        let taken = self
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut ctls) = taken else {
            let why = if self.has_worker {
                "another capture is running on this daemon (one at a time)"
            } else {
                "this daemon has no worker to capture from"
            };
            return refuse(&mut conn, why.into());
        };
        let started = ctls.iter_mut().enumerate().try_for_each(|(w, c)| {
            c.start(filter, req.snaplen)
                .map_err(|e| format!("worker {w}: {e}"))
        });
        if let Err(e) = started {
            stop_all(&mut ctls);
            self.give_back(ctls);
            return refuse(&mut conn, e);
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("np-capture".into())
            .spawn(move || {
                super::raise_aux_thread();
                let mut ctls = ctls;
                this.stream(&mut ctls, conn, &req);
                stop_all(&mut ctls);
                this.give_back(ctls);
            });
        if let Err(e) = spawned {
            tracing::error!("capture: starting its thread: {e}");
        }
    }

    fn give_back(&self, ctls: Vec<CaptureControl>) {
        *self.control.lock().unwrap_or_else(PoisonError::into_inner) = Some(ctls);
    }

    fn stream(&self, ctls: &mut [CaptureControl], conn: UnixStream, req: &Request) {
        let filter = match &req.filter {
            RequestFilter::Mac(m) => format!("mac {m}"),
            RequestFilter::Session(p) => format!("session {p}"),
        };
        tracing::info!(%filter, count = ?req.count, snaplen = req.snaplen, workers = ctls.len(), "capture started");
        let Ok(mut reader) = conn.try_clone() else {
            return;
        };
        // The read timeout paces the loop: each pass waits up to 1 ms for the client to
        // close, then drains the ring.
        if reader
            .set_read_timeout(Some(Duration::from_millis(1)))
            .is_err()
            || conn
                .set_write_timeout(Some(Duration::from_secs(5)))
                .is_err()
        {
            return;
        }
        let mut out = BufWriter::with_capacity(64 * 1024, conn);
        let head = serde_json::json!({
            "ok": true, "node": self.node, "filter": filter, "snaplen": req.snaplen,
            "count": req.count, "interfaces": PORT_NAMES, "workers": ctls.len(),
        });
        if writeln!(out, "{head}").and_then(|()| out.flush()).is_err() {
            return;
        }
        let mut sent: u64 = 0;
        let mut drain = Drain::default();
        let mut probe = [0u8; 64];
        let ended = loop {
            let want = req.count.map_or(u64::MAX, |c| c - sent);
            let limit = usize::try_from(want).unwrap_or(usize::MAX).min(BATCH);
            drain.fill(ctls, limit, &self.peers);
            match drain.write_to(&mut out) {
                Ok(n) => sent += n as u64,
                Err(_) => {
                    tracing::info!(sent, "capture: the client went away");
                    return;
                }
            }
            if req.count.is_some_and(|c| sent >= c) {
                break "count reached";
            }
            if out.flush().is_err() {
                tracing::info!(sent, "capture: the client went away");
                return;
            }
            if ctls.iter().any(CaptureControl::worker_gone) {
                break "a worker stopped";
            }
            if ::dataplane::sys::signal::stop_requested() {
                break "the daemon is stopping";
            }
            match reader.read(&mut probe) {
                Ok(_) => break "stopped by the client",
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break "stopped by the client",
            }
        };
        let stats = stats_of(ctls);
        let tail = serde_json::json!({
            "frames": sent, "captured": stats.captured, "dropped": stats.dropped, "ended": ended,
        });
        tracing::info!(%filter, frames = sent, dropped = stats.dropped, ended, "capture ended");
        let _ = out
            .write_all(&0u32.to_le_bytes())
            .and_then(|()| writeln!(out, "{tail}"))
            .and_then(|()| out.flush());
    }
}

/// Stops the capture on every worker (a worker that is gone has nothing to stop).
fn stop_all(ctls: &mut [CaptureControl]) {
    for (w, c) in ctls.iter_mut().enumerate() {
        if let Err(e) = c.stop() {
            tracing::warn!("capture, worker {w}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::dataplane::counters::DropReason;
    use ::dataplane::steer::{Flood, SessionMask};

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        let r = Request {
            filter: RequestFilter::Mac("02:00:00:77:00:01".parse().unwrap()),
            count: Some(10),
            snaplen: 256,
        };
        assert_eq!(
            r.to_line(),
            "capture mac=02:00:00:77:00:01 count=10 snaplen=256"
        );
        assert_eq!(Request::parse(&r.to_line()), Ok(r));
        let s = Request::parse("capture session=b").unwrap();
        assert_eq!(s.filter, RequestFilter::Session("b".into()));
        assert_eq!((s.count, s.snaplen), (None, DEFAULT_SNAPLEN));
        assert!(Request::is_request("capture mac=x"));
        assert!(!Request::is_request("status"));
        for (line, why) in [
            ("capture", "give a filter"),
            ("capture mac=02:zz:00:00:00:01", "mac:"),
            ("capture mac=02:00:00:00:00:01 session=b", "one filter"),
            ("capture session=b count=0", "count"),
            ("capture session=b count=-1", "count"),
            ("capture session=b snaplen=10", "snaplen"),
            ("capture session=b snaplen=99999", "snaplen"),
            ("capture session=b colour=blue", "unknown key"),
            ("capture session", "key=value"),
            ("capture session=", "peer id"),
            ("status", "not a capture request"),
        ] {
            let e = Request::parse(line).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
        }
    }

    #[test]
    fn a_drain_merges_every_workers_ring_in_time_order() {
        use ::dataplane::worker::capture::channel;
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let (mut tap0, c0) = channel(2_000_000_000);
        let (mut tap1, c1) = channel(2_000_000_000);
        let mut ctls = vec![c0, c1];
        for c in &mut ctls {
            c.start(CaptureFilter::Mac(mac), 128).unwrap();
        }
        tap0.refresh();
        tap1.refresh();
        let frame = |tag: u8| {
            let mut f = vec![tag; 60];
            f[0..6].copy_from_slice(&mac.0);
            f
        };
        let mut taps = [tap0, tap1];
        let mut offer = |w: usize, tag: u8| {
            let f = frame(tag);
            taps[w].offer(Source::Nic, &Decision::Kernel, &f, f.len());
            std::thread::sleep(Duration::from_millis(2));
        };
        // Worker 1 steers first, then worker 0, then worker 1 again.
        offer(1, 1);
        offer(0, 2);
        offer(1, 3);
        let peers: Vec<String> = Vec::new();
        let read = |d: &Drain| {
            let mut out = Vec::new();
            d.write_to(&mut out).unwrap();
            let mut items = Vec::new();
            let mut at = 0;
            while let Some((StreamItem::Frame { note, data, .. }, used)) =
                next_item(&out[at..]).unwrap()
            {
                items.push((note.to_string(), data[59]));
                at += used;
            }
            items
        };
        let mut d = Drain::default();
        d.fill(&mut ctls, 10, &peers);
        let want = |w: usize, tag: u8| (format!("in=nic out=kernel worker={w}"), tag);
        assert_eq!(read(&d), [want(1, 1), want(0, 2), want(1, 3)]);
        assert_eq!(stats_of(&ctls).captured, 3);
        // A limit keeps the earliest frames of the drain.
        offer(0, 4);
        offer(1, 5);
        offer(0, 6);
        d.fill(&mut ctls, 2, &peers);
        assert_eq!(read(&d), [want(0, 4), want(1, 5)]);
        // One worker alone: notes without the worker, as before there were several.
        let mut one = vec![ctls.remove(0)];
        offer(0, 7);
        d.fill(&mut one, 10, &peers);
        assert_eq!(read(&d), [("in=nic out=kernel".to_string(), 7)]);
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let data: Vec<u8> = (0..100).collect();
        let f = CapturedFrame {
            time: Duration::new(1_700_000_000, 5),
            orig_len: 1514,
            source: Source::Session(SessionId(1)),
            decision: Decision::Flood(Flood {
                sessions: SessionMask::only(SessionId(0)),
                kernel: true,
                nic: false,
            }),
            data: &data,
        };
        let peers = vec!["b".to_string(), "c".to_string()];
        let n = note(&f, &peers, None);
        assert_eq!(n, "in=fabric:c out=flood:kernel,fabric:b");
        assert_eq!(
            note(&f, &peers, Some(1)),
            "in=fabric:c out=flood:kernel,fabric:b worker=1"
        );
        let mut buf = Vec::new();
        encode(&mut buf, &f, &n);
        buf.extend_from_slice(&0u32.to_le_bytes());
        for cut in 0..buf.len() - 4 {
            assert_eq!(next_item(&buf[..cut]), Ok(None), "partial record at {cut}");
        }
        let (item, used) = next_item(&buf).unwrap().unwrap();
        assert_eq!(
            item,
            StreamItem::Frame {
                time: f.time,
                orig_len: 1514,
                interface: 2,
                note: "in=fabric:c out=flood:kernel,fabric:b",
                data: &data,
            }
        );
        assert_eq!(next_item(&buf[used..]), Ok(Some((StreamItem::End, 4))));

        let drop = CapturedFrame {
            source: Source::Nic,
            decision: Decision::Drop(DropReason::NotForUs),
            ..f
        };
        assert_eq!(note(&drop, &peers, None), "in=nic out=drop:not_for_us");

        assert!(
            next_item(&5u32.to_le_bytes()).is_err(),
            "shorter than a header"
        );
        assert!(next_item(&u32::MAX.to_le_bytes()).is_err(), "huge");
        let mut bad = buf.clone();
        bad[4 + 12] = 9;
        assert!(next_item(&bad).is_err(), "no such interface");
        let mut bad = buf;
        bad[4 + 13] = 255;
        assert!(next_item(&bad).is_err(), "note longer than the record");
    }
}
