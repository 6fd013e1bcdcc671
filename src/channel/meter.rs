//! Requests this process made to its channel's service, counted as the service counts (and
//! bills) them: one per memcached key fetched or stored, one per Redis command, one per S3
//! API call, DynamoDB calls with their read and write request units. Every backend records
//! each attempt it sends, retries included, so the counts match the server's own counters.
//!
//! The meter is per process: a worker invocation is one process, so a worker reads it at
//! the end of an invocation and reports it with its checkpoint or result.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Requests and traffic; also used for sums over workers and deltas over an epoch (a
/// later reading minus an earlier one: counters only grow).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    derive_more::Add,
    derive_more::Sub,
)]
pub struct Usage {
    /// Write requests (memcached `set`, Redis `SET`, S3 `PutObject`, DynamoDB `PutItem`,
    /// `dir:` file writes).
    pub puts: u64,
    /// Read requests (memcached: keys fetched; Redis `GET`/`MGET`; S3 `GetObject`; DynamoDB
    /// `GetItem`/`BatchGetItem`).
    pub gets: u64,
    /// Delete requests (memcached: keys; Redis `DEL`; S3 `DeleteObjects`; DynamoDB
    /// `DeleteItem`/`BatchWriteItem`).
    pub deletes: u64,
    /// Listing requests (Redis `SCAN`, S3 `ListObjectsV2`, DynamoDB `Scan`).
    pub lists: u64,
    /// Bytes sent in values.
    pub bytes_out: u64,
    /// Bytes received in values.
    pub bytes_in: u64,
    /// DynamoDB read request units (strongly consistent: one per 4 KB per item, at least one).
    pub read_units: u64,
    /// DynamoDB write request units (one per 1 KB per item written or deleted, at least one).
    pub write_units: u64,
}

impl Usage {
    /// Requests of every kind.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.deletes + self.lists
    }

    /// `self - other`, each count at least zero. For differences of counts read at
    /// different moments (the process's and those counted apart): a request recorded
    /// between the two reads may be in one and not the other, and a plain `-` overflows.
    pub fn saturating_sub(self, other: Usage) -> Usage {
        Usage {
            puts: self.puts.saturating_sub(other.puts),
            gets: self.gets.saturating_sub(other.gets),
            deletes: self.deletes.saturating_sub(other.deletes),
            lists: self.lists.saturating_sub(other.lists),
            bytes_out: self.bytes_out.saturating_sub(other.bytes_out),
            bytes_in: self.bytes_in.saturating_sub(other.bytes_in),
            read_units: self.read_units.saturating_sub(other.read_units),
            write_units: self.write_units.saturating_sub(other.write_units),
        }
    }
}

/// The kinds of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A write.
    Put,
    /// A read.
    Get,
    /// A delete.
    Delete,
    /// A listing.
    List,
}

struct Counters([AtomicU64; 8]);

static METER: Counters = Counters([const { AtomicU64::new(0) }; 8]);
/// The requests of threads counted apart ([`count_this_thread_apart`]), also in `METER`.
static APART: Counters = Counters([const { AtomicU64::new(0) }; 8]);

thread_local! {
    static COUNTED_APART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// From now on, this thread's requests are also counted apart ([`apart_snapshot`]): a
/// background thread (a worker's heartbeat) whose requests must not be taken for those of
/// what the main thread measures meanwhile (the data it loads).
pub fn count_this_thread_apart() {
    COUNTED_APART.with(|c| c.set(true));
}

/// What the threads counted apart recorded so far (included in [`snapshot`] as well).
pub fn apart_snapshot() -> Usage {
    APART.usage()
}

/// Records `n` requests of kind `op` moving `bytes` of values.
pub fn record(op: Op, n: u64, bytes: u64) {
    METER.record(op, n, bytes);
    if COUNTED_APART.with(|c| c.get()) {
        APART.record(op, n, bytes);
    }
}

/// Records DynamoDB request units.
pub fn record_units(read: u64, write: u64) {
    METER.record_units(read, write);
    if COUNTED_APART.with(|c| c.get()) {
        APART.record_units(read, write);
    }
}

/// Everything recorded in this process so far.
pub fn snapshot() -> Usage {
    METER.usage()
}

impl Counters {
    fn record(&self, op: Op, n: u64, bytes: u64) {
        let c = &self.0;
        match op {
            Op::Put => {
                c[0].fetch_add(n, Ordering::Relaxed);
                c[4].fetch_add(bytes, Ordering::Relaxed);
            }
            Op::Get => {
                c[1].fetch_add(n, Ordering::Relaxed);
                c[5].fetch_add(bytes, Ordering::Relaxed);
            }
            Op::Delete => {
                c[2].fetch_add(n, Ordering::Relaxed);
            }
            Op::List => {
                c[3].fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn record_units(&self, read: u64, write: u64) {
        self.0[6].fetch_add(read, Ordering::Relaxed);
        self.0[7].fetch_add(write, Ordering::Relaxed);
    }

    fn usage(&self) -> Usage {
        let c = |i: usize| self.0[i].load(Ordering::Relaxed);
        Usage {
            puts: c(0),
            gets: c(1),
            deletes: c(2),
            lists: c(3),
            bytes_out: c(4),
            bytes_in: c(5),
            read_units: c(6),
            write_units: c(7),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_difference_of_counts_read_apart_stays_at_zero() {
        let total = Usage {
            gets: 5,
            ..Usage::default()
        };
        let pulse = Usage {
            puts: 1,
            gets: 2,
            ..Usage::default()
        };
        let d = total.saturating_sub(pulse);
        assert_eq!((d.puts, d.gets), (0, 3));
    }

    #[test]
    fn usage_adds_and_subtracts() {
        let before = snapshot();
        record(Op::Put, 2, 100);
        record(Op::Get, 3, 50);
        record_units(4, 1);
        let d = snapshot() - before;
        assert!(d.puts >= 2 && d.gets >= 3 && d.bytes_out >= 100 && d.read_units >= 4);
        assert_eq!((d + d).puts, 2 * d.puts);
        assert_eq!(d.requests(), d.puts + d.gets + d.deletes + d.lists);
    }

    #[test]
    fn a_thread_counted_apart_is_in_both_meters() {
        let (all, apart) = (snapshot(), apart_snapshot());
        std::thread::spawn(|| {
            count_this_thread_apart();
            record(Op::Put, 5, 10);
        })
        .join()
        .unwrap();
        record(Op::Put, 1, 1);
        assert!((snapshot() - all).puts >= 6);
        assert_eq!((apart_snapshot() - apart).puts, 5);
    }
}
