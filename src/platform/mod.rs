//! Platforms start worker invocations: fire-and-forget, with a deadline, like AWS Lambda's
//! asynchronous `Invoke`. The driver never holds on to an invocation; it learns everything
//! from the channel.

pub mod local;

use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

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
}

/// Starts worker invocations.
pub trait Platform: Send + Sync {
    /// Starts one invocation of the worker function with `payload` (the event, JSON) and
    /// returns at once. `name` labels its logs.
    fn invoke(&self, name: &str, payload: &[u8]) -> Result<(), PlatformError>;
}

/// Where workers run: the `platform` field and `--platform` flag, chosen once when a job
/// (or a bench) starts and carried to the workers as a [`PlatformSpec`]. Serialised as its
/// name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, SerializeDisplay, DeserializeFromStr,
)]
pub enum PlatformChoice {
    /// `local`: processes of the `lambdaml` binary on this machine.
    #[default]
    Local,
}

impl std::str::FromStr for PlatformChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(PlatformChoice::Local),
            other => Err(format!("unknown platform '{other}' (known: local)")),
        }
    }
}

impl std::fmt::Display for PlatformChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlatformChoice::Local => f.write_str("local"),
        }
    }
}

/// Everything a worker needs to re-create the platform and invoke itself again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlatformSpec {
    /// Local processes of the `lambdaml` binary.
    Local(FunctionSpec),
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
    /// The spec of `choice` for the function `f`.
    pub fn new(choice: PlatformChoice, f: FunctionSpec) -> Self {
        match choice {
            PlatformChoice::Local => PlatformSpec::Local(f),
        }
    }

    /// Builds the platform this spec describes.
    pub fn build(&self) -> Box<dyn Platform> {
        match self {
            PlatformSpec::Local(f) => Box::new(LocalPlatform::new(f.clone())),
        }
    }
}
