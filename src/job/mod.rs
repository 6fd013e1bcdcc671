//! Jobs: configuration, the driver that plans and follows a job, the worker loop with
//! checkpoint and re-invocation, liveness and recovery, and the records and reports they
//! exchange.

pub mod bench;
pub mod cnn_bench;
pub mod config;
pub mod control;
pub mod data_source;
pub mod driver;
pub mod event;
pub mod follow;
pub mod forecast;
pub mod gc;
pub mod liveness;
pub mod liveness_cost;
pub mod plan;
pub mod planner;
pub mod profile;
pub mod records;
pub mod summary;
pub mod tune;
pub mod worker;

pub use config::JobConfig;
