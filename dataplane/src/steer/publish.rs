//! Hands table snapshots from the control thread to one worker without locks, atomic
//! read-modify-write, or deallocation on the worker.
//!
//! Two single-producer single-consumer rings (`rtrb`) per worker: control pushes new
//! `Box<MacTable>`s down one; the worker, once per loop iteration, checks it (one load of the
//! ring's write index, acquire ordering, usually served from its cached copy), swaps in the
//! newest table and pushes the table it replaced back up the other ring, so the control
//! thread is the one that frees it.
//!
//! No frame is lost or mis-steered by an update: the worker swaps only between bursts
//! ([`TableReader::refresh`] needs `&mut self` while a burst borrows the table through
//! [`TableReader::table`]), so each burst is steered entirely by one consistent snapshot and
//! the next burst entirely by the newer one.
//!
//! A worker loop uses it like this:
//!
//! ```
//! use dataplane::steer::{publish::table_channel, steer_bulk, Decision, MacTableBuilder, Source};
//!
//! let mut control = MacTableBuilder::new();
//! let (mut publisher, mut reader) = table_channel(control.build(), 4);
//! publisher.publish(control.build()).expect("the worker keeps up");
//! let burst: [[u8; 60]; 2] = [[0; 60]; 2];
//! let mut out = [Decision::Nic; 32];
//! // Worker, once per loop iteration:
//! reader.refresh();
//! steer_bulk(reader.table(), Source::Nic, &burst, &mut out[..burst.len()]);
//! // Control, later: frees the tables the worker let go of.
//! publisher.reclaim();
//! ```
//!
//! The return ring can never be full when the worker needs it: the publisher counts tables it
//! has pushed and not yet got back, and refuses to push when that count reaches the ring
//! depth. Each worker swap moves one table from the first ring to the second, so the tables
//! in both rings together never exceed that count.

use super::table::MacTable;

/// Why a table was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The worker has not yet taken or returned the previous tables (it is stalled or busy);
    /// the table is handed back so control can publish it, or a newer one, later.
    #[error("publishing table generation {}: the worker has {in_flight} tables not yet returned (ring depth {depth}); retry after it catches up", table.generation())]
    Full {
        /// The table that was not published.
        table: Box<MacTable>,
        /// Tables pushed and not yet returned.
        in_flight: usize,
        /// The ring depth.
        depth: usize,
    },
    /// The worker's reader is gone (the worker exited).
    #[error("publishing table generation {}: the worker's table reader was dropped", table.generation())]
    Disconnected {
        /// The table that was not published.
        table: Box<MacTable>,
    },
}

/// Control-thread end: publishes tables to one worker and frees the ones it returns.
#[derive(Debug)]
pub struct TablePublisher {
    to_worker: rtrb::Producer<Box<MacTable>>,
    returned: rtrb::Consumer<Box<MacTable>>,
    in_flight: usize,
    depth: usize,
    reclaimed: u64,
}

/// Worker end: holds the current table and swaps in new ones between bursts.
#[derive(Debug)]
pub struct TableReader {
    current: Box<MacTable>,
    from_control: rtrb::Consumer<Box<MacTable>>,
    to_control: rtrb::Producer<Box<MacTable>>,
    /// A replaced table the return ring had no room for. Cannot happen while the
    /// publisher's invariant holds; kept so that even then nothing is freed on the worker.
    stash: Option<Box<MacTable>>,
}

/// Creates the publisher/reader pair of one worker, starting from `initial`. `depth` (at
/// least 1) bounds how many published tables may wait for the worker.
pub fn table_channel(initial: Box<MacTable>, depth: usize) -> (TablePublisher, TableReader) {
    let depth = depth.max(1);
    let (to_worker, from_control) = rtrb::RingBuffer::new(depth);
    let (to_control, returned) = rtrb::RingBuffer::new(depth);
    (
        TablePublisher {
            to_worker,
            returned,
            in_flight: 0,
            depth,
            reclaimed: 0,
        },
        TableReader {
            current: initial,
            from_control,
            to_control,
            stash: None,
        },
    )
}

impl TablePublisher {
    /// Frees the tables the worker has returned; returns how many. [`TablePublisher::publish`]
    /// also does this; call it on its own to free memory when nothing is being published.
    pub fn reclaim(&mut self) -> usize {
        let mut n = 0;
        while let Ok(old) = self.returned.pop() {
            drop(old);
            n += 1;
        }
        self.in_flight -= n;
        self.reclaimed += n as u64;
        n
    }

    /// Tables returned by the worker and freed since the channel was made.
    pub fn reclaimed_total(&self) -> u64 {
        self.reclaimed
    }

    /// Publishes `table`. Reclaims returned tables first. Fails, handing the table back, if
    /// `depth` tables are still in flight or the worker is gone.
    pub fn publish(&mut self, table: Box<MacTable>) -> Result<(), PublishError> {
        self.reclaim();
        if self.to_worker.is_abandoned() {
            return Err(PublishError::Disconnected { table });
        }
        if self.in_flight >= self.depth {
            return Err(PublishError::Full {
                table,
                in_flight: self.in_flight,
                depth: self.depth,
            });
        }
        match self.to_worker.push(table) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            // Unreachable while in_flight < depth (the ring holds at most in_flight tables);
            // handled anyway rather than trusted.
            Err(rtrb::PushError::Full(table)) => Err(PublishError::Full {
                table,
                in_flight: self.in_flight,
                depth: self.depth,
            }),
        }
    }

    /// Tables pushed and not yet returned by the worker.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl TableReader {
    /// The current snapshot. Borrow it for one burst.
    #[inline(always)]
    pub fn table(&self) -> &MacTable {
        &self.current
    }

    /// Adopts the newest published table, if any, returning the replaced ones to control.
    /// Call once per loop iteration, between bursts. Returns true if the table changed.
    /// Never allocates or frees.
    #[inline]
    pub fn refresh(&mut self) -> bool {
        if self.from_control.is_empty() {
            return false;
        }
        self.refresh_slow()
    }

    #[cold]
    fn refresh_slow(&mut self) -> bool {
        let mut changed = false;
        loop {
            if let Some(old) = self.stash.take() {
                if let Err(rtrb::PushError::Full(old)) = self.to_control.push(old) {
                    self.stash = Some(old);
                    return changed;
                }
            }
            let Ok(new) = self.from_control.pop() else {
                return changed;
            };
            let old = core::mem::replace(&mut self.current, new);
            changed = true;
            if let Err(rtrb::PushError::Full(old)) = self.to_control.push(old) {
                self.stash = Some(old);
            }
        }
    }
}
