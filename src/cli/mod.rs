//! Command-line interface: `train`, `worker`, `data synth`, `data split`.

mod base;
mod job;
pub mod lambda;
mod plan;
mod progress;
mod tune;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::algo::{ModelKind, OptimKind, StepRule};
use crate::channel::ChannelUrl;
use crate::comm::SyncMode;
use crate::data::synth::{self, SynthKind};
use crate::data::{DataLocation, partition};
use crate::job::event::Invocation;
use crate::job::{JobConfig, bench, driver, summary, worker};
use crate::platform;
use crate::platform::PlatformChoice;
use progress::BarUi;

/// Train ML models on serverless workers that synchronise through external storage.
#[derive(Debug, Parser)]
#[command(name = "lambdaml", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug). LAMBDAML_LOG=FILTER overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model (with no options: LR on 200,000 synthetic HIGGS-like rows, 4 workers).
    Train(Box<TrainArgs>),
    /// Run one worker invocation; the event (JSON) is read from stdin. Started by platforms.
    Worker(WorkerArgs),
    /// Run one invocation of the local platform: `--exe worker` under watch (memory,
    /// deadline, how it ended). Started by the local platform.
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    /// Make and partition datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Measure a channel: put/get latency and all-reduce rounds with N worker processes.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A running job: status, attach (take over from a driver that is gone), cancel.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Remove what jobs that can no longer run left on a channel (channels that can list).
    Gc(GcArgs),
    /// Look into a channel: list, read, write and delete keys.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// The parameter server of hybrid mode (`--sync ps`): serve, or show what one holds.
    #[command(subcommand)]
    Ps(PsCommand),
    /// AWS Lambda: a local Lambda for tests and trials (`emulate`).
    #[command(subcommand)]
    Lambda(lambda::LambdaCommand),
    /// Measure what `plan` needs of this machine and its channels (rounds, requests,
    /// start-up) into a profile.
    Profile(plan::ProfileArgs),
    /// Predict the time and cost of configurations (workers, channels, sync modes,
    /// optimizers, memory), rank them and recommend one under a deadline or a budget.
    Plan(Box<plan::PlanArgs>),
    /// Search hyper-parameters: trials of a grid or random draws, as jobs on one channel
    /// under a concurrency limit, the clearly worse stopped early, the best written as TOML.
    Tune(Box<tune::TuneArgs>),
    /// Compare finished runs: PNG charts (loss vs time, loss vs cost, time per worker) and a
    /// markdown table.
    Report(ReportArgs),
}

/// `lambdaml report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run folders (runs/JOB_ID/), one or more.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where the charts and report.md go.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

/// `lambdaml ps ...`.
#[derive(Debug, Subcommand)]
pub enum PsCommand {
    /// Run a parameter server (on a VM the workers can reach) until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, default_value = "0.0.0.0:50051")]
        addr: String,
        /// Seconds between expiry checks and snapshots to --dir.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// Seconds a model may stay unused before it is dropped.
        #[arg(long, default_value_t = 3600.0)]
        expired: f64,
        /// Directory for snapshots: a restarted server resumes the models found there.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Token every call must carry (workers: --ps-token).
        #[arg(long, env = "LAMBDAML_PS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Read the token from this file (kept out of `ps` listings and shell history).
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// Largest model the server accepts, in MiB of f32 values.
        #[arg(long, default_value_t = 1024)]
        max_model_mb: u64,
        /// Most memory all models together may hold, in MiB of f32 values.
        #[arg(long, default_value_t = 8192)]
        max_memory_mb: u64,
    },
    /// Print the models a parameter server holds: sizes, rounds, idle times.
    Status {
        /// The server's HOST:PORT.
        #[arg(long)]
        addr: String,
        /// The server's token.
        #[arg(long, env = "LAMBDAML_PS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Read the token from this file.
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lambdaml bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Put/get latency and one all-reduce round (reduce, reduce_scatter), median and p95.
    Channel {
        /// Channel URL.
        #[arg(long)]
        channel: ChannelUrl,
        /// Worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Bytes per vector.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Measured rounds per sync mode.
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Also measure push+pull rounds on this parameter server (HOST:PORT).
        #[arg(long)]
        ps_addr: Option<String>,
        /// The parameter server's token.
        #[arg(long, env = "LAMBDAML_PS_TOKEN", hide_env_values = true)]
        ps_token: Option<String>,
        /// Read the parameter server's token from this file.
        #[arg(long, conflicts_with = "ps_token")]
        ps_token_file: Option<PathBuf>,
        /// Where the bench workers run.
        #[arg(long, default_value = "local")]
        platform: PlatformChoice,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What heartbeats cost on a channel: one invocation's pulse for a while, its requests
    /// counted and priced per worker-hour.
    Liveness {
        /// Channel URL.
        #[arg(long)]
        channel: ChannelUrl,
        /// Seconds to measure.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Seconds between beats (default: the channel's).
        #[arg(long)]
        heartbeat_s: Option<f64>,
        /// TOML file overriding prices of the cost model.
        #[arg(long)]
        prices: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time one CNN training step (forward, backward, momentum update) on this machine.
    Cnn {
        /// The network.
        #[arg(long, value_enum, default_value = "resnet20")]
        model: ModelKind,
        /// Width multiplier of its channels.
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        /// Images per step.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Compute threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Measured steps (after one warm-up step).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `lambdaml channel ...`.
#[derive(Debug, Subcommand)]
pub enum ChannelCommand {
    /// List the keys under a prefix (backends that can list).
    Ls {
        /// Channel URL.
        url: ChannelUrl,
        /// Key prefix, e.g. a job id followed by '/'.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Write the raw bytes of a key to stdout.
    Get {
        /// Channel URL.
        url: ChannelUrl,
        /// The key.
        key: String,
    },
    /// Store a file's bytes (or stdin's, with '-') under a key.
    Put {
        /// Channel URL.
        url: ChannelUrl,
        /// The key.
        key: String,
        /// File to store, '-' for stdin.
        file: PathBuf,
    },
    /// Delete keys, or every key under --prefix (backends that can list).
    Rm {
        /// Channel URL.
        url: ChannelUrl,
        /// Keys to delete.
        keys: Vec<String>,
        /// Delete every key starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
    },
}

/// `lambdaml train`: a TOML config plus flags that override any of its fields.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML file with job settings (see examples/); flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print the summary as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no table.
    #[arg(long, short)]
    pub quiet: bool,
    /// LibSVM file or partition location (a directory or s3://bucket/prefix); none:
    /// synthesise data.
    #[arg(long)]
    pub data: Option<DataLocation>,
    /// Test set measured after every epoch: a file like --data's (LibSVM, CIFAR-10 .bin,
    /// IDX) or a partition location with one partition per worker.
    #[arg(long)]
    pub test_data: Option<DataLocation>,
    /// Number of features (inferred when absent).
    #[arg(long)]
    pub features: Option<usize>,
    /// Synthetic dataset when --data is absent.
    #[arg(long, value_enum)]
    pub synth: Option<SynthKind>,
    /// Rows to synthesise when --data is absent.
    #[arg(long)]
    pub synth_rows: Option<usize>,
    /// Number of workers.
    #[arg(long, short)]
    pub workers: Option<usize>,
    /// Model.
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Optimizer.
    #[arg(long, value_enum)]
    pub optim: Option<OptimKind>,
    /// Synchronisation pattern.
    #[arg(long, value_enum)]
    pub sync: Option<SyncMode>,
    /// Channel URL, e.g. dir:/tmp/chan (default dir:RUNS_DIR/_channel). From the
    /// environment, a URL with a password stays off the command line.
    #[arg(long, env = "LAMBDAML_CHANNEL", hide_env_values = true)]
    pub channel: Option<ChannelUrl>,
    /// Where workers run: `local` (processes on this machine).
    #[arg(long)]
    pub platform: Option<PlatformChoice>,
    /// Epochs.
    #[arg(long, short)]
    pub epochs: Option<u32>,
    /// Rows per minibatch per worker.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (default: 0.1 with the sgd step rule, 0.5 with adagrad).
    #[arg(long)]
    pub lr: Option<f32>,
    /// How a gradient becomes a step (default: adagrad for sparse models, sgd for dense).
    #[arg(long, value_enum)]
    pub step: Option<StepRule>,
    /// Regularisation strength (default: 1e-4 for dense models, 1 / training rows for
    /// sparse ones).
    #[arg(long)]
    pub lam: Option<f32>,
    /// Regulariser (l1 with --optim admm only).
    #[arg(long, value_enum)]
    pub reg: Option<crate::algo::admm::Reg>,
    /// ADMM penalty parameter.
    #[arg(long)]
    pub rho: Option<f32>,
    /// ADMM: local epochs per round.
    #[arg(long)]
    pub local_epochs: Option<u32>,
    /// model_avg: minibatches between two model averages (default: one per epoch).
    #[arg(long)]
    pub sync_every: Option<usize>,
    /// CNNs: momentum of the SGD step (default 0.9).
    #[arg(long)]
    pub momentum: Option<f32>,
    /// CNNs: width multiplier of every layer's channels (default 1; 0.125 for tiny runs).
    #[arg(long)]
    pub width: Option<f32>,
    /// Early-stop tolerance (KMeans: relative objective change; ADMM: both residuals).
    #[arg(long)]
    pub tol: Option<f64>,
    /// KMeans: number of clusters.
    #[arg(long)]
    pub k: Option<usize>,
    /// KMeans: LibSVM file whose rows are the initial centroids.
    #[arg(long)]
    pub init_centroids: Option<String>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction of each partition held out for validation.
    #[arg(long)]
    pub val_ratio: Option<f64>,
    /// Seconds an invocation may run before it checkpoints and re-invokes itself.
    #[arg(long)]
    pub invocation_timeout: Option<f64>,
    /// Seconds before the deadline at which a worker checkpoints.
    #[arg(long)]
    pub reinvoke_margin: Option<f64>,
    /// Seconds a worker waits for a peer before failing (across re-invocations).
    #[arg(long)]
    pub wait_timeout: Option<f64>,
    /// Most invocations of one worker (a hard bound on billing).
    #[arg(long)]
    pub max_invocations: Option<u32>,
    /// Seconds after which the job stops, whatever happens to its driver.
    #[arg(long)]
    pub max_job_seconds: Option<f64>,
    /// Times a dead worker is re-invoked from its checkpoint before the job fails.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// Seconds between heartbeats (default by channel: 1 s caches, 2 s DynamoDB, 5 s S3).
    #[arg(long)]
    pub heartbeat_s: Option<f64>,
    /// Missed heartbeats after which an invocation is declared dead (default 5).
    #[arg(long)]
    pub dead_after: Option<u32>,
    /// Seconds without the driver's heartbeat after which workers stop and clean up.
    #[arg(long)]
    pub driver_lease: Option<f64>,
    /// Rounds between checkpoints (default from the model's size, at most 50).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Where run folders go.
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Memory of a worker function in MB (the cost model bills GB-seconds at this size).
    #[arg(long)]
    pub memory_mb: Option<u32>,
    /// TOML file overriding prices of the cost model.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// `--sync ps`: the parameter server's HOST:PORT.
    #[arg(long)]
    pub ps_addr: Option<String>,
    /// `--sync ps`: the parameter server's token.
    #[arg(long, env = "LAMBDAML_PS_TOKEN", hide_env_values = true)]
    pub ps_token: Option<String>,
    /// `--sync ps`: read the parameter server's token from this file.
    #[arg(long, conflicts_with = "ps_token")]
    pub ps_token_file: Option<PathBuf>,
}

impl TrainArgs {
    /// The config file (or defaults) with every given flag applied.
    pub fn to_config(&self) -> anyhow::Result<JobConfig> {
        let mut c = match &self.config {
            Some(path) => JobConfig::from_file(path)?,
            None => JobConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = &self.$f { c.$f = v.clone(); })* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $(if let Some(v) = &self.$f { c.$f = Some(v.clone()); })* };
        }
        set!(
            synth, synth_rows, workers, model, optim, sync, epochs, batch_size, seed
        );
        set!(
            val_ratio,
            invocation_timeout,
            wait_timeout,
            runs_dir,
            reg,
            local_epochs,
            momentum,
            width,
            tol,
            k,
            memory_mb,
            platform,
            max_invocations,
            max_job_seconds,
            max_retries,
            dead_after,
            driver_lease
        );
        set_opt!(
            rho,
            lr,
            lam,
            step,
            data,
            test_data,
            sync_every,
            features,
            channel,
            reinvoke_margin,
            init_centroids,
            ps_addr,
            ps_token,
            prices,
            heartbeat_s,
            checkpoint_every
        );
        if let Some(path) = &self.ps_token_file {
            c.ps_token = Some(read_token_file(path)?);
        }
        Ok(c)
    }
}

/// `lambdaml worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Read the event from this file instead of stdin.
    #[arg(long)]
    pub event: Option<PathBuf>,
}

/// `lambdaml gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Channel URL.
    #[arg(long, env = "LAMBDAML_CHANNEL", hide_env_values = true)]
    pub channel: ChannelUrl,
    /// Only jobs that started more than this many seconds ago (default: any job past its
    /// life; two days for jobs without a record).
    #[arg(long, value_parser = parse_seconds)]
    pub older_than: Option<std::time::Duration>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(v.is_finite() && (0.0..=3.2e9).contains(&v)) {
        return Err(format!("seconds must be between 0 and 3.2e9, got {s}"));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

/// `lambdaml supervise`.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The binary that runs the invocation (`EXE worker`).
    #[arg(long)]
    pub exe: PathBuf,
    /// The invocation's log (its last lines go into a failure report).
    #[arg(long)]
    pub log: PathBuf,
    /// The invocation's memory, in MB.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub memory_mb: u32,
}

/// `lambdaml data ...`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write a synthetic dataset: LibSVM text, or for `cifar` CIFAR-10 binary records.
    Synth {
        /// Which dataset.
        #[arg(value_enum)]
        kind: SynthKind,
        /// Rows to write.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Feature count (rcv1 and blobs).
        #[arg(long)]
        features: Option<usize>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Split a LibSVM file (round-robin by line), a CIFAR-10 binary file (`*.bin`) or an IDX
    /// image file (`*-images-idx3-ubyte[.gz]`, labels beside it) into N partitions with a
    /// manifest. Several CIFAR-10 files (data_batch_1.bin ... data_batch_5.bin) are split as one.
    Split {
        /// The data file(s).
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Number of partitions (= workers).
        #[arg(long)]
        parts: usize,
        /// Output location: a directory, or s3://bucket/prefix.
        #[arg(long)]
        out: DataLocation,
        /// Number of features (inferred when absent).
        #[arg(long)]
        features: Option<usize>,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train(*args),
        Command::Profile(args) => plan::profile(args),
        Command::Plan(args) => plan::plan(*args),
        Command::Tune(args) => tune::tune(*args),
        Command::Worker(args) => run_worker(args),
        Command::Supervise(args) => supervise(args),
        Command::Data(cmd) => data(cmd),
        Command::Channel(cmd) => runtime()?.block_on(channel_command(cmd)),
        Command::Gc(args) => runtime()?.block_on(async {
            let ch = crate::channel::open(&args.channel).await?;
            let report = crate::job::gc::run(ch.as_ref(), args.older_than, args.dry_run).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::job::gc::render(&report));
            }
            Ok(())
        }),
        Command::Ps(cmd) => ps_command(cmd),
        Command::Job(cmd) => job::command(cmd),
        Command::Lambda(cmd) => lambda::command(cmd),
        Command::Report(args) => {
            use crate::job::plan::DataProgress;
            let ui = BarUi::new(true);
            let n = std::cell::Cell::new(0);
            ui.phase("report", 4, false);
            let written = crate::report::write(&args.runs, &args.out, &|_| {
                n.set(n.get() + 1);
                ui.advance(n.get())
            });
            ui.done();
            let written = written?;
            eprintln!(
                "wrote {} and {} charts to {}",
                written.markdown.display(),
                written.charts.len(),
                args.out.display()
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Cnn {
            model,
            width,
            batch,
            threads,
            steps,
            json,
        }) => {
            let t = crate::job::cnn_bench::measure(model, width, batch, threads, steps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                println!(
                    "{} (width {}, {} values), batch {}, {} thread(s): {:.1} ms per step (median of {}, fastest {:.1} ms)",
                    t.model,
                    t.width,
                    t.params,
                    t.batch,
                    t.threads,
                    t.step_s_median * 1e3,
                    t.steps,
                    t.step_s_min * 1e3
                );
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Liveness {
            channel,
            seconds,
            heartbeat_s,
            prices,
            json,
        }) => {
            anyhow::ensure!(
                seconds.is_finite() && (1.0..=3600.0).contains(&seconds),
                "--seconds must be between 1 and 3600"
            );
            let prices = crate::cost::Prices::load(prices.as_deref())?;
            let measured = runtime()?.block_on(crate::job::liveness_cost::measure(
                &channel,
                seconds,
                heartbeat_s,
                &prices,
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&measured)?);
            } else {
                print!("{}", crate::job::liveness_cost::render(&measured));
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Channel {
            channel,
            workers,
            size,
            rounds,
            ps_addr,
            ps_token,
            ps_token_file,
            platform,
            json,
        }) => {
            let exe = driver::worker_exe()?;
            let ps_token = token_from(ps_token, ps_token_file.as_deref())?;
            let ps = ps_addr.map(|a| (a, ps_token));
            let plan = bench::BenchPlan {
                channel,
                workers,
                size,
                rounds,
                ps,
                timing: bench::RoundTiming::Each,
            };
            let report = runtime()?.block_on(bench::run(plan, platform, exe))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", bench::render(&report));
            }
            Ok(())
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn ps_command(cmd: PsCommand) -> anyhow::Result<()> {
    use crate::ps::{client, server};
    match cmd {
        PsCommand::Serve {
            addr,
            interval,
            expired,
            dir,
            token,
            token_file,
            max_model_mb,
            max_memory_mb,
        } => {
            let token = token_from(token, token_file.as_deref())?;
            // Checked before they become Durations (which panic on absurd values).
            anyhow::ensure!(
                interval > 0.0 && interval <= 86_400.0,
                "--interval must be between 0 and 86400 seconds, got {interval}"
            );
            anyhow::ensure!(
                expired > 0.0 && expired <= 31_536_000.0,
                "--expired must be between 0 and 31536000 seconds (a year), got {expired}"
            );
            let opts = server::ServeOptions {
                addr,
                interval: std::time::Duration::from_secs_f64(interval),
                expired: std::time::Duration::from_secs_f64(expired),
                dir,
                token,
                limits: server::Limits::from_mb(max_model_mb, max_memory_mb),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(server::serve(opts, |a| {
                    use std::io::Write as _;
                    println!("listening on {a}");
                    let _ = std::io::stdout().flush();
                }))
        }
        PsCommand::Status {
            addr,
            token,
            token_file,
            json,
        } => runtime()?.block_on(async {
            let token = token_from(token, token_file.as_deref())?;
            let mut c = client::PsClient::connect(&addr, token.as_deref()).await?;
            let s = c.status().await?;
            if json {
                let models: Vec<serde_json::Value> = s
                    .models
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "job": m.job, "name": m.name, "len": m.len, "workers": m.workers,
                            "completed_round": m.completed_round, "open_round": m.open_round,
                            "pushed": m.pushed, "idle_s": m.idle_s, "pushes": m.pushes,
                            "pulls": m.pulls,
                        })
                    })
                    .collect();
                let out = serde_json::json!({
                    "version": s.version, "uptime_s": s.uptime_s, "models": models,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print!("{}", client::render_status(&s));
            }
            Ok(())
        }),
    }
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = args.to_config()?;
    let ui = BarUi::new(!args.quiet && !args.json);
    let outcome = runtime()?.block_on(driver::run(cfg, &ui))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.summary)?);
    } else if !args.quiet {
        print!(
            "{}",
            summary::render_table(&outcome.summary, &outcome.results)
        );
        println!("run folder: {}", outcome.run_dir.display());
    }
    Ok(())
}

fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    match &args.event {
        Some(p) => {
            text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the event from stdin")?;
        }
    }
    let event: Invocation = serde_json::from_str(&text).context("parsing the worker event")?;
    let event = match event {
        Invocation::Train(e) => *e,
        Invocation::BenchChannel(e) => return runtime()?.block_on(bench::worker(e)),
        Invocation::Ping(p) => {
            let pong = runtime()?.block_on(p.answer(1))?;
            println!("{}", serde_json::to_string(&pong)?);
            return Ok(());
        }
    };
    let deadline = platform::local::enter_invocation();
    let outcome = runtime()?.block_on(worker::run(event, deadline))?;
    tracing::info!(?outcome, "invocation ends");
    Ok(())
}

/// The token given on the command line or in the environment, else the one in `file`.
fn token_from(token: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match (token, file) {
        (Some(t), _) => Ok(Some(t)),
        (None, Some(path)) => read_token_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// A token from a file: its one line, without the line break; at most 4 KiB, checked
/// before it is read.
fn read_token_file(path: &Path) -> anyhow::Result<String> {
    const MAX: u64 = 4096;
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading the token file {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX,
        "the token file {} holds {len} bytes; a token is at most {MAX}",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(
        !token.is_empty() && !token.contains(['\n', '\r']),
        "the token file {} must hold one non-empty line",
        path.display()
    );
    Ok(token.to_string())
}

fn supervise(args: SuperviseArgs) -> anyhow::Result<()> {
    let mut payload = Vec::new();
    std::io::stdin()
        .read_to_end(&mut payload)
        .context("reading the event from stdin")?;
    let ended = platform::local::supervise(&args.exe, &payload, args.memory_mb)
        .with_context(|| format!("running {} worker", args.exe.display()))?;
    let Some(why) = ended.failure() else {
        return Ok(());
    };
    let tail = platform::local::log_tail(&args.log, 5);
    tracing::error!("the invocation {why}");
    if let Ok(Invocation::Train(event)) = serde_json::from_slice::<Invocation>(&payload) {
        runtime()?
            .block_on(worker::report_lost(&event, &why, &tail))
            .context("reporting the invocation's end to the channel")?;
    }
    Ok(())
}

async fn channel_command(cmd: ChannelCommand) -> anyhow::Result<()> {
    use std::io::Write as _;
    let listed = |url: &ChannelUrl, keys: Option<Vec<String>>| {
        keys.with_context(|| format!("{url} cannot list keys (memcached cannot)"))
    };
    match cmd {
        ChannelCommand::Ls { url, prefix } => {
            let ch = crate::channel::open(&url).await?;
            for key in listed(&url, ch.list(&prefix).await?)? {
                println!("{key}");
            }
        }
        ChannelCommand::Get { url, key } => {
            let ch = crate::channel::open(&url).await?;
            let value = ch
                .get(&key)
                .await?
                .with_context(|| format!("no key '{key}' on {url}"))?;
            std::io::stdout().write_all(&value)?;
        }
        ChannelCommand::Put { url, key, file } => {
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            crate::channel::open(&url)
                .await?
                .put(&key, bytes.into())
                .await?;
        }
        ChannelCommand::Rm {
            url,
            mut keys,
            prefix,
        } => {
            let ch = crate::channel::open(&url).await?;
            if let Some(p) = prefix {
                keys.extend(listed(&url, ch.list(&p).await?)?);
            }
            ch.delete(&keys).await?;
            eprintln!("deleted {} keys", keys.len());
        }
    }
    Ok(())
}

/// The images of `files` when they are image files (every one CIFAR-10 binary, or one IDX
/// file); `None` for a LibSVM file.
fn split_image_source(files: &[PathBuf]) -> anyhow::Result<Option<crate::data::images::ImageSet>> {
    if files.len() > 1 {
        if files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "bin"))
        {
            return Ok(Some(crate::data::images::read_cifar(files)?));
        }
        return Ok(None);
    }
    crate::job::plan::read_image_file(&files[0])
}

fn data(cmd: DataCommand) -> anyhow::Result<()> {
    let ui = BarUi::new(true);
    use crate::job::plan::DataProgress;
    match cmd {
        DataCommand::Synth {
            kind,
            rows,
            seed,
            features,
            out,
        } => {
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = std::fs::File::create(&out)
                .with_context(|| format!("creating {}", out.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            ui.phase("synthesise", rows as u64, false);
            synth::generate(kind, rows, seed, features, &mut w, |r| ui.advance(r as u64))
                .and_then(|_| std::io::Write::flush(&mut w))
                .with_context(|| format!("writing {}", out.display()))?;
            ui.done();
            eprintln!("wrote {rows} rows to {}", out.display());
        }
        DataCommand::Split {
            files,
            parts,
            out,
            features,
        } => {
            let len: u64 = files
                .iter()
                .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
                .sum();
            let local = match &out {
                DataLocation::Local(dir) => dir.clone(),
                DataLocation::S3 { .. } => {
                    std::env::temp_dir().join(format!("lambdaml-split-{}", std::process::id()))
                }
            };
            let m = match split_image_source(&files)? {
                Some(set) => {
                    let names: Vec<String> =
                        files.iter().map(|f| f.display().to_string()).collect();
                    partition::split_images(&set, parts, &local, &names.join(", "))?
                }
                None => {
                    let [file] = files.as_slice() else {
                        bail!(
                            "several files are split together only when they are CIFAR-10 \
                             binary files (*.bin)"
                        );
                    };
                    ui.phase("split", len, true);
                    let m =
                        partition::split_file(file, parts, &local, features, |b| ui.advance(b))?;
                    ui.done();
                    m
                }
            };
            if let DataLocation::S3 { bucket, prefix } = &out {
                ui.phase("upload", len, true);
                let uploaded = runtime()?.block_on(crate::job::data_source::upload(
                    &local,
                    bucket,
                    prefix,
                    &m,
                    |b| ui.advance(b),
                ));
                ui.done();
                let _ = std::fs::remove_dir_all(&local);
                uploaded?;
            }
            eprintln!(
                "wrote {} partitions of {:?} rows ({} features) to {out}",
                m.parts, m.rows, m.n_features
            );
        }
    }
    Ok(())
}
