//! `lambdaml report RUN_DIR...`: compares finished runs side by side: a markdown table and
//! PNG charts (loss against wall time, loss against estimated cost, and where each worker's
//! time went).

#[cfg(feature = "charts")]
mod charts;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cost::{self, Consumption};
use crate::job::forecast::Forecast;
use crate::job::planner::FORECAST_FILE;
use crate::job::records::EpochRecord;
use crate::job::summary::{Summary, TimeSplit};

/// One finished run, as read from its folder.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run folder.
    pub dir: PathBuf,
    /// `summary.json`.
    pub summary: Summary,
    /// `metrics.jsonl`: every worker's epoch records.
    pub records: Vec<EpochRecord>,
    /// `forecast.json`: what `lambdaml plan` predicted for it, when it was planned.
    pub forecast: Option<Forecast>,
}

/// A point of a run's curve: after `epoch`, the pooled training loss, the wall time and the
/// estimated cost so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Epoch, from 1.
    pub epoch: u32,
    /// Training loss pooled over workers (KMeans: objective per row).
    pub loss: f64,
    /// Seconds since the job started (the slowest worker's epochs, loading included).
    pub seconds: f64,
    /// Estimated USD so far.
    pub cost: f64,
}

impl Run {
    /// Reads `dir/summary.json` and `dir/metrics.jsonl`.
    pub fn load(dir: &Path) -> anyhow::Result<Run> {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is not a run folder (no summary.json)", dir.display()))?;
        let summary: Summary = serde_json::from_str(&text).with_context(|| {
            format!(
                "reading {} (written by another lambdaml version?)",
                path.display()
            )
        })?;
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let records = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not an epoch record", path.display(), i + 1))
            })
            .collect::<anyhow::Result<_>>()?;
        let path = dir.join(FORECAST_FILE);
        let forecast = match std::fs::read_to_string(&path) {
            Ok(text) => Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Run {
            dir: dir.to_path_buf(),
            summary,
            records,
            forecast,
        })
    }

    /// A short label: sync mode, optimizer, channel scheme, workers.
    pub fn label(&self) -> String {
        let s = &self.summary;
        format!(
            "{} {} {} x{}",
            s.sync,
            s.optim,
            s.channel.scheme(),
            s.workers
        )
    }

    /// The run's curve, one point per epoch. Cost is estimated per epoch from the epoch's
    /// worker seconds and requests, then scaled so the last point is the run's total
    /// (which also holds what no epoch does: the driver's requests, invocations, data reads).
    pub fn curve(&self) -> Vec<Point> {
        let s = &self.summary;
        let epochs = self.records.iter().map(|r| r.epoch).max().unwrap_or(0);
        let mut points = Vec::new();
        let (mut seconds, mut raw_cost) = (0.0, 0.0);
        for e in 1..=epochs {
            let of_epoch: Vec<&EpochRecord> =
                self.records.iter().filter(|r| r.epoch == e).collect();
            let (mut loss, mut n) = (0.0, 0.0);
            let (mut slowest, mut billed) = (0f64, 0.0);
            let mut usage = crate::channel::meter::Usage::default();
            for r in &of_epoch {
                loss += r.train_loss * r.n_train as f64;
                n += r.n_train as f64;
                slowest = slowest.max(r.epoch_s + r.load_s);
                billed += r.epoch_s + r.load_s;
                usage = usage + r.usage;
            }
            seconds += slowest;
            raw_cost += cost::estimate(
                &s.prices,
                &Consumption {
                    channel: &s.channel,
                    parameter_server: s.sync == "ps",
                    memory_mb: s.memory_mb,
                    invocations: 0,
                    billed_s: billed,
                    usage,
                    data_usage: Default::default(),
                    wall_s: slowest,
                },
            )
            .total;
            points.push(Point {
                epoch: e,
                loss: if n > 0.0 { loss / n } else { f64::NAN },
                seconds,
                cost: raw_cost,
            });
        }
        if raw_cost > 0.0 {
            let scale = s.estimated_cost_usd / raw_cost;
            for p in &mut points {
                p.cost *= scale;
            }
        }
        points
    }

    /// Each worker's time by activity.
    pub fn time_per_worker(&self) -> Vec<TimeSplit> {
        let workers = self.summary.workers;
        let mut out = vec![TimeSplit::default(); workers];
        for r in &self.records {
            if let Some(t) = out.get_mut(r.worker) {
                *t = *t + TimeSplit::of(r);
            }
        }
        out
    }
}

/// The comparison table, in markdown.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::from(
        "| # | job | model | optim | sync | channel | workers | rounds | final loss | val acc | test acc | wall s | requests | est. cost USD | cost per 1k rounds |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let s = &r.summary;
        let acc = s
            .final_val_accuracy
            .map_or_else(|| "-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let test_acc = s
            .final_test_accuracy
            .map_or_else(|| "-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let per_round = if s.rounds > 0 {
            format!("{:.6}", s.estimated_cost_usd * 1000.0 / s.rounds as f64)
        } else {
            "-".to_string()
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | `{}` | {} | {} | {:.5} | {} | {} | {:.2} | {} | {:.6} | {} |\n",
            i + 1,
            s.job_id,
            s.model,
            s.optim,
            s.sync,
            s.channel,
            s.workers,
            s.rounds,
            s.final_train_loss,
            acc,
            test_acc,
            s.wall_seconds,
            s.requests.requests(),
            s.estimated_cost_usd,
            per_round
        ));
    }
    out
}

/// The cost breakdown and time split of every run, in markdown.
fn breakdown(runs: &[Run]) -> String {
    let mut out = String::from(
        "| # | Lambda compute | Lambda requests | S3 | DynamoDB | ElastiCache | PS VM | load s | compute s | transfer s | wait s | other s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let (c, t) = (&r.summary.cost, &r.summary.time);
        out.push_str(&format!(
            "| {} | {:.6} | {:.6} | {:.6} | {:.6} | {:.6} | {:.6} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            i + 1,
            c.lambda_compute,
            c.lambda_requests,
            c.s3_requests,
            c.dynamodb,
            c.elasticache,
            c.parameter_server,
            t.load_s,
            t.compute_s,
            t.transfer_s,
            t.wait_s,
            t.other_s
        ));
    }
    out
}

/// Predicted against measured, for the runs `lambdaml plan --run` started (empty when none
/// was planned).
pub fn predicted_vs_measured(runs: &[Run]) -> String {
    let planned: Vec<(usize, &Run, &Forecast)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r, r.forecast.as_ref()?)))
        .collect();
    if planned.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "## Predicted against measured (planned runs)\n\n\
         | # | configuration | predicted wall s | measured wall s | error | predicted USD | measured USD | error |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let error = |p: f64, m: f64| {
        if m > 0.0 {
            format!("{:+.1}%", 100.0 * (p - m) / m)
        } else {
            "-".to_string()
        }
    };
    for (i, r, f) in planned {
        let s = &r.summary;
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {} | {:.6} | {:.6} | {} |\n",
            i + 1,
            f.choice.label(),
            f.wall_s,
            s.wall_seconds,
            error(f.wall_s, s.wall_seconds),
            f.cost.total,
            s.estimated_cost_usd,
            error(f.cost.total, s.estimated_cost_usd)
        ));
    }
    out.push('\n');
    out
}

/// What `write` produced.
#[derive(Debug, Clone)]
pub struct Written {
    /// The markdown report.
    pub markdown: PathBuf,
    /// The charts.
    pub charts: Vec<PathBuf>,
}

/// Reads the runs, writes `report.md` and the charts into `out`; `progress` is told after
/// each file.
pub fn write(dirs: &[PathBuf], out: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Written> {
    anyhow::ensure!(!dirs.is_empty(), "give at least one run folder");
    let runs: Vec<Run> = dirs
        .iter()
        .map(|d| Run::load(d))
        .collect::<anyhow::Result<_>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    #[cfg_attr(not(feature = "charts"), allow(unused_mut))]
    let mut charts = Vec::new();
    #[cfg(feature = "charts")]
    for (name, draw) in [
        ("loss_vs_time.png", charts::loss_vs_time as charts::Draw),
        ("loss_vs_cost.png", charts::loss_vs_cost),
        ("time_breakdown.png", charts::time_breakdown),
    ] {
        let path = out.join(name);
        draw(&runs, &path).with_context(|| format!("drawing {}", path.display()))?;
        progress(name);
        charts.push(path);
    }
    let images = if charts.is_empty() {
        "(This lambdaml was built without its `charts` feature: no charts.)\n"
    } else {
        "![loss vs time](loss_vs_time.png)\n\n![loss vs cost](loss_vs_cost.png)\n\n\
         ![time per worker](time_breakdown.png)\n"
    };
    let prices = &runs[0].summary.prices;
    let md = format!(
        "# lambdaml report\n\n{}\n{}## Cost breakdown (USD) and worker time (seconds, all workers)\n\n{}\n\
         Costs are estimates as if the runs had run on AWS: Lambda at each run's memory size, \
         requests as the services count them, servers for the job's duration. Prices: {} ({}), \
         read {}.\n\n{images}",
        table(&runs),
        predicted_vs_measured(&runs),
        breakdown(&runs),
        prices.region,
        prices.source,
        prices.date
    );
    let markdown = out.join("report.md");
    std::fs::write(&markdown, md).with_context(|| format!("writing {}", markdown.display()))?;
    progress("report.md");
    Ok(Written { markdown, charts })
}
