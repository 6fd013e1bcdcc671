//! The `Collective` contract, checked against every implementation: `reduce`,
//! `reduce_scatter` and `async` over a channel, and the parameter-server client against a
//! real `lambdaml ps serve` process. One function per case, one line per implementation.
//!
//! Workers are threads with their own runtime (as separate processes would be), opening
//! their collective through `comm::open` exactly as a training worker does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdaml::channel::{self, Channel, ChannelUrl};
use lambdaml::comm::{self, Collective, CommError, Keys, Member, PsTarget, SyncMode};

use crate::ps::PsServer;

/// Where one test's workers meet: its own in-process channel and, for `ps`, its own server.
struct Setup {
    mode: SyncMode,
    channel: ChannelUrl,
    job: String,
    server: Option<PsServer>,
}

impl Setup {
    /// The setup of `test` on the line of `mode` whose vectors are `scale` times as long.
    fn new(mode: SyncMode, scale: usize, test: &str) -> Setup {
        Setup {
            mode,
            channel: format!("mem:collective-{mode}-x{scale}-{test}")
                .parse()
                .unwrap(),
            job: format!("job-{test}"),
            server: (mode == SyncMode::Ps).then(|| PsServer::start(&[])),
        }
    }

    fn target(&self) -> Option<PsTarget> {
        self.server.as_ref().map(|s| PsTarget {
            addr: s.addr.clone(),
            token: None,
        })
    }

    fn open_channel(&self) -> Arc<dyn Channel> {
        runtime().block_on(channel::open(&self.channel)).unwrap()
    }

    /// Runs `f(worker, collective, channel)` for the workers in `workers` (of `n`), each on
    /// its own thread and runtime, and returns their results in that order.
    fn run<T: Send + 'static>(
        &self,
        n: usize,
        workers: &[usize],
        wait: Duration,
        f: impl Fn(usize, Box<dyn Collective>, Arc<dyn Channel>) -> Pin<Box<dyn Future<Output = T>>>
        + Send
        + Sync
        + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = workers
            .iter()
            .map(|&w| {
                let (f, mode, target) = (f.clone(), self.mode, self.target());
                let (url, job) = (self.channel.clone(), self.job.clone());
                std::thread::spawn(move || {
                    let rt = runtime();
                    rt.block_on(async move {
                        let ch = channel::open(&url).await.unwrap();
                        let member = Member {
                            channel: ch.clone(),
                            job,
                            worker: w,
                            workers: n,
                            wait_timeout: wait,
                            keep_rounds: 1,
                        };
                        let c = comm::open(mode, target.as_ref(), member).await.unwrap();
                        f(w, c, ch).await
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Deletes the keys the workers left (as the driver does) and returns what remains.
    fn left_after_cleanup(&self, residual: Vec<String>) -> Vec<String> {
        let ch = self.open_channel();
        runtime().block_on(async {
            ch.delete(&residual).await.unwrap();
            ch.list("").await.unwrap().unwrap()
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn vector(w: usize, round: u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((w * 31 + i * 7) as f32 * 0.37 + round as f32).sin())
        .collect()
}

/// The mean as every implementation must compute it: summed in worker order, then divided.
fn expected_mean(n: usize, round: u64, len: usize) -> Vec<f32> {
    let mut acc = vec![0f32; len];
    for w in 0..n {
        for (a, b) in acc.iter_mut().zip(vector(w, round, len)) {
            *a += b;
        }
    }
    acc.iter().map(|a| a / n as f32).collect()
}

/// Barrier modes give every worker the exact mean of all contributions; `async` gives each a
/// mean of the latest models it found, so a convex combination of what was published.
fn means_are_exact_and_the_same_everywhere(mode: SyncMode, scale: usize, exact: bool) {
    let s = Setup::new(mode, scale, "means");
    let (n, len) = (3, 37 * scale);
    let out = s.run(
        n,
        &[0, 1, 2],
        Duration::from_secs(20),
        move |w, mut c, _| {
            Box::pin(async move {
                let mut means = Vec::new();
                for round in 0..4 {
                    means.push(c.mean(round, &vector(w, round, len)).await.unwrap());
                }
                (means, c.residual_keys())
            })
        },
    );
    for (w, (means, _)) in out.iter().enumerate() {
        for (round, mean) in means.iter().enumerate() {
            assert_eq!(mean.len(), len);
            if exact {
                assert_eq!(
                    mean,
                    &expected_mean(n, round as u64, len),
                    "{mode} w={w} r={round}"
                );
            } else {
                for (i, x) in mean.iter().enumerate() {
                    // A faster peer may have published a later round's model already.
                    let seen: Vec<f32> = (0..n)
                        .flat_map(|v| (0..4).map(move |r| vector(v, r, len)[i]))
                        .collect();
                    let lo = seen.iter().copied().fold(f32::INFINITY, f32::min);
                    let hi = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    assert!(*x >= lo - 1e-6 && *x <= hi + 1e-6, "{mode} w={w} r={round}");
                }
            }
        }
    }
    let residual = out.into_iter().flat_map(|(_, r)| r).collect();
    assert_eq!(
        s.left_after_cleanup(residual),
        Vec::<String>::new(),
        "{mode}"
    );
}

/// A worker that re-executes a round (a re-invocation) gets the same result and changes
/// nothing for the others; a gradient step re-run from the same parameters lands on the
/// same parameters.
fn a_rerun_round_changes_nothing(mode: SyncMode, scale: usize) {
    let s = Setup::new(mode, scale, "rerun");
    let (n, len) = (3, 11 * scale);
    let out = s.run(
        n,
        &[0, 1, 2],
        Duration::from_secs(20),
        move |w, mut c, _| {
            Box::pin(async move {
                let v = vector(w, 0, len);
                let first = c.mean(0, &v).await.unwrap();
                let again = c.mean(0, &v).await.unwrap();
                let next = c.mean(1, &vector(w, 1, len)).await.unwrap();
                let start = vector(9, 9, len);
                let mut a = start.clone();
                c.grad_step(2, &mut a, &vector(w, 2, len), 0.5)
                    .await
                    .unwrap();
                let mut b = start.clone();
                c.grad_step(2, &mut b, &vector(w, 2, len), 0.5)
                    .await
                    .unwrap();
                (first, again, next, a, b, c.residual_keys())
            })
        },
    );
    for (w, (first, again, next, a, b, _)) in out.iter().enumerate() {
        assert_eq!(first, again, "{mode} w={w}: the re-run round differs");
        assert_eq!(
            next,
            &expected_mean(n, 1, len),
            "{mode} w={w}: the next round"
        );
        assert_eq!(a, b, "{mode} w={w}: the re-run gradient step differs");
        assert_eq!(
            a, &out[0].3,
            "{mode}: workers disagree after the gradient step"
        );
    }
    let residual = out.into_iter().flat_map(|r| r.5).collect();
    assert_eq!(
        s.left_after_cleanup(residual),
        Vec::<String>::new(),
        "{mode}"
    );
}

/// A synchronous gradient step gives every worker `params - lr * mean(grad)`: exactly over
/// the channel, up to summation order on the server (which adds `-lr/n * grad_i` in turn).
fn a_gradient_step_applies_the_mean_gradient(mode: SyncMode, scale: usize) {
    let s = Setup::new(mode, scale, "gradstep");
    let (n, len, lr) = (4, 23 * scale, 0.25f32);
    let out = s.run(
        n,
        &[0, 1, 2, 3],
        Duration::from_secs(20),
        move |w, mut c, _| {
            Box::pin(async move {
                let mut params = vector(7, 7, len);
                for round in 0..3 {
                    c.grad_step(round, &mut params, &vector(w, round, len), lr)
                        .await
                        .unwrap();
                }
                params
            })
        },
    );
    let mut want = vector(7, 7, len);
    for round in 0..3 {
        for (p, g) in want.iter_mut().zip(expected_mean(n, round, len)) {
            *p -= lr * g;
        }
    }
    for (w, params) in out.iter().enumerate() {
        assert_eq!(params, &out[0], "{mode}: worker {w} disagrees");
        let off = params
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(off < 1e-5, "{mode}: off by {off}");
    }
}

/// Worker 0's vector reaches everyone.
fn a_broadcast_reaches_every_worker(mode: SyncMode, scale: usize) {
    let s = Setup::new(mode, scale, "bcast");
    let root = vec![1.5f32, -2.0, 3.25];
    let sent = root.clone();
    let out = s.run(
        3,
        &[0, 1, 2],
        Duration::from_secs(20),
        move |w, mut c, _| {
            let root = sent.clone();
            Box::pin(async move {
                let own = (w == 0).then_some(&root[..]);
                c.broadcast(0, own, 3).await.unwrap()
            })
        },
    );
    assert_eq!(out, vec![root.clone(), root.clone(), root]);
}

/// A worker whose peer never comes fails after the wait timeout, naming what it waited for
/// and whom: worker 1 of 2 waits for worker 0's broadcast; with `mean_too`, worker 0 also
/// waits for worker 1's contribution to a mean.
fn a_missing_peer_times_out_naming_key_and_worker(mode: SyncMode, scale: usize, mean_too: bool) {
    let s = Setup::new(mode, scale, "timeout");
    let errs = s.run(2, &[1], Duration::from_millis(300), |_, mut c, _| {
        Box::pin(async move { c.broadcast(5, None, 4).await.unwrap_err() })
    });
    let msg = errs[0].to_string();
    assert!(
        matches!(errs[0], CommError::Timeout { worker: 0, .. }),
        "{mode}: {msg}"
    );
    assert!(
        msg.contains("bcast") || msg.contains("broadcast"),
        "{mode}: {msg}"
    );
    if mean_too {
        let errs = s.run(2, &[0], Duration::from_millis(300), move |_, mut c, _| {
            Box::pin(async move { c.mean(7, &vec![1.0; 5 * scale]).await.unwrap_err() })
        });
        let msg = errs[0].to_string();
        assert!(
            msg.contains("7") && msg.contains("worker 1"),
            "{mode}: {msg}"
        );
    }
}

/// The invocation's deadline ends a wait with `Interrupted` (checkpoint and re-invoke), and
/// the collective works again once the deadline is lifted.
fn the_deadline_interrupts_a_wait(mode: SyncMode, scale: usize) {
    let s = Setup::new(mode, scale, "deadline");
    let out = s.run(2, &[0, 1], Duration::from_secs(20), |w, mut c, ch| {
        Box::pin(async move {
            let go = "job-deadline/test/go".to_string();
            if w == 1 {
                c.set_deadline(Some(Instant::now() + Duration::from_millis(50)));
                let err = c.broadcast(0, None, 2).await.unwrap_err();
                assert!(matches!(err, CommError::Interrupted { .. }), "{err}");
                c.set_deadline(None);
                ch.put(&go, bytes::Bytes::new()).await.unwrap();
                c.broadcast(0, None, 2).await.unwrap()
            } else {
                while ch.get(&go).await.unwrap().is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                c.broadcast(0, Some(&[4.0, 5.0]), 2).await.unwrap()
            }
        })
    });
    assert_eq!(out, vec![vec![4.0, 5.0], vec![4.0, 5.0]], "{mode}");
}

/// The driver's abort flag stops a waiting worker.
fn the_abort_flag_stops_a_wait(mode: SyncMode, scale: usize) {
    let s = Setup::new(mode, scale, "abort");
    let ch = s.open_channel();
    runtime()
        .block_on(ch.put(&Keys::new(&s.job).abort(), bytes::Bytes::new()))
        .unwrap();
    let errs = s.run(2, &[1], Duration::from_secs(30), |_, mut c, _| {
        Box::pin(async move { c.broadcast(0, None, 2).await.unwrap_err() })
    });
    assert!(matches!(errs[0], CommError::Aborted), "{mode}: {}", errs[0]);
}

/// What `state()` returns lets a new invocation carry on where the last one stopped.
fn state_carries_over_to_the_next_invocation(mode: SyncMode, scale: usize, exact: bool) {
    let s = Setup::new(mode, scale, "resume");
    let (n, len) = (2, 5 * scale);
    let (target, job) = (s.target(), s.job.clone());
    let out = s.run(n, &[0, 1], Duration::from_secs(20), move |w, mut c, ch| {
        let (target, job) = (target.clone(), job.clone());
        Box::pin(async move {
            let first = c.mean(0, &vector(w, 0, len)).await.unwrap();
            let state = c.state();
            drop(c);
            let member = Member {
                channel: ch,
                job,
                worker: w,
                workers: n,
                wait_timeout: Duration::from_secs(20),
                keep_rounds: 1,
            };
            let mut next = comm::open(mode, target.as_ref(), member).await.unwrap();
            next.restore(state);
            let second = next.mean(1, &vector(w, 1, len)).await.unwrap();
            (first, second, next.residual_keys())
        })
    });
    if exact {
        for (first, second, _) in &out {
            assert_eq!(first, &expected_mean(n, 0, len), "{mode}");
            assert_eq!(second, &expected_mean(n, 1, len), "{mode}");
        }
    }
    let residual = out.into_iter().flat_map(|r| r.2).collect();
    assert_eq!(
        s.left_after_cleanup(residual),
        Vec::<String>::new(),
        "{mode}"
    );
}

/// One line per implementation: the mode, whether its means are exact (a barrier), and
/// how many times as long as the cases' own its vectors are. The in-memory channel's reads
/// are cheap, so small vectors are gathered by every worker (`Comm::gathers`); lines with
/// `scale` 8192 (vectors of 40-300 k values) take the leader's and the chunk owners' way.
macro_rules! collectives {
    ($($name:ident => $mode:expr, exact: $exact:expr, scale: $scale:expr;)*) => {$(
        mod $name {
            use super::*;
            const MODE: SyncMode = $mode;
            const SCALE: usize = $scale;
            #[test] fn means_are_exact_and_the_same_everywhere() { super::means_are_exact_and_the_same_everywhere(MODE, SCALE, $exact) }
            #[test] fn a_broadcast_reaches_every_worker() { super::a_broadcast_reaches_every_worker(MODE, SCALE) }
            #[test] fn a_missing_peer_times_out_naming_key_and_worker() { super::a_missing_peer_times_out_naming_key_and_worker(MODE, SCALE, $exact) }
            #[test] fn the_deadline_interrupts_a_wait() { super::the_deadline_interrupts_a_wait(MODE, SCALE) }
            #[test] fn the_abort_flag_stops_a_wait() { super::the_abort_flag_stops_a_wait(MODE, SCALE) }
            #[test] fn state_carries_over_to_the_next_invocation() { super::state_carries_over_to_the_next_invocation(MODE, SCALE, $exact) }
            #[test] fn a_rerun_round_changes_nothing() { if $exact { super::a_rerun_round_changes_nothing(MODE, SCALE) } }
            #[test] fn a_gradient_step_applies_the_mean_gradient() { if $exact { super::a_gradient_step_applies_the_mean_gradient(MODE, SCALE) } }
        }
    )*};
}

collectives! {
    reduce => SyncMode::Reduce, exact: true, scale: 1;
    reduce_large => SyncMode::Reduce, exact: true, scale: 8192;
    reduce_scatter => SyncMode::ReduceScatter, exact: true, scale: 1;
    reduce_scatter_large => SyncMode::ReduceScatter, exact: true, scale: 8192;
    async_exchange => SyncMode::Async, exact: false, scale: 1;
    ps => SyncMode::Ps, exact: true, scale: 1;
}
