//! The integration tests, as one test binary: they start real `lambdaml` driver and worker
//! processes and real servers. One binary links the crate and its dependencies once instead
//! of once per file, which is most of a cold build's link time and disk.
//!
//! Run one group with `cargo test --test it ps::` (or any test-name filter).

mod common;

mod admm_kmeans;
mod bad_input;
mod bench;
mod channel_conformance;
mod cnn;
mod collective_conformance;
mod examples;
mod gc;
mod job_control;
mod lambda;
mod lost_workers;
mod metrics;
mod plan;
mod ps;
mod quickstart;
mod recovery;
mod reinvocation;
mod remote;
mod sparse_convergence;
mod test_sets;
mod train_matrix;
mod tune;
