//! lambdaml: train machine-learning models on serverless functions that synchronise through
//! external storage.
//!
//! Workers are function invocations (local processes, AWS Lambda) that cannot talk to each
//! other. Each loads its partition of the data, trains, and combines its work with the
//! others' through a *channel* (a directory, S3, Memcached, Redis, DynamoDB) or a parameter
//! server. A *driver* starts the workers and learns everything from the channel; a worker
//! near its deadline checkpoints and re-invokes itself.
//!
//! # Layers
//!
//! Each module uses only the modules below it (`../shared/tools/layers.py` checks it), and
//! no two modules of one rank import each other:
//!
//! | module | holds | knows nothing of |
//! |---|---|---|
//! | [`cli`] | clap commands: parse, call one function, print | — |
//! | [`report`] | `lambdaml report`: charts and tables from finished run folders | training |
//! | [`job`] | configuration, driver, the one worker loop, checkpoints, records, bench | how bytes move |
//! | [`cost`] | the cost model: prices, billed units, estimates | jobs |
//! | [`algo`] | models and optimizers behind [`algo::learner::Learner`], pure compute over flat `f32` | channels, platforms |
//! | [`comm`] | the [`comm::Collective`] trait: reduce, reduce_scatter, async, parameter server | models |
//! | [`channel`] | the [`channel::Channel`] trait and its backends; chunking, retries, metering | collectives |
//! | [`platform`] | the [`platform::Platform`] trait: start an invocation with an event | training |
//! | [`data`] | LibSVM parsing, partitions, synthetic data, data locations | everything above |
//! | [`ps`] | the parameter server (gRPC), its store and wire protocol: a leaf | workers |
//!
//! # Contracts
//!
//! - A **channel** is a flat key-value store; values above a backend's item limit are
//!   chunked; a wait names the key and the worker it waited for ([`channel`]).
//! - A **collective** returns the mean, bit-identical on every worker, idempotent per round,
//!   and leaves the caller's state untouched when it fails or is interrupted ([`comm`]).
//! - A **learner** says what to compute locally, what to average and how to apply the
//!   mean; it never touches a collective ([`algo::learner`]).
//! - Three choices are made once, at the edge, and carried as typed values: the sync mode
//!   ([`comm::SyncMode`] → one `Box<dyn Collective>` from [`comm::open`]), the platform
//!   ([`platform::PlatformChoice`] → [`platform::PlatformSpec`]), and the channel and data
//!   locations ([`channel::ChannelUrl`], [`data::DataLocation`]).
//!
//! # Where to add things
//!
//! - **A model**: one file in `algo` implementing [`algo::optim::Differentiable`] (trained
//!   by gradients, every optimizer for free) or [`algo::learner::Learner`] (its own
//!   round), plus its name in [`algo::ModelKind`] and a line in [`algo::build`].
//! - **A channel**: one file in `channel` implementing [`channel::Channel`] (or
//!   [`channel::chunked::ItemStore`] to get chunking), a variant of [`channel::ChannelUrl`]
//!   with its parsing, and a line in [`channel::open_with`] (and in `cost` for its prices).
//! - **A platform**: one file in `platform` implementing [`platform::Platform`], a variant
//!   of [`platform::PlatformChoice`] and of [`platform::PlatformSpec`].
//!
//! `docs/ARCHITECTURE.md` says the same with the files to touch.

#![warn(missing_docs)]

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
