//! The parameter server's models and their round logic, free of gRPC so it can be tested
//! directly.
//!
//! A model holds a vector `m` and counts rounds. Every worker pushes once per round; the
//! round completes when all `workers` have pushed, and the value of `m` at that moment is
//! kept as the round's *snapshot*. A pull for round `r` returns that snapshot, so a fast
//! worker that already pushed for round `r + 1` cannot change what a slow one pulls for
//! `r`. Pushes for a round are only accepted once the previous round is complete (a worker
//! pulls before it pushes again), so rounds never interleave.
//!
//! A round's pushes are applied in worker order, whatever order they arrive in (one that
//! comes early waits in `waiting` until the workers before it are in), so the floating-point
//! sums, and so the trained model, are the same from run to run.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Snapshots kept per model: the last completed round and the one before, which is all a
/// worker re-running a round after a re-invocation can ask for.
const KEPT_SNAPSHOTS: usize = 2;

/// How a push changes the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mode {
    /// `m += scale * values`, applied at once.
    Grad {
        /// Factor applied to the pushed values (for SGD: `-lr / workers`).
        scale: f32,
    },
    /// `m = mean of the round's pushes`, set when the round completes.
    Average,
    /// `m = values`; an empty push only marks the worker's arrival.
    Replace,
}

/// What is wrong with a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No such model.
    #[error("no model '{name}' for job '{job}' (never registered, dropped, or expired)")]
    NotFound {
        /// Job id.
        job: String,
        /// Model name.
        name: String,
    },
    /// The request does not fit the model.
    #[error("{0}")]
    Invalid(String),
    /// The round does not fit the model's state.
    #[error("{0}")]
    OutOfOrder(String),
    /// Holding the model would take the server past its limit.
    #[error("{0}")]
    Full(String),
}

/// The persistent state of one model (what a snapshot to `--dir` holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    /// Job id.
    pub job: String,
    /// Model name within the job.
    pub name: String,
    /// Workers that push each round.
    pub workers: u32,
    /// The live vector.
    pub values: Vec<f32>,
    /// The round being collected, once a push for it arrived.
    pub open_round: Option<u64>,
    /// Workers `0..applied` pushed for `open_round`, and their pushes are applied.
    #[serde(default)]
    pub applied: u32,
    /// Pushes for `open_round` that arrived before an earlier worker's, by worker: each waits
    /// until the workers before it are applied.
    #[serde(default)]
    pub waiting: BTreeMap<u32, (Mode, Vec<f32>)>,
    /// Sum of the round's pushes (`Average` mode only).
    pub acc: Vec<f32>,
    /// The mode of the open round (all pushes of a round must agree).
    pub open_mode: Option<Mode>,
    /// Completed rounds with the vector at completion, oldest first.
    pub snapshots: VecDeque<(u64, Arc<Vec<f32>>)>,
    /// Pushes received.
    pub pushes: u64,
    /// Pulls served.
    pub pulls: u64,
}

impl ModelState {
    /// A fresh model with `values`.
    pub fn new(job: &str, name: &str, workers: u32, values: Vec<f32>) -> Self {
        ModelState {
            job: job.to_string(),
            name: name.to_string(),
            workers,
            values,
            open_round: None,
            applied: 0,
            waiting: BTreeMap::new(),
            acc: Vec::new(),
            open_mode: None,
            snapshots: VecDeque::new(),
            pushes: 0,
            pulls: 0,
        }
    }

    /// How many workers pushed for the open round.
    pub fn pushed(&self) -> u32 {
        self.applied + self.waiting.len() as u32
    }

    /// Workers that have not pushed to the open round (all of them when none is open).
    pub fn missing(&self) -> Vec<u32> {
        (0..self.workers)
            .filter(|&w| self.open_round.is_none() || !self.has_pushed(w))
            .collect()
    }

    fn has_pushed(&self, worker: u32) -> bool {
        worker < self.applied || self.waiting.contains_key(&worker)
    }

    /// The last completed round.
    pub fn completed_round(&self) -> Option<u64> {
        self.snapshots.back().map(|(r, _)| *r)
    }

    /// Takes one push; `Ok(true)` when it counted, `Ok(false)` for a repeat.
    pub fn push(
        &mut self,
        round: u64,
        worker: u32,
        mode: Mode,
        values: Vec<f32>,
        after_round: Option<u64>,
    ) -> Result<bool, StoreError> {
        if worker >= self.workers {
            return Err(StoreError::Invalid(format!(
                "worker {worker} pushed to '{}', which has {} workers",
                self.name, self.workers
            )));
        }
        let len = self.values.len();
        let empty_replace = mode == Mode::Replace && values.is_empty();
        if !empty_replace && values.len() != len {
            return Err(StoreError::Invalid(format!(
                "push of {} values to '{}', which holds {len}",
                values.len(),
                self.name
            )));
        }
        self.pushes += 1;
        if self.snapshots.iter().any(|(r, _)| *r == round) {
            return Ok(false);
        }
        if let Some(done) = self.completed_round()
            && round < done
        {
            return Err(StoreError::OutOfOrder(format!(
                "push for round {round} of '{}', which completed round {done} already",
                self.name
            )));
        }
        match self.open_round {
            Some(open) if open == round => {
                if self.has_pushed(worker) {
                    return Ok(false);
                }
                if self.open_mode != Some(mode) && !matches!(mode, Mode::Grad { .. }) {
                    return Err(StoreError::Invalid(format!(
                        "round {round} of '{}' mixes push modes",
                        self.name
                    )));
                }
            }
            Some(open) => {
                return Err(StoreError::OutOfOrder(format!(
                    "push for round {round} of '{}' while round {open} has {} of {} pushes",
                    self.name,
                    self.pushed(),
                    self.workers
                )));
            }
            None => {
                if let Some(prev) = after_round
                    && self.completed_round() != Some(prev)
                {
                    return Err(StoreError::OutOfOrder(format!(
                        "'{}' last completed round {:?}, but worker {worker} pushed round {prev} \
                         before: the server lost rounds (restarted from an older snapshot?)",
                        self.name,
                        self.completed_round()
                    )));
                }
                self.open_round = Some(round);
                self.open_mode = Some(mode);
                if mode == Mode::Average {
                    self.acc = vec![0.0; len];
                }
            }
        }
        if worker == self.applied {
            self.apply(mode, &values);
            self.applied += 1;
            while let Some((mode, values)) = self.waiting.remove(&self.applied) {
                self.apply(mode, &values);
                self.applied += 1;
            }
        } else {
            self.waiting.insert(worker, (mode, values));
        }
        // Waiting pushes are always of workers after `applied`, so none is left here.
        if self.applied == self.workers {
            self.complete(round);
        }
        Ok(true)
    }

    fn apply(&mut self, mode: Mode, values: &[f32]) {
        match mode {
            Mode::Grad { scale } => {
                for (m, v) in self.values.iter_mut().zip(values) {
                    *m += scale * v;
                }
            }
            Mode::Average => {
                for (a, v) in self.acc.iter_mut().zip(values) {
                    *a += v;
                }
            }
            Mode::Replace if !values.is_empty() => self.values.copy_from_slice(values),
            Mode::Replace => {}
        }
    }

    fn complete(&mut self, round: u64) {
        if self.open_mode == Some(Mode::Average) {
            let n = self.workers as f32;
            for (m, a) in self.values.iter_mut().zip(&self.acc) {
                *m = a / n;
            }
            self.acc = Vec::new();
        }
        self.snapshots
            .push_back((round, Arc::new(self.values.clone())));
        while self.snapshots.len() > KEPT_SNAPSHOTS {
            self.snapshots.pop_front();
        }
        self.open_round = None;
        self.open_mode = None;
        self.applied = 0;
    }

    /// The values at the end of `round`: `Ok(None)` while the round is still open.
    pub fn snapshot(&self, round: u64) -> Result<Option<Arc<Vec<f32>>>, StoreError> {
        if let Some((_, v)) = self.snapshots.iter().find(|(r, _)| *r == round) {
            return Ok(Some(v.clone()));
        }
        match self.snapshots.front() {
            Some((oldest, _)) if round < *oldest => Err(StoreError::OutOfOrder(format!(
                "round {round} of '{}' is no longer held (oldest kept: {oldest})",
                self.name
            ))),
            _ => Ok(None),
        }
    }
}

/// A model with what the server needs around it at run time.
#[derive(Debug)]
pub struct Model {
    /// The state, locked per model so models do not contend.
    pub state: Mutex<ModelState>,
    /// Bumped when a round completes; pulls wait on it.
    pub completed: watch::Sender<u64>,
    /// When the model was last used.
    pub last_access: Mutex<Instant>,
    /// Changed since the last snapshot to disk.
    pub dirty: std::sync::atomic::AtomicBool,
    /// The last pulled snapshot, already cut into wire chunks: all n workers pull the same
    /// round, so it is encoded once instead of n times.
    encoded: Mutex<Option<(u64, Arc<Vec<bytes::Bytes>>)>>,
}

impl Model {
    /// Wraps `state`, used now.
    pub fn new(state: ModelState) -> Self {
        Model {
            state: Mutex::new(state),
            completed: watch::channel(0).0,
            last_access: Mutex::new(Instant::now()),
            dirty: std::sync::atomic::AtomicBool::new(true),
            encoded: Mutex::new(None),
        }
    }

    /// Marks the model used now.
    pub fn touch(&self) {
        *self.last_access.lock().expect("lock") = Instant::now();
    }

    /// Time since the last use.
    pub fn idle(&self) -> Duration {
        self.last_access.lock().expect("lock").elapsed()
    }

    /// Applies a push and wakes pullers when it completed a round.
    pub fn push(
        &self,
        round: u64,
        worker: u32,
        mode: Mode,
        values: Vec<f32>,
        after_round: Option<u64>,
    ) -> Result<(bool, u32), StoreError> {
        self.touch();
        let mut s = self.state.lock().expect("lock");
        let before = s.completed_round();
        let applied = s.push(round, worker, mode, values, after_round)?;
        let completed = s.completed_round() != before;
        let pushed = if completed { s.workers } else { s.pushed() };
        drop(s);
        if applied {
            self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if completed {
            self.completed.send_modify(|c| *c += 1);
        }
        Ok((applied, pushed))
    }

    /// The values at the end of `round`, waiting up to `timeout`; `Ok(None)`: not yet.
    pub async fn pull(
        &self,
        round: u64,
        timeout: Duration,
    ) -> Result<Option<Arc<Vec<f32>>>, StoreError> {
        self.touch();
        let give_up = tokio::time::Instant::now() + timeout;
        let mut rx = self.completed.subscribe();
        loop {
            // `subscribe` marked the current value seen: a completion after this check
            // wakes `changed` below, so none is missed.
            {
                let mut s = self.state.lock().expect("lock");
                if let Some(v) = s.snapshot(round)? {
                    s.pulls += 1;
                    drop(s);
                    self.touch();
                    return Ok(Some(v));
                }
            }
            match tokio::time::timeout_at(give_up, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(None),
            }
        }
    }

    /// The snapshot of `round` in wire chunks (see [`super::to_chunks`]), encoded once.
    pub fn encoded(&self, round: u64, values: &[f32]) -> Arc<Vec<bytes::Bytes>> {
        let mut cache = self.encoded.lock().expect("lock");
        match &*cache {
            Some((r, chunks)) if *r == round => chunks.clone(),
            _ => {
                let chunks = Arc::new(super::to_chunks(values));
                *cache = Some((round, chunks.clone()));
                chunks
            }
        }
    }

    /// The live values, without waiting.
    pub fn current(&self) -> (Option<u64>, Arc<Vec<f32>>) {
        self.touch();
        let mut s = self.state.lock().expect("lock");
        s.pulls += 1;
        (s.completed_round(), Arc::new(s.values.clone()))
    }
}

/// Models by (job, name).
type Models = HashMap<(String, String), Arc<Model>>;

/// Values held by `models` together.
fn held(models: &Models) -> usize {
    models
        .values()
        .map(|m| m.state.lock().expect("lock").values.len())
        .sum()
}

/// Every model the server holds, by (job, name).
#[derive(Debug)]
pub struct Store {
    models: Mutex<Models>,
    /// Most values all models together may hold.
    max_total_values: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store::with_limit(usize::MAX)
    }
}

impl Store {
    /// A store whose models may hold at most `max_total_values` values together.
    pub fn with_limit(max_total_values: usize) -> Self {
        Store {
            models: Mutex::new(HashMap::new()),
            max_total_values,
        }
    }

    /// Values held by all models together.
    pub fn total_values(&self) -> usize {
        held(&self.models.lock().expect("lock"))
    }

    /// Whether a new model of `len` values fits beside what is held (an existing model
    /// always does: registering it again adds nothing).
    pub fn room_for(&self, job: &str, name: &str, len: usize) -> Result<(), StoreError> {
        let models = self.models.lock().expect("lock");
        if models.contains_key(&(job.to_string(), name.to_string())) {
            return Ok(());
        }
        self.fits(&models, job, name, len)
    }

    /// Refuses a new model of `len` values that would take `models` past the limit.
    fn fits(&self, models: &Models, job: &str, name: &str, len: usize) -> Result<(), StoreError> {
        let held = held(models);
        if held.saturating_add(len) > self.max_total_values {
            return Err(StoreError::Full(format!(
                "model '{name}' of job '{job}' needs {len} values; the server holds {held} of \
                 its {} (--max-memory-mb)",
                self.max_total_values
            )));
        }
        Ok(())
    }

    /// The model `(job, name)`.
    pub fn get(&self, job: &str, name: &str) -> Result<Arc<Model>, StoreError> {
        self.models
            .lock()
            .expect("lock")
            .get(&(job.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                job: job.to_string(),
                name: name.to_string(),
            })
    }

    /// Inserts `state` unless a model of that name exists; true when inserted. An existing
    /// model of another shape is an error (two jobs, or a bug, using one name).
    pub fn register(&self, state: ModelState) -> Result<(bool, Arc<Model>), StoreError> {
        let key = (state.job.clone(), state.name.clone());
        let mut models = self.models.lock().expect("lock");
        if let Some(m) = models.get(&key) {
            let s = m.state.lock().expect("lock");
            if s.values.len() != state.values.len() || s.workers != state.workers {
                return Err(StoreError::Invalid(format!(
                    "model '{}' of job '{}' exists with {} values and {} workers, not {} and {}",
                    state.name,
                    state.job,
                    s.values.len(),
                    s.workers,
                    state.values.len(),
                    state.workers
                )));
            }
            drop(s);
            m.touch();
            return Ok((false, m.clone()));
        }
        // Checked again under the lock, so concurrent registrations cannot pass it together.
        self.fits(&models, &state.job, &state.name, state.values.len())?;
        let m = Arc::new(Model::new(state));
        models.insert(key, m.clone());
        Ok((true, m))
    }

    /// Puts back a model read from a snapshot.
    pub fn restore(&self, state: ModelState) {
        let key = (state.job.clone(), state.name.clone());
        let m = Model::new(state);
        m.dirty.store(false, std::sync::atomic::Ordering::Relaxed);
        self.models.lock().expect("lock").insert(key, Arc::new(m));
    }

    /// Removes every model of `job`; returns their names.
    pub fn drop_job(&self, job: &str) -> Vec<(String, String)> {
        let mut models = self.models.lock().expect("lock");
        let gone: Vec<_> = models.keys().filter(|(j, _)| j == job).cloned().collect();
        for k in &gone {
            models.remove(k);
        }
        gone
    }

    /// Removes models idle for longer than `expired`; returns their names.
    pub fn expire(&self, expired: Duration) -> Vec<(String, String)> {
        let mut models = self.models.lock().expect("lock");
        let gone: Vec<_> = models
            .iter()
            .filter(|(_, m)| m.idle() > expired)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            models.remove(k);
        }
        gone
    }

    /// Every model, sorted by (job, name).
    pub fn all(&self) -> Vec<Arc<Model>> {
        let models = self.models.lock().expect("lock");
        let mut keys: Vec<_> = models.keys().cloned().collect();
        keys.sort();
        keys.iter().map(|k| models[k].clone()).collect()
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.lock().expect("lock").len()
    }

    /// True when no model is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn model(workers: u32, values: Vec<f32>) -> ModelState {
        ModelState::new("job", "m", workers, values)
    }

    #[test]
    fn grad_pushes_accumulate_and_complete_the_round() {
        let mut m = model(2, vec![1.0, 1.0]);
        assert!(
            m.push(0, 0, Mode::Grad { scale: -0.5 }, vec![2.0, 4.0], None)
                .unwrap()
        );
        assert_eq!(m.snapshot(0).unwrap(), None);
        assert!(
            m.push(0, 1, Mode::Grad { scale: -0.5 }, vec![0.0, 2.0], None)
                .unwrap()
        );
        assert_eq!(*m.snapshot(0).unwrap().unwrap(), vec![0.0, -2.0]);
    }

    /// Every order of arrival of `pushes` (one per worker) with `mode`: the round's result.
    fn results_of_every_arrival_order(mode: Mode, pushes: &[f32]) -> BTreeSet<u32> {
        fn orders(n: u32) -> Vec<Vec<u32>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for o in orders(n - 1) {
                for at in 0..=o.len() {
                    let mut o = o.clone();
                    o.insert(at, n - 1);
                    out.push(o);
                }
            }
            out
        }
        let n = pushes.len() as u32;
        let all = orders(n);
        assert_eq!(all.len(), 24);
        all.iter()
            .map(|order| {
                let mut m = model(n, vec![0.0]);
                for &w in order {
                    m.push(0, w, mode, vec![pushes[w as usize]], None).unwrap();
                }
                assert!(m.waiting.is_empty());
                m.snapshot(0).unwrap().unwrap()[0].to_bits()
            })
            .collect()
    }

    #[test]
    fn pushes_are_summed_in_worker_order_whatever_order_they_arrive_in() {
        // In f32, 1e8 + 1 == 1e8: every order of these sums gives 0, 1 or 2, but worker
        // order always gives ((1e8 + 1) - 1e8) + 1 = 1.
        let pushes = [1e8, 1.0, -1e8, 1.0];
        let grad = results_of_every_arrival_order(Mode::Grad { scale: 1.0 }, &pushes);
        assert_eq!(grad, BTreeSet::from([1.0f32.to_bits()]));
        let average = results_of_every_arrival_order(Mode::Average, &pushes);
        assert_eq!(average, BTreeSet::from([0.25f32.to_bits()]));
    }

    #[test]
    fn repeated_pushes_are_ignored() {
        let mut m = model(2, vec![0.0]);
        assert!(
            m.push(3, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
                .unwrap()
        );
        assert!(
            !m.push(3, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
                .unwrap()
        );
        m.push(3, 1, Mode::Grad { scale: 1.0 }, vec![1.0], None)
            .unwrap();
        // A re-invoked worker re-running the completed round changes nothing.
        assert!(
            !m.push(3, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
                .unwrap()
        );
        assert_eq!(m.values, vec![2.0]);
    }

    #[test]
    fn average_sets_the_mean_when_the_round_completes() {
        let mut m = model(3, vec![9.0, 9.0]);
        m.push(0, 0, Mode::Average, vec![1.0, 2.0], None).unwrap();
        m.push(0, 2, Mode::Average, vec![2.0, 4.0], None).unwrap();
        assert_eq!(m.values, vec![9.0, 9.0], "unchanged until complete");
        m.push(0, 1, Mode::Average, vec![3.0, 6.0], None).unwrap();
        assert_eq!(*m.snapshot(0).unwrap().unwrap(), vec![2.0, 4.0]);
    }

    #[test]
    fn replace_with_empty_pushes_broadcasts_one_worker_s_values() {
        let mut m = model(3, vec![0.0; 2]);
        m.push(5, 1, Mode::Replace, vec![], None).unwrap();
        m.push(5, 0, Mode::Replace, vec![7.0, 8.0], None).unwrap();
        m.push(5, 2, Mode::Replace, vec![], None).unwrap();
        assert_eq!(*m.snapshot(5).unwrap().unwrap(), vec![7.0, 8.0]);
    }

    #[test]
    fn snapshots_are_frozen_while_the_next_round_runs() {
        let mut m = model(2, vec![0.0]);
        m.push(0, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
            .unwrap();
        m.push(0, 1, Mode::Grad { scale: 1.0 }, vec![1.0], None)
            .unwrap();
        m.push(1, 0, Mode::Grad { scale: 1.0 }, vec![5.0], None)
            .unwrap();
        assert_eq!(*m.snapshot(0).unwrap().unwrap(), vec![2.0]);
        assert_eq!(m.values, vec![7.0]);
    }

    #[test]
    fn out_of_order_and_malformed_pushes_are_errors() {
        let mut m = model(2, vec![0.0; 3]);
        let e = m.push(0, 2, Mode::Average, vec![0.0; 3], None).unwrap_err();
        assert!(e.to_string().contains("has 2 workers"), "{e}");
        let e = m.push(0, 0, Mode::Average, vec![0.0; 2], None).unwrap_err();
        assert!(e.to_string().contains("holds 3"), "{e}");
        m.push(0, 0, Mode::Average, vec![0.0; 3], None).unwrap();
        let e = m.push(1, 1, Mode::Average, vec![0.0; 3], None).unwrap_err();
        assert!(e.to_string().contains("while round 0 has 1 of 2"), "{e}");
        for r in 0..4 {
            if r > 0 {
                m.push(r, 0, Mode::Average, vec![0.0; 3], None).unwrap();
            }
            m.push(r, 1, Mode::Average, vec![0.0; 3], None).unwrap();
        }
        assert!(m.snapshot(0).is_err(), "only the last rounds are kept");
        assert!(m.snapshot(3).unwrap().is_some());
    }

    #[test]
    fn a_gap_in_rounds_is_refused() {
        let mut m = model(1, vec![0.0]);
        m.push(4, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
            .unwrap();
        m.push(9, 0, Mode::Grad { scale: 1.0 }, vec![1.0], Some(4))
            .unwrap();
        // As if the server had restarted from a snapshot taken after round 4.
        let mut older = model(1, vec![0.0]);
        older
            .push(4, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
            .unwrap();
        let e = older
            .push(12, 0, Mode::Grad { scale: 1.0 }, vec![1.0], Some(9))
            .unwrap_err();
        assert!(e.to_string().contains("lost rounds"), "{e}");
    }

    #[tokio::test]
    async fn pull_waits_for_the_round_and_times_out() {
        let m = Arc::new(Model::new(model(2, vec![0.0])));
        assert_eq!(m.pull(0, Duration::from_millis(20)).await.unwrap(), None);
        let waiter = {
            let m = m.clone();
            tokio::spawn(async move { m.pull(0, Duration::from_secs(10)).await })
        };
        m.push(0, 0, Mode::Grad { scale: 1.0 }, vec![1.0], None)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        m.push(0, 1, Mode::Grad { scale: 1.0 }, vec![2.0], None)
            .unwrap();
        assert_eq!(*waiter.await.unwrap().unwrap().unwrap(), vec![3.0]);
    }

    #[test]
    fn store_registers_once_and_expires_idle_models() {
        let s = Store::default();
        assert!(s.register(model(2, vec![1.0])).unwrap().0);
        let (created, m) = s.register(model(2, vec![5.0])).unwrap();
        assert!(!created);
        assert_eq!(
            m.state.lock().unwrap().values,
            vec![1.0],
            "first values kept"
        );
        assert!(s.register(model(3, vec![1.0])).is_err(), "another shape");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.expire(Duration::from_secs(10)).len(), 0);
        assert_eq!(s.expire(Duration::from_millis(10)).len(), 1);
        assert!(s.is_empty());
    }
}
