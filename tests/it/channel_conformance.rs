//! One conformance suite, run against every channel backend. A new backend adds one line to
//! the `backends!` list at the bottom.

use std::sync::Arc;

use bytes::Bytes;
use lambdaml::channel::{self, Channel, codec};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn value(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

pub fn put_get_overwrite_missing(ch: Arc<dyn Channel>) {
    rt().block_on(async {
        // Shared servers may outlive one run of the suite.
        ch.delete(&["job-a/0/x/1".into(), "job-a/0/empty/1".into()])
            .await
            .unwrap();
        assert_eq!(ch.get("job-a/0/x/1").await.unwrap(), None);
        ch.put("job-a/0/x/1", value(1, 10)).await.unwrap();
        assert_eq!(ch.get("job-a/0/x/1").await.unwrap(), Some(value(1, 10)));
        ch.put("job-a/0/x/1", value(2, 3)).await.unwrap();
        assert_eq!(ch.get("job-a/0/x/1").await.unwrap(), Some(value(2, 3)));
        ch.put("job-a/0/empty/1", Bytes::new()).await.unwrap();
        assert_eq!(ch.get("job-a/0/empty/1").await.unwrap(), Some(Bytes::new()));
    });
}

pub fn delete_is_idempotent(ch: Arc<dyn Channel>) {
    rt().block_on(async {
        ch.put("job-d/1/a/0", value(1, 5)).await.unwrap();
        ch.put("job-d/1/b/0", value(2, 5)).await.unwrap();
        let keys = vec!["job-d/1/a/0".to_string(), "job-d/1/never/0".to_string()];
        ch.delete(&keys).await.unwrap();
        ch.delete(&keys).await.unwrap();
        assert_eq!(ch.get("job-d/1/a/0").await.unwrap(), None);
        assert_eq!(ch.get("job-d/1/b/0").await.unwrap(), Some(value(2, 5)));
        // A deleted key can be written again.
        ch.put("job-d/1/a/0", value(3, 5)).await.unwrap();
        assert_eq!(ch.get("job-d/1/a/0").await.unwrap(), Some(value(3, 5)));
    });
}

pub fn large_values_round_trip(ch: Arc<dyn Channel>) {
    rt().block_on(async {
        let floats: Vec<f32> = (0..4_000_000).map(|i| i as f32 * 0.25).collect();
        let frame = codec::encode_f32(&floats);
        ch.put("job-l/0/model/0", frame.clone()).await.unwrap();
        let back = ch.get("job-l/0/model/0").await.unwrap().unwrap();
        assert_eq!(codec::decode_f32(&back).unwrap(), floats);
    });
}

pub fn jobs_sharing_a_channel_are_isolated(ch: Arc<dyn Channel>) {
    rt().block_on(async {
        for job in ["job-1", "job-10"] {
            for k in 0..3 {
                ch.put(&format!("{job}/0/grad/{k}"), value(k as u8, 4))
                    .await
                    .unwrap();
            }
        }
        if let Some(keys) = ch.list("job-1/").await.unwrap() {
            assert_eq!(keys.len(), 3, "{keys:?}");
            assert!(keys.iter().all(|k| k.starts_with("job-1/")));
        }
        let mine: Vec<String> = (0..3).map(|k| format!("job-1/0/grad/{k}")).collect();
        ch.delete(&mine).await.unwrap();
        for k in 0..3 {
            assert_eq!(ch.get(&format!("job-1/0/grad/{k}")).await.unwrap(), None);
            assert_eq!(
                ch.get(&format!("job-10/0/grad/{k}")).await.unwrap(),
                Some(value(k as u8, 4))
            );
        }
    });
}

/// Eight writers at once, each with its own handle (as separate workers would have), write
/// their own keys and race on one shared key: every key is complete, and the shared key holds
/// exactly one writer's whole value.
pub fn concurrent_writers(open: fn(&str) -> Arc<dyn Channel>, ns: &'static str) {
    let threads: Vec<_> = (0..8u8)
        .map(|w| {
            std::thread::spawn(move || {
                let ch = open(ns);
                rt().block_on(async {
                    for i in 0..20 {
                        ch.put(&format!("job-c/{i}/part/{w}"), value(w, 1000 + i))
                            .await
                            .unwrap();
                        ch.put("job-c/shared/model/0", value(w, 50_000))
                            .await
                            .unwrap();
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ch = open(ns);
    rt().block_on(async {
        for w in 0..8u8 {
            for i in 0..20 {
                let got = ch.get(&format!("job-c/{i}/part/{w}")).await.unwrap();
                assert_eq!(got, Some(value(w, 1000 + i)));
            }
        }
        let shared = ch.get("job-c/shared/model/0").await.unwrap().unwrap();
        assert!((0..8).any(|w| shared == value(w, 50_000)), "torn write");
    });
}

/// Sixteen `lambdaml channel put` processes at once: eight write their own key, eight race on
/// one shared key with values large enough to be chunked on small-item backends. Every key
/// is complete and the shared key holds exactly one writer's whole value.
pub fn concurrent_writer_processes(url: &str) {
    let dir = crate::common::scratch();
    let values: Vec<Bytes> = (0..8u8).map(|w| value(w, 400_000 + w as usize)).collect();
    for (w, v) in values.iter().enumerate() {
        std::fs::write(dir.path().join(format!("v{w}")), v).unwrap();
    }
    let children: Vec<_> = (0..16usize)
        .map(|i| {
            let key = if i < 8 {
                format!("job-p/0/part/{i}")
            } else {
                "job-p/shared/model/0".into()
            };
            crate::common::lambdaml()
                .args(["channel", "put", url, &key])
                .arg(dir.path().join(format!("v{}", i % 8)))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let ch = rt().block_on(channel::open(&url.parse().unwrap())).unwrap();
    rt().block_on(async {
        for (w, v) in values.iter().enumerate() {
            assert_eq!(
                ch.get(&format!("job-p/0/part/{w}")).await.unwrap().as_ref(),
                Some(v)
            );
        }
        let shared = ch.get("job-p/shared/model/0").await.unwrap().unwrap();
        assert!(values.contains(&shared), "torn write across processes");
    });
}

pub fn invalid_keys_are_refused(ch: Arc<dyn Channel>) {
    rt().block_on(async {
        for bad in ["", "../escape", "a//b", "a/.hidden", "sp ace"] {
            assert!(ch.put(bad, Bytes::new()).await.is_err(), "{bad:?} accepted");
        }
    });
}

macro_rules! backends {
    ($($backend:ident => $url:expr;)*) => {$(
        mod $backend {
            use super::*;
            /// The backend's URL in namespace `ns` (where the backend has namespaces).
            fn url(ns: &str) -> String { ($url)(ns) }
            fn open(ns: &str) -> Arc<dyn Channel> { rt().block_on(channel::open(&url(ns).parse().unwrap())).unwrap() }
            macro_rules! ns { ($t:ident) => { concat!(stringify!($backend), "-", stringify!($t)) } }
            #[test] fn put_get_overwrite_missing() { super::put_get_overwrite_missing(open(ns!(a))) }
            #[test] fn delete_is_idempotent() { super::delete_is_idempotent(open(ns!(b))) }
            #[test] fn large_values_round_trip() { super::large_values_round_trip(open(ns!(c))) }
            #[test] fn jobs_sharing_a_channel_are_isolated() { super::jobs_sharing_a_channel_are_isolated(open(ns!(d))) }
            #[test] fn concurrent_writers() { super::concurrent_writers(open, ns!(e)) }
            #[test] fn invalid_keys_are_refused() { super::invalid_keys_are_refused(open(ns!(f))) }
            #[test] fn concurrent_writer_processes() {
                if !url("").starts_with("mem:") {
                    super::concurrent_writer_processes(&url(ns!(g)))
                }
            }
        }
    )*};
}

/// A `dir:` root shared by every handle of one test process.
fn dir_root() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(crate::common::scratch).path()
}

use crate::common::services::shared;

backends! {
    dir => |ns: &str| format!("dir:{}/{ns}", dir_root().display());
    mem => |ns: &str| format!("mem:{ns}");
    memcached => |_: &str| shared("LAMBDAML_TEST_MEMCACHED");
    memcached_64k_items => |_: &str| shared("LAMBDAML_TEST_MEMCACHED_SMALL");
    redis => |_: &str| shared("LAMBDAML_TEST_REDIS");
    s3 => |ns: &str| format!("{}/{ns}", shared("LAMBDAML_TEST_S3"));
    dynamodb => |_: &str| shared("LAMBDAML_TEST_DYNAMODB");
}

/// A missing bucket is a clear error, not a hang or a retry loop.
#[test]
fn a_missing_s3_bucket_is_named() {
    let url = format!("{}-missing/x", shared("LAMBDAML_TEST_S3"));
    let err = rt()
        .block_on(channel::open(&url.parse().unwrap()))
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(
        chain.contains("bucket 'lambdaml-test-missing' does not exist"),
        "{chain}"
    );
}

/// A DynamoDB table with another key schema is refused with the reason.
#[test]
fn a_dynamodb_table_of_another_shape_is_refused() {
    let err = rt()
        .block_on(async {
            let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let client = aws_sdk_dynamodb::Client::new(&conf);
            use aws_sdk_dynamodb::types::*;
            let _ = client
                .create_table()
                .table_name("lambdaml-wrong-shape")
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("id")
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .unwrap(),
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("id")
                        .key_type(KeyType::Hash)
                        .build()
                        .unwrap(),
                )
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            channel::open(&"dynamodb://lambdaml-wrong-shape".parse().unwrap()).await
        })
        .unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(err));
    assert!(
        chain.contains("single string partition key named 'k'"),
        "{chain}"
    );
}
