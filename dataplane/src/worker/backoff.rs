//! Idle back-off for the `adaptive` polling mode.
//!
//! A `busy` worker spins on its dedicated core forever. An `adaptive` worker spins for a
//! while after its last frame (so bursts keep busy-poll latency), then sleeps for growing
//! periods, capped. The cap bounds the wake-up latency: a frame that arrives while the worker
//! sleeps waits at most `max_sleep` plus the kernel's timer slack (50 µs by default, which
//! the worker lowers to 1 µs for itself). This lets a lab of several nodes, or a management
//! node with no spare core, share CPUs.

use std::time::Duration;

/// How a worker waits when there is nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Spin forever: lowest latency, one full core per worker.
    Busy,
    /// Spin `spin_iters` empty iterations, then sleep from 1 µs doubling up to `max_sleep`.
    Adaptive {
        /// Empty loop iterations before the first sleep.
        spin_iters: u32,
        /// The longest sleep, which bounds the wake-up latency.
        max_sleep: Duration,
    },
}

impl Polling {
    /// The adaptive mode with the defaults used by the lab: 2,000 empty spins (about 100 µs
    /// of busy polling after the last frame), sleeps capped at 200 µs.
    pub const ADAPTIVE: Polling = Polling::Adaptive {
        spin_iters: 2_000,
        max_sleep: Duration::from_micros(200),
    };

    /// The worst-case extra latency of a frame that finds the worker asleep.
    pub fn wake_up_latency(&self) -> Duration {
        match self {
            Polling::Busy => Duration::ZERO,
            Polling::Adaptive { max_sleep, .. } => *max_sleep,
        }
    }
}

/// What the loop should do after an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Poll again at once.
    Spin,
    /// Sleep this long, then poll again.
    Sleep(Duration),
}

/// The back-off state of one worker.
#[derive(Clone, Debug)]
pub struct Backoff {
    polling: Polling,
    empty: u32,
    sleep: Duration,
}

impl Backoff {
    /// A fresh back-off for the given mode.
    pub fn new(polling: Polling) -> Self {
        Self {
            polling,
            empty: 0,
            sleep: Duration::ZERO,
        }
    }

    /// Records an iteration that moved `work` frames and says how to wait before the next.
    #[inline]
    pub fn after(&mut self, work: usize) -> Idle {
        let Polling::Adaptive {
            spin_iters,
            max_sleep,
        } = self.polling
        else {
            return Idle::Spin;
        };
        if work > 0 {
            self.empty = 0;
            self.sleep = Duration::ZERO;
            return Idle::Spin;
        }
        if self.empty < spin_iters {
            self.empty += 1;
            return Idle::Spin;
        }
        self.sleep = if self.sleep.is_zero() {
            Duration::from_micros(1)
        } else {
            (self.sleep * 2).min(max_sleep)
        };
        Idle::Sleep(self.sleep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_never_sleeps() {
        let mut b = Backoff::new(Polling::Busy);
        for _ in 0..100_000 {
            assert_eq!(b.after(0), Idle::Spin);
        }
    }

    #[test]
    fn adaptive_spins_then_doubles_to_the_cap_and_resets_on_work() {
        let max = Duration::from_micros(100);
        let mut b = Backoff::new(Polling::Adaptive {
            spin_iters: 3,
            max_sleep: max,
        });
        for _ in 0..3 {
            assert_eq!(b.after(0), Idle::Spin);
        }
        let sleeps: Vec<_> = (0..9).map(|_| b.after(0)).collect();
        let us: Vec<u128> = sleeps
            .iter()
            .map(|s| match s {
                Idle::Sleep(d) => d.as_micros(),
                Idle::Spin => 0,
            })
            .collect();
        assert_eq!(us, [1, 2, 4, 8, 16, 32, 64, 100, 100]);
        assert_eq!(b.after(5), Idle::Spin);
        assert_eq!(b.after(0), Idle::Spin, "spinning resumes after work");
        assert_eq!(
            Polling::ADAPTIVE.wake_up_latency(),
            Duration::from_micros(200)
        );
    }
}
