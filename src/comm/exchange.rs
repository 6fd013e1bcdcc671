//! The collectives that travel over the channel: `reduce`, `reduce_scatter` and `async`.
//!
//! They differ only in how a mean is computed and in whether a gradient step comes before
//! or after it, which is what [`Exchange`] says; [`OverChannel`] does the rest once.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Instant;

use async_trait::async_trait;

use super::endpoint::Comm;
use super::{Collective, CollectiveState, CommError, CommStats, Member, sgd_step};

/// How a channel collective averages a vector: the one thing the channel modes differ in.
pub trait Exchange: Send + Sync + std::fmt::Debug + 'static {
    /// True when a gradient step is taken locally and the resulting models are averaged
    /// (`async`, where there is no barrier to average gradients at); false when the
    /// gradients are averaged and then the step is taken.
    const STEP_THEN_AVERAGE: bool;

    /// The mean of `values` over the workers of `comm` (more than one).
    fn mean<'a>(
        comm: &'a mut Comm,
        round: u64,
        values: &'a [f32],
    ) -> impl Future<Output = Result<Vec<f32>, CommError>> + Send + 'a;
}

/// All-reduce through worker 0 ([`Comm::reduce`]).
#[derive(Debug)]
pub struct Reduce;

impl Exchange for Reduce {
    const STEP_THEN_AVERAGE: bool = false;
    fn mean<'a>(
        comm: &'a mut Comm,
        round: u64,
        values: &'a [f32],
    ) -> impl Future<Output = Result<Vec<f32>, CommError>> + Send + 'a {
        comm.reduce(round, values)
    }
}

/// Reduce-scatter then all-gather ([`Comm::reduce_scatter`]).
#[derive(Debug)]
pub struct ReduceScatter;

impl Exchange for ReduceScatter {
    const STEP_THEN_AVERAGE: bool = false;
    fn mean<'a>(
        comm: &'a mut Comm,
        round: u64,
        values: &'a [f32],
    ) -> impl Future<Output = Result<Vec<f32>, CommError>> + Send + 'a {
        comm.reduce_scatter(round, values)
    }
}

/// Latest-model exchange without a barrier ([`Comm::async_exchange`]).
#[derive(Debug)]
pub struct Async;

impl Exchange for Async {
    const STEP_THEN_AVERAGE: bool = true;
    fn mean<'a>(
        comm: &'a mut Comm,
        _round: u64,
        values: &'a [f32],
    ) -> impl Future<Output = Result<Vec<f32>, CommError>> + Send + 'a {
        comm.async_exchange(values)
    }
}

/// A [`Collective`] over the job's channel, averaging the [`Exchange`] way.
#[derive(Debug)]
pub struct OverChannel<E: Exchange> {
    comm: Comm,
    exchange: PhantomData<E>,
}

impl<E: Exchange> OverChannel<E> {
    /// The collective of `member`.
    pub fn new(member: Member) -> Self {
        Self::on(Comm::of(member))
    }

    /// The collective over an existing endpoint.
    pub fn on(comm: Comm) -> Self {
        OverChannel {
            comm,
            exchange: PhantomData,
        }
    }

    /// The endpoint underneath (barriers, keys).
    pub fn comm(&mut self) -> &mut Comm {
        &mut self.comm
    }
}

#[async_trait]
impl<E: Exchange> Collective for OverChannel<E> {
    async fn mean(&mut self, round: u64, values: &[f32]) -> Result<Vec<f32>, CommError> {
        if self.comm.workers() == 1 {
            return Ok(values.to_vec());
        }
        E::mean(&mut self.comm, round, values).await
    }

    async fn grad_step(
        &mut self,
        round: u64,
        params: &mut Vec<f32>,
        grad: &[f32],
        lr: f32,
    ) -> Result<(), CommError> {
        if E::STEP_THEN_AVERAGE {
            let mut next = params.clone();
            sgd_step(&mut next, grad, lr);
            *params = self.mean(round, &next).await?;
        } else {
            let mean = self.mean(round, grad).await?;
            sgd_step(params, &mean, lr);
        }
        Ok(())
    }

    async fn broadcast(
        &mut self,
        round: u64,
        own: Option<&[f32]>,
        len: usize,
    ) -> Result<Vec<f32>, CommError> {
        self.comm.broadcast(round, own, len).await
    }

    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.comm.set_deadline(deadline);
    }

    fn stats(&self) -> CommStats {
        self.comm.stats()
    }

    fn state(&self) -> CollectiveState {
        CollectiveState {
            pending: self.comm.pending().to_vec(),
            written: self.comm.written().to_vec(),
            last_pushed: Vec::new(),
            waited_s: self.comm.waited_s(),
        }
    }

    fn restore(&mut self, state: CollectiveState) {
        self.comm.restore_waited(state.waited_s);
        self.comm.restore_pending(state.pending);
        self.comm.restore_written(state.written);
    }

    fn residual_keys(&self) -> Vec<String> {
        self.comm.residual_keys()
    }
}
