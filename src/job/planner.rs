//! `lambdaml plan`: every configuration of a grid predicted ([`super::forecast`]), ranked,
//! its Pareto front of time against cost marked, and the best one under a deadline or a
//! budget recommended (or the reason none fits).

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::JobConfig;
use super::driver::{self, JobOutcome, JobProgress};
use super::forecast::{self, Choice, Forecast, Pilot};
use super::profile::Profile;
use crate::algo::OptimKind;
use crate::channel::ChannelUrl;
use crate::comm::SyncMode;
use crate::cost::Prices;

/// The file a planned run keeps its prediction in, beside `summary.json`.
pub const FORECAST_FILE: &str = "forecast.json";

/// The values the planner tries; an empty list keeps the base configuration's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grid {
    /// Worker counts.
    pub workers: Vec<usize>,
    /// Channels.
    pub channels: Vec<ChannelUrl>,
    /// Sync modes.
    pub syncs: Vec<SyncMode>,
    /// Optimizers.
    pub optims: Vec<OptimKind>,
    /// Memory sizes (MB).
    pub memory: Vec<u32>,
}

/// What the plan must satisfy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall seconds the job must finish within.
    pub deadline_s: Option<f64>,
    /// USD the job may cost.
    pub budget_usd: Option<f64>,
    /// Share of the deadline and budget kept in reserve against prediction error (0.1: a
    /// configuration must be predicted within 90% of them).
    pub slack: f64,
}

/// Every configuration's forecast and the recommendation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Forecasts, fastest first.
    pub forecasts: Vec<Forecast>,
    /// Indices (into `forecasts`) of the Pareto front: none other is both faster and
    /// cheaper.
    pub pareto: Vec<usize>,
    /// Configurations of the grid that cannot run, with why.
    pub skipped: Vec<(String, String)>,
    /// The limits planned for.
    pub limits: Limits,
    /// The training loss each configuration was planned to reach (its epochs chosen from
    /// the pilot's loss curve); `None`: the job's epochs.
    #[serde(default)]
    pub target_loss: Option<f64>,
    /// The recommended configuration (index into `forecasts`), or why none fits.
    pub recommended: Result<usize, String>,
    /// The profile used.
    pub profile: String,
}

impl Plan {
    /// The recommended forecast.
    pub fn best(&self) -> Option<&Forecast> {
        self.recommended.as_ref().ok().map(|&i| &self.forecasts[i])
    }
}

/// Every configuration of `grid` applied to `base`, each validated; invalid ones (ADMM for
/// KMeans, a sync mode the channel cannot do) come back apart with the reason.
pub fn configurations(base: &JobConfig, grid: &Grid) -> (Vec<JobConfig>, Vec<(String, String)>) {
    fn or<T: Clone>(list: &[T], own: T) -> Vec<T> {
        if list.is_empty() {
            vec![own]
        } else {
            list.to_vec()
        }
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for &workers in &or(&grid.workers, base.workers) {
        for channel in &or(&grid.channels, base.channel_url()) {
            for &sync in &or(&grid.syncs, base.sync) {
                for &optim in &or(&grid.optims, base.optim) {
                    for &memory_mb in &or(&grid.memory, base.memory_mb) {
                        let choice = Choice {
                            workers,
                            channel: channel.clone(),
                            sync,
                            optim,
                            memory_mb,
                            epochs: None,
                        };
                        let cfg = choice.apply(base);
                        match cfg.validate() {
                            Ok(()) => good.push(cfg),
                            Err(e) => bad.push((choice.label(), e.to_string())),
                        }
                    }
                }
            }
        }
    }
    (good, bad)
}

/// Indices of the forecasts no other beats on both time and cost.
pub fn pareto(forecasts: &[Forecast]) -> Vec<usize> {
    (0..forecasts.len())
        .filter(|&i| {
            let a = &forecasts[i];
            !forecasts.iter().any(|b| {
                b.wall_s <= a.wall_s
                    && b.cost.total <= a.cost.total
                    && (b.wall_s < a.wall_s || b.cost.total < a.cost.total)
            })
        })
        .collect()
}

/// The configuration to run: under a deadline the cheapest that meets it (within budget,
/// if one is set too); under a budget alone the fastest within it; with neither the
/// fastest. Never one predicted past `(1 - slack)` of a limit; `Err` says why none fits.
pub fn recommend(forecasts: &[Forecast], limits: &Limits) -> Result<usize, String> {
    if forecasts.is_empty() {
        return Err("no configuration of the grid can run".into());
    }
    let keep = 1.0 - limits.slack.clamp(0.0, 0.9);
    let deadline = limits.deadline_s.map(|d| d * keep);
    let budget = limits.budget_usd.map(|b| b * keep);
    let fits = |f: &Forecast| {
        deadline.is_none_or(|d| f.wall_s <= d) && budget.is_none_or(|b| f.cost.total <= b)
    };
    let by = |key: fn(&Forecast) -> (f64, f64)| {
        (0..forecasts.len())
            .filter(|&i| fits(&forecasts[i]))
            .min_by(|&a, &b| {
                key(&forecasts[a])
                    .partial_cmp(&key(&forecasts[b]))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
    };
    let chosen = if deadline.is_some() {
        by(|f| (f.cost.total, f.wall_s))
    } else {
        by(|f| (f.wall_s, f.cost.total))
    };
    chosen.ok_or_else(|| {
        let fastest = forecasts
            .iter()
            .min_by(|a, b| a.wall_s.total_cmp(&b.wall_s))
            .expect("not empty");
        let cheapest = forecasts
            .iter()
            .min_by(|a, b| a.cost.total.total_cmp(&b.cost.total))
            .expect("not empty");
        let reserve = format!("{:.0}% kept in reserve", (1.0 - keep) * 100.0);
        let mut why = Vec::new();
        if let Some(d) = limits.deadline_s
            && fastest.wall_s > d * keep
        {
            why.push(format!(
                "the fastest configuration ({}) is predicted to take {:.1} s, past the \
                 deadline of {d:.1} s ({reserve})",
                fastest.choice.label(),
                fastest.wall_s
            ));
        }
        if let Some(b) = limits.budget_usd
            && cheapest.cost.total > b * keep
        {
            why.push(format!(
                "the cheapest configuration ({}) is predicted to cost ${:.6}, over the \
                 budget of ${b:.6} ({reserve})",
                cheapest.choice.label(),
                cheapest.cost.total
            ));
        }
        if why.is_empty() {
            why.push(format!(
                "no configuration meets both: those fast enough cost too much ({reserve})"
            ));
        }
        format!("no configuration fits: {}", why.join("; "))
    })
}

/// Epochs a pilot trains: enough to time an epoch, or with a target loss, to see where
/// its loss curve bends (at most the job's own).
pub fn pilot_epochs(cfg: &JobConfig, target_loss: Option<f64>) -> u32 {
    cfg.epochs.min(if target_loss.is_some() { 4 } else { 2 })
}

/// Runs the pilots `configs` need (one per optimizer and memory size) on this machine,
/// each `runs` times (at least once), keeping the median of each timing, for
/// [`pilot_epochs`]; `say` is told each.
pub async fn pilots(
    configs: &[JobConfig],
    runs: usize,
    target_loss: Option<f64>,
    scratch: &Path,
    say: &dyn Fn(&str),
    ui: &dyn JobProgress,
) -> anyhow::Result<Vec<Pilot>> {
    let runs = runs.max(1);
    let mut done: Vec<Pilot> = Vec::new();
    for cfg in configs {
        if done
            .iter()
            .any(|p| p.optim == cfg.optim && p.memory_mb == cfg.memory_mb)
        {
            continue;
        }
        let pilot_cfg = JobConfig {
            workers: 1,
            epochs: pilot_epochs(cfg, target_loss),
            sync: SyncMode::Reduce,
            channel: Some(ChannelUrl::dir(scratch.join("_channel"))),
            runs_dir: scratch.to_path_buf(),
            tol: 0.0,
            ..cfg.clone()
        };
        let mut each = Vec::with_capacity(runs);
        for run in 1..=runs {
            say(&format!(
                "pilot {run}/{runs}: {} {} on one worker, {} MB, {} epoch(s)",
                cfg.model, cfg.optim, cfg.memory_mb, pilot_cfg.epochs
            ));
            let out = driver::run(pilot_cfg.clone(), ui)
                .await
                .context("the planner's pilot run failed")?;
            let _ = std::fs::remove_dir_all(&out.run_dir);
            each.push(Pilot::from_run(
                &pilot_cfg,
                &out.summary,
                out.results.first(),
            )?);
        }
        done.push(Pilot::median(&each).expect("at least one run"));
    }
    Ok(done)
}

/// Forecasts every configuration from its pilot and ranks them; with `target_loss`, each
/// for the epochs its pilot's loss curve needs to reach it ([`forecast::epochs_to_loss`]),
/// scaled by the updates an epoch makes with its workers
/// ([`forecast::epochs_per_pilot_epoch`]), at most the job's `epochs`.
pub fn plan(
    configs: &[JobConfig],
    skipped: Vec<(String, String)>,
    pilots: &[Pilot],
    profile: &Profile,
    prices: &Prices,
    limits: Limits,
    target_loss: Option<f64>,
) -> anyhow::Result<Plan> {
    let mut forecasts = Vec::new();
    let mut skipped = skipped;
    for cfg in configs {
        let pilot = pilots
            .iter()
            .find(|p| p.optim == cfg.optim && p.memory_mb == cfg.memory_mb)
            .context("no pilot for a configuration")?;
        let needed = target_loss.map(|t| {
            forecast::epochs_to_loss(&pilot.losses, t).map(|e| {
                let scaled = e * forecast::epochs_per_pilot_epoch(cfg, cfg.workers, pilot.rows);
                // Within a rounding error of a whole epoch, that epoch.
                (scaled - 1e-6).ceil().max(1.0) as u32
            })
        });
        let epochs = match needed {
            None => None,
            Some(Ok(e)) if e <= cfg.epochs => Some(e),
            Some(Ok(e)) => {
                skipped.push((
                    Choice::of(cfg).label(),
                    format!(
                        "reaching the target loss needs about {e} epochs, more than --epochs {}",
                        cfg.epochs
                    ),
                ));
                continue;
            }
            Some(Err(why)) => {
                skipped.push((Choice::of(cfg).label(), why));
                continue;
            }
        };
        let cfg = &JobConfig {
            epochs: epochs.unwrap_or(cfg.epochs),
            ..cfg.clone()
        };
        match forecast::predict(cfg, pilot, profile, prices) {
            Ok(mut f) => {
                f.choice.epochs = epochs;
                forecasts.push(f);
            }
            Err(e) => skipped.push((Choice::of(cfg).label(), format!("{e:#}"))),
        }
    }
    forecasts.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let recommended = recommend(&forecasts, &limits);
    Ok(Plan {
        pareto: pareto(&forecasts),
        forecasts,
        skipped,
        limits,
        target_loss,
        recommended,
        profile: profile.name.clone(),
    })
}

/// Trains the recommended configuration of `plan` on top of `base`, and keeps the forecast
/// in the run folder (`forecast.json`) for `lambdaml report` to set against the run.
pub async fn run_best(
    plan: &Plan,
    base: &JobConfig,
    ui: &dyn JobProgress,
) -> anyhow::Result<JobOutcome> {
    let best = plan
        .best()
        .ok_or_else(|| anyhow::anyhow!("{}", plan.recommended.clone().unwrap_err()))?;
    let cfg = JobConfig {
        // The plan printed the channel without secrets; the base's own URL keeps them.
        channel: if base.channel_url().without_secrets() == best.choice.channel {
            base.channel.clone()
        } else {
            Some(best.choice.channel.clone())
        },
        ..best.choice.apply(base)
    };
    let out = driver::run(cfg, ui).await?;
    std::fs::write(
        out.run_dir.join(FORECAST_FILE),
        serde_json::to_string_pretty(best)?,
    )
    .with_context(|| format!("writing the forecast into {}", out.run_dir.display()))?;
    Ok(out)
}

/// The plan as a table, fastest first, Pareto points starred, the recommendation last.
pub fn render(plan: &Plan) -> String {
    // As wide as the longest label (`4 x reduce_scatter model_avg dynamodb 2048 MB`), so
    // the columns stay aligned.
    let width = plan
        .forecasts
        .iter()
        .map(|f| f.choice.label().len())
        .max()
        .unwrap_or(0)
        .max(40);
    let mut out = plan.target_loss.map_or_else(String::new, |t| {
        format!("to a training loss of {t} (epochs from each pilot's loss curve)\n")
    });
    out += &format!(
        "{:<3}{:<width$} {:>10} {:>10} {:>9} {:>12} {:>9}\n",
        "", "configuration", "wall s", "epoch s", "comm %", "cost USD", "requests"
    );
    for (i, f) in plan.forecasts.iter().enumerate() {
        let mark = match (
            plan.recommended.as_ref().ok() == Some(&i),
            plan.pareto.contains(&i),
        ) {
            (true, _) => "=>",
            (false, true) => " *",
            _ => "  ",
        };
        out.push_str(&format!(
            "{mark:<3}{:<width$} {:>10.2} {:>10.3} {:>8.0}% {:>12.6} {:>9.0}\n",
            f.choice.label(),
            f.wall_s,
            f.epoch_s,
            100.0 * f.comm_epoch_s / f.epoch_s.max(1e-12),
            f.cost.total,
            f.requests.total()
        ));
    }
    out.push_str(" * on the Pareto front of time against cost\n");
    for (what, why) in &plan.skipped {
        out.push_str(&format!("skipped {what}: {why}\n"));
    }
    match &plan.recommended {
        Ok(i) => {
            let f = &plan.forecasts[*i];
            out.push_str(&format!(
                "recommended: {} (predicted {:.1} s, ${:.6})\n",
                f.choice.label(),
                f.wall_s,
                f.cost.total
            ));
        }
        Err(why) => out.push_str(&format!("{why}\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn forecast(wall_s: f64, usd: f64) -> Forecast {
        let cost = crate::cost::Cost {
            total: usd,
            ..Default::default()
        };
        Forecast {
            choice: Choice {
                workers: 1,
                channel: ChannelUrl::dir("/x"),
                sync: SyncMode::Reduce,
                optim: OptimKind::GradAvg,
                memory_mb: 1024,
                epochs: None,
            },
            rounds_per_epoch: 1.0,
            epoch_s: 1.0,
            compute_epoch_s: 1.0,
            comm_epoch_s: 0.0,
            load_s: 0.0,
            wall_s,
            invocations: 1,
            billed_s: 1.0,
            requests: Default::default(),
            cost,
        }
    }

    #[test]
    fn the_pareto_front_keeps_only_undominated_points() {
        let f = [
            forecast(1.0, 5.0),
            forecast(2.0, 2.0),
            forecast(3.0, 3.0),
            forecast(4.0, 1.0),
        ];
        assert_eq!(pareto(&f), vec![0, 1, 3]);
    }

    #[test]
    fn the_table_stays_aligned_with_long_labels() {
        let mut long = forecast(2.0, 1.0);
        long.choice.sync = SyncMode::ReduceScatter;
        long.choice.optim = OptimKind::ModelAvg;
        long.choice.channel = "dynamodb://lambdaml-jobs".parse().unwrap();
        long.choice.workers = 16;
        let forecasts = vec![forecast(1.0, 2.0), long];
        let plan = Plan {
            pareto: pareto(&forecasts),
            recommended: Ok(0),
            forecasts,
            skipped: Vec::new(),
            limits: Limits::default(),
            target_loss: None,
            profile: "test".into(),
        };
        let table = render(&plan);
        let lines: Vec<&str> = table.lines().take(3).collect();
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
    }

    #[test]
    fn none_fits_says_why() {
        let f = [forecast(10.0, 1.0), forecast(20.0, 0.5)];
        let limits = Limits {
            deadline_s: Some(5.0),
            budget_usd: None,
            slack: 0.0,
        };
        let e = recommend(&f, &limits).unwrap_err();
        assert!(e.contains("10.0 s, past the deadline of 5.0 s"), "{e}");
        let limits = Limits {
            deadline_s: None,
            budget_usd: Some(0.1),
            slack: 0.1,
        };
        let e = recommend(&f, &limits).unwrap_err();
        assert!(
            e.contains("over the budget") && e.contains("10% kept"),
            "{e}"
        );
        // The slack is a reserve: 9.5 s fits a 10 s deadline only without it.
        let f = [forecast(9.5, 1.0)];
        let tight = Limits {
            deadline_s: Some(10.0),
            budget_usd: None,
            slack: 0.1,
        };
        assert!(recommend(&f, &tight).is_err());
        assert_eq!(
            recommend(
                &f,
                &Limits {
                    slack: 0.0,
                    ..tight
                }
            ),
            Ok(0)
        );
    }

    proptest! {
        /// Whatever the forecasts and limits, the recommendation meets every limit (less its
        /// reserve) and nothing that meets them is better by the rule's own order; when
        /// nothing is recommended, nothing met them.
        #[test]
        fn a_recommendation_never_breaks_a_limit(
            points in prop::collection::vec((0.1f64..1000.0, 0.0001f64..10.0), 1..40),
            deadline in prop::option::of(0.1f64..1000.0),
            budget in prop::option::of(0.0001f64..10.0),
            slack in 0.0f64..0.5,
        ) {
            let f: Vec<Forecast> = points.iter().map(|&(t, c)| forecast(t, c)).collect();
            let limits = Limits { deadline_s: deadline, budget_usd: budget, slack };
            let keep = 1.0 - slack;
            let fits = |x: &Forecast| deadline.is_none_or(|d| x.wall_s <= d * keep)
                && budget.is_none_or(|b| x.cost.total <= b * keep);
            match recommend(&f, &limits) {
                Ok(i) => {
                    prop_assert!(fits(&f[i]));
                    for other in f.iter().filter(|x| fits(x)) {
                        if deadline.is_some() {
                            prop_assert!(f[i].cost.total <= other.cost.total);
                        } else {
                            prop_assert!(f[i].wall_s <= other.wall_s);
                        }
                    }
                }
                Err(_) => prop_assert!(!f.iter().any(fits)),
            }
        }
    }
}
