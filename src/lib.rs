//! lambdaml: train machine-learning models on serverless functions that synchronise through
//! external storage.
//!
//! Layers, top to bottom (each only uses the ones below it):
//! - [`job`]: configuration, driver, worker loop, checkpoints, metrics;
//! - [`algo`]: models and optimizers as pure compute over flat `f32` vectors;
//! - [`comm`]: collectives (reduce, reduce-scatter, async, barrier) over a channel;
//! - [`ps`]: the parameter server of hybrid mode (`--sync ps`) and its client;
//! - [`channel`]: the storage backends workers talk through;
//! - [`cost`]: what a run would cost on AWS (price table and estimate);
//! - [`report`]: `lambdaml report`, charts and tables comparing finished runs;
//! - [`platform`]: how a worker invocation is started (local processes, ...);
//! - [`data`]: LibSVM parsing, partitioning, synthetic data.

pub mod algo;
pub mod channel;
pub mod cli;
pub mod comm;
pub mod cost;
pub mod data;
pub mod job;
pub mod platform;
pub mod ps;
pub mod report;
