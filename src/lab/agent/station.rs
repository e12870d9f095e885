//! The station agent: UDP probes to node a's echo agent at a fixed interval, and a paced
//! TCP transfer to its sink.
//!
//! Events: `p <seq> <us>` (probe sent), `r <seq> <us>` (its echo came back),
//! `tcp connected <us>`, `tcp sent <us> <bytes>` (all written, write side shut),
//! `tcp closed <us>` (the sink closed after reading everything), `tcp error <us> <what>`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::io::{now_us, Events, Stop};
use crate::lab::error::{LabError, Result};

/// Probe payload: sequence number and send time, little-endian.
pub const PROBE_LEN: usize = 16;

/// What to send where.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Node a's management address.
    pub target: Ipv4Addr,
    /// Its echo port.
    pub udp_port: u16,
    /// Its sink port.
    pub tcp_port: u16,
    /// Probe interval.
    pub interval_us: u64,
    /// TCP rate; 0 for none.
    pub tcp_mbps: u32,
}

/// Runs until stdin closes, then lets the last echoes arrive and closes the transfer
/// cleanly.
pub fn run(p: &Params) -> Result<()> {
    let stop = Stop::watch_stdin();
    let ev = Events::new();
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect((p.target, p.udp_port)).map(|()| s))
        .map_err(|e| {
            LabError::io(
                format!("opening the probe socket to {}:{}", p.target, p.udp_port),
                e,
            )
        })?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| LabError::io("setting the probe socket timeout", e))?;
    let rx = sock
        .try_clone()
        .map_err(|e| LabError::io("cloning the probe socket", e))?;
    let receiver = {
        let (ev, stop) = (ev.clone(), stop.clone());
        std::thread::spawn(move || receive(&rx, &ev, &stop))
    };
    let tcp = (p.tcp_mbps > 0).then(|| {
        let (ev, stop, p) = (ev.clone(), stop.clone(), *p);
        std::thread::spawn(move || tcp_source(&p, &ev, &stop))
    });
    send_probes(&sock, p.interval_us, &ev, &stop);
    let _ = receiver.join();
    if let Some(t) = tcp {
        let _ = t.join();
    }
    ev.flush();
    Ok(())
}

fn send_probes(sock: &UdpSocket, interval_us: u64, ev: &Events, stop: &Stop) {
    let interval = Duration::from_micros(interval_us);
    let mut base = Instant::now();
    let mut seq: u64 = 0;
    let mut slot: u64 = 0;
    let mut buf = [0u8; PROBE_LEN];
    while !stop.requested() {
        let due = base + interval * u32::try_from(slot).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > interval * 20 {
            // Descheduled for a while: restart the schedule rather than burst to catch up.
            base = now;
            slot = 0;
        }
        let t = now_us();
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..].copy_from_slice(&t.to_le_bytes());
        // A failed send (no route, an ICMP error reported late) is a lost probe like any
        // other: it is recorded as sent and never answered.
        let _ = sock.send(&buf);
        ev.emit(format_args!("p {seq} {t}"));
        seq += 1;
        slot += 1;
    }
}

fn receive(sock: &UdpSocket, ev: &Events, stop: &Stop) {
    let mut buf = [0u8; 64];
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.requested() {
            // Echoes still in flight when the probes stop are given a moment to arrive.
            let t = *stopped_at.get_or_insert_with(Instant::now);
            if t.elapsed() > Duration::from_millis(300) {
                return;
            }
        }
        // Wrong sizes are not ours; errors (timeouts, late ICMP errors) carry nothing.
        if let Ok(PROBE_LEN) = sock.recv(&mut buf) {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&buf[..8]);
            ev.emit(format_args!("r {} {}", u64::from_le_bytes(seq), now_us()));
        }
    }
}

/// Paced writes from a token bucket that holds at most 100 ms of data, so the transfer
/// does not burst to "catch up" after an outage.
fn tcp_source(p: &Params, ev: &Events, stop: &Stop) {
    let addr = SocketAddr::from((p.target, p.tcp_port));
    let t0 = Instant::now();
    let mut s = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => break s,
            Err(e) if stop.requested() || t0.elapsed() > Duration::from_secs(10) => {
                ev.emit(format_args!(
                    "tcp error {} connecting to {addr}: {e}",
                    now_us()
                ));
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    ev.emit(format_args!("tcp connected {}", now_us()));
    let _ = s.set_write_timeout(Some(Duration::from_millis(20)));
    let rate = f64::from(p.tcp_mbps) * 1e6 / 8.0;
    let cap = rate * 0.1;
    let buf = vec![0x5au8; 64 * 1024];
    let mut tokens = 0.0f64;
    let mut last = Instant::now();
    let mut written: u64 = 0;
    while !stop.requested() {
        let now = Instant::now();
        tokens = (tokens + rate * (now - last).as_secs_f64()).min(cap);
        last = now;
        let want = (tokens as usize).min(buf.len());
        if want < 1024 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        match s.write(&buf[..want]) {
            Ok(n) => {
                written += n as u64;
                tokens -= n as f64;
            }
            Err(e) if super::io::transient(&e) => {}
            Err(e) => {
                ev.emit(format_args!("tcp error {} writing: {e}", now_us()));
                return;
            }
        }
    }
    // Everything still queued must reach the sink: blocking writes are done, so shut the
    // write side and wait for the sink to close after reading it all.
    if let Err(e) = s.shutdown(Shutdown::Write) {
        ev.emit(format_args!("tcp error {} shutting down: {e}", now_us()));
        return;
    }
    ev.emit(format_args!("tcp sent {} {written}", now_us()));
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(0) => ev.emit(format_args!("tcp closed {}", now_us())),
        Ok(_) => ev.emit(format_args!("tcp error {} the sink sent data", now_us())),
        Err(e) => ev.emit(format_args!(
            "tcp error {} waiting for the sink to close: {e}",
            now_us()
        )),
    }
}
