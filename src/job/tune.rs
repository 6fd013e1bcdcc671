//! The search behind `lambdaml tune`: which configurations to try (a grid over any field of
//! the job's config, or random draws from that grid and from numeric ranges), which trial
//! may start under a limit on live workers, and when a running trial is clearly worse than
//! the best and is stopped. Running the trials is the command's (each is a `train` process:
//! a job with its own id, metered apart, cancelled like any job).

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::Context;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::JobConfig;
use super::records::EpochRecord;
use super::summary::Summary;

/// Most values one parameter may list, and most trials one search may run.
pub const MAX_TRIALS: usize = 1000;

/// One searched field: `FIELD=V1,V2,...` (values tried as listed) or `FIELD=LO..HI` (drawn
/// at random: log-uniform for positive floats, uniform integers when both ends are).
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The config field, as in a TOML file (`batch-size` is read as `batch_size`).
    pub field: String,
    /// Its values.
    pub values: Values,
}

/// What a [`Param`] ranges over.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// These values.
    List(Vec<toml::Value>),
    /// Any number in `[lo, hi]`.
    Range {
        /// Lower end.
        lo: f64,
        /// Upper end.
        hi: f64,
        /// Both ends were integers: draw integers.
        integer: bool,
    },
}

impl FromStr for Param {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (field, values) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}': expected FIELD=V1,V2,... or FIELD=LO..HI"))?;
        let field = field.trim().replace('-', "_");
        if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'{s}': '{field}' is not a config field name"));
        }
        if let Some((lo, hi)) = values.split_once("..") {
            let end = |v: &str| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("'{s}': '{v}' is not a finite number"))
            };
            let (lo_v, hi_v) = (end(lo)?, end(hi)?);
            if lo_v >= hi_v {
                return Err(format!(
                    "'{s}': the range's low end must be below its high end"
                ));
            }
            let integer = [lo, hi].iter().all(|v| v.trim().parse::<i64>().is_ok());
            return Ok(Param {
                field,
                values: Values::Range {
                    lo: lo_v,
                    hi: hi_v,
                    integer,
                },
            });
        }
        let list: Vec<toml::Value> = values.split(',').map(|v| scalar(v.trim())).collect();
        if list.len() > MAX_TRIALS || list.iter().any(|v| v.as_str() == Some("")) {
            return Err(format!(
                "'{s}': give 1 to {MAX_TRIALS} non-empty values separated by commas"
            ));
        }
        Ok(Param {
            field,
            values: Values::List(list),
        })
    }
}

/// A value as TOML would read it: an integer, a float, a boolean, else a string.
fn scalar(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = v.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_string())
    }
}

/// One configuration to train.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Its number, from 0.
    pub index: usize,
    /// The searched fields' values, in the order the parameters were given.
    pub assignment: Vec<(String, toml::Value)>,
    /// The whole job.
    pub config: JobConfig,
}

impl Trial {
    /// `lr=0.1 batch_size=100`.
    pub fn describe(&self) -> String {
        self.assignment
            .iter()
            .map(|(f, v)| format!("{f}={}", show(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) => format!("{}", (*f as f32)),
        v => v.to_string(),
    }
}

/// The trials of a search: every point of the grid when `count` is `None` (or covers it);
/// else `count` distinct grid points drawn with `seed`, ranges drawn per trial. Every trial's
/// config is checked as `train` would check it.
pub fn trials(
    base: &JobConfig,
    params: &[Param],
    count: Option<usize>,
    seed: u64,
) -> anyhow::Result<Vec<Trial>> {
    anyhow::ensure!(
        !params.is_empty(),
        "nothing to search: give --param FIELD=VALUES (or --lr, --batch-size, --workers)"
    );
    let mut seen = std::collections::HashSet::new();
    for p in params {
        anyhow::ensure!(seen.insert(&p.field), "'{}' is searched twice", p.field);
    }
    let lists: Vec<&[toml::Value]> = params
        .iter()
        .filter_map(|p| match &p.values {
            Values::List(l) => Some(&l[..]),
            Values::Range { .. } => None,
        })
        .collect();
    let has_range = lists.len() < params.len();
    let grid = lists
        .iter()
        .try_fold(1usize, |n, l| n.checked_mul(l.len()))
        .unwrap_or(usize::MAX);
    let count = match count {
        Some(0) => anyhow::bail!("--trials must be at least 1"),
        Some(n) => n,
        None if has_range => anyhow::bail!("a range (FIELD=LO..HI) is drawn from: give --trials"),
        None => grid,
    };
    anyhow::ensure!(
        count <= MAX_TRIALS,
        "{count} trials: at most {MAX_TRIALS} (give --trials to draw fewer from the grid)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let points: Vec<usize> = if count >= grid && !has_range {
        (0..grid).collect()
    } else if count >= grid {
        (0..count).map(|i| i % grid).collect()
    } else {
        let mut p = rand::seq::index::sample(&mut rng, grid, count).into_vec();
        p.sort_unstable();
        p
    };
    let table = toml::Value::try_from(base).context("the base config as TOML")?;
    points
        .into_iter()
        .enumerate()
        .map(|(index, point)| {
            let mut rest = point;
            let assignment: Vec<(String, toml::Value)> = params
                .iter()
                .map(|p| {
                    let v = match &p.values {
                        Values::List(l) => {
                            let v = l[rest % l.len()].clone();
                            rest /= l.len();
                            v
                        }
                        Values::Range { lo, hi, integer } => draw(&mut rng, *lo, *hi, *integer),
                    };
                    (p.field.clone(), v)
                })
                .collect();
            let config = apply(&table, &assignment)?;
            Ok(Trial {
                index,
                assignment,
                config,
            })
        })
        .collect()
}

fn draw(rng: &mut impl rand::Rng, lo: f64, hi: f64, integer: bool) -> toml::Value {
    if integer {
        toml::Value::Integer(rng.random_range(lo as i64..=hi as i64))
    } else if lo > 0.0 {
        // Learning rates and penalties matter by their order of magnitude.
        toml::Value::Float((rng.random_range(lo.ln()..=hi.ln())).exp())
    } else {
        toml::Value::Float(rng.random_range(lo..=hi))
    }
}

/// `table` (a config) with `assignment`'s fields set, read back as a config: a field that
/// does not exist or a value of the wrong type is an error naming both.
fn apply(table: &toml::Value, assignment: &[(String, toml::Value)]) -> anyhow::Result<JobConfig> {
    let mut table = table.clone();
    let map = table.as_table_mut().expect("a config is a table");
    for (field, value) in assignment {
        // `lr=1` is a float field given an integer.
        let value = match (map.get(field), value) {
            (Some(toml::Value::Float(_)), toml::Value::Integer(i)) => toml::Value::Float(*i as f64),
            _ => value.clone(),
        };
        map.insert(field.clone(), value);
    }
    let read = |t: toml::Value| -> Result<JobConfig, toml::de::Error> { t.try_into() };
    let config = read(table.clone()).or_else(|first| {
        // A field absent from the base (an unset option) has no type to go by: an integer
        // given to a float field is read again as a float.
        let mut t = table.clone();
        let map = t.as_table_mut().expect("a config is a table");
        for (field, _) in assignment {
            if let Some(toml::Value::Integer(i)) = map.get(field).cloned() {
                map.insert(field.clone(), toml::Value::Float(i as f64));
            }
        }
        read(t).map_err(|_| first)
    });
    let described = assignment
        .iter()
        .map(|(f, v)| format!("{f}={}", show(v)))
        .collect::<Vec<_>>()
        .join(" ");
    let config = config.with_context(|| format!("the trial {described}"))?;
    config
        .validate()
        .with_context(|| format!("the trial {described}"))?;
    Ok(config)
}

/// Live workers under a limit (the account's concurrency): trials start in order, each
/// when its workers fit beside those already running.
#[derive(Debug, Clone)]
pub struct Admission {
    limit: usize,
    alive: usize,
    peak: usize,
}

impl Admission {
    /// At most `limit` workers alive at once.
    pub fn new(limit: usize) -> Self {
        Admission {
            limit,
            alive: 0,
            peak: 0,
        }
    }

    /// Takes room for `workers` when there is: true when the trial may start.
    pub fn admit(&mut self, workers: usize) -> bool {
        if self.alive + workers > self.limit {
            return false;
        }
        self.alive += workers;
        self.peak = self.peak.max(self.alive);
        true
    }

    /// Gives back the room of a trial that ended.
    pub fn release(&mut self, workers: usize) {
        self.alive = self.alive.saturating_sub(workers);
    }

    /// Most workers alive at once so far.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

/// What a trial is judged by, lower is better: KMeans's objective, else the validation
/// loss, else the training loss.
pub fn score(r: &EpochRecord) -> f64 {
    r.objective.or(r.val_loss).unwrap_or(r.train_loss)
}

/// The same for a finished job.
pub fn final_score(s: &Summary) -> f64 {
    s.final_objective
        .or(s.final_val_loss)
        .unwrap_or(s.final_train_loss)
}

/// A trial's scores by epoch (1-based), the mean over its workers once every worker
/// reported the epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Curve {
    /// Epoch to score.
    pub scores: BTreeMap<u32, f64>,
    #[serde(skip)]
    pending: BTreeMap<u32, BTreeMap<usize, f64>>,
}

impl Curve {
    /// Worker `worker`'s record of an epoch, out of `workers`.
    pub fn add(&mut self, worker: usize, workers: usize, r: &EpochRecord) {
        if self.scores.contains_key(&r.epoch) {
            return;
        }
        let seen = self.pending.entry(r.epoch).or_default();
        seen.insert(worker, score(r));
        if seen.len() == workers {
            let mean = seen.values().sum::<f64>() / workers as f64;
            self.scores.insert(r.epoch, mean);
            self.pending.remove(&r.epoch);
        }
    }
}

/// Why a running trial should stop: its latest epoch (at least `grace`) scored worse than
/// the best other trial's score at the same epoch by more than `margin` of that score.
/// Returns `(epoch, its score, the best score)`.
pub fn clearly_worse(
    mine: &Curve,
    others: &[&Curve],
    margin: f64,
    grace: u32,
) -> Option<(u32, f64, f64)> {
    let (&epoch, &score) = mine.scores.last_key_value()?;
    if epoch < grace {
        return None;
    }
    let best = others
        .iter()
        .filter_map(|c| c.scores.get(&epoch).copied())
        .filter(|s| s.is_finite())
        .min_by(f64::total_cmp)?;
    // A diverged trial (a NaN or infinite loss) is worse than any finite one.
    (!score.is_finite() || score > best + margin * best.abs()).then_some((epoch, score, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u32, loss: f64) -> EpochRecord {
        let mut r: EpochRecord = serde_json::from_value(serde_json::json!({
            "worker": 0, "epoch": epoch, "train_loss": 0.0, "n_train": 1, "n_val": 0,
            "n_test": 0, "compute_s": 0.0, "comm_s": 0.0, "wait_s": 0.0, "load_s": 0.0,
            "usage": crate::channel::meter::Usage::default(), "rounds": 1,
            "round_max_s": 0.0, "epoch_s": 0.0, "invocation": 0, "peak_rss_mb": null
        }))
        .unwrap();
        r.train_loss = loss;
        r
    }

    #[test]
    fn params_read_lists_and_ranges_and_refuse_nonsense() {
        let p: Param = "batch-size=100,1000".parse().unwrap();
        assert_eq!(p.field, "batch_size");
        assert_eq!(
            p.values,
            Values::List(vec![toml::Value::Integer(100), toml::Value::Integer(1000)])
        );
        let p: Param = "lr=0.001..0.1".parse().unwrap();
        assert!(matches!(p.values, Values::Range { integer: false, .. }));
        let p: Param = "workers=1..8".parse().unwrap();
        assert!(matches!(p.values, Values::Range { integer: true, .. }));
        for bad in ["lr", "=1,2", "lr=1,,2", "lr=0.1..0.01", "lr=a..b", "a b=1"] {
            assert!(bad.parse::<Param>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_grid_is_every_combination_and_a_draw_is_distinct_points_of_it() {
        let base = JobConfig::default();
        let params: Vec<Param> = ["lr=0.05,0.1,0.2", "batch_size=50,100"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let all = trials(&base, &params, None, 0).unwrap();
        assert_eq!(all.len(), 6);
        let mut seen: Vec<String> = all.iter().map(Trial::describe).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(
            all.iter()
                .any(|t| t.config.lr == Some(0.2) && t.config.batch_size == 50)
        );
        let some = trials(&base, &params, Some(4), 7).unwrap();
        let mut drawn: Vec<String> = some.iter().map(Trial::describe).collect();
        drawn.sort();
        drawn.dedup();
        assert_eq!(drawn.len(), 4);
        let again: Vec<String> = trials(&base, &params, Some(4), 7)
            .unwrap()
            .iter()
            .map(Trial::describe)
            .collect();
        assert_eq!(
            again,
            some.iter().map(Trial::describe).collect::<Vec<_>>(),
            "a seed draws the same trials"
        );
    }

    #[test]
    fn ranges_are_drawn_within_their_ends() {
        let base = JobConfig::default();
        let params: Vec<Param> = ["lr=0.001..0.1", "epochs=1..3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(
            trials(&base, &params, None, 0).is_err(),
            "a range needs --trials"
        );
        let drawn = trials(&base, &params, Some(20), 1).unwrap();
        assert_eq!(drawn.len(), 20);
        for t in drawn {
            let lr = t.config.lr.unwrap();
            assert!((0.001..=0.1).contains(&lr), "{lr}");
            assert!((1..=3).contains(&t.config.epochs));
        }
    }

    #[test]
    fn a_wrong_field_or_value_names_the_trial() {
        let base = JobConfig::default();
        for (param, says) in [
            ("learning_rate=0.1", "learning_rate"),
            ("batch_size=big", "batch_size=big"),
            ("workers=0", "workers=0"),
        ] {
            let p: Param = param.parse().unwrap();
            let e = format!("{:#}", trials(&base, &[p], None, 0).unwrap_err());
            assert!(e.contains(says), "{param}: {e}");
        }
        let p: Param = "lr=1,2".parse().unwrap();
        let t = trials(&base, &[p], None, 0).unwrap();
        assert_eq!(
            t[0].config.lr,
            Some(1.0),
            "an integer given to a float field"
        );
    }

    #[test]
    fn admission_never_lets_more_workers_live_than_the_limit() {
        let mut a = Admission::new(5);
        assert!(a.admit(2));
        assert!(a.admit(3));
        assert!(!a.admit(1), "full");
        a.release(2);
        assert!(!a.admit(3), "2 free, 3 asked");
        assert!(a.admit(2));
        assert_eq!(a.peak(), 5);
    }

    #[test]
    fn a_trial_is_stopped_only_when_clearly_worse_at_the_same_epoch() {
        let curve = |losses: &[f64]| {
            let mut c = Curve::default();
            for (i, l) in losses.iter().enumerate() {
                c.add(0, 1, &record(i as u32 + 1, *l));
            }
            c
        };
        let best = curve(&[0.5, 0.4, 0.3]);
        assert_eq!(
            clearly_worse(&curve(&[0.9]), &[&best], 0.2, 1),
            Some((1, 0.9, 0.5))
        );
        assert_eq!(
            clearly_worse(&curve(&[0.55]), &[&best], 0.2, 1),
            None,
            "within the margin"
        );
        assert_eq!(
            clearly_worse(&curve(&[0.9]), &[&best], 0.2, 2),
            None,
            "in its grace"
        );
        assert_eq!(
            clearly_worse(&curve(&[0.9, 0.9, 0.9, 0.9]), &[&best], 0.2, 1),
            None,
            "no other trial reached its epoch"
        );
        assert!(clearly_worse(&curve(&[f64::NAN]), &[&best], 0.2, 1).is_some());
        assert_eq!(clearly_worse(&best, &[], 0.2, 1), None, "alone");
    }

    #[test]
    fn an_epoch_scores_once_every_worker_reported_it() {
        let mut c = Curve::default();
        c.add(0, 2, &record(1, 1.0));
        assert!(c.scores.is_empty());
        c.add(0, 2, &record(1, 1.0));
        assert!(c.scores.is_empty(), "the same worker twice");
        c.add(1, 2, &record(1, 3.0));
        assert_eq!(c.scores.get(&1), Some(&2.0));
    }
}
