//! The node agent (in node a): UDP echo for the station's probes, a TCP sink that counts
//! what it receives, and a watch of the kernel interface's carrier.
//!
//! Events: `ready <us>`, `sink accepted <us>`, `b <us> <bytes>` (total received, every
//! 10 ms once a transfer started), `sink eof <us> <bytes>`, `sink error <us> <what>`,
//! `c <us> <1|0|->` (carrier changed; `-`: unreadable, e.g. the interface is gone or down).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::io::{now_us, Events, Stop};
use crate::lab::error::{LabError, Result};

/// Runs until stdin closes.
pub fn run(udp_port: u16, tcp_port: u16, carrier_if: &str) -> Result<()> {
    let stop = Stop::watch_stdin();
    let ev = Events::new();
    let echo = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, udp_port))
        .map_err(|e| LabError::io(format!("binding the echo socket to port {udp_port}"), e))?;
    echo.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| LabError::io("setting the echo socket timeout", e))?;
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, tcp_port))
        .map_err(|e| LabError::io(format!("binding the sink to port {tcp_port}"), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| LabError::io("making the sink's listener non-blocking", e))?;
    {
        let stop = stop.clone();
        std::thread::spawn(move || serve_echo(&echo, &stop));
    }
    let received = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicBool::new(false));
    {
        let (ev, stop, received, started) =
            (ev.clone(), stop.clone(), received.clone(), started.clone());
        std::thread::spawn(move || serve_sink(&listener, &ev, &stop, &received, &started));
    }
    {
        let (ev, stop, received, started) =
            (ev.clone(), stop.clone(), received.clone(), started.clone());
        std::thread::spawn(move || {
            while !stop.requested() {
                std::thread::sleep(Duration::from_millis(10));
                if started.load(Ordering::Relaxed) {
                    ev.emit(format_args!(
                        "b {} {}",
                        now_us(),
                        received.load(Ordering::Relaxed)
                    ));
                }
            }
        });
    }
    ev.emit(format_args!("ready {}", now_us()));
    watch_carrier(carrier_if, &ev, &stop);
    ev.flush();
    Ok(())
}

fn serve_echo(sock: &UdpSocket, stop: &Stop) {
    let mut buf = [0u8; 2048];
    while !stop.requested() {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

fn serve_sink(
    listener: &TcpListener,
    ev: &Events,
    stop: &Stop,
    received: &AtomicU64,
    started: &AtomicBool,
) {
    while !stop.requested() {
        match listener.accept() {
            Ok((conn, _)) => {
                ev.emit(format_args!("sink accepted {}", now_us()));
                started.store(true, Ordering::Relaxed);
                drain(conn, ev, stop, received);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn drain(mut conn: TcpStream, ev: &Events, stop: &Stop, received: &AtomicU64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.requested() {
        match conn.read(&mut buf) {
            Ok(0) => {
                ev.emit(format_args!(
                    "sink eof {} {}",
                    now_us(),
                    received.load(Ordering::Relaxed)
                ));
                return;
            }
            Ok(n) => {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if super::io::transient(&e) => {}
            Err(e) => {
                ev.emit(format_args!("sink error {} {e}", now_us()));
                return;
            }
        }
    }
}

/// Polls the interface's carrier change counters every millisecond and reads the carrier
/// itself only when they move: reading `carrier` takes the RTNL lock, which `ip` and the
/// daemons need too, and 1000 takes a second would slow them down; the counters do not.
fn watch_carrier(ifname: &str, ev: &Events, stop: &Stop) {
    let dir = format!("/sys/class/net/{ifname}");
    let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
    let mut last_counts: Option<(String, String)> = None;
    let mut last: Option<String> = None;
    while !stop.requested() {
        let counts = read("carrier_up_count").zip(read("carrier_down_count"));
        if counts != last_counts || counts.is_none() {
            let now = read("carrier").map_or_else(|| "-".to_string(), |s| s.trim().to_string());
            if last.as_deref() != Some(now.as_str()) {
                ev.emit(format_args!("c {} {now}", now_us()));
                last = Some(now);
            }
            last_counts = counts;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
