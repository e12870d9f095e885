//! The anti-replay sliding window of one session direction (RFC 4303 §3.4.3 style).

/// Sequence numbers the window remembers behind the highest one accepted.
pub const REPLAY_WINDOW: u64 = 64;

/// Remembers the highest accepted sequence number and which of the 63 before it were seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest accepted sequence number; 0 before any.
    top: u64,
    /// Bit i set: sequence `top - i` was accepted.
    seen: u64,
}

impl ReplayWindow {
    /// Whether `seq` would be accepted: new and not older than the window. Checked before
    /// the message is trusted; [`commit`](Self::commit) only after.
    pub fn check(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            return true;
        }
        let back = self.top - seq;
        back < REPLAY_WINDOW && self.seen & (1u64 << back) == 0
    }

    /// Records `seq` as accepted. Call only after [`check`](Self::check) passed.
    pub fn commit(&mut self, seq: u64) {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = seq;
        } else {
            let back = self.top - seq;
            if back < REPLAY_WINDOW {
                self.seen |= 1u64 << back;
            }
        }
    }

    /// The highest accepted sequence number (0 before any).
    pub fn highest(&self) -> u64 {
        self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    #[test]
    fn accepts_new_rejects_seen_and_old() {
        let mut w = ReplayWindow::default();
        assert!(!w.check(0));
        for seq in [1, 2, 5, 4, 3] {
            assert!(w.check(seq), "{seq}");
            w.commit(seq);
            assert!(!w.check(seq), "{seq} twice");
        }
        w.commit(100);
        assert!(!w.check(36), "older than the window");
        assert!(w.check(37), "oldest slot in the window");
        assert!(w.check(99));
        w.commit(99);
        assert!(!w.check(99));
        w.commit(1000);
        assert!(!w.check(100));
        assert_eq!(w.highest(), 1000);
    }

    /// Against a model that remembers every accepted number: the window accepts exactly the
    /// numbers that are new and within 64 of the highest.
    #[test]
    fn matches_a_model_on_random_sequences() {
        let mut rng = TestRng::new(0x5eed_0001);
        for _ in 0..200 {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut top = 0u64;
            for _ in 0..300 {
                let seq = if rng.chance(70) {
                    top + 1 + rng.below(3)
                } else {
                    top.saturating_sub(rng.below(80))
                };
                let model =
                    seq != 0 && !seen.contains(&seq) && (seq > top || top - seq < REPLAY_WINDOW);
                assert_eq!(w.check(seq), model, "seq {seq} top {top}");
                if model {
                    w.commit(seq);
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }
}
