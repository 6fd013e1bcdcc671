//! `lambdaml` as an AWS Lambda function (served through `lambda_runtime` when Lambda starts
//! the binary), and the `lambdaml lambda` commands: the local Lambda, packaging, deployment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Subcommand;
use lambda_runtime::{LambdaEvent, service_fn};

use crate::job::event::{Invocation, WorkerEvent};
use crate::job::{bench, worker};
use crate::platform::lambda::deploy::{self, Deployment};
use crate::platform::lambda::emulator::{self, EmulatorOptions, FunctionConfig};
use crate::platform::{LambdaFunction, LambdaPlatform};
use aws_sdk_lambda::types::Architecture;

/// The environment variable Lambda sets for the runtime's endpoint: its presence means this
/// process is a Lambda function's instance.
pub const RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";

/// `lambdaml lambda ...`
#[derive(Debug, Subcommand)]
pub enum LambdaCommand {
    /// Create or update the worker function from a zip of the lambdaml binary (named
    /// `bootstrap`; `cargo lambda build --release --arm64 --output-format zip`), with
    /// runtime provided.al2023, and no automatic retries of failed asynchronous invocations.
    Deploy {
        /// The function's name.
        #[arg(long)]
        name: String,
        /// ARN of the IAM role it runs as (see the README for its policy).
        #[arg(long)]
        role: String,
        /// The code.
        #[arg(long, default_value = "target/lambda/lambdaml/bootstrap.zip")]
        zip: PathBuf,
        /// Memory of each invocation in MB (128-10240; one vCPU per 1769 MB).
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Seconds each invocation may run (1-900).
        #[arg(long, default_value_t = 900)]
        timeout: u32,
        /// What the zip was built for: arm64 or x86_64.
        #[arg(long, default_value = "arm64", value_parser = ["arm64", "x86_64"])]
        arch: String,
        /// An environment variable of the function, KEY=VALUE (repeatable).
        #[arg(long = "env", value_parser = crate::platform::lambda::deploy::parse_env)]
        env: Vec<(String, String)>,
        /// The AWS region (else AWS_REGION or the profile's).
        #[arg(long)]
        region: Option<String>,
    },
    /// Check that a deployed function runs lambdaml: invoke it synchronously COUNT times
    /// and print each answer (version, architecture, memory, warm or cold) and round trip.
    Ping {
        /// The function's name or ARN.
        #[arg(long)]
        function: String,
        /// Invocations, one after another (the first may be a cold start).
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// How long the function holds each invocation, in ms (to try its timeout).
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run a local AWS Lambda serving one function whose code is the lambdaml binary: the
    /// Invoke API for the AWS SDK (point it there with AWS_ENDPOINT_URL_LAMBDA), instances
    /// started on demand and reused, killed at their timeout. For tests and trying
    /// `--platform lambda:NAME` without an account.
    Emulate {
        /// The function's name.
        #[arg(long, default_value = "lambdaml")]
        function: String,
        /// The function's code (its `bootstrap`); this lambdaml binary by default.
        #[arg(long)]
        exe: Option<PathBuf>,
        /// Instances that may run at once (the function's reserved concurrency).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Seconds one invocation may run before its instance is killed (1-900).
        #[arg(long, default_value_t = 900.0)]
        timeout: f64,
        /// Memory of each instance in MB (128-10240); one that uses more is killed.
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        /// Where each instance's output goes (instance-N.log); this process's stderr if
        /// absent.
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Address of the Invoke API (port 0: a free one, printed).
        #[arg(long, default_value = "127.0.0.1:9001")]
        addr: SocketAddr,
        /// Start with no function: `lambdaml lambda deploy --name FUNCTION` creates it from
        /// its zip (then --exe, --timeout and --memory are the deployment's).
        #[arg(long, conflicts_with = "exe")]
        no_code: bool,
    },
}

/// Runs a `lambdaml lambda` command.
pub fn command(cmd: LambdaCommand) -> anyhow::Result<()> {
    match cmd {
        LambdaCommand::Deploy {
            name,
            role,
            zip,
            memory,
            timeout,
            arch,
            env,
            region,
        } => {
            let d = Deployment {
                name,
                role,
                zip,
                memory_mb: memory,
                timeout_s: timeout,
                arch: Architecture::from(arch.as_str()),
                env,
                region,
            };
            let report = super::runtime()?.block_on(deploy::deploy(&d))?;
            for step in &report.steps {
                println!("{step}");
            }
            println!("function: {}", report.arn);
            Ok(())
        }
        LambdaCommand::Ping {
            function,
            count,
            sleep_ms,
            json,
        } => super::runtime()?.block_on(ping(&function, count, sleep_ms, json)),
        LambdaCommand::Emulate {
            function,
            exe,
            concurrency,
            timeout,
            memory,
            log_dir,
            addr,
            no_code,
        } => {
            crate::platform::lambda::check_function_name(&function).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                (1.0..=900.0).contains(&timeout),
                "--timeout must be between 1 and 900 seconds (Lambda's limits), got {timeout}"
            );
            anyhow::ensure!(
                (128..=10_240).contains(&memory),
                "--memory must be between 128 and 10240 MB (Lambda's limits), got {memory}"
            );
            anyhow::ensure!(
                (1..=1000).contains(&concurrency),
                "--concurrency must be between 1 and 1000, got {concurrency}"
            );
            let exe = match exe {
                Some(e) => e,
                None => std::env::current_exe().context("locating the lambdaml binary")?,
            };
            let deployed = (!no_code).then(|| FunctionConfig {
                exe,
                timeout: Duration::from_secs_f64(timeout),
                memory_mb: memory,
                env: Vec::new(),
                role: String::new(),
                arch: std::env::consts::ARCH.replace("aarch64", "arm64"),
            });
            let opts = EmulatorOptions {
                function,
                concurrency,
                log_dir,
                addr,
                deployed,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(emulator::serve(opts, |a| {
                    use std::io::Write as _;
                    println!("listening on {a}");
                    let _ = std::io::stdout().flush();
                }))
                .with_context(|| format!("serving the local Lambda on {addr}"))
        }
    }
}

/// Invokes `function` `count` times with a ping and prints what it answers.
async fn ping(function: &str, count: usize, sleep_ms: u64, json: bool) -> anyhow::Result<()> {
    use crate::job::event::{Ping, Pong};
    crate::platform::lambda::check_function_name(function).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (1..=1000).contains(&count),
        "--count must be between 1 and 1000, got {count}"
    );
    let platform = LambdaPlatform::connect(LambdaFunction {
        function: function.to_string(),
        timeout_s: 0.0,
        memory_mb: 0,
    })
    .await;
    let payload = serde_json::to_vec(&Invocation::Ping(Ping { sleep_ms }))?;
    for _ in 0..count {
        let started = std::time::Instant::now();
        let answer = platform.call(&payload).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let pong: Pong = serde_json::from_slice(&answer).with_context(|| {
            format!(
                "{function} answered something else than lambdaml: {}",
                String::from_utf8_lossy(&answer)
            )
        })?;
        if json {
            let mut v = serde_json::to_value(&pong)?;
            v["round_trip_ms"] = serde_json::json!(ms);
            println!("{v}");
        } else {
            let start = if pong.served == 1 { "cold" } else { "warm" };
            let memory = pong.memory_mb.map_or("?".to_string(), |m| m.to_string());
            println!(
                "{function}: lambdaml {} on {}, {memory} MB, pid {}, {start} ({} served): \
                 {ms:.1} ms",
                pong.version, pong.arch, pong.pid, pong.served
            );
        }
    }
    Ok(())
}

/// Serves worker events as a Lambda function's instance, until Lambda ends the process.
pub fn serve_runtime() -> anyhow::Result<()> {
    super::runtime()?
        .block_on(lambda_runtime::run(service_fn(handle)))
        .map_err(|e| anyhow::anyhow!("the Lambda runtime stopped: {e}"))
}

/// Invocations this instance has served.
static SERVED: AtomicU64 = AtomicU64::new(0);

/// One invocation: the same event and the same worker as on the local platform. A failure
/// reaches Lambda (and its logs) with the whole chain of causes.
async fn handle(
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, lambda_runtime::Diagnostic> {
    serve_one(event)
        .await
        .map_err(|e| lambda_runtime::Diagnostic {
            error_type: "lambdaml::WorkerError".into(),
            error_message: format!("{e:#}"),
        })
}

async fn serve_one(event: LambdaEvent<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    let (payload, context) = event.into_parts();
    let invocation: Invocation =
        serde_json::from_value(payload).context("parsing the worker event")?;
    let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    match invocation {
        Invocation::Ping(p) => Ok(serde_json::to_value(p.answer(served).await?)?),
        Invocation::BenchChannel(e) => {
            bench::worker(e).await?;
            Ok(serde_json::json!({ "outcome": "measured" }))
        }
        Invocation::Train(e) => {
            let deadline = deadline_of(context.deadline(), e.job.config.invocation_timeout);
            let watchdog = Watchdog::start(&e, deadline);
            if stalls(&e) {
                tracing::warn!("{STALL_ENV} is set: stalling past the deadline");
                tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(900))
                    .await;
            }
            let outcome = worker::run(*e, Some(deadline)).await;
            watchdog.disarm();
            let outcome = outcome?;
            tracing::info!(?outcome, "invocation ends");
            Ok(serde_json::json!({ "outcome": format!("{outcome:?}") }))
        }
    }
}

/// Fault injection for tests: set to a worker's index, its first invocation stalls without
/// checkpointing, as a worker stuck in one long computation would.
const STALL_ENV: &str = "LAMBDAML_FAULT_STALL_WORKER";

fn stalls(e: &WorkerEvent) -> bool {
    e.invocation == 0 && std::env::var(STALL_ENV).is_ok_and(|w| w.parse() == Ok(e.worker))
}

/// The invocation's deadline: Lambda's, unless it is already past (some emulators send a
/// constant), in which case `timeout_s` from now.
fn deadline_of(given: SystemTime, timeout_s: f64) -> SystemTime {
    let now = SystemTime::now();
    if given > now {
        given
    } else {
        now + Duration::from_secs_f64(timeout_s)
    }
}

/// At most how long before its deadline an invocation that has not checkpointed reports
/// that it is about to be ended (Lambda kills it without a word, and its peers would
/// otherwise wait for it until their `wait_timeout`); at most a quarter of its re-invoke
/// margin: a worker stops waiting half its margin before the deadline, and has the next
/// quarter to checkpoint and invoke itself without being reported.
const REPORT_BEFORE_DEADLINE: Duration = Duration::from_secs(1);
/// How long past its deadline an invocation still running ends itself: Lambda would have
/// ended it; a process whose Lambda is gone (a killed local Lambda) must not run on.
const EXIT_AFTER_DEADLINE: Duration = Duration::from_secs(2);

/// Watches one invocation from a thread of its own (the worker may be busy computing).
struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(event: &WorkerEvent, deadline: SystemTime) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let event = event.clone();
        std::thread::spawn(move || {
            let margin = Duration::from_secs_f64(event.job.config.margin() / 4.0);
            let report_at = deadline - REPORT_BEFORE_DEADLINE.min(margin);
            if !sleep_until(report_at, &flag) {
                return;
            }
            tracing::error!("the invocation is about to reach its deadline without checkpointing");
            let why = "ran up to its deadline (the function's timeout) without checkpointing \
                       and was ended by Lambda: the invocation is too short for loading the \
                       data plus one round; raise the function's timeout or --reinvoke-margin";
            if let Ok(rt) = super::runtime()
                && let Err(e) = rt.block_on(worker::report_lost(&event, why, ""))
            {
                tracing::error!("could not report it: {e:#}");
            }
            if sleep_until(deadline + EXIT_AFTER_DEADLINE, &flag) {
                eprintln!("invocation deadline passed: ending the instance");
                std::process::exit(124);
            }
        });
        Watchdog { done }
    }

    fn disarm(self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Sleeps until `t` unless `done` is set first; true when `t` came.
fn sleep_until(t: SystemTime, done: &AtomicBool) -> bool {
    loop {
        if done.load(Ordering::SeqCst) {
            return false;
        }
        match t.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => std::thread::sleep(left.min(Duration::from_millis(200))),
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_past_deadline_is_unknown() {
        let now = SystemTime::now();
        let ahead = now + Duration::from_secs(30);
        assert_eq!(deadline_of(ahead, 5.0), ahead);
        // cargo lambda watch sends 600000 ms since the epoch: 1970.
        let bogus = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        let taken = deadline_of(bogus, 5.0);
        let left = taken.duration_since(now).unwrap();
        assert!(left >= Duration::from_secs(5) && left < Duration::from_secs(6));
    }
}
