//! `lambdaml gc` removes the keys of jobs that can no longer run, on every channel that can
//! list, and leaves alone jobs that may still run and keys that are not a job's.

use crate::common::services::{Server, shared};
use crate::common::*;
use lambdaml::channel::{self, Channel, ChannelUrl};
use lambdaml::job::records::{self, JobRecord};

fn now_id(tag: &str) -> String {
    format!(
        "{}-lr-grad_avg-reduce-{tag}",
        chrono::Local::now().format("%Y%m%d-%H%M%S")
    )
}

async fn job_keys(ch: &dyn Channel, job: &str, record: Option<JobRecord>) {
    for key in [
        format!("{job}/0/reduce/3"),
        format!("{job}/worker/failure/1"),
    ] {
        ch.put(&key, bytes::Bytes::from_static(b"x")).await.unwrap();
    }
    if let Some(r) = record {
        records::put(ch, &records::job_key(job), &r).await.unwrap();
    }
}

async fn listed(ch: &dyn Channel) -> Vec<String> {
    ch.list("").await.unwrap().unwrap()
}

fn gc(url: &str, extra: &[&str]) -> String {
    let out = output(lambdaml().args(["gc", "--channel", url]).args(extra));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn removes_only_what_cannot_run(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let parsed: ChannelUrl = url.parse().unwrap();
    let ch = rt.block_on(channel::open(&parsed)).unwrap();
    let now = lambdaml::job::event::unix_ms();
    let over = JobRecord {
        started_unix_ms: now - 3_600_000,
        ends_by_unix_ms: now - 600_000,
        spec_json: String::new(),
    };
    let running = JobRecord {
        started_unix_ms: now,
        ends_by_unix_ms: now + 3_600_000,
        spec_json: String::new(),
    };
    let (dead, live) = (now_id("dead"), now_id("live"));
    let unrecorded_old = "20200101-000000-lr-grad_avg-reduce-old";
    let unrecorded_new = now_id("new");
    rt.block_on(async {
        job_keys(ch.as_ref(), &dead, Some(over)).await;
        job_keys(ch.as_ref(), &live, Some(running)).await;
        job_keys(ch.as_ref(), unrecorded_old, None).await;
        job_keys(ch.as_ref(), &unrecorded_new, None).await;
        ch.put("not-a-job/data", bytes::Bytes::from_static(b"keep"))
            .await
            .unwrap();
    });
    let before = rt.block_on(listed(ch.as_ref()));
    let dry = gc(url, &["--dry-run"]);
    assert!(dry.contains("would remove 5 keys of 2 jobs"), "{dry}");
    assert_eq!(
        rt.block_on(listed(ch.as_ref())),
        before,
        "a dry run deleted keys"
    );
    let done = gc(url, &[]);
    assert!(done.contains("removed 5 keys of 2 jobs"), "{done}");
    let mut left = rt.block_on(listed(ch.as_ref()));
    left.sort();
    let mut expected: Vec<String> = before
        .into_iter()
        .filter(|k| !k.starts_with(&dead) && !k.starts_with(unrecorded_old))
        .collect();
    expected.sort();
    assert_eq!(left, expected, "{url}");
    // A younger threshold takes the unrecorded job of this second as well.
    let done = gc(url, &["--older-than", "0"]);
    assert!(done.contains("removed 2 keys of 1 jobs"), "{done}");
}

#[test]
fn gc_on_a_directory() {
    let dir = scratch();
    removes_only_what_cannot_run(&format!("dir:{}", dir.path().join("chan").display()));
}

#[test]
fn gc_on_redis() {
    let server = Server::redis();
    removes_only_what_cannot_run(&server.url);
}

#[test]
fn gc_on_s3_and_dynamodb() {
    let tag = format!("{:08x}", rand::random::<u32>());
    let bucket = shared("LAMBDAML_TEST_S3");
    removes_only_what_cannot_run(&format!("{bucket}/gc-{tag}"));
    removes_only_what_cannot_run(&format!("dynamodb://gc-{tag}"));
}

#[test]
fn gc_explains_a_channel_that_cannot_list() {
    let server = Server::memcached(None);
    let out = output(lambdaml().args(["gc", "--channel", &server.url]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expire by themselves"),
        "{err}"
    );
}
