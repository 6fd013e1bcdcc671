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
        Self::with_client(Client::from_conf(s3), url, bucket, prefix, retry).await
    }

    /// [`Self::open`] through `client`, configured by the caller.
    async fn with_client(
        client: Client,
        url: &str,
        bucket: &str,
        prefix: &str,
        retry: RetryPolicy,
    ) -> Result<Self, ChannelError> {
        let channel = S3Channel {
            url: url.to_string(),
            client,
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
                // The SDK would hash the whole body with SHA-256 to sign it: 18% of a
                // worker's CPU in 16 MB rounds on S3 (BENCHMARKS.md). The body is still
                // checked by the server against its signed CRC-32 header, as S3 does with
                // every PUT; over HTTPS TLS guards it, and over plain HTTP a reader's GET
                // (never signed) is as open to tampering as an unsigned PUT.
                .customize()
                .disable_payload_signing()
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The head and body of each request a fake S3 endpoint on a free loopback port got;
    /// it answers every one `200 OK` with no body.
    type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    fn fake_s3() -> (String, Requests) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests: Requests = Arc::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 65536];
                    loop {
                        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while got.len() < end + 4 + len {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let body = got[end + 4..end + 4 + len].to_vec();
                        got.drain(..end + 4 + len);
                        seen.lock().unwrap().push((head, body));
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if conn.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (endpoint, requests)
    }

    /// A PUT's body goes unsigned (no SHA-256 pass over it) with its CRC-32 in a signed
    /// header, which the server checks the body against.
    #[tokio::test]
    async fn a_put_sends_its_body_unsigned_with_a_signed_crc32() {
        let (endpoint, requests) = fake_s3();
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build();
        let ch = S3Channel::with_client(
            Client::from_conf(conf),
            "s3://b",
            "b",
            "",
            RetryPolicy::default(),
        )
        .await
        .unwrap();
        let value = Bytes::from(vec![7u8; 100_000]);
        ch.put("k", value.clone()).await.unwrap();
        let requests = requests.lock().unwrap();
        let (head, body) = requests
            .iter()
            .find(|(head, _)| head.starts_with("put /b/k"))
            .expect("a PUT of the key");
        assert_eq!(body, &value[..]);
        assert!(
            head.contains("x-amz-content-sha256: unsigned-payload"),
            "{head}"
        );
        use base64::Engine as _;
        let crc =
            base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(&value).to_be_bytes());
        assert!(
            head.contains(&format!("x-amz-checksum-crc32: {}", crc.to_lowercase())),
            "{head}"
        );
        let signed = head
            .lines()
            .find_map(|l| l.split("signedheaders=").nth(1))
            .expect("a signature");
        assert!(signed.contains("x-amz-checksum-crc32"), "{head}");
    }
}
