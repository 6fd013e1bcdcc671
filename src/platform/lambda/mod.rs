//! AWS Lambda platform: each invocation is an asynchronous `Invoke` (`InvocationType::Event`)
//! of a function whose code is the `lambdaml` binary (it serves worker events through
//! `lambda_runtime` when Lambda starts it). A worker near its deadline invokes the same
//! function again with its next event.
//!
//! The client honours the standard AWS settings (`AWS_REGION`, credentials, and
//! `AWS_ENDPOINT_URL_LAMBDA` / `AWS_ENDPOINT_URL`), so the local Lambda of [`emulator`]
//! needs no code path of its own.

pub mod deploy;
pub mod emulator;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use serde::{Deserialize, Serialize};

use super::{FunctionFacts, Platform, PlatformError};

/// The Lambda function a job's workers run as.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LambdaFunction {
    /// Its name or ARN (with an alias or version, if given), as `--platform lambda:NAME`.
    pub function: String,
    /// Seconds each invocation may run (the function's timeout).
    pub timeout_s: f64,
    /// Memory of each invocation, in MB (the function's memory size).
    pub memory_mb: u32,
}

/// Attempts per `Invoke`, throttling (429) and transient errors included: with the SDK's
/// exponential backoff from 100 ms capped at 5 s, about 30 s of retrying.
const INVOKE_ATTEMPTS: u32 = 10;

/// The AWS settings for Lambda calls: `region` or the standard settings' (else
/// `us-east-1`), `attempts` per call with exponential backoff (100 ms to 5 s), and bounded
/// request times so that an unreachable endpoint is an error, not a hang.
async fn sdk_config(region: Option<String>, attempts: u32) -> aws_config::SdkConfig {
    let region = RegionProviderChain::first_try(region.map(aws_config::Region::new))
        .or_default_provider()
        .or_else("us-east-1");
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // A code upload of up to 50 MB is one request.
                .operation_attempt_timeout(Duration::from_secs(120))
                .build(),
        )
        .load()
        .await
}

/// Starts invocations of a Lambda function.
#[derive(Debug, Clone)]
pub struct LambdaPlatform {
    f: LambdaFunction,
    client: aws_sdk_lambda::Client,
}

impl LambdaPlatform {
    /// A client for `f`'s function, from the standard AWS settings.
    pub async fn connect(f: LambdaFunction) -> Self {
        let config = sdk_config(None, INVOKE_ATTEMPTS).await;
        LambdaPlatform {
            f,
            client: aws_sdk_lambda::Client::new(&config),
        }
    }

    /// Invokes the function synchronously (`RequestResponse`) and returns its answer; a
    /// function error is an error with the function's message.
    pub async fn call(&self, payload: &[u8]) -> Result<Vec<u8>, PlatformError> {
        let fail = |message: String| PlatformError::Invoke {
            name: self.f.function.clone(),
            message,
        };
        let out = self
            .send(InvocationType::RequestResponse, payload)
            .await
            .map_err(|e| fail(self.explain("invoke", e)))?;
        let body = out
            .payload()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default();
        if let Some(kind) = out.function_error() {
            return Err(fail(format!(
                "the function failed ({kind}): {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(body)
    }

    /// One `Invoke` of the function with `payload`.
    async fn send(
        &self,
        kind: InvocationType,
        payload: &[u8],
    ) -> Result<InvokeOutput, SdkError<InvokeError>> {
        self.client
            .invoke()
            .function_name(&self.f.function)
            .invocation_type(kind)
            .payload(Blob::new(payload))
            .send()
            .await
    }

    /// The error of a failed call to the function, in words that say what to do.
    fn explain<E>(&self, what: &str, e: SdkError<E>) -> String
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        explain(&self.f.function, what, e)
    }
}

#[async_trait::async_trait]
impl Platform for LambdaPlatform {
    async fn check(&self, workers: usize) -> Result<Option<FunctionFacts>, PlatformError> {
        let unfit = PlatformError::Unfit;
        let config = match self
            .client
            .get_function_configuration()
            .function_name(&self.f.function)
            .send()
            .await
        {
            Ok(c) => c,
            Err(e) if is_decisive(&e) => {
                return Err(unfit(self.explain("read the configuration of", e)));
            }
            // Some emulators (cargo lambda watch) serve only Invoke: the job goes on with
            // its own settings, and an unusable function shows at the first Invoke.
            Err(e) => {
                tracing::warn!(
                    "{}; going on with --invocation-timeout and --memory-mb",
                    self.explain("read the configuration of", e)
                );
                return Ok(None);
            }
        };
        let reserved = match self
            .client
            .get_function_concurrency()
            .function_name(unqualified(&self.f.function))
            .send()
            .await
        {
            Ok(c) => c.reserved_concurrent_executions(),
            Err(e) if is_decisive(&e) => {
                return Err(unfit(self.explain("read the concurrency of", e)));
            }
            Err(e) => {
                tracing::warn!("{}", self.explain("read the concurrency of", e));
                None
            }
        };
        if let Some(reserved) = reserved
            && (reserved.max(0) as usize) < workers
        {
            return Err(unfit(format!(
                "the Lambda function '{}' can run at most {reserved} invocations at once \
                     (its reserved concurrency), fewer than the job's {workers} workers, which \
                     must all run together: raise it (aws lambda put-function-concurrency \
                     --reserved-concurrent-executions {workers}) or use --workers {reserved}",
                self.f.function
            )));
        }
        let facts = FunctionFacts {
            timeout_s: config.timeout().map_or(self.f.timeout_s, f64::from),
            memory_mb: config
                .memory_size()
                .map_or(self.f.memory_mb, |m| m.max(0) as u32),
        };
        Ok(Some(facts))
    }

    async fn invoke(&self, name: &str, payload: &[u8]) -> Result<(), PlatformError> {
        let out = self
            .send(InvocationType::Event, payload)
            .await
            .map_err(|e| PlatformError::Invoke {
                name: name.to_string(),
                message: self.explain("invoke", e),
            })?;
        tracing::debug!(name, status = out.status_code(), "invoked");
        Ok(())
    }
}

/// The error of a failed call to `function`, in words that say what to do.
pub(crate) fn explain<E>(function: &str, what: &str, e: SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().unwrap_or_default().to_string();
    let context = DisplayErrorContext(&e).to_string();
    if matches!(e, SdkError::DispatchFailure(_)) && context.contains("loading credentials") {
        return format!(
            "cannot {what} '{function}': no AWS credentials were found (set \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; a local Lambda \
             accepts any)"
        );
    }
    match code.as_str() {
        "ResourceNotFoundException" => format!(
            "there is no Lambda function '{function}' in this region: deploy it first \
             (lambdaml lambda deploy --name ...), or check AWS_REGION"
        ),
        "AccessDeniedException" | "AccessDenied" => format!(
            "not allowed to {what} '{function}': the caller needs lambda:InvokeFunction, \
             lambda:GetFunctionConfiguration and lambda:GetFunctionConcurrency on it (see \
             the README's IAM policy); {}",
            DisplayErrorContext(&e)
        ),
        "TooManyRequestsException" => format!(
            "Lambda kept throttling the {what} of '{function}' after {INVOKE_ATTEMPTS} \
             attempts (the account's or the function's concurrency is used up): {}",
            DisplayErrorContext(&e)
        ),
        _ => format!("{what} '{function}' failed: {}", DisplayErrorContext(&e)),
    }
}

/// True for the errors that settle whether a job can run: the function is missing, the
/// caller may not use it, or there are no credentials.
fn is_decisive<E>(e: &SdkError<E>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let no_credentials = matches!(e, SdkError::DispatchFailure(_))
        && DisplayErrorContext(e)
            .to_string()
            .contains("loading credentials");
    no_credentials
        || matches!(
            e.code(),
            Some("ResourceNotFoundException" | "AccessDeniedException" | "AccessDenied")
        )
}

/// `function` without its qualifier (alias or version): what the concurrency calls take.
fn unqualified(function: &str) -> &str {
    // name[:qualifier], account:function:name[:qualifier],
    // arn:partition:lambda:region:account:function:name[:qualifier]
    let keep = if function.starts_with("arn:") {
        7
    } else if function.contains(":function:") {
        3
    } else {
        1
    };
    match function.match_indices(':').nth(keep - 1) {
        Some((at, _)) => &function[..at],
        None => function,
    }
}

/// True when the Lambda endpoint in the environment (`AWS_ENDPOINT_URL_LAMBDA`, else
/// `AWS_ENDPOINT_URL`) is on this machine's loopback: a local Lambda.
pub fn endpoint_is_local() -> bool {
    let url = std::env::var("AWS_ENDPOINT_URL_LAMBDA")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_default();
    let host = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .trim_start_matches('[');
    ["127.", "localhost", "::1"]
        .iter()
        .any(|h| host.starts_with(h))
}

/// Checks a function name or ARN as given to `--platform lambda:NAME`: what Lambda accepts
/// (letters, digits, `-`, `_`, `:` and `.` of ARNs and qualifiers, at most 170 characters).
pub fn check_function_name(function: &str) -> Result<(), String> {
    if function.is_empty() {
        return Err("lambda: needs a function name or ARN, e.g. lambda:lambdaml-worker".into());
    }
    if function.len() > 170 {
        return Err(format!(
            "the Lambda function name is {} characters long; Lambda allows at most 170",
            function.len()
        ));
    }
    if let Some(c) = function
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.' | '$')))
    {
        return Err(format!(
            "'{function}' is not a Lambda function name or ARN: it holds '{c}'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_are_dropped_from_every_form_of_name() {
        assert_eq!(unqualified("worker"), "worker");
        assert_eq!(unqualified("worker:prod"), "worker");
        assert_eq!(
            unqualified("123456789012:function:worker:7"),
            "123456789012:function:worker"
        );
        let arn = "arn:aws:lambda:eu-west-1:123456789012:function:worker";
        assert_eq!(unqualified(arn), arn);
        assert_eq!(unqualified(&format!("{arn}:$LATEST")), arn);
    }

    #[test]
    fn function_names_are_checked() {
        assert!(check_function_name("lambdaml-worker").is_ok());
        assert!(check_function_name("arn:aws:lambda:us-east-1:1:function:w:prod").is_ok());
        assert!(check_function_name("").is_err());
        assert!(check_function_name("a/b").is_err());
        assert!(check_function_name(&"x".repeat(171)).is_err());
    }
}
