//! `lambdaml lambda deploy`: creates or updates the worker function from `bootstrap.zip`
//! with the AWS SDK, and sets what a training job needs of it deliberately (no automatic
//! retries of failed asynchronous invocations, a bounded event age).

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Architecture, Environment, FunctionCode, Runtime};

/// Largest zip Lambda takes in a direct upload.
pub const MAX_ZIP_BYTES: u64 = 50 * 1024 * 1024;
/// How long a queued event may wait for an instance before Lambda drops it: a worker that
/// cannot start within this bound would only find its job over.
pub const MAX_EVENT_AGE_S: i32 = 900;

/// The function to create or update.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The function's name.
    pub name: String,
    /// ARN of the IAM role the function runs as.
    pub role: String,
    /// The code: a zip holding the `lambdaml` binary as `bootstrap`.
    pub zip: PathBuf,
    /// Memory of each invocation, in MB (128-10240).
    pub memory_mb: u32,
    /// Seconds each invocation may run (1-900).
    pub timeout_s: u32,
    /// `arm64` (Graviton, cheaper per GB-s) or `x86_64`: what the zip was built for.
    pub arch: Architecture,
    /// Environment variables of the function (`KEY=VALUE`).
    pub env: Vec<(String, String)>,
    /// The AWS region; the standard settings' when `None`.
    pub region: Option<String>,
}

/// What `deploy` did, one line per step.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeployReport {
    /// The function's ARN.
    pub arn: String,
    /// True when the function was created, false when updated.
    pub created: bool,
    /// The steps taken, in words.
    pub steps: Vec<String>,
}

/// Checks a deployment before anything is read or sent.
fn check(d: &Deployment) -> anyhow::Result<u64> {
    super::check_function_name(&d.name).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        (128..=10_240).contains(&d.memory_mb),
        "--memory must be between 128 and 10240 MB, got {}",
        d.memory_mb
    );
    anyhow::ensure!(
        (1..=900).contains(&d.timeout_s),
        "--timeout must be between 1 and 900 s, got {}",
        d.timeout_s
    );
    anyhow::ensure!(
        d.role.starts_with("arn:") && d.role.contains(":role/"),
        "--role must be an IAM role's ARN (arn:aws:iam::ACCOUNT:role/NAME), got '{}'",
        d.role
    );
    let len = std::fs::metadata(&d.zip)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", d.zip.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_ZIP_BYTES,
        "{} is {} MB; Lambda takes at most {} MB in a direct upload",
        d.zip.display(),
        len / (1024 * 1024),
        MAX_ZIP_BYTES / (1024 * 1024)
    );
    Ok(len)
}

/// Creates the function, or updates its code and configuration when it exists; then sets
/// its asynchronous-invocation policy.
pub async fn deploy(d: &Deployment) -> anyhow::Result<DeployReport> {
    let zip_bytes = check(d)?;
    let zip =
        std::fs::read(&d.zip).map_err(|e| anyhow::anyhow!("reading {}: {e}", d.zip.display()))?;
    let config = super::sdk_config(d.region.clone(), 3).await;
    let client = aws_sdk_lambda::Client::new(&config);
    let name = d.name.as_str();
    let env = Environment::builder()
        .set_variables(Some(d.env.iter().cloned().collect()))
        .build();
    let fail = |message: String| anyhow::anyhow!(message);
    let mut report = DeployReport::default();
    let existing = match client.get_function().function_name(name).send().await {
        Ok(f) => f
            .configuration()
            .and_then(|c| c.function_arn())
            .map(str::to_string),
        Err(e) if e.code() == Some("ResourceNotFoundException") => None,
        Err(e) => return Err(fail(super::explain(name, "looking up", e))),
    };
    let mb = zip_bytes as f64 / (1024.0 * 1024.0);
    match existing {
        None => {
            let out = client
                .create_function()
                .function_name(name)
                .runtime(Runtime::Providedal2023)
                .handler("bootstrap")
                .role(&d.role)
                .architectures(d.arch.clone())
                .memory_size(d.memory_mb as i32)
                .timeout(d.timeout_s as i32)
                .environment(env)
                .description("lambdaml worker (https://github.com/lambdaml)")
                .code(FunctionCode::builder().zip_file(Blob::new(zip)).build())
                .send()
                .await
                .map_err(|e| fail(super::explain(name, "creating", e)))?;
            report.arn = out.function_arn().unwrap_or(name).to_string();
            report.created = true;
            report.steps.push(format!(
                "created {name} ({}, provided.al2023, {} MB, {} s) from {} ({mb:.1} MB)",
                d.arch,
                d.memory_mb,
                d.timeout_s,
                d.zip.display()
            ));
            client
                .wait_until_function_active_v2()
                .function_name(name)
                .wait(Duration::from_secs(300))
                .await
                .map_err(|e| fail(format!("waiting for '{name}': {}", DisplayErrorContext(&e))))?;
        }
        Some(arn) => {
            report.arn = arn;
            client
                .update_function_code()
                .function_name(name)
                .architectures(d.arch.clone())
                .zip_file(Blob::new(zip))
                .send()
                .await
                .map_err(|e| fail(super::explain(name, "updating the code of", e)))?;
            report.steps.push(format!(
                "updated the code of {name} from {} ({mb:.1} MB, {})",
                d.zip.display(),
                d.arch
            ));
            // Lambda refuses a configuration change while the code update is in progress.
            wait_updated(&client, name).await?;
            client
                .update_function_configuration()
                .function_name(name)
                .role(&d.role)
                .memory_size(d.memory_mb as i32)
                .timeout(d.timeout_s as i32)
                .environment(env)
                .send()
                .await
                .map_err(|e| fail(super::explain(name, "configuring", e)))?;
            report.steps.push(format!(
                "set {name} to {} MB, {} s, role {}",
                d.memory_mb, d.timeout_s, d.role
            ));
            wait_updated(&client, name).await?;
        }
    }
    client
        .put_function_event_invoke_config()
        .function_name(name)
        .maximum_retry_attempts(0)
        .maximum_event_age_in_seconds(MAX_EVENT_AGE_S)
        .send()
        .await
        .map_err(|e| fail(super::explain(name, "setting the invoke policy of", e)))?;
    report.steps.push(format!(
        "set {name}'s asynchronous invocations to 0 automatic retries (a failed worker is \
         reported to the driver, which decides) and a maximum event age of {MAX_EVENT_AGE_S} s"
    ));
    Ok(report)
}

/// Waits until the function's last update is done (Lambda refuses another change, and may
/// run the old code, until then).
async fn wait_updated(client: &aws_sdk_lambda::Client, name: &str) -> anyhow::Result<()> {
    client
        .wait_until_function_updated_v2()
        .function_name(name)
        .wait(Duration::from_secs(300))
        .await
        .map_err(|e| anyhow::anyhow!("waiting for '{name}': {}", DisplayErrorContext(&e)))?;
    Ok(())
}

/// Parses `KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not KEY=VALUE"))?;
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("'{k}' is not an environment variable name"));
    }
    Ok((k.to_string(), v.to_string()))
}
