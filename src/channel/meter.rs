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

/// Records `n` requests of kind `op` moving `bytes` of values.
pub fn record(op: Op, n: u64, bytes: u64) {
    let c = &METER.0;
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

/// Records DynamoDB request units.
pub fn record_units(read: u64, write: u64) {
    METER.0[6].fetch_add(read, Ordering::Relaxed);
    METER.0[7].fetch_add(write, Ordering::Relaxed);
}

/// Everything recorded in this process so far.
pub fn snapshot() -> Usage {
    let c = |i: usize| METER.0[i].load(Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
