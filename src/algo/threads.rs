//! A worker's compute threads: as many as the vCPUs its memory size buys on Lambda, so a
//! bigger function computes faster, as it does there.
//!
//! Lambda gives a function CPU in proportion to its memory: one vCPU's worth at 1,769 MB, up
//! to six at 10,240 MB. A worker gets that many threads (at least one). Work is split into
//! contiguous parts, one per thread, and the parts' results are combined in part order, so a
//! run is deterministic for a given memory size.

/// Memory that buys one vCPU on Lambda, in MB.
pub const MB_PER_VCPU: u32 = 1_769;
/// Most vCPUs a Lambda function gets.
pub const MAX_VCPUS: usize = 6;

/// The vCPUs a function of `memory_mb` gets on Lambda, rounded to whole threads.
pub fn vcpus_for_memory(memory_mb: u32) -> usize {
    ((f64::from(memory_mb) / f64::from(MB_PER_VCPU)).round() as usize).clamp(1, MAX_VCPUS)
}

/// Runs a worker's compute on its threads.
pub struct Compute {
    threads: usize,
    /// `None` with one thread: the caller's thread does the work, no pool is started.
    pool: Option<rayon::ThreadPool>,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Compute {
    /// Compute on the caller's thread only.
    pub fn single() -> Self {
        Compute {
            threads: 1,
            pool: None,
        }
    }

    /// Compute on `threads` threads (one runs on the caller's; a pool that cannot start
    /// leaves one).
    pub fn with_threads(threads: usize) -> Self {
        if threads <= 1 {
            return Compute::single();
        }
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("compute-{i}"))
            .build()
        {
            Ok(pool) => Compute {
                threads,
                pool: Some(pool),
            },
            Err(e) => {
                tracing::warn!("compute threads did not start ({e}); computing on one");
                Compute::single()
            }
        }
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Splits `items` into at most one contiguous part per thread, none shorter than
    /// `min_part` (fewer parts when there are few items), runs `f` on each part and returns
    /// the results in part order.
    pub fn map_parts<I: Sync, T: Send>(
        &self,
        items: &[I],
        min_part: usize,
        f: impl Fn(&[I]) -> T + Sync,
    ) -> Vec<T> {
        self.map_ranges(items.len(), min_part, |r| f(&items[r]))
    }

    /// As [`Compute::map_parts`], over the index ranges of `len` items.
    pub fn map_ranges<T: Send>(
        &self,
        len: usize,
        min_part: usize,
        f: impl Fn(std::ops::Range<usize>) -> T + Sync,
    ) -> Vec<T> {
        let parts = self.threads.min(len / min_part.max(1)).max(1);
        let Some(pool) = self.pool.as_ref().filter(|_| parts > 1) else {
            return vec![f(0..len)];
        };
        let size = len.div_ceil(parts);
        use rayon::prelude::*;
        pool.install(|| {
            (0..len.div_ceil(size))
                .into_par_iter()
                .map(|i| f(i * size..((i + 1) * size).min(len)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_follow_lambda_vcpus() {
        assert_eq!(vcpus_for_memory(128), 1);
        assert_eq!(vcpus_for_memory(2_048), 1);
        assert_eq!(vcpus_for_memory(3_538), 2);
        assert_eq!(vcpus_for_memory(5_307), 3);
        assert_eq!(vcpus_for_memory(10_240), 6);
    }

    #[test]
    fn parts_cover_the_items_in_order() {
        let items: Vec<u32> = (0..1000).collect();
        for threads in [1, 2, 3, 6] {
            let c = Compute::with_threads(threads);
            let parts = c.map_parts(&items, 100, |p| p.to_vec());
            assert_eq!(parts.len(), threads);
            assert_eq!(parts.concat(), items);
            // Too few items for every thread: fewer, longer parts.
            assert_eq!(c.map_parts(&items[..150], 100, |p| p.len()), vec![150]);
        }
    }
}
