//! The switch agent: watches where the bridge has learned the nodes' MACs, and the
//! administrative state of the bridge's ports.
//!
//! Every millisecond it reads the bridge's forwarding table from sysfs
//! (`/sys/class/net/<br>/brforward`, readable without netlink or the RTNL lock) and reports
//! every change of port of a watched MAC: `f <us> <mac> <port>`, or `-` once the bridge has
//! forgotten it (as it does when the port it was learned on goes down). It also reads each
//! port's `flags` and reports `l <us> <port> <1|0>` when the port is set up or down: that
//! is when a cut or a restore took effect, which the lab cannot time from the `ip` command
//! alone (on a busy machine the command can return long after the change). And it reports
//! each port's bridge state, `s <us> <port> <state>` (3: forwarding): a port that is up
//! but not yet forwarding neither learns nor passes frames.

use std::collections::HashMap;
use std::time::Duration;

use super::io::{now_us, Events, Stop};
use crate::lab::error::{LabError, Result};

/// Size of one `struct __fdb_entry` in `brforward`.
const ENTRY_LEN: usize = 16;

/// One learned entry: the MAC and the bridge port number it was learned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The MAC.
    pub mac: [u8; 6],
    /// Bridge port number.
    pub port_no: u16,
    /// The bridge's own address on that port, not a learned one.
    pub is_local: bool,
}

/// Parses `brforward` (`struct __fdb_entry` from linux/if_bridge.h: mac[6], port_no,
/// is_local, ageing_timer_value (u32), port_hi, pad, unused (u16)). A trailing partial
/// record is ignored.
pub fn parse_brforward(raw: &[u8]) -> Vec<FdbEntry> {
    raw.chunks_exact(ENTRY_LEN)
        .map(|e| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&e[..6]);
            FdbEntry {
                mac,
                port_no: u16::from(e[6]) | (u16::from(e[12]) << 8),
                is_local: e[7] != 0,
            }
        })
        .collect()
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn mac_text(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Port number → port name, from `/sys/class/net/<br>/brif/*/port_no` (hex, e.g. `0x1`).
fn port_names(bridge: &str) -> HashMap<u16, String> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) else {
        return map;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(entry.path().join("port_no")) else {
            continue;
        };
        if let Ok(no) = u16::from_str_radix(text.trim().trim_start_matches("0x"), 16) {
            map.insert(no, name);
        }
    }
    map
}

/// Whether an interface is administratively up (IFF_UP in `/sys/class/net/<if>/flags`).
fn admin_up(ifname: &str) -> Option<bool> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/flags")).ok()?;
    let flags = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?;
    Some(flags & 1 != 0)
}

/// A bridge port's state (`/sys/class/net/<port>/brport/state`: 0 disabled, 1 listening,
/// 2 learning, 3 forwarding, 4 blocking). The bridge learns and forwards only in 2 and 3.
fn stp_state(port: &str) -> Option<u8> {
    std::fs::read_to_string(format!("/sys/class/net/{port}/brport/state"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Runs until stdin closes.
pub fn run(bridge: &str, macs: &[String]) -> Result<()> {
    let watched: Vec<[u8; 6]> = macs
        .iter()
        .map(|m| {
            parse_mac(m).ok_or_else(|| LabError::Precondition(format!("not a MAC address: {m:?}")))
        })
        .collect::<Result<_>>()?;
    let path = format!("/sys/class/net/{bridge}/brforward");
    std::fs::read(&path).map_err(|e| LabError::io(format!("reading {path}"), e))?;
    let stop = Stop::watch_stdin();
    let ev = Events::new();
    let mut ports = port_names(bridge);
    let mut last: HashMap<[u8; 6], String> = HashMap::new();
    let mut admin: HashMap<String, bool> = HashMap::new();
    let mut stp: HashMap<String, u8> = HashMap::new();
    let mut rescan = std::time::Instant::now();
    while !stop.requested() {
        if rescan.elapsed() > Duration::from_millis(200) {
            ports = port_names(bridge);
            rescan = std::time::Instant::now();
        }
        for name in ports.values() {
            if let Some(up) = admin_up(name) {
                if admin.get(name) != Some(&up) {
                    ev.emit(format_args!("l {} {name} {}", now_us(), u8::from(up)));
                    admin.insert(name.clone(), up);
                }
            }
            if let Some(state) = stp_state(name) {
                if stp.get(name) != Some(&state) {
                    ev.emit(format_args!("s {} {name} {state}", now_us()));
                    stp.insert(name.clone(), state);
                }
            }
        }
        let entries = std::fs::read(&path)
            .map(|raw| parse_brforward(&raw))
            .unwrap_or_default();
        let t = now_us();
        for mac in &watched {
            let port_no = entries
                .iter()
                .find(|e| e.mac == *mac && !e.is_local)
                .map(|e| e.port_no);
            if port_no.is_some_and(|p| !ports.contains_key(&p)) {
                ports = port_names(bridge);
            }
            let port = port_no
                .map(|p| ports.get(&p).cloned().unwrap_or_else(|| format!("#{p}")))
                .unwrap_or_else(|| "-".to_string());
            if last.get(mac) != Some(&port) {
                ev.emit(format_args!("f {t} {} {port}", mac_text(mac)));
                last.insert(*mac, port);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    ev.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdb_records() {
        let mut raw = vec![
            0x02, 0x00, 0x00, 0x77, 0x00, 0x01, 3, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, //
            0x1a, 0x6a, 0x07, 0xa0, 0x65, 0xbf, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0,
        ];
        raw.extend_from_slice(&[9; 7]); // a partial record
        let e = parse_brforward(&raw);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].mac, [2, 0, 0, 0x77, 0, 1]);
        assert_eq!(e[0].port_no, 3);
        assert!(!e[0].is_local);
        assert_eq!(e[1].port_no, 0x101);
        assert!(e[1].is_local);
        assert!(parse_brforward(&[]).is_empty());
    }

    #[test]
    fn parses_macs_strictly() {
        assert_eq!(parse_mac("02:00:00:77:00:0a"), Some([2, 0, 0, 0x77, 0, 10]));
        assert_eq!(mac_text(&[2, 0, 0, 0x77, 0, 10]), "02:00:00:77:00:0a");
        for bad in [
            "",
            "02:00:00:77:00",
            "02:00:00:77:00:01:02",
            "2:00:00:77:00:01",
            "zz:00:00:77:00:01",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
