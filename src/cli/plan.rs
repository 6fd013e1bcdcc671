//! `lambdaml profile` and `lambdaml plan`: measure the environment, then predict, rank and
//! pick configurations before paying for them.

use std::path::PathBuf;

use clap::Args;

use super::base::BaseJobArgs;
use super::progress::BarUi;
use super::runtime;
use crate::algo::OptimKind;
use crate::channel::ChannelUrl;
use crate::comm::SyncMode;
use crate::job::planner::{self, Grid, Limits};
use crate::job::profile::{self, Profile, ProfileOptions};
use crate::job::{JobConfig, driver, summary};

/// `lambdaml profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Channels to measure (one flag, several URLs).
    #[arg(long = "channel", required = true, num_args = 1..)]
    pub channels: Vec<ChannelUrl>,
    /// Worker counts to measure rounds at.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub workers: Vec<usize>,
    /// Vector sizes (bytes) to measure rounds at.
    #[arg(long, value_delimiter = ',', default_value = "1024,65536,1048576")]
    pub sizes: Vec<usize>,
    /// Measured rounds per point.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Where the profile is written (JSON).
    #[arg(long, default_value = "profile.json")]
    pub out: PathBuf,
}

/// `lambdaml plan`: a job like `train`'s, and the values to try.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The job planned.
    #[command(flatten)]
    pub base: BaseJobArgs,
    /// Rows per minibatch per worker.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// model_avg: minibatches between two model averages.
    #[arg(long)]
    pub sync_every: Option<usize>,
    /// TOML file overriding prices of the cost model.
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Worker counts to try, e.g. 1,2,4,8.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Channels to try (one flag, several URLs).
    #[arg(long, num_args = 1..)]
    pub channels: Vec<ChannelUrl>,
    /// Sync modes to try, e.g. reduce,reduce_scatter.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub sync: Vec<SyncMode>,
    /// Optimizers to try, e.g. grad_avg,model_avg.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub optim: Vec<OptimKind>,
    /// Memory sizes (MB) to try, e.g. 1024,1769,3538.
    #[arg(long, value_delimiter = ',')]
    pub memory: Vec<u32>,
    /// The environment: `local` (this kind of machine, shipped), `aws` (published figures,
    /// shipped) or a file from `lambdaml profile`.
    #[arg(long, default_value = "local")]
    pub profile: String,
    /// Seconds the job must finish within: the cheapest configuration that does is
    /// recommended.
    #[arg(long)]
    pub deadline: Option<f64>,
    /// USD the job may cost: the fastest configuration within it is recommended.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Share of the deadline and budget kept in reserve against prediction error: on this
    /// project's 2-core machine, identical runs of a job differ by up to 23% and two plans
    /// of it by 11% (BENCHMARKS.md "Planning").
    #[arg(long, default_value_t = 0.25)]
    pub slack: f64,
    /// Plan each configuration to reach this training loss rather than run `--epochs`
    /// (which becomes the most it may run): its epochs are extrapolated from its pilot's
    /// loss curve (the pilot then trains up to 4 epochs) and scaled by the updates an epoch
    /// makes with its workers (n synchronous workers: 1/n as many).
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Times each pilot runs (one worker, up to 2 epochs of the job, 4 with --target-loss);
    /// the median of each timing is kept. 1 for a large dataset whose pilot is long enough
    /// to be steady.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub pilot_runs: u16,
    /// Train the recommended configuration after planning.
    #[arg(long)]
    pub run: bool,
    /// Print the plan (and with --run, the run's summary) as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PlanArgs {
    fn base(&self) -> anyhow::Result<JobConfig> {
        let mut c = self.base.config()?;
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if self.sync_every.is_some() {
            c.sync_every = self.sync_every;
        }
        if self.prices.is_some() {
            c.prices = self.prices.clone();
        }
        Ok(c)
    }
}

/// A folder for the pilots' and calibration jobs' runs, removed however the command ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(under: PathBuf) -> anyhow::Result<Scratch> {
        let dir = under.join(format!(
            ".plan-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `lambdaml profile`.
pub fn profile(args: ProfileArgs) -> anyhow::Result<()> {
    let scratch = Scratch::new(std::env::temp_dir())?;
    let opts = ProfileOptions {
        channels: args
            .channels
            .into_iter()
            .map(ChannelUrl::absolute)
            .collect::<Result<_, _>>()?,
        workers: args.workers,
        sizes: args.sizes,
        rounds: args.rounds,
        exe: driver::worker_exe()?,
        scratch: scratch.path().to_path_buf(),
    };
    let p = runtime()?.block_on(profile::measure(&opts, &|what| {
        eprintln!("measuring {what}")
    }))?;
    std::fs::write(&args.out, serde_json::to_string_pretty(&p)? + "\n")?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Runs `lambdaml plan`.
pub fn plan(args: PlanArgs) -> anyhow::Result<()> {
    for (what, v) in [("--deadline", args.deadline), ("--budget", args.budget)] {
        if let Some(v) = v {
            anyhow::ensure!(v.is_finite() && v > 0.0, "{what} must be above 0, got {v}");
        }
    }
    if let Some(t) = args.target_loss {
        anyhow::ensure!(t.is_finite(), "--target-loss must be a number, got {t}");
    }
    anyhow::ensure!(
        (0.0..0.9).contains(&args.slack),
        "--slack must be at least 0 and below 0.9, got {}",
        args.slack
    );
    let base = args.base()?;
    let profile = Profile::load(&args.profile)?;
    let prices = crate::cost::Prices::load(base.prices.as_deref())?;
    let grid = Grid {
        workers: args.workers.clone(),
        channels: args
            .channels
            .iter()
            .cloned()
            .map(ChannelUrl::absolute)
            .collect::<Result<_, _>>()?,
        syncs: args.sync.clone(),
        optims: args.optim.clone(),
        memory: args.memory.clone(),
    };
    let (configs, skipped) = planner::configurations(&base, &grid);
    anyhow::ensure!(
        configs.len() <= 10_000,
        "the grid has {} configurations: at most 10,000",
        configs.len()
    );
    let limits = Limits {
        deadline_s: args.deadline,
        budget_usd: args.budget,
        slack: args.slack,
    };
    let quiet = BarUi::new(false);
    let rt = runtime()?;
    let scratch = Scratch::new(std::path::absolute(&base.runs_dir)?)?;
    let say = |what: &str| {
        if !args.json {
            eprintln!("{what}")
        }
    };
    let pilots = rt.block_on(planner::pilots(
        &configs,
        usize::from(args.pilot_runs),
        args.target_loss,
        scratch.path(),
        &say,
        &quiet,
    ))?;
    let plan = planner::plan(
        &configs,
        skipped,
        &pilots,
        &profile,
        &prices,
        limits,
        args.target_loss,
    )?;
    if !args.run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!("{}", planner::render(&plan));
        }
        return Ok(());
    }
    if !args.json {
        print!("{}", planner::render(&plan));
    }
    let ui = BarUi::new(!args.json);
    let out = rt.block_on(planner::run_best(&plan, &base, &ui))?;
    if args.json {
        let both = serde_json::json!({ "plan": plan, "summary": out.summary });
        println!("{}", serde_json::to_string_pretty(&both)?);
    } else {
        print!("{}", summary::render_table(&out.summary, &out.results));
        let best = plan.best().expect("a run follows a recommendation");
        println!(
            "predicted {:.1} s and ${:.6}; measured {:.1} s and ${:.6}",
            best.wall_s, best.cost.total, out.summary.wall_seconds, out.summary.estimated_cost_usd
        );
        println!("run folder: {}", out.run_dir.display());
    }
    Ok(())
}
