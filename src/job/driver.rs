//! The driver (the paper's "trigger"): plans the job, invokes the workers, follows their
//! progress on the channel, writes the run folder and deletes every key of the job.
//!
//! It never holds a handle on a worker: as on Lambda, invocations are fire-and-forget and
//! everything comes back through the channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::config::JobConfig;
use super::event::{Invocation, JobSpec, WorkerEvent};
use super::follow::{self, Followed};
use super::plan::{self, DataProgress, PreparedData};
use super::records::{self, WorkerResult};
use super::summary::{self, Summary};
use crate::channel::{self, Channel, ChannelUrl};
use crate::comm::Keys;
use crate::data::BinaryLabels;
use crate::platform::{FunctionSpec, PlatformSpec};
use crate::ps::client::PsClient;

/// Environment variable naming the binary that runs `lambdaml worker` (default: this one).
pub const WORKER_EXE_ENV: &str = "LAMBDAML_WORKER_EXE";

/// The binary that runs `lambdaml worker`: [`WORKER_EXE_ENV`], else this one.
pub fn worker_exe() -> anyhow::Result<PathBuf> {
    match std::env::var_os(WORKER_EXE_ENV) {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().context("locating the lambdaml binary"),
    }
}

/// How the driver reports while it runs.
pub trait JobProgress: DataProgress {
    /// Training starts: `total` worker-epochs.
    fn training(&self, total: u64);
    /// Worker-epochs done so far, with the latest record seen.
    fn trained(&self, done: u64, latest: Option<&records::EpochRecord>);
    /// Training is over.
    fn finished(&self);
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The summary written to `summary.json`.
    pub summary: Summary,
    /// Every worker's result, in worker order.
    pub results: Vec<WorkerResult>,
    /// The run folder.
    pub run_dir: PathBuf,
}

/// Runs a whole job and returns its outcome; on failure every key of the job is deleted
/// all the same.
pub async fn run(mut cfg: JobConfig, ui: &dyn JobProgress) -> anyhow::Result<JobOutcome> {
    cfg.validate()?;
    cfg.runs_dir = absolute(&cfg.runs_dir)?;
    if let Some(d) = cfg.data.take() {
        cfg.data = Some(d.absolute().context("resolving --data")?);
    }
    if let Some(d) = cfg.test_data.take() {
        cfg.test_data = Some(d.absolute().context("resolving --test-data")?);
    }
    if let Some(p) = &cfg.prices {
        cfg.prices = Some(absolute(p)?);
    }
    let prices = crate::cost::Prices::load(cfg.prices.as_deref())?;
    if let Some(c) = &cfg.init_centroids {
        cfg.init_centroids = Some(absolute(Path::new(c))?.display().to_string());
    }
    // Recorded resolved, so the run folder says which rule trained the model.
    if !cfg.model.is_clustering() {
        cfg.lr = Some(cfg.learning_rate());
        cfg.step = Some(cfg.step_rule());
        cfg.rho = Some(cfg.admm_penalty());
    }
    let channel_url = cfg
        .channel_url()
        .absolute()
        .context("resolving the channel's directory")?;
    let job_id = new_job_id(&cfg);
    let run_dir = cfg.runs_dir.join(&job_id);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run folder {}", run_dir.display()))?;
    // The record of the job, without its secrets (the token is never serialised).
    let recorded = JobConfig {
        channel: cfg.channel.as_ref().map(ChannelUrl::without_secrets),
        ..cfg.clone()
    };
    if let Ok(text) = toml::to_string(&recorded) {
        let _ = std::fs::write(run_dir.join("config.toml"), text);
    }

    check_reachable(&cfg, &channel_url)?;
    adopt_function_settings(&mut cfg).await?;
    let data = plan::prepare_data(&cfg, &run_dir, ui).await?;
    let test = match plan::prepare_test_data(&cfg, &run_dir, &data, ui).await {
        Ok(test) => test,
        Err(e) => {
            remove_temporary(&data);
            return Err(e);
        }
    };
    let sets = (&data, test.as_ref());
    let result = run_prepared(&cfg, &job_id, &run_dir, &channel_url, sets, &prices, ui).await;
    remove_temporary(&data);
    if let Some(test) = &test {
        remove_temporary(test);
    }
    result
}

/// Deletes partitions made for the job alone.
fn remove_temporary(data: &PreparedData) {
    if let Some(dir) = data.location.local().filter(|_| data.temporary) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

async fn run_prepared(
    cfg: &JobConfig,
    job_id: &str,
    run_dir: &Path,
    channel_url: &ChannelUrl,
    (data, test): (&PreparedData, Option<&PreparedData>),
    prices: &crate::cost::Prices,
    ui: &dyn JobProgress,
) -> anyhow::Result<JobOutcome> {
    let usage_base = crate::channel::meter::snapshot();
    match (&data.manifest.images, cfg.model.is_cnn()) {
        (None, true) => bail!(
            "--model {} trains on images, and '{}' holds rows of features: pass a CIFAR-10 \
             binary file, an IDX image file, or their partitions (`lambdaml data split`)",
            cfg.model,
            data.location
        ),
        (Some(facts), false) => bail!(
            "'{}' holds {} images: train them with --model resnet20, resnet18 or mobilenet",
            data.location,
            facts.shape
        ),
        _ => {}
    }
    let labels = if cfg.model.is_clustering() || cfg.model.is_cnn() {
        None
    } else if data.manifest.labels_truncated {
        bail!("the data has more than 16 distinct labels; lr and svm are binary classifiers");
    } else {
        Some(BinaryLabels::from_distinct(&data.manifest.labels)?)
    };
    let steps_per_epoch = plan::steps_per_epoch(&data.manifest, cfg.val_ratio, cfg.batch_size)?;
    plan::check_memory(cfg, &data.manifest, data.n_features, None)?;
    // A channel that never answers fails the job here, in seconds, with one message; only
    // a channel that worked and then went away is retried for as long as a worker waits.
    let first_contact = channel::open_with(channel_url, FIRST_CONTACT)
        .await
        .with_context(|| format!("the channel {channel_url} is not usable"))?;
    probe(first_contact.as_ref(), job_id).await?;
    drop(first_contact);
    let channel = channel::open_with(channel_url, channel_options(cfg)).await?;
    let started_unix_ms = super::event::unix_ms();

    let ps = match &cfg.ps_addr {
        Some(addr) => {
            let mut c = PsClient::connect(addr, cfg.ps_token.as_deref()).await?;
            let h = c.health().await?;
            tracing::info!(%addr, version = %h.version, models = h.models, "parameter server up");
            Some(c)
        }
        None => None,
    };

    let supervisor = std::env::current_exe().context("locating the lambdaml binary")?;
    let exe = worker_exe()?;
    let spec = JobSpec {
        job_id: job_id.to_string(),
        config: cfg.clone(),
        channel: channel_url.clone(),
        data_location: data.location.clone(),
        test_location: test.map(|t| t.location.clone()),
        n_features: data.n_features,
        labels,
        images: data.manifest.images.clone(),
        total_rows: data.manifest.total_rows(),
        steps_per_epoch,
        platform: PlatformSpec::new(
            &cfg.platform,
            FunctionSpec {
                supervisor,
                exe,
                log_dir: run_dir.join("logs"),
                timeout_s: cfg.invocation_timeout,
                memory_mb: cfg.memory_mb,
            },
        ),
        ps_token: cfg.ps_token.clone(),
        started_unix_ms,
    };
    // Deleted with the job's other keys once it ends; what `lambdaml gc` reads otherwise,
    // and what `lambdaml job` reads to follow the job from another driver.
    let job_record = records::JobRecord {
        started_unix_ms,
        ends_by_unix_ms: started_unix_ms + cfg.longest_life().as_millis() as u64,
        spec_json: records::JobRecord::spec_json(&spec),
    };
    records::put(channel.as_ref(), &records::job_key(job_id), &job_record)
        .await
        .context("writing the job's record")?;
    let started = Instant::now();
    let outcome = invoke_and_follow(&spec, channel.clone(), ui).await;
    let wall = started.elapsed().as_secs_f64();
    drop(ps);
    conclude(
        &spec,
        channel.as_ref(),
        outcome,
        run_dir,
        wall,
        usage_base,
        prices,
    )
    .await
}

/// Ends a followed job: deletes its keys (and its models on the parameter server), then
/// writes the run folder of a job that finished, or returns the failure.
pub(super) async fn conclude(
    spec: &JobSpec,
    channel: &dyn Channel,
    outcome: Followed,
    run_dir: &Path,
    wall: f64,
    usage_base: crate::channel::meter::Usage,
    prices: &crate::cost::Prices,
) -> anyhow::Result<JobOutcome> {
    let job_id = &spec.job_id;
    let cleanup = delete_job_keys(channel, spec, &outcome).await;
    if let Some(target) = spec.ps_target() {
        match PsClient::connect(&target.addr, target.token.as_deref()).await {
            Ok(mut c) => match c.drop_job(job_id).await {
                Ok(n) => {
                    tracing::debug!(models = n, "job's models dropped from the parameter server")
                }
                Err(e) => tracing::warn!("could not drop the job's models (they expire): {e}"),
            },
            Err(e) => tracing::warn!("could not drop the job's models (they expire): {e}"),
        }
    }
    let (results, recoveries) = match outcome {
        Followed::Done {
            results,
            recoveries,
        } => (results, recoveries),
        Followed::Failed { error, .. } => {
            if let Err(e) = cleanup {
                tracing::error!("cleanup after the failure also failed: {e:#}");
            }
            return Err(error.context(format!(
                "job {job_id} failed (worker logs: {})",
                run_dir.join("logs").display()
            )));
        }
    };
    cleanup?;
    // Each worker wrote its result record after reading its meter.
    let mut driver_usage = crate::channel::meter::snapshot() - usage_base;
    driver_usage.puts += results.len() as u64;
    let mut summary =
        summary::summarize(spec, spec.total_rows, &results, wall, driver_usage, prices);
    summary.recoveries = recoveries;
    summary::write_run(run_dir, &summary, &results)
        .with_context(|| format!("writing the run folder {}", run_dir.display()))?;
    Ok(JobOutcome {
        summary,
        results,
        run_dir: run_dir.to_path_buf(),
    })
}

/// Checks the channel is usable before any worker starts.
async fn probe(ch: &dyn Channel, job_id: &str) -> anyhow::Result<()> {
    let key = format!("{job_id}/control/probe");
    let fail = || format!("the channel {} is not usable", ch.url());
    ch.put(&key, bytes::Bytes::from_static(b"probe"))
        .await
        .with_context(fail)?;
    ch.get(&key).await.with_context(fail)?;
    ch.delete(&[key]).await.with_context(fail)?;
    Ok(())
}

/// Fails when the workers could not reach the job's data or channel: workers on AWS
/// Lambda cannot read this machine's files.
fn check_reachable(cfg: &JobConfig, channel: &ChannelUrl) -> anyhow::Result<()> {
    if cfg.platform.shares_this_machine() {
        return Ok(());
    }
    let platform = &cfg.platform;
    match cfg.data.as_ref().map(|d| d.local()) {
        Some(Some(path)) => bail!(
            "workers on {platform} cannot read {} on this machine: put the data on S3 \
             (lambdaml data split {} --parts N --out s3://BUCKET/PREFIX) and train with \
             --data s3://BUCKET/PREFIX",
            path.display(),
            path.display()
        ),
        None => bail!(
            "workers on {platform} cannot read data synthesised on this machine: make it \
             (lambdaml data synth), put it on S3 (lambdaml data split FILE --parts N --out \
             s3://BUCKET/PREFIX) and train with --data s3://BUCKET/PREFIX"
        ),
        Some(None) => {}
    }
    if matches!(channel, ChannelUrl::Dir(_) | ChannelUrl::Mem(_)) {
        bail!(
            "workers on {platform} cannot reach the channel {channel}: use s3://, \
             dynamodb://, memcached:// or redis:// (or a parameter server, --sync ps)"
        );
    }
    Ok(())
}

/// Checks that the platform's function can run the job, and takes the invocation timeout
/// and memory the function is configured with (what its invocations really get) when they
/// differ from the job's.
async fn adopt_function_settings(cfg: &mut JobConfig) -> anyhow::Result<()> {
    let probe = FunctionSpec {
        supervisor: PathBuf::new(),
        exe: PathBuf::new(),
        log_dir: PathBuf::new(),
        timeout_s: cfg.invocation_timeout,
        memory_mb: cfg.memory_mb,
    };
    let platform = PlatformSpec::new(&cfg.platform, probe).connect().await;
    let Some(facts) = platform.check(cfg.workers).await? else {
        return Ok(());
    };
    if facts.timeout_s != cfg.invocation_timeout {
        tracing::info!(
            "{} runs each invocation for up to {} s, not --invocation-timeout {} s: using {} s",
            cfg.platform,
            facts.timeout_s,
            cfg.invocation_timeout,
            facts.timeout_s
        );
        cfg.invocation_timeout = facts.timeout_s;
    }
    if facts.memory_mb != cfg.memory_mb {
        tracing::info!(
            "{} gives each invocation {} MB, not --memory-mb {}: using {} MB",
            cfg.platform,
            facts.memory_mb,
            cfg.memory_mb,
            facts.memory_mb
        );
        cfg.memory_mb = facts.memory_mb;
    }
    cfg.validate()
        .context("the function's settings do not suit the job")?;
    Ok(())
}

async fn invoke_and_follow(spec: &JobSpec, ch: Arc<dyn Channel>, ui: &dyn JobProgress) -> Followed {
    let n = spec.config.workers;
    let platform = spec.platform.connect().await;
    // All at once: on Lambda each Invoke is a round trip, and a job's workers must all run
    // before any round can finish.
    let invoked_at = Instant::now();
    let invoked = futures_util::future::join_all((0..n).map(|w| {
        let event = Invocation::Train(Box::new(WorkerEvent {
            job: spec.clone(),
            worker: w,
            invocation: 0,
            resume: false,
            generation: 0,
            recover: false,
        }));
        let payload = serde_json::to_vec(&event).expect("events serialise");
        let platform = &platform;
        async move { platform.invoke(&format!("worker-{w}"), &payload).await }
    }))
    .await;
    if let Some(e) = invoked.into_iter().find_map(Result::err) {
        // Workers already started will notice the abort flag and stop.
        let _ = ch
            .put(&Keys::new(&spec.job_id).abort(), bytes::Bytes::new())
            .await;
        return Followed::Failed {
            error: e.into(),
            residual: Vec::new(),
        };
    }
    ui.training(n as u64 * spec.config.epochs as u64);
    let start = follow::Start {
        invoked: invoked_at,
        generations: vec![0; n],
        interrupted: Some(interrupt_flag()),
    };
    let followed = follow::follow(spec, ch.as_ref(), platform.as_ref(), ui, start).await;
    ui.finished();
    followed
}

/// A flag raised by the first Ctrl-C (SIGINT) while the job runs; a second one ends the
/// driver at once, leaving the workers to stop after the driver's lease.
fn interrupt_flag() -> Arc<std::sync::atomic::AtomicBool> {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let raised = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        raised.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("interrupted: stopping the job's workers (Ctrl-C again to leave them)");
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
    flag
}

/// Deletes every key the job created: the records and control keys (all known by name), the
/// keys the workers reported as residual, and, where the backend can list, anything else
/// under the job's prefix (a crashed worker cannot report its keys).
pub(super) async fn delete_job_keys(
    ch: &dyn Channel,
    spec: &JobSpec,
    outcome: &Followed,
) -> anyhow::Result<()> {
    let keys_of = Keys::new(&spec.job_id);
    let mut keys: Vec<String> = (0..spec.config.workers)
        .flat_map(|w| records::ALL.map(|what| records::key(&spec.job_id, what, w)))
        .chain([
            keys_of.abort(),
            format!("{}/control/probe", spec.job_id),
            records::job_key(&spec.job_id),
            super::liveness::driver_key(&spec.job_id),
        ])
        .collect();
    match outcome {
        Followed::Done {
            results,
            recoveries,
        } => {
            if !recoveries.is_empty() {
                // A worker found lost may have been slow, not dead, and two invocations of it
                // may be running: the job's record goes first, so that every invocation's
                // pulse sees the job over within a beat and no write passes its fence after
                // a lease; then the rest.
                ch.delete(&[records::job_key(&spec.job_id)])
                    .await
                    .with_context(|| format!("deleting the record of job {}", spec.job_id))?;
                tokio::time::sleep(spec.config.dead_time(&spec.channel)).await;
            }
            keys.extend(results.iter().flat_map(|r| r.residual_keys.iter().cloned()))
        }
        Followed::Failed { residual, .. } => keys.extend(residual.iter().cloned()),
    }
    if let Some(listed) = ch.list(&keys_of.prefix()).await? {
        keys.extend(listed);
    }
    keys.sort();
    keys.dedup();
    for chunk in keys.chunks(1000) {
        ch.delete(chunk)
            .await
            .with_context(|| format!("deleting the keys of job {}", spec.job_id))?;
    }
    Ok(())
}

/// How long the driver tries to reach the channel before any worker starts.
const FIRST_CONTACT: channel::RetryPolicy = channel::RetryPolicy {
    budget: Duration::from_secs(10),
    first_pause: Duration::from_millis(20),
    max_pause: Duration::from_secs(1),
    quiet: true,
};

/// How the driver and the workers open the job's channel: operations are retried for as
/// long as a worker would wait for a peer, and keys expire past the job's longest life.
pub fn channel_options(cfg: &JobConfig) -> channel::OpenOptions {
    channel::OpenOptions {
        retry: channel::RetryPolicy {
            budget: Duration::from_secs_f64(cfg.wait_timeout),
            ..Default::default()
        },
        expiry: Some(cfg.key_expiry()),
    }
}

/// A job id: readable (time, model, optimizer, sync mode) and unique in practice, since two
/// jobs may share a channel and start in the same second: with 64 random bits, even a
/// million jobs started in one second collide with a probability of about 3 in 100 million.
fn new_job_id(cfg: &JobConfig) -> String {
    let now = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let salt: u64 = rand::random();
    format!("{now}-{}-{}-{}-{salt:016x}", cfg.model, cfg.optim, cfg.sync)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_started_in_the_same_second_do_not_collide() {
        let cfg = JobConfig::default();
        let ids: std::collections::HashSet<String> =
            (0..20_000).map(|_| new_job_id(&cfg)).collect();
        assert_eq!(ids.len(), 20_000);
        let id = ids.iter().next().unwrap();
        assert!(channel::validate_key(&format!("{id}/worker/result/9999")).is_ok());
    }
}
