//! What a run would cost on AWS: Lambda GB-seconds and requests, S3 requests by kind,
//! DynamoDB request units, ElastiCache node-hours or the parameter server's VM hours for the
//! job's duration. Prices come from `prices/aws-us-east-1.toml` (compiled in), which a user
//! can override key by key with a TOML file of their own.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelUrl;
use crate::channel::meter::Usage;

/// The default price table, public us-east-1 list prices.
pub const DEFAULT_PRICES: &str = include_str!("../prices/aws-us-east-1.toml");

/// A price table (USD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// When the prices were read.
    pub date: String,
    /// AWS region they are for.
    pub region: String,
    /// Where they come from.
    pub source: String,
    /// Lambda compute, per GB-second.
    pub lambda_gb_second: f64,
    /// Lambda, per million requests (invocations).
    pub lambda_per_million_requests: f64,
    /// S3 PUT/COPY/POST/LIST, per 1,000 requests.
    pub s3_put_per_thousand: f64,
    /// S3 GET and other reads, per 1,000 requests.
    pub s3_get_per_thousand: f64,
    /// DynamoDB on-demand, per million write request units.
    pub dynamodb_per_million_write_units: f64,
    /// DynamoDB on-demand, per million read request units.
    pub dynamodb_per_million_read_units: f64,
    /// ElastiCache node type priced.
    pub elasticache_node_type: String,
    /// ElastiCache, per node-hour.
    pub elasticache_node_hour: f64,
    /// Parameter-server VM type priced.
    pub ps_vm_type: String,
    /// Parameter-server VM, per hour.
    pub ps_vm_hour: f64,
}

impl Default for Prices {
    fn default() -> Self {
        toml::from_str(DEFAULT_PRICES).expect("the built-in price table parses")
    }
}

impl Prices {
    /// The defaults with every key of the TOML file at `path` (if any) replacing its default.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let Some(path) = path else {
            return Ok(Prices::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading prices {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(DEFAULT_PRICES).expect("built-in table");
        let overrides: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing prices {}", path.display()))?;
        for (k, v) in overrides {
            table.insert(k, v);
        }
        toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("prices {}", path.display()))
    }
}

/// What the cost model needs to know about a run (or a part of one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Consumption<'a> {
    /// The channel (decides which service's prices apply).
    pub channel: &'a ChannelUrl,
    /// True in hybrid mode (a parameter-server VM runs for the job).
    pub parameter_server: bool,
    /// Lambda memory size.
    pub memory_mb: u32,
    /// Invocations.
    pub invocations: u64,
    /// Seconds billed over all invocations.
    pub billed_s: f64,
    /// Channel requests.
    pub usage: Usage,
    /// Requests reading the dataset from S3 (priced as S3 whatever the channel is).
    pub data_usage: Usage,
    /// Wall seconds (servers are paid for while the job runs).
    pub wall_s: f64,
}

/// The estimate, by item (USD).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Lambda GB-seconds.
    pub lambda_compute: f64,
    /// Lambda invocation requests.
    pub lambda_requests: f64,
    /// S3 requests: the channel's (also for `dir:`, which stands in for S3) and reads of a
    /// dataset on S3.
    pub s3_requests: f64,
    /// DynamoDB request units.
    pub dynamodb: f64,
    /// ElastiCache node-hours for the job's duration.
    pub elasticache: f64,
    /// Parameter-server VM hours for the job's duration.
    pub parameter_server: f64,
    /// The sum.
    pub total: f64,
    /// Date of the prices used.
    pub prices_date: String,
}

/// Prices `c`.
pub fn estimate(p: &Prices, c: &Consumption) -> Cost {
    let gb = c.memory_mb as f64 / 1024.0;
    let u = &c.usage;
    let hours = c.wall_s / 3600.0;
    let mut cost = Cost {
        lambda_compute: c.billed_s * gb * p.lambda_gb_second,
        lambda_requests: c.invocations as f64 * p.lambda_per_million_requests / 1e6,
        prices_date: p.date.clone(),
        ..Cost::default()
    };
    let s3 = |u: &Usage| {
        (u.puts + u.lists) as f64 * p.s3_put_per_thousand / 1e3
            + u.gets as f64 * p.s3_get_per_thousand / 1e3
    };
    cost.s3_requests = s3(&c.data_usage);
    match c.channel {
        // A directory stands in for S3.
        ChannelUrl::S3 { .. } | ChannelUrl::Dir(_) => cost.s3_requests += s3(u),
        ChannelUrl::DynamoDb { .. } => {
            cost.dynamodb = u.write_units as f64 * p.dynamodb_per_million_write_units / 1e6
                + u.read_units as f64 * p.dynamodb_per_million_read_units / 1e6;
        }
        // One ElastiCache node per listed server.
        ChannelUrl::Memcached { hosts, .. } => {
            cost.elasticache = hosts.len().max(1) as f64 * hours * p.elasticache_node_hour
        }
        ChannelUrl::Redis(_) => cost.elasticache = hours * p.elasticache_node_hour,
        ChannelUrl::Mem(_) => {}
    }
    if c.parameter_server {
        cost.parameter_server = hours * p.ps_vm_hour;
    }
    cost.total = cost.lambda_compute
        + cost.lambda_requests
        + cost.s3_requests
        + cost.dynamodb
        + cost.elasticache
        + cost.parameter_server;
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test run's consumption on `channel` (parsed and leaked: tests only).
    fn consumption(channel: &str) -> Consumption<'static> {
        Consumption {
            channel: Box::leak(Box::new(channel.parse().unwrap())),
            parameter_server: false,
            memory_mb: 2048,
            invocations: 10,
            billed_s: 100.0,
            usage: Usage {
                puts: 1000,
                gets: 10_000,
                lists: 0,
                read_units: 20_000,
                write_units: 4_000,
                ..Usage::default()
            },
            data_usage: Usage::default(),
            wall_s: 3600.0,
        }
    }

    #[test]
    fn every_service_is_priced_by_its_own_unit() {
        let p = Prices::default();
        let s3 = estimate(&p, &consumption("s3://b"));
        // 100 s x 2 GB x 0.0000166667 + 10 x 0.2/1e6 + 1000 x 0.005/1e3 + 10000 x 0.0004/1e3
        assert!((s3.lambda_compute - 0.00333334).abs() < 1e-8);
        assert!((s3.lambda_requests - 2e-6).abs() < 1e-12);
        assert!((s3.s3_requests - (0.005 + 0.004)).abs() < 1e-12);
        assert_eq!(s3.elasticache, 0.0);
        let ddb = estimate(&p, &consumption("dynamodb://t"));
        assert!((ddb.dynamodb - (4000.0 * 0.625 + 20_000.0 * 0.125) / 1e6).abs() < 1e-12);
        let mc = estimate(&p, &consumption("memcached://a:1,b:2"));
        assert!(
            (mc.elasticache - 2.0 * 0.068).abs() < 1e-12,
            "two nodes, one hour"
        );
        let mut ps = consumption("redis://h:1");
        ps.parameter_server = true;
        let ps = estimate(&p, &ps);
        assert!((ps.parameter_server - 0.0416).abs() < 1e-12);
        assert!(
            (ps.total - (ps.lambda_compute + ps.lambda_requests + 0.068 + 0.0416)).abs() < 1e-12
        );
    }

    #[test]
    fn data_read_from_s3_is_priced_as_s3_whatever_the_channel() {
        let p = Prices::default();
        let reads = Usage {
            gets: 2_000,
            ..Usage::default()
        };
        for channel in ["memcached://a:1", "redis://h:1", "dynamodb://t", "s3://b"] {
            let without = estimate(&p, &consumption(channel));
            let with = estimate(
                &p,
                &Consumption {
                    data_usage: reads,
                    ..consumption(channel)
                },
            );
            // 2,000 GETs x $0.0004 / 1,000
            assert!(
                (with.s3_requests - without.s3_requests - 0.0008).abs() < 1e-12,
                "{channel}"
            );
            assert!(
                (with.total - without.total - 0.0008).abs() < 1e-12,
                "{channel}"
            );
        }
    }

    #[test]
    fn a_price_file_overrides_single_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "lambda_gb_second = 1.0\ndate = \"2030-01-01\"\n").unwrap();
        let p = Prices::load(Some(&f)).unwrap();
        assert_eq!(p.lambda_gb_second, 1.0);
        assert_eq!(p.s3_get_per_thousand, Prices::default().s3_get_per_thousand);
        std::fs::write(&f, "lambda_gb_secnd = 1.0\n").unwrap();
        let e = format!("{:#}", Prices::load(Some(&f)).unwrap_err());
        assert!(e.contains("lambda_gb_secnd"), "{e}");
    }
}
