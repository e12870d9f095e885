//! What the fault suite and the soak read from a running daemon besides its status: its
//! process's resident memory and open fds (from /proc), and its Prometheus metrics (scraped
//! inside its namespace), plus the seeded random numbers both use.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dataplane::sys::netns;

/// Open fds of a process (`/proc/<pid>/fd`); None once it is gone.
pub fn fd_count(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `nicproxy_control_rejects{reason}` of the daemon in namespace `ns` (its metrics listen
/// on the lab config's 127.0.0.1:9469), by reason; empty if the scrape failed.
pub fn control_rejects(ns: &str) -> BTreeMap<String, u64> {
    let body = netns::run_in(ns, || scrape("127.0.0.1:9469"))
        .ok()
        .flatten()
        .unwrap_or_default();
    parse_series(&body, "nicproxy_control_rejects", "reason")
}

fn scrape(addr: &str) -> Option<String> {
    let sock_addr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&sock_addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: lab\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The values of one metric family by one label: `name{...label="x"...} v` lines.
fn parse_series(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let key = format!("{label}=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let start = labels.find(&key)? + key.len();
            let end = labels[start..].find('"')? + start;
            let v = value.trim().parse::<f64>().ok()?;
            Some((labels[start..end].to_string(), v as u64))
        })
        .collect()
}

/// splitmix64: small, seedable, good enough to spread intervals and bytes; the suite prints
/// the seed so a run can be repeated exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (bias negligible for the small ranges used here).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// A seed from the clock, for runs that were not given one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_parse_by_label() {
        let text = "# HELP x\n\
            nicproxy_control_rejects{node=\"b\",reason=\"replay\"} 3\n\
            nicproxy_control_rejects{node=\"b\",reason=\"bad_mac\"} 12\n\
            nicproxy_control_rejects_other{reason=\"x\"} 1\n\
            nicproxy_drops_total{node=\"b\"} 5\n";
        let m = parse_series(text, "nicproxy_control_rejects", "reason");
        assert_eq!(m.len(), 2);
        assert_eq!(m["replay"], 3);
        assert_eq!(m["bad_mac"], 12);
    }

    #[test]
    fn rng_is_seeded_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.range(1, 50);
            assert_eq!(x, b.range(1, 50));
            assert!((1..=50).contains(&x));
        }
        let mut buf = [0u8; 13];
        a.fill(&mut buf);
        assert!(buf.iter().any(|&x| x != 0));
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(fd_count(pid).is_some_and(|n| n >= 3));
        assert!(rss_kib(pid).is_some_and(|n| n > 0));
        assert_eq!(fd_count(u32::MAX), None);
    }
}
