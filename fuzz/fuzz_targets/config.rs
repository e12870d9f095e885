//! The node configuration parser, `control::config::Config::from_str_named`, on arbitrary
//! text (invalid UTF-8 is read lossily, as a caller decoding bytes would), and the key-file
//! parser `GroupKey::from_hex` on the same text.
//!
//! Contracts checked beyond "no panic":
//! - an accepted config can be run: its ids, group and MACs fit the session protocol (a
//!   `PeerTable` over its peers builds and a Hello with its MACs seals), its proxy order
//!   names distinct peers of its group, its timers respect the documented bounds, and every
//!   derived path and duration is computable;
//! - a rejected config yields at least one diagnostic, each naming the file, with a line
//!   and column inside the text when it has one;
//! - an accepted key is at least 32 bytes and is exactly the hex digits of the text.

#![no_main]

use std::collections::HashSet;
use std::num::NonZeroU64;

use control::config::{Config, ConfigError, GroupKey, MIN_KEY_LEN};
use control::proto::{Capabilities, Hello, LinkFlags, PeerTable, SessionAuth};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzz/node.toml";

fn check_accepted(cfg: &Config) {
    let key = nicproxy_fuzz::proto::key();
    let peers = PeerTable::new(&key, &cfg.node.id, cfg.peers.iter().map(|p| p.id.as_str()))
        .expect("a valid config's ids fit the session protocol");
    assert_eq!(peers.sessions().len(), cfg.peers.len());
    if let Some(p) = cfg.peers.first() {
        let mut s = SessionAuth::new(&key, &cfg.node.id, &p.id).expect("valid ids");
        let hello = Hello {
            max_version: 1,
            capabilities: Capabilities::PROXY,
            link: LinkFlags::new(true, true),
            group: cfg.node.group.clone(),
            macs: cfg.kernel.macs.clone(),
        };
        s.hello(NonZeroU64::MIN, &hello)
            .expect("a valid config's group and MACs fit a Hello");
    }
    assert!(!cfg.kernel.macs.is_empty());
    assert!(cfg.kernel.macs.iter().all(|m| m.is_unicast()));

    let order = cfg.proxy_order();
    let group: HashSet<&str> = cfg.group_peers().map(|p| p.id.as_str()).collect();
    let mut seen = HashSet::new();
    for id in &order {
        assert!(
            group.contains(id.as_str()),
            "proxy {id:?} is not a group peer"
        );
        assert!(seen.insert(id), "proxy {id:?} listed twice");
    }
    if cfg.failover.proxies.is_none() {
        assert_eq!(
            order.len(),
            group.len(),
            "the default order holds every group peer"
        );
    }
    assert!(cfg.local_domains().count() >= 1);

    let t = &cfg.timers;
    assert!(t.detection_time().as_millis() >= 4);
    assert!(t.heartbeat() <= t.detection_time());
    let _ = (t.link_poll(), t.connect_timeout(), t.ack_timeout());
    let _ = (cfg.hold_down(), cfg.announce.burst_duration());
    let _ = (cfg.key_path(), cfg.control_socket());
}

fn check_rejected(text: &str, e: &ConfigError) {
    let diags = e.diagnostics();
    assert!(
        !diags.is_empty(),
        "a rejected config without a diagnostic: {e}"
    );
    assert!(!e.to_string().is_empty());
    let lines = text.split('\n').count();
    for d in diags {
        assert_eq!(d.file, NAME);
        assert!(!d.message.is_empty());
        assert_eq!(d.line.is_some(), d.column.is_some(), "{d}");
        if let (Some(line), Some(col)) = (d.line, d.column) {
            assert!(line >= 1 && line <= lines, "{d}: line outside the text");
            let width = text
                .split('\n')
                .nth(line - 1)
                .map_or(0, |l| l.chars().count());
            assert!(col >= 1 && col <= width + 1, "{d}: column outside its line");
        }
    }
}

fn check_key(text: &str) {
    let Ok(key) = GroupKey::from_hex(text) else {
        return;
    };
    assert!(key.as_bytes().len() >= MIN_KEY_LEN);
    let digits: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, digits);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_str_named(&text, NAME) {
        Ok(cfg) => check_accepted(&cfg),
        Err(e) => check_rejected(&text, &e),
    }
    check_key(&text);
});
