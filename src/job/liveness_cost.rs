//! `lambdaml bench liveness`: what heartbeats cost on a channel, measured by running one
//! invocation's pulse against it and pricing the requests it made.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::JobConfig;
use super::event::{JobSpec, WorkerEvent, unix_ms};
use super::liveness::{self, DriverBeat, Pulse};
use super::records;
use crate::channel::meter::{self, Usage};
use crate::channel::{self, ChannelUrl};
use crate::cost::{self, Consumption, Prices};
use crate::data::DataLocation;
use crate::platform::{FunctionSpec, PlatformSpec};

/// What one running invocation's liveness costs on a channel.
#[derive(Debug, Clone, Serialize)]
pub struct LivenessCost {
    /// The channel measured.
    pub channel: String,
    /// Seconds between beats.
    pub heartbeat_s: f64,
    /// Seconds measured.
    pub seconds: f64,
    /// Requests of the pulse over that time.
    pub usage: Usage,
    /// Requests per worker-hour.
    pub requests_per_hour: f64,
    /// Dollars per worker-hour for those requests (caches: none beyond the node, which the
    /// job pays for anyway).
    pub usd_per_hour: f64,
    /// The same, as a share of a worker-hour of Lambda compute at 1,769 MB (one vCPU).
    pub share_of_lambda: f64,
}

/// Runs a pulse for `seconds` against `url` (under a job id of its own, deleted after) and
/// prices its requests.
pub async fn measure(
    url: &ChannelUrl,
    seconds: f64,
    heartbeat_s: Option<f64>,
    prices: &Prices,
) -> anyhow::Result<LivenessCost> {
    let config = JobConfig {
        heartbeat_s,
        channel: Some(url.clone()),
        ..JobConfig::default()
    };
    config.validate()?;
    let job_id = format!("bench-liveness-{:016x}", rand::random::<u64>());
    let event = WorkerEvent {
        job: JobSpec {
            job_id: job_id.clone(),
            config: config.clone(),
            channel: url.clone(),
            data_location: DataLocation::Local(Default::default()),
            test_location: None,
            n_features: 0,
            labels: None,
            images: None,
            total_rows: 0,
            steps_per_epoch: 0,
            platform: PlatformSpec::Local(FunctionSpec {
                supervisor: Default::default(),
                exe: Default::default(),
                log_dir: Default::default(),
                timeout_s: config.invocation_timeout,
                memory_mb: config.memory_mb,
            }),
            started_unix_ms: unix_ms(),
            ps_token: None,
        },
        worker: 0,
        invocation: 0,
        resume: false,
        generation: 0,
        recover: false,
    };
    let ch = channel::open(url).await?;
    let driver = DriverBeat {
        driver: 0,
        seq: 1,
        unix_ms: unix_ms(),
    };
    records::put(ch.as_ref(), &liveness::driver_key(&job_id), &driver).await?;
    let record = records::JobRecord {
        started_unix_ms: unix_ms(),
        ends_by_unix_ms: unix_ms() + 3_600_000,
        spec_json: String::new(),
    };
    records::put(ch.as_ref(), &records::job_key(&job_id), &record).await?;
    let before = meter::apart_snapshot();
    let started = Instant::now();
    let pulse = Pulse::start(&event);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    pulse.stop(ch.as_ref()).await;
    let took = started.elapsed().as_secs_f64();
    let usage = meter::apart_snapshot() - before;
    ch.delete(&[
        liveness::driver_key(&job_id),
        liveness::alive_key(&job_id, 0),
        records::job_key(&job_id),
    ])
    .await?;
    let per_hour = 3600.0 / took;
    let priced = cost::estimate(
        prices,
        &Consumption {
            channel: url,
            parameter_server: false,
            memory_mb: config.memory_mb,
            invocations: 0,
            billed_s: 0.0,
            usage,
            data_usage: Usage::default(),
            wall_s: 0.0,
        },
    );
    let usd_per_hour = priced.total * per_hour;
    let lambda_hour = 3600.0 * 1769.0 / 1024.0 * prices.lambda_gb_second;
    Ok(LivenessCost {
        channel: url.without_secrets().to_string(),
        heartbeat_s: config.heartbeat(url).as_secs_f64(),
        seconds: took,
        requests_per_hour: usage.requests() as f64 * per_hour,
        usage,
        usd_per_hour,
        share_of_lambda: usd_per_hour / lambda_hour,
    })
}

/// The measurement as a line of text.
pub fn render(c: &LivenessCost) -> String {
    format!(
        "{}: a beat every {:.1} s, {:.0} requests per worker-hour, ${:.5} per worker-hour \
         ({:.2}% of a worker-hour of Lambda at 1,769 MB)\n",
        c.channel,
        c.heartbeat_s,
        c.requests_per_hour,
        c.usd_per_hour,
        100.0 * c.share_of_lambda
    )
}
