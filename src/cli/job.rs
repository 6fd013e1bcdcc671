//! `lambdaml job status|attach|cancel`: a running job, from any machine that reaches its
//! channel.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::progress::BarUi;
use super::{parse_seconds, runtime};
use crate::channel::ChannelUrl;
use crate::job::{control, summary};

/// `lambdaml job ...`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// The state of a job: its driver, and each worker's state, generation, epoch, round and
    /// last heartbeat.
    Status {
        /// The job id (the name of its run folder).
        job: String,
        /// The job's channel.
        #[arg(long, env = "LAMBDAML_CHANNEL", hide_env_values = true)]
        channel: ChannelUrl,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take over a job whose driver is gone (killed, a laptop asleep): follow it, recover
    /// its lost workers, clean up and write its run folder, as its driver would have.
    Attach {
        /// The job id.
        job: String,
        /// The job's channel.
        #[arg(long, env = "LAMBDAML_CHANNEL", hide_env_values = true)]
        channel: ChannelUrl,
        /// Where the run folder goes (default: where the job's driver put it).
        #[arg(long)]
        runs_dir: Option<PathBuf>,
        /// `--sync ps`: the parameter server's token (never recorded with the job).
        #[arg(long, env = "LAMBDAML_PS_TOKEN", hide_env_values = true)]
        ps_token: Option<String>,
        /// Take over even though the job's driver still beats.
        #[arg(long)]
        force: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// No progress bar, no table.
        #[arg(long)]
        quiet: bool,
    },
    /// Stop a job: its workers stop within a heartbeat, and every key of the job is deleted
    /// (by its driver, or by this command when the driver is gone).
    Cancel {
        /// The job id.
        job: String,
        /// The job's channel.
        #[arg(long, env = "LAMBDAML_CHANNEL", hide_env_values = true)]
        channel: ChannelUrl,
        /// Seconds to wait for the job to stop.
        #[arg(long, value_parser = parse_seconds, default_value = "120")]
        wait: Duration,
    },
}

/// Runs a `lambdaml job` command.
pub fn command(cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Status { job, channel, json } => runtime()?.block_on(async {
            let ch = crate::channel::open(&channel).await?;
            let status = control::status(ch.as_ref(), &job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", control::render_status(&status));
            }
            Ok(())
        }),
        JobCommand::Attach {
            job,
            channel,
            runs_dir,
            ps_token,
            force,
            json,
            quiet,
        } => {
            let ui = BarUi::new(!quiet && !json);
            let outcome = runtime()?.block_on(control::attach(
                &channel, &job, runs_dir, ps_token, force, &ui,
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome.summary)?);
            } else if !quiet {
                print!(
                    "{}",
                    summary::render_table(&outcome.summary, &outcome.results)
                );
                println!("run folder: {}", outcome.run_dir.display());
            }
            Ok(())
        }
        JobCommand::Cancel { job, channel, wait } => {
            let done = runtime()?.block_on(control::cancel(&channel, &job, wait))?;
            let by = if done.by_driver {
                "its driver stopped the workers and deleted its keys"
            } else {
                "its driver was gone: the workers stopped and this command deleted its keys"
            };
            eprintln!(
                "cancelled job {} in {:.1} s: {by}",
                done.job_id, done.seconds
            );
            Ok(())
        }
    }
}
