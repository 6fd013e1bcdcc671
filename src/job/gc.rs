//! `lambdaml gc`: deletes the keys of jobs that can no longer run (failed with their driver
//! gone, killed, abandoned) from a channel that can list its keys.
//!
//! A job is recognised by the first segment of its keys. The driver's [`JobRecord`] says
//! until when the job may run; past that (plus the slack its keys' expiry allows) nothing of
//! it is running and all of it can go. Keys of a job without a record (a bench, a job whose
//! driver died before writing it) go once the time in the job's id is older than
//! `older_than` (default two days, well past the default life of a day). A first segment
//! that is not a job id is never touched: the channel may hold other things.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::config::KEY_EXPIRY_SLACK;
use super::records::{self, JobRecord};
use crate::channel::Channel;

/// How old an unrecorded job must be before its keys are removed, by default.
pub const UNRECORDED_AGE: Duration = Duration::from_secs(2 * 86_400);

/// What `gc` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GcReport {
    /// Jobs whose keys were removed, with how many keys each.
    pub removed: BTreeMap<String, usize>,
    /// Jobs left alone because they may still run (or are younger than asked).
    pub kept: Vec<String>,
    /// True when nothing was deleted.
    pub dry_run: bool,
}

/// Removes from `ch` the keys of every job that can no longer run and started more than
/// `older_than` ago (any age for a recorded job, [`UNRECORDED_AGE`] for one without a
/// record, when `None`).
pub async fn run(
    ch: &dyn Channel,
    older_than: Option<Duration>,
    dry_run: bool,
) -> anyhow::Result<GcReport> {
    let keys = ch.list("").await?.with_context(|| {
        format!(
            "{} cannot list its keys (memcached cannot): there, a job's keys expire by \
             themselves past its longest life",
            ch.url()
        )
    })?;
    let mut jobs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in keys {
        if let Some((job, _)) = key.split_once('/') {
            jobs.entry(job.to_string()).or_default().push(key);
        }
    }
    let now_ms = super::event::unix_ms();
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    for (job, keys) in jobs {
        let Some(id_ms) = started_from_id(&job) else {
            continue;
        };
        let record: Option<JobRecord> = records::get(ch, &records::job_key(&job)).await?;
        let age = Duration::from_millis(now_ms.saturating_sub(id_ms));
        let over = match record {
            Some(r) => {
                now_ms > r.ends_by_unix_ms + KEY_EXPIRY_SLACK.as_millis() as u64
                    && age >= older_than.unwrap_or_default()
            }
            None => age >= older_than.unwrap_or(UNRECORDED_AGE),
        };
        if !over {
            report.kept.push(job);
            continue;
        }
        if !dry_run {
            for chunk in keys.chunks(1000) {
                ch.delete(chunk)
                    .await
                    .with_context(|| format!("deleting the keys of job {job}"))?;
            }
        }
        report.removed.insert(job, keys.len());
    }
    Ok(report)
}

/// When a job whose id is `id` started (milliseconds since the Unix epoch), from the local
/// time at the head of its id (`20261202-061519-...`, or `bench-20261202-061519-...`);
/// `None` when `id` is not a job id.
fn started_from_id(id: &str) -> Option<u64> {
    let id = id.strip_prefix("bench-").unwrap_or(id);
    let stamp = chrono::NaiveDateTime::parse_from_str(id.get(..15)?, "%Y%m%d-%H%M%S").ok()?;
    let local = stamp.and_local_timezone(chrono::Local).earliest()?;
    u64::try_from(local.timestamp_millis()).ok()
}

/// The report as text.
pub fn render(r: &GcReport) -> String {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let keys: usize = r.removed.values().sum();
    let mut out = format!(
        "{verb} {keys} keys of {} jobs; kept {} jobs that may still run\n",
        r.removed.len(),
        r.kept.len()
    );
    for (job, n) in &r.removed {
        out.push_str(&format!("  {verb}: {job} ({n} keys)\n"));
    }
    for job in &r.kept {
        out.push_str(&format!("  kept: {job}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_carry_their_start() {
        assert!(started_from_id("20261202-061519-lr-grad_avg-reduce-9152ef95e18bc193").is_some());
        assert!(started_from_id("bench-20261202-061519-0a1b").is_some());
        for not_a_job in ["data", "2026", "notadate-061519-x", ""] {
            assert_eq!(started_from_id(not_a_job), None, "{not_a_job}");
        }
    }
}
