//! `lambdaml tune`: trains the trials of a search as `train` processes (each a job with its
//! own id on the shared channel, metered and cleaned up like any job), never more workers
//! alive than `--concurrency`, stops trials clearly worse than the best, and writes a table
//! of every trial and the best one's config as a TOML file ready for `train`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::runtime;
use crate::channel::{self, Channel, ChannelUrl};
use crate::job::records::{self, Progress};
use crate::job::summary::Summary;
use crate::job::tune::{self, Admission, Curve, Param, Trial};
use crate::job::{JobConfig, control, driver};

use super::base::BaseJobArgs;

/// `lambdaml tune`: a base job (a config file and the flags below) and the values to try.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The base job every trial varies.
    #[command(flatten)]
    pub base: BaseJobArgs,
    /// The channel every trial uses (default dir:RUNS_DIR/_channel).
    #[arg(long, env = "LAMBDAML_CHANNEL", hide_env_values = true)]
    pub channel: Option<ChannelUrl>,
    /// A searched field of the config: FIELD=V1,V2,... or FIELD=LO..HI (drawn; needs
    /// --trials). Repeat for several fields, e.g. --param lam=1e-4,1e-3 --param optim=grad_avg,admm.
    #[arg(long = "param", value_name = "FIELD=VALUES")]
    pub params: Vec<Param>,
    /// Learning rates to try: --param lr=...
    #[arg(long, value_name = "VALUES")]
    pub lr: Option<String>,
    /// Minibatch sizes to try: --param batch_size=...
    #[arg(long, value_name = "VALUES")]
    pub batch_size: Option<String>,
    /// Worker counts to try: --param workers=...
    #[arg(long, value_name = "VALUES")]
    pub workers: Option<String>,
    /// Trials to draw at random from the grid (default: the whole grid).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Seed of the random draw.
    #[arg(long, default_value_t = 0)]
    pub search_seed: u64,
    /// Most workers alive at once over all trials (AWS accounts start at 1000).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// A trial whose score at an epoch is worse than the best trial's at that epoch by more
    /// than this share of it is stopped.
    #[arg(long, default_value_t = 0.2)]
    pub stop_margin: f64,
    /// Epochs every trial runs before it may be stopped.
    #[arg(long, default_value_t = 1)]
    pub grace_epochs: u32,
    /// Run every trial to the end.
    #[arg(long)]
    pub no_early_stop: bool,
    /// The search's folder: tune.json, best.toml and one folder per trial (default:
    /// RUNS_DIR/tune-TIME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the trials as JSON.
    #[arg(long)]
    pub json: bool,
}

impl TuneArgs {
    fn base(&self) -> anyhow::Result<JobConfig> {
        let mut c = self.base.config()?;
        // Every trial runs in its own folder: a relative path would be read from there.
        if let Some(d) = c.data.take() {
            c.data = Some(d.absolute().context("resolving the data's location")?);
        }
        if let Some(ch) = &self.channel {
            c.channel = Some(ch.clone());
        }
        c.runs_dir = std::path::absolute(&c.runs_dir)?;
        // Every trial on the same channel: the default one lies under the runs folder, which
        // each trial has its own of.
        c.channel = Some(c.channel_url().absolute()?);
        Ok(c)
    }

    fn params(&self) -> anyhow::Result<Vec<Param>> {
        let mut params = self.params.clone();
        for (field, values) in [
            ("lr", &self.lr),
            ("batch_size", &self.batch_size),
            ("workers", &self.workers),
        ] {
            if let Some(v) = values {
                params.push(
                    format!("{field}={v}")
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!(e))?,
                );
            }
        }
        Ok(params)
    }
}

/// One trial as the search's table and `tune.json` show it.
#[derive(Debug, Clone, Serialize)]
pub struct TrialRow {
    /// Its number.
    pub index: usize,
    /// The searched fields' values.
    pub trial: String,
    /// Its workers.
    pub workers: usize,
    /// `done`, `stopped` (clearly worse than the best) or `failed`.
    pub status: &'static str,
    /// Why it stopped or failed.
    pub reason: Option<String>,
    /// Its final score (lower is better), for a trial done.
    pub score: Option<f64>,
    /// Its scores by epoch as seen while it ran.
    pub curve: Curve,
    /// The job's id.
    pub job_id: Option<String>,
    /// Its run folder.
    pub run_dir: Option<PathBuf>,
    /// Seconds from the search's start to the trial's start and end.
    pub started_s: f64,
    /// See `started_s`.
    pub ended_s: f64,
    /// What the job would cost on AWS.
    pub cost_usd: Option<f64>,
    /// Its workers' final parameter digests.
    pub param_digests: Vec<String>,
}

/// `tune.json`.
#[derive(Debug, Serialize)]
struct Search {
    trials: Vec<TrialRow>,
    best: Option<usize>,
    best_config: Option<PathBuf>,
    concurrency: usize,
    peak_workers: usize,
    seconds: f64,
}

struct Running {
    trial: Trial,
    dir: PathBuf,
    child: tokio::process::Child,
    started_s: f64,
    job: Option<String>,
    curve: Curve,
    stopping: Option<String>,
}

/// Runs `lambdaml tune`.
pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.stop_margin.is_finite() && args.stop_margin >= 0.0,
        "--stop-margin must be 0 or more, got {}",
        args.stop_margin
    );
    let base = args.base()?;
    let trials = tune::trials(&base, &args.params()?, args.trials, args.search_seed)?;
    if let Some(t) = trials.iter().find(|t| t.config.workers > args.concurrency) {
        anyhow::bail!(
            "trial {} ({}) needs {} workers, more than --concurrency {}",
            t.index,
            t.describe(),
            t.config.workers,
            args.concurrency
        );
    }
    let out = match &args.out {
        Some(o) => std::path::absolute(o)?,
        None => base.runs_dir.join(format!(
            "tune-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        )),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let say = |what: String| {
        if !args.json {
            eprintln!("{what}");
        }
    };
    say(format!(
        "{} trials, at most {} workers at once; folder {}",
        trials.len(),
        args.concurrency,
        out.display()
    ));
    let started = Instant::now();
    let (rows, peak) = runtime()?.block_on(run_trials(&args, &base, trials, &out, &say))?;
    let best = rows
        .iter()
        .filter(|r| r.status == "done" && r.score.is_some_and(f64::is_finite))
        .min_by(|a, b| a.score.unwrap().total_cmp(&b.score.unwrap()))
        .map(|r| r.index);
    let best_config = match best {
        Some(i) => Some(write_best(&out, &rows[i], &base)?),
        None => None,
    };
    let search = Search {
        trials: rows,
        best,
        best_config,
        concurrency: args.concurrency,
        peak_workers: peak,
        seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(
        out.join("tune.json"),
        serde_json::to_string_pretty(&search)? + "\n",
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&search)?);
    } else {
        print!("{}", render(&search));
    }
    anyhow::ensure!(
        search.best.is_some(),
        "no trial finished: see the reasons above and the trials' train.log"
    );
    Ok(())
}

/// Starts trials in order as the concurrency allows, follows their epochs, stops those
/// clearly worse than the best, and collects every trial's end.
async fn run_trials(
    args: &TuneArgs,
    base: &JobConfig,
    trials: Vec<Trial>,
    out: &Path,
    say: &dyn Fn(String),
) -> anyhow::Result<(Vec<TrialRow>, usize)> {
    let url = base.channel_url();
    let ch = channel::open_with(&url, driver::channel_options(base)).await?;
    let exe = std::env::current_exe().context("locating the lambdaml binary")?;
    let started = Instant::now();
    let mut queue: VecDeque<Trial> = trials.into();
    let mut running: Vec<Running> = Vec::new();
    let mut rows: Vec<TrialRow> = Vec::new();
    let mut admission = Admission::new(args.concurrency);
    loop {
        while let Some(next) = queue.front() {
            if !admission.admit(next.config.workers) {
                break;
            }
            let trial = queue.pop_front().expect("a front");
            let r = start(&exe, trial, out, base, started)?;
            say(format!(
                "trial {} ({}) started on {} workers",
                r.trial.index,
                r.trial.describe(),
                r.trial.config.workers
            ));
            running.push(r);
        }
        for r in running.iter_mut() {
            follow(ch.as_ref(), r).await;
        }
        if !args.no_early_stop {
            for i in 0..running.len() {
                if running[i].stopping.is_some() {
                    continue;
                }
                let others: Vec<&Curve> = running
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| &r.curve)
                    .chain(rows.iter().map(|r| &r.curve))
                    .collect();
                let Some((epoch, score, best)) = tune::clearly_worse(
                    &running[i].curve,
                    &others,
                    args.stop_margin,
                    args.grace_epochs,
                ) else {
                    continue;
                };
                let r = &mut running[i];
                let Some(job) = r.job.clone() else { continue };
                let why = format!(
                    "epoch {epoch} scored {score:.4}, the best trial {best:.4} (worse by more than {:.0}%)",
                    100.0 * args.stop_margin
                );
                say(format!("trial {} stopped: {why}", r.trial.index));
                r.stopping = Some(why);
                let url = url.clone();
                tokio::spawn(async move {
                    if let Err(e) = control::cancel(&url, &job, Duration::from_secs(300)).await {
                        tracing::debug!("cancelling {job}: {e:#}");
                    }
                });
            }
        }
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].child.try_wait()? else {
                i += 1;
                continue;
            };
            let r = running.remove(i);
            admission.release(r.trial.config.workers);
            let row = ended(r, status.success(), started.elapsed().as_secs_f64());
            say(match row.status {
                "done" => format!(
                    "trial {} done: score {:.4}",
                    row.index,
                    row.score.unwrap_or(f64::NAN)
                ),
                s => format!(
                    "trial {} {s}: {}",
                    row.index,
                    row.reason.as_deref().unwrap_or("")
                ),
            });
            rows.push(row);
        }
        if queue.is_empty() && running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    rows.sort_by_key(|r| r.index);
    Ok((rows, admission.peak()))
}

/// Writes the trial's config and starts `lambdaml train` on it. The channel's secrets and
/// the parameter server's token go through the environment, never into the file.
fn start(
    exe: &Path,
    trial: Trial,
    out: &Path,
    base: &JobConfig,
    started: Instant,
) -> anyhow::Result<Running> {
    let dir = out.join(format!("trial-{:03}", trial.index));
    std::fs::create_dir_all(&dir)?;
    let cfg = JobConfig {
        runs_dir: dir.join("runs"),
        channel: base.channel.as_ref().map(ChannelUrl::without_secrets),
        ..trial.config.clone()
    };
    let config = dir.join("trial.toml");
    std::fs::write(&config, toml::to_string(&cfg)?)?;
    let log = std::fs::File::create(dir.join("train.log"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("train")
        .arg("--config")
        .arg(&config)
        .arg("--json")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("summary.out"))?)
        .stderr(log)
        .kill_on_drop(false);
    if let Some(url) = &base.channel {
        cmd.env("LAMBDAML_CHANNEL", url.text_with_secrets());
    }
    if let Some(token) = &base.ps_token {
        cmd.env("LAMBDAML_PS_TOKEN", token);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting trial {}", trial.index))?;
    Ok(Running {
        trial,
        dir,
        child,
        started_s: started.elapsed().as_secs_f64(),
        job: None,
        curve: Curve::default(),
        stopping: None,
    })
}

/// The run folder of a trial, once its driver made it: the one folder of its runs folder
/// with a `config.toml` (synthesised data lies beside it).
fn run_dir(trial_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(trial_dir.join("runs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("config.toml").is_file())
}

/// Reads the trial's workers' latest epochs into its curve.
async fn follow(ch: &dyn Channel, r: &mut Running) {
    if r.job.is_none() {
        r.job = run_dir(&r.dir).and_then(|d| Some(d.file_name()?.to_str()?.to_string()));
    }
    let Some(job) = &r.job else { return };
    let n = r.trial.config.workers;
    // One request for every worker's record where the backend batches reads.
    let keys: Vec<String> = (0..n)
        .map(|w| records::key(job, records::PROGRESS, w))
        .collect();
    let Ok(values) = ch.get_many(&keys).await else {
        return;
    };
    for (w, (key, value)) in keys.iter().zip(values).enumerate() {
        if let Some(bytes) = value
            && let Ok(p) = records::decode::<Progress>(key, &bytes)
            && let Some(last) = &p.last
        {
            r.curve.add(w, n, last);
        }
    }
}

/// The row of a trial whose process ended.
fn ended(r: Running, success: bool, now_s: f64) -> TrialRow {
    let run = run_dir(&r.dir);
    let summary: Option<Summary> = run
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("summary.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    let (status, reason) = match (&summary, success, r.stopping) {
        (Some(_), true, _) => ("done", None),
        (_, _, Some(why)) => ("stopped", Some(why)),
        _ => ("failed", Some(last_error(&r.dir.join("train.log")))),
    };
    TrialRow {
        index: r.trial.index,
        trial: r.trial.describe(),
        workers: r.trial.config.workers,
        status,
        reason,
        score: summary
            .as_ref()
            .filter(|_| status == "done")
            .map(tune::final_score),
        curve: r.curve,
        job_id: summary.as_ref().map(|s| s.job_id.clone()).or(r.job),
        run_dir: run,
        started_s: r.started_s,
        ended_s: now_s,
        cost_usd: summary.as_ref().map(|s| s.estimated_cost_usd),
        param_digests: summary.map(|s| s.param_digests).unwrap_or_default(),
    }
}

/// The last `error:` line of a trial's log, else its last line.
fn last_error(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:"))
        .or(lines.last())
        .map_or_else(
            || "it ended without a word".to_string(),
            |l| l.trim().to_string(),
        )
}

/// Writes the best trial's config, ready for `train --config`: its runs go to the base
/// job's runs folder, its channel is written without secrets.
fn write_best(out: &Path, row: &TrialRow, base: &JobConfig) -> anyhow::Result<PathBuf> {
    let trial_toml = out
        .join(format!("trial-{:03}", row.index))
        .join("trial.toml");
    let mut cfg = JobConfig::from_file(&trial_toml)?;
    cfg.runs_dir = base.runs_dir.clone();
    let path = out.join("best.toml");
    let text = format!(
        "# The best trial of {} ({}), score {:.6}: lambdaml train --config {}\n{}",
        out.display(),
        row.trial,
        row.score.unwrap_or(f64::NAN),
        path.display(),
        toml::to_string(&cfg)?
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The trials, best marked.
fn render(s: &Search) -> String {
    let mut out = format!(
        "{:<3}{:>4}  {:<34} {:>7} {:>8} {:>10} {:>8} {:>11}\n",
        "", "#", "trial", "workers", "status", "score", "wall s", "cost USD"
    );
    for r in &s.trials {
        let mark = if s.best == Some(r.index) { "=>" } else { "  " };
        out += &format!(
            "{mark:<3}{:>4}  {:<34} {:>7} {:>8} {:>10} {:>8.1} {:>11}\n",
            r.index,
            r.trial,
            r.workers,
            r.status,
            r.score.map_or("-".into(), |v| format!("{v:.4}")),
            r.ended_s - r.started_s,
            r.cost_usd.map_or("-".into(), |v| format!("{v:.6}")),
        );
    }
    for r in s.trials.iter().filter(|r| r.reason.is_some()) {
        out += &format!(
            "trial {} {}: {}\n",
            r.index,
            r.status,
            r.reason.as_deref().unwrap_or("")
        );
    }
    out += &format!(
        "{} trials in {:.1} s, at most {} workers at once (limit {})\n",
        s.trials.len(),
        s.seconds,
        s.peak_workers,
        s.concurrency
    );
    if let Some(path) = &s.best_config {
        out += &format!("best config: {}\n", path.display());
    }
    out
}
