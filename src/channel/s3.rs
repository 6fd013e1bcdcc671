//! `s3://bucket[/prefix]` — Amazon S3 or an S3-compatible server. The bucket must exist.
//! Objects have no practical size limit here (single PUTs up to 5 GB), so no chunking.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

use super::aws::{classify, endpoint_overridden, sdk_config};
use super::meter::{self, Op};
use super::retry::{BackendError, RetryPolicy, with_retries};
use super::{Channel, ChannelError, PollPolicy};

/// An S3 channel.
#[derive(Debug)]
pub struct S3Channel {
    url: String,
    client: Client,
    bucket: String,
    prefix: String,
    retry: RetryPolicy,
}

impl S3Channel {
    /// Opens the objects under `prefix` (no leading or trailing '/') in `bucket`, checking
    /// that the bucket exists; `url` names the channel in messages.
    pub async fn open(
        url: &str,
        bucket: &str,
        prefix: &str,
        retry: RetryPolicy,
    ) -> Result<Self, ChannelError> {
        let conf = sdk_config().await;
        let s3 = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(endpoint_overridden("AWS_ENDPOINT_URL_S3"))
            .build();
        let channel = S3Channel {
            url: url.to_string(),
            client: Client::from_conf(s3),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            retry,
        };
        with_retries(&channel.retry, url, "open bucket", bucket, || async {
            match channel.client.head_bucket().bucket(bucket).send().await {
                Ok(_) => Ok(()),
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                    Err(BackendError::permanent(format!(
                        "bucket '{bucket}' does not exist (create it first, e.g. `aws s3 mb s3://{bucket}`)"
                    )))
                }
                Err(e) => Err(classify(e)),
            }
        })
        .await?;
        Ok(channel)
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Channel for S3Channel {
    fn url(&self) -> &str {
        &self.url
    }

    fn poll_policy(&self) -> PollPolicy {
        PollPolicy {
            initial: Duration::from_millis(2),
            max: Duration::from_millis(50),
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<(), ChannelError> {
        with_retries(&self.retry, &self.url, "put", key, || async {
            meter::record(Op::Put, 1, value.len() as u64);
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.object(key))
                .body(ByteStream::from(value.clone()))
                .send()
                .await
                .map(drop)
                .map_err(classify)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, ChannelError> {
        with_retries(&self.retry, &self.url, "get", key, || async {
            meter::record(Op::Get, 1, 0);
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.object(key))
                .send()
                .await
            {
                Ok(out) => out
                    .body
                    .collect()
                    .await
                    .map(|b| {
                        let b = b.into_bytes();
                        meter::record(Op::Get, 0, b.len() as u64);
                        Some(b)
                    })
                    .map_err(BackendError::transient),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(classify(e)),
            }
        })
        .await
    }

    /// S3 has no multi-get: the objects are fetched concurrently, so a poll of N keys takes
    /// about one request's latency instead of N.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ChannelError> {
        futures_util::future::try_join_all(keys.iter().map(|k| self.get(k))).await
    }

    async fn delete(&self, keys: &[String]) -> Result<(), ChannelError> {
        for chunk in keys.chunks(1000) {
            let mut objects = Vec::with_capacity(chunk.len());
            for key in chunk {
                objects.push(
                    ObjectIdentifier::builder()
                        .key(self.object(key))
                        .build()
                        .expect("key is set"),
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .expect("objects are set");
            with_retries(&self.retry, &self.url, "delete", &chunk[0], || async {
                meter::record(Op::Delete, 1, 0);
                let out = self
                    .client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(classify)?;
                match out.errors().first() {
                    Some(e) => Err(BackendError::transient(format!(
                        "{} keys not deleted, first {:?}: {:?}",
                        out.errors().len(),
                        e.key(),
                        e.message()
                    ))),
                    None => Ok(()),
                }
            })
            .await?;
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Option<Vec<String>>, ChannelError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = with_retries(&self.retry, &self.url, "list", prefix, || async {
                meter::record(Op::List, 1, 0);
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(self.object(prefix))
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(classify)
            })
            .await?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(&self.prefix))
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(Some(keys))
    }
}
