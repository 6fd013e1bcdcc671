//! The key scheme: `{job}/{round}/{what}/{worker}`. Nothing is global, so jobs sharing a
//! bucket or cache never see each other's keys, and every key a collective reads is known
//! in advance (no listing).

/// Builds the keys of one job.
#[derive(Debug, Clone)]
pub struct Keys {
    job: String,
}

impl Keys {
    /// Keys of job `job`.
    pub fn new(job: &str) -> Self {
        Keys {
            job: job.to_string(),
        }
    }

    /// The job id (also the prefix of every key).
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Worker `w`'s contribution to reduce round `round`.
    pub fn reduce_part(&self, round: u64, w: usize) -> String {
        format!("{}/{round}/reduce/{w}", self.job)
    }

    /// The mean of reduce round `round`, written by the leader.
    pub fn reduce_mean(&self, round: u64) -> String {
        format!("{}/{round}/mean/0", self.job)
    }

    /// Chunk `chunk` of worker `src`'s vector in reduce-scatter round `round`.
    pub fn scatter_part(&self, round: u64, chunk: usize, src: usize) -> String {
        format!("{}/{round}/scatter-{chunk}/{src}", self.job)
    }

    /// The mean of chunk `chunk` in reduce-scatter round `round`, written by its owner.
    pub fn gather_chunk(&self, round: u64, chunk: usize) -> String {
        format!("{}/{round}/gather/{chunk}", self.job)
    }

    /// The value broadcast by `root` in round `round`.
    pub fn broadcast(&self, round: u64, root: usize) -> String {
        format!("{}/{round}/bcast/{root}", self.job)
    }

    /// Worker `w`'s latest model in async mode.
    pub fn async_model(&self, w: usize) -> String {
        format!("{}/async/model/{w}", self.job)
    }

    /// Worker `w`'s arrival at barrier `round`.
    pub fn barrier(&self, round: u64, w: usize) -> String {
        format!("{}/{round}/barrier/{w}", self.job)
    }

    /// Every key any collective of `n` workers may write in round `round` (for cleanup
    /// where the channel cannot list, and nobody is left to report them).
    pub fn round_keys(&self, round: u64, n: usize) -> Vec<String> {
        let mut keys = vec![self.reduce_mean(round), self.broadcast(round, 0)];
        for i in 0..n {
            keys.push(self.reduce_part(round, i));
            keys.push(self.gather_chunk(round, i));
            keys.push(self.barrier(round, i));
            keys.extend((0..n).map(|src| self.scatter_part(round, i, src)));
        }
        keys
    }

    /// Set by the driver when the job must stop; waiters check it.
    pub fn abort(&self) -> String {
        format!("{}/control/abort", self.job)
    }

    /// The prefix of every key of the job (for listing backends).
    pub fn prefix(&self) -> String {
        format!("{}/", self.job)
    }
}
