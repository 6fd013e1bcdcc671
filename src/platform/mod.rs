//! Platforms start worker invocations: fire-and-forget, with a deadline, like AWS Lambda's
//! asynchronous `Invoke`. The driver never holds on to an invocation; it learns everything
//! from the channel.

pub mod lambda;
pub mod local;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

pub use lambda::{LambdaFunction, LambdaPlatform};
pub use local::LocalPlatform;

/// Environment variable through which the local platform tells a worker its deadline
/// (milliseconds since the Unix epoch), as Lambda's context does.
pub const DEADLINE_ENV: &str = "LAMBDAML_DEADLINE_MS";

/// Errors starting an invocation.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The worker could not be started.
    #[error("could not invoke {name}: {message}")]
    Invoke {
        /// The invocation's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The function cannot run the job (missing, not allowed, too little concurrency).
    #[error("{0}")]
    Unfit(String),
}

/// What the platform says about the function, checked before a job starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FunctionFacts {
    /// Seconds each invocation may run, as the function is configured.
    pub timeout_s: f64,
    /// Memory of each invocation, in MB, as the function is configured.
    pub memory_mb: u32,
}

/// Starts worker invocations.
#[async_trait::async_trait]
pub trait Platform: Send + Sync {
    /// Starts one invocation of the worker function with `payload` (the event, JSON) and
    /// returns once it is queued, without waiting for it to run. `name` labels its logs.
    async fn invoke(&self, name: &str, payload: &[u8]) -> Result<(), PlatformError>;

    /// Checks, before a job starts, that the function exists and can run `workers`
    /// invocations at once (all of a job's workers must run together), and says how it is
    /// configured; `None` where the platform's configuration is the job's own.
    async fn check(&self, workers: usize) -> Result<Option<FunctionFacts>, PlatformError>;

    /// Resolves when an invocation started from this process may have ended, so that a
    /// driver reads its records at once rather than at its next poll (which would add up to
    /// a poll interval to every job). Platforms that cannot tell never resolve.
    async fn invocation_ended(&self) {
        std::future::pending::<()>().await
    }
}

/// Where workers run: the `platform` field and `--platform` flag, chosen once when a job
/// (or a bench) starts and carried to the workers as a [`PlatformSpec`]. Serialised as its
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, SerializeDisplay, DeserializeFromStr)]
pub enum PlatformChoice {
    /// `local`: processes of the `lambdaml` binary on this machine.
    #[default]
    Local,
    /// `lambda:<function>`: invocations of an AWS Lambda function (a name, a partial or a
    /// full ARN, with or without a qualifier) running the `lambdaml` binary.
    Lambda(String),
}

impl std::str::FromStr for PlatformChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "local" => Ok(PlatformChoice::Local),
            Some(("lambda", function)) => {
                lambda::check_function_name(function)?;
                Ok(PlatformChoice::Lambda(function.to_string()))
            }
            _ => Err(format!(
                "unknown platform '{s}' (known: local, lambda:<function name or ARN>)"
            )),
        }
    }
}

impl PlatformChoice {
    /// True when the workers run on this machine and can read its files: the local
    /// platform, or a Lambda reached on loopback (the local Lambda).
    pub fn shares_this_machine(&self) -> bool {
        match self {
            PlatformChoice::Local => true,
            PlatformChoice::Lambda(_) => lambda::endpoint_is_local(),
        }
    }
}

impl std::fmt::Display for PlatformChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlatformChoice::Local => f.write_str("local"),
            PlatformChoice::Lambda(function) => write!(f, "lambda:{function}"),
        }
    }
}

/// Everything a worker needs to re-create the platform and invoke itself again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlatformSpec {
    /// Local processes of the `lambdaml` binary.
    Local(FunctionSpec),
    /// Invocations of an AWS Lambda function.
    Lambda(LambdaFunction),
}

/// What every platform needs to know about the function it invokes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionSpec {
    /// The `lambdaml` binary of this process (it supervises local invocations).
    pub supervisor: std::path::PathBuf,
    /// The binary an invocation runs (`lambdaml worker`; a wrapper in tests).
    pub exe: std::path::PathBuf,
    /// Where each invocation's stdout/stderr goes.
    pub log_dir: std::path::PathBuf,
    /// Seconds each invocation may run.
    pub timeout_s: f64,
    /// Memory of each invocation, in MB: one that uses more is ended.
    pub memory_mb: u32,
}

impl PlatformSpec {
    /// The spec of `choice` for the function `f` (a Lambda function keeps only what it
    /// needs of `f`: the rest is the function's own configuration).
    pub fn new(choice: &PlatformChoice, f: FunctionSpec) -> Self {
        match choice {
            PlatformChoice::Local => PlatformSpec::Local(f),
            PlatformChoice::Lambda(function) => PlatformSpec::Lambda(LambdaFunction {
                function: function.clone(),
                timeout_s: f.timeout_s,
                memory_mb: f.memory_mb,
            }),
        }
    }

    /// The last `n` lines the invocations named `name` logged, where this machine can read
    /// them (local processes); empty otherwise (Lambda logs to CloudWatch).
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        match self {
            PlatformSpec::Local(f) => local::log_tail(&f.log_dir.join(format!("{name}.log")), n),
            PlatformSpec::Lambda(_) => String::new(),
        }
    }

    /// Builds the platform this spec describes (a Lambda client loads the AWS settings).
    pub async fn connect(&self) -> Box<dyn Platform> {
        match self {
            PlatformSpec::Local(f) => Box::new(LocalPlatform::new(f.clone())),
            PlatformSpec::Lambda(f) => Box::new(LambdaPlatform::connect(f.clone()).await),
        }
    }
}
