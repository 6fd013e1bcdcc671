//! What the S3 and DynamoDB channels share: the SDK configuration (region, credentials and
//! endpoint from the standard AWS settings, `AWS_ENDPOINT_URL` included) and the split of
//! SDK errors into transient and permanent.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::retry::BackendError;

/// Loads the AWS configuration from the environment, with bounded request times so that an
/// unreachable endpoint turns into a retryable timeout rather than a hang.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(RegionProviderChain::default_provider().or_else("us-east-1"))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// True when an endpoint override is configured (a local S3-compatible server, which
/// needs path-style addressing).
pub fn endpoint_overridden(service_env: &str) -> bool {
    std::env::var_os("AWS_ENDPOINT_URL").is_some() || std::env::var_os(service_env).is_some()
}

/// Throttling, server errors and transport failures are transient; the rest is not.
pub fn classify<E>(e: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or_default();
            status >= 500
                || status == 429
                || code.contains("Throttl")
                || code == "SlowDown"
                || code == "ProvisionedThroughputExceededException"
                || code == "RequestLimitExceeded"
        }
        _ => false,
    };
    let message = DisplayErrorContext(&e).to_string();
    BackendError {
        transient,
        source: message.into(),
    }
}
