//! Rendezvous (highest random weight) ordering of proxies.
//!
//! The weight of (client, peer) is the first 8 bytes of SHA-256 over a domain-separation
//! tag and both ids. A cryptographic hash is overkill for spreading, but it is already a
//! dependency and, unlike std's SipHash with random keys or `DefaultHasher`, its output is
//! fixed forever, so every node of a group computes the same orders across versions and
//! machines (operators can predict and document them).

use sha2::{Digest, Sha256};

/// The rendezvous weight of `peer` as a proxy for `client`.
pub(crate) fn weight(client: &str, peer: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"nicproxy-hrw-v1\0");
    h.update(client.as_bytes());
    // Ids cannot contain NUL, so the separator makes (client, peer) pairs unambiguous.
    h.update([0u8]);
    h.update(peer.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Peers ordered by descending weight for `client`; ties (practically impossible) break
/// by id so the order is total.
pub(crate) fn rendezvous_order<'a>(
    client: &str,
    peers: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut weighted: Vec<(u64, &str)> = peers.map(|p| (weight(client, p), p)).collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    weighted.into_iter().map(|(_, p)| p.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_a_stable_permutation() {
        let peers = ["b", "c", "d", "e"];
        let order = rendezvous_order("a", peers.iter().copied());
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, peers);
        // Removing a peer keeps the relative order of the rest (the HRW property).
        let without_c = rendezvous_order("a", peers.iter().copied().filter(|p| *p != "c"));
        let expect: Vec<String> = order.iter().filter(|p| *p != "c").cloned().collect();
        assert_eq!(without_c, expect);
        // Pinned values (computed independently with Python's hashlib): the order must
        // never change between versions, or nodes running different versions disagree.
        assert_eq!(weight("a", "b"), 0x8fb3_5fce_5393_9de5);
        assert_ne!(weight("a", "b"), weight("b", "a"));
        assert_eq!(rendezvous_order("c", ["a", "b"].into_iter()), ["b", "a"]);
    }

    #[test]
    fn first_choices_spread() {
        // 64 clients, 4 candidate proxies: every proxy must be somebody's first choice,
        // and none may take more than half of the clients.
        let proxies = ["p0", "p1", "p2", "p3"];
        let mut firsts = [0usize; 4];
        for c in 0..64 {
            let client = format!("n{c}");
            let order = rendezvous_order(&client, proxies.iter().copied());
            let idx = proxies
                .iter()
                .position(|p| *p == order[0])
                .expect("a proxy");
            firsts[idx] += 1;
        }
        assert!(firsts.iter().all(|&n| n > 0 && n <= 32), "{firsts:?}");
    }
}
