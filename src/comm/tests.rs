use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::exchange::{Async, Exchange, OverChannel, Reduce, ReduceScatter};
use super::*;
use crate::channel::codec;
use crate::channel::mem::MemChannel;

/// Runs `f(comm)` for `n` workers, each on its own thread and runtime (as separate processes
/// would), and returns their results in worker order.
fn run_workers<T: Send + 'static>(
    name: &str,
    n: usize,
    timeout: Duration,
    f: impl Fn(Comm) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|w| {
            let f = f.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let ch: Arc<dyn Channel> = Arc::new(MemChannel::named(&name));
                rt.block_on(f(Comm::new(ch, "job", w, n, timeout)))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn vector(w: usize, round: u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((w * 31 + i * 7) as f32 * 0.37 + round as f32).sin())
        .collect()
}

/// Every worker runs five all-reduces and a barrier; then, as the driver does once every
/// worker has reported, the residual keys of all workers are deleted.
fn all_reduce_rounds<E: Exchange>(name: &str, n: usize, len: usize) -> Vec<Vec<Vec<f32>>> {
    let results = run_workers(name, n, Duration::from_secs(20), move |comm| {
        Box::pin(async move {
            let w = comm.worker;
            let mut c = OverChannel::<E>::on(comm);
            let mut out = Vec::new();
            for round in 0..5 {
                let v = vector(w, round, len);
                out.push(c.mean(round, &v).await.unwrap());
            }
            c.comm().barrier(0).await.unwrap();
            (out, c.residual_keys())
        })
    });
    let residual: Vec<String> = results.iter().flat_map(|(_, r)| r.clone()).collect();
    let ch = MemChannel::named(name);
    block_on(ch.delete(&residual)).unwrap();
    results.into_iter().map(|(out, _)| out).collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn expected_mean(n: usize, round: u64, len: usize) -> Vec<f32> {
    let mut acc = vec![0f32; len];
    for w in 0..n {
        add_assign(&mut acc, &vector(w, round, len));
    }
    scale(&mut acc, n);
    acc
}

fn remaining(name: &str) -> Vec<String> {
    block_on(MemChannel::named(name).list("")).unwrap().unwrap()
}

#[test]
fn reduce_and_reduce_scatter_give_the_same_bits_and_leave_no_key() {
    // Up to (5, 1000) every worker gathers the mean (`Comm::gathers`); (3, 20_000) goes
    // through the leader and the chunk owners.
    for (n, len) in [(4, 103), (3, 2), (5, 1000), (3, 20_000)] {
        let a = all_reduce_rounds::<Reduce>(&format!("red-{n}-{len}"), n, len);
        let b = all_reduce_rounds::<ReduceScatter>(&format!("rs-{n}-{len}"), n, len);
        for round in 0..5 {
            let want = expected_mean(n, round as u64, len);
            for w in 0..n {
                assert_eq!(a[w][round], want, "reduce n={n} w={w} round={round}");
                assert_eq!(
                    b[w][round], want,
                    "reduce_scatter n={n} w={w} round={round}"
                );
            }
        }
        assert_eq!(remaining(&format!("red-{n}-{len}")), Vec::<String>::new());
        assert_eq!(remaining(&format!("rs-{n}-{len}")), Vec::<String>::new());
    }
}

/// On a channel with cheap reads a small mean is gathered, in both modes: every worker
/// (worker 0 too) writes its vector under its `reduce` key, and nobody writes a mean or a
/// chunk; a large one takes the leader's or the chunk owners' way. Keys are listed before
/// anything is deleted (deletion waits for the next round).
#[test]
fn small_means_are_gathered_and_large_ones_are_not() {
    let gathered: Vec<String> = (0..3).map(|w| format!("job/0/reduce/{w}")).collect();
    let through_leader = ["job/0/mean/0", "job/0/reduce/1", "job/0/reduce/2"];
    for (len, scatter, want) in [
        (1000, false, gathered.clone()),
        (1000, true, gathered.clone()),
        (20_000, false, through_leader.map(String::from).to_vec()),
    ] {
        let name = format!("gathers-{len}-{scatter}");
        let gathers = run_workers(&name, 3, Duration::from_secs(20), move |mut comm| {
            Box::pin(async move {
                let v = vector(comm.worker, 0, len);
                if scatter {
                    comm.reduce_scatter(0, &v).await.unwrap();
                } else {
                    comm.reduce(0, &v).await.unwrap();
                }
                comm.gathers(len)
            })
        });
        assert_eq!(gathers, vec![want == gathered; 3], "len {len}");
        assert_eq!(
            remaining(&name),
            want,
            "len {len}, reduce_scatter {scatter}"
        );
    }
    let gathered_large = run_workers(
        "gathers-rs-large",
        3,
        Duration::from_secs(20),
        |mut comm| {
            Box::pin(async move {
                let v = vector(comm.worker, 0, 20_000);
                comm.reduce_scatter(0, &v).await.unwrap();
            })
        },
    );
    assert_eq!(gathered_large.len(), 3);
    let keys = remaining("gathers-rs-large");
    assert!(
        keys.iter().any(|k| k.contains("/gather/")) && !keys.iter().any(|k| k.contains("/reduce/")),
        "{keys:?}"
    );
}

/// Keys every worker is past go with the next write, not in a request of their own, and a
/// barrier deletes them at once (nothing is written after it).
#[test]
fn past_keys_go_with_the_next_write_or_at_a_barrier() {
    let left = run_workers("deletions", 2, Duration::from_secs(20), |mut comm| {
        Box::pin(async move {
            let w = comm.worker;
            comm.reduce(0, &vector(w, 0, 4)).await.unwrap();
            comm.reduce(1, &vector(w, 1, 4)).await.unwrap();
            // Round 0's key is deletable now, and still there: no write came since.
            let after_round_1 = comm.channel.list("job/0/").await.unwrap().unwrap();
            let deletes_before = comm.stats().deletes;
            comm.reduce(2, &vector(w, 2, 4)).await.unwrap();
            let with_round_2 = comm.stats().deletes - deletes_before;
            comm.barrier(3).await.unwrap();
            let after_barrier = comm.channel.list("job/").await.unwrap().unwrap();
            (
                after_round_1,
                with_round_2,
                after_barrier,
                comm.residual_keys(),
            )
        })
    });
    for (w, (after_round_1, with_round_2, after_barrier, residual)) in left.iter().enumerate() {
        assert!(
            after_round_1.contains(&format!("job/0/reduce/{w}")),
            "worker {w}: {after_round_1:?}"
        );
        assert_eq!(
            *with_round_2, 1,
            "worker {w}: its round-0 key, with its round-2 write"
        );
        let own: Vec<&String> = after_barrier
            .iter()
            .filter(|k| k.ends_with(&format!("/{w}")) && !k.contains("barrier"))
            .collect();
        assert!(own.is_empty(), "worker {w} left {own:?} after the barrier");
        assert_eq!(residual, &vec![format!("job/3/barrier/{w}")]);
    }
}

#[test]
fn async_exchange_averages_what_is_there_and_cleans_up() {
    let out = all_reduce_rounds::<Async>("async", 3, 10);
    for rounds in &out {
        assert!(
            rounds
                .iter()
                .all(|v| v.len() == 10 && v.iter().all(|x| x.is_finite()))
        );
    }
    assert_eq!(remaining("async"), Vec::<String>::new());
}

#[test]
fn a_missing_peer_times_out_naming_key_and_worker() {
    let errs = run_workers("timeout", 2, Duration::from_millis(200), |mut comm| {
        Box::pin(async move {
            if comm.worker == 1 {
                return None;
            }
            Some(comm.reduce(7, &[1.0]).await.unwrap_err())
        })
    });
    let msg = errs[0].as_ref().unwrap().to_string();
    assert!(
        msg.contains("'job/7/reduce/1'") && msg.contains("worker 1"),
        "{msg}"
    );
}

#[test]
fn deadline_interrupts_and_re_execution_is_idempotent() {
    let out = run_workers("reexec", 2, Duration::from_secs(10), |mut comm| {
        Box::pin(async move {
            let v = vector(comm.worker, 0, 8);
            if comm.worker == 1 {
                // First attempt: the deadline has already passed while waiting for worker 0,
                // which holds back until this attempt is over.
                comm.set_deadline(Some(Instant::now()));
                let err = comm.reduce_scatter(0, &v).await;
                assert!(matches!(err, Err(CommError::Interrupted { .. })), "{err:?}");
                comm.set_deadline(None);
                comm.put("job/test/go/1", Bytes::new()).await.unwrap();
            } else {
                comm.wait_all(&[("job/test/go/1".into(), 1)], Instant::now())
                    .await
                    .unwrap();
            }
            comm.reduce_scatter(0, &v).await.unwrap()
        })
    });
    assert_eq!(out[0], out[1]);
    assert_eq!(out[0], expected_mean(2, 0, 8));
}

#[test]
fn the_abort_flag_stops_waiters() {
    let errs = run_workers("abort", 2, Duration::from_secs(30), |mut comm| {
        Box::pin(async move {
            if comm.worker == 1 {
                let key = comm.keys.abort();
                comm.put(&key, Bytes::new()).await.unwrap();
                return None;
            }
            Some(comm.reduce(0, &[1.0]).await.unwrap_err())
        })
    });
    assert!(matches!(errs[0], Some(CommError::Aborted)), "{:?}", errs[0]);
}

#[tokio::test]
async fn corrupt_and_mismatched_values_are_named() {
    let ch: Arc<dyn Channel> = Arc::new(MemChannel::named("corrupt"));
    let mut comm = Comm::new(ch.clone(), "job", 0, 2, Duration::from_secs(5));
    ch.put(
        "job/0/reduce/1",
        Bytes::from_static(b"not a frame at all, really no"),
    )
    .await
    .unwrap();
    let err = comm.reduce(0, &[1.0]).await.unwrap_err();
    assert!(matches!(err, CommError::Corrupt { .. }), "{err}");
    ch.put("job/1/reduce/1", codec::encode_f32(&[1.0, 2.0]))
        .await
        .unwrap();
    let err = comm.reduce(1, &[1.0]).await.unwrap_err();
    assert!(
        err.to_string().contains("holds 2 values, expected 1"),
        "{err}"
    );
}

/// A round's keys stay until a gather of a later block (here, blocks of one round), and go
/// with the write after it: a worker that dies in round 0 starts over and reads the
/// broadcast again.
#[test]
fn broadcast_reaches_everyone_and_its_key_goes_after_the_next_rounds_gather() {
    let results = run_workers("bcast", 3, Duration::from_secs(10), |mut comm| {
        Box::pin(async move {
            let root_values = [1.0f32, 2.0, 3.0];
            let mine = (comm.worker == 0).then_some(&root_values[..]);
            let got = comm.broadcast(0, mine, 3).await.unwrap();
            comm.reduce(0, &got).await.unwrap();
            let kept = comm.residual_keys();
            comm.reduce(1, &got).await.unwrap();
            comm.reduce(2, &got).await.unwrap();
            (got, kept, comm.residual_keys())
        })
    });
    for (got, _, _) in &results {
        assert_eq!(got, &vec![1.0, 2.0, 3.0]);
    }
    assert!(
        results[0].1.iter().any(|k| k.contains("bcast")),
        "the broadcast's key went before every worker was past round 0: {:?}",
        results[0].1
    );
    let results: Vec<_> = results.into_iter().map(|(g, _, r)| (g, r)).collect();
    // The gather of round 1 proved everyone was past round 0; round 2's write deleted it.
    assert!(
        results[0].1.iter().all(|k| !k.contains("bcast")),
        "{:?}",
        results[0].1
    );
    let residual: Vec<String> = results.iter().flat_map(|(_, r)| r.clone()).collect();
    block_on(MemChannel::named("bcast").delete(&residual)).unwrap();
    assert_eq!(remaining("bcast"), Vec::<String>::new());
}

/// With blocks of 3 rounds, a round's keys stay until a gather in a later block: a worker
/// recovering from its checkpoint at the start of the current block re-runs its rounds
/// against the same keys.
#[test]
fn the_keys_of_the_current_block_are_kept_for_a_recovering_peer() {
    for name in ["block-reduce", "block-scatter"] {
        let results = run_workers(name, 3, Duration::from_secs(10), move |mut comm| {
            comm.keep_rounds = 3;
            Box::pin(async move {
                let w = comm.worker;
                let mut seen = Vec::new();
                for round in 0..5u64 {
                    let v = vector(w, round, 6);
                    if name == "block-reduce" {
                        comm.reduce(round, &v).await.unwrap();
                    } else {
                        comm.reduce_scatter(round, &v).await.unwrap();
                    }
                    seen.push(comm.residual_keys());
                }
                seen
            })
        });
        let holds = |keys: &[String], round: u64| {
            keys.iter().any(|k| k.starts_with(&format!("job/{round}/")))
        };
        let leader = &results[0];
        // After rounds 0..2 (block 0), nothing of block 0 has gone.
        assert!(
            (0..3).all(|r| holds(&leader[2], r)),
            "{name}: {:?}",
            leader[2]
        );
        // Round 3's gather (block 1) let block 0's keys go; round 3's stay through round 4.
        assert!(
            (0..3).all(|r| !holds(&leader[4], r)),
            "{name}: {:?}",
            leader[4]
        );
        assert!(holds(&leader[4], 3), "{name}: {:?}", leader[4]);
    }
}
