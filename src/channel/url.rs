//! Channel URLs, parsed once where they enter (a flag, a config file, an event) into a
//! [`ChannelUrl`]; everything after that matches on the variant instead of the string.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde_with::DeserializeFromStr;

use super::ChannelError;

/// Largest memcached item the chunking may assume (memcached's own maximum `-I` is 1 GiB).
const MAX_ITEM_SIZE: usize = 1 << 30;

/// Bytes of each memcached item kept for the chunk header; `item_size` must exceed twice
/// this.
pub const ITEM_OVERHEAD: usize = 1024;

/// Where a job's workers meet: one variant per backend.
///
/// A URL may carry a secret (a Redis password, `redis://:PASSWORD@host`). `Display` (every
/// message and log) shows it as `***`; serialisation keeps it, because events must carry it
/// to the workers; what is recorded (run folders) stores [`ChannelUrl::without_secrets`].
#[derive(Clone, PartialEq, Eq, Hash, DeserializeFromStr)]
pub enum ChannelUrl {
    /// `dir:PATH`: a directory (local or shared).
    Dir(PathBuf),
    /// `mem:[NAME]`: in this process only (tests).
    Mem(String),
    /// `s3://bucket[/prefix]`.
    S3 {
        /// The bucket (must exist).
        bucket: String,
        /// Key prefix without leading or trailing '/', possibly empty.
        prefix: String,
    },
    /// `memcached://host:port[,host:port...][?item_size=BYTES]`: Memcached / ElastiCache.
    Memcached {
        /// `host:port` of every node.
        hosts: Vec<String>,
        /// The servers' item size limit (`-I`), when not memcached's default 1 MiB.
        item_size: Option<usize>,
    },
    /// `redis://host:port[/db]`.
    Redis(String),
    /// `dynamodb://table` (created when missing).
    DynamoDb {
        /// The table.
        table: String,
    },
}

impl ChannelUrl {
    /// A directory channel at `path`.
    pub fn dir(path: impl Into<PathBuf>) -> Self {
        ChannelUrl::Dir(path.into())
    }

    /// The scheme, as the URL spells it.
    pub fn scheme(&self) -> &'static str {
        match self {
            ChannelUrl::Dir(_) => "dir",
            ChannelUrl::Mem(_) => "mem",
            ChannelUrl::S3 { .. } => "s3",
            ChannelUrl::Memcached { .. } => "memcached",
            ChannelUrl::Redis(_) => "redis",
            ChannelUrl::DynamoDb { .. } => "dynamodb",
        }
    }

    /// The URL with its secrets (a Redis password) replaced by `***`: what run folders
    /// record.
    pub fn without_secrets(&self) -> Self {
        match self {
            ChannelUrl::Redis(url) => ChannelUrl::Redis(redact_password(url)),
            other => other.clone(),
        }
    }

    /// The full text, secrets included: only for the events that carry it to workers and
    /// the environment of a child process (`tune`'s trials), never for a file or a log.
    pub fn text_with_secrets(&self) -> String {
        match self {
            ChannelUrl::Redis(url) => url.clone(),
            other => other.to_string(),
        }
    }

    /// The same URL with a relative `dir:` path made absolute (workers may run elsewhere).
    pub fn absolute(self) -> std::io::Result<Self> {
        match self {
            ChannelUrl::Dir(p) => Ok(ChannelUrl::Dir(std::path::absolute(p)?)),
            other => Ok(other),
        }
    }
}

impl FromStr for ChannelUrl {
    type Err = ChannelError;

    fn from_str(url: &str) -> Result<Self, ChannelError> {
        let invalid = |message: String| ChannelError::InvalidUrl {
            url: url.to_string(),
            message,
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| {
            invalid(
                "expected SCHEME:LOCATION, e.g. dir:/tmp/chan, s3://bucket/prefix, \
                 redis://host:6379"
                    .into(),
            )
        })?;
        let after_slashes = |what: &str| {
            rest.strip_prefix("//")
                .ok_or_else(|| invalid(format!("expected {scheme}://{what}")))
        };
        match scheme {
            "dir" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(invalid(
                        "dir: needs a path, e.g. dir:/tmp/lambdaml-channel".into(),
                    ));
                }
                Ok(ChannelUrl::Dir(PathBuf::from(path)))
            }
            "mem" => Ok(ChannelUrl::Mem(rest.to_string())),
            "s3" => {
                let rest = after_slashes("bucket[/prefix]")?;
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("expected s3://bucket[/prefix]".into()));
                }
                Ok(ChannelUrl::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.trim_matches('/').to_string(),
                })
            }
            "memcached" => {
                let rest = after_slashes("host:port[,host:port...]")?;
                let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
                let mut item_size = None;
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("item_size", v)) => {
                            item_size = Some(
                                v.parse()
                                    .ok()
                                    .filter(|&n: &usize| {
                                        n > 2 * ITEM_OVERHEAD && n <= MAX_ITEM_SIZE
                                    })
                                    .ok_or_else(|| {
                                        invalid(format!(
                                            "item_size '{v}' is not a size above 2048 and at \
                                             most 1 GiB"
                                        ))
                                    })?,
                            );
                        }
                        _ => {
                            return Err(invalid(format!(
                                "unknown option '{pair}' (known: item_size)"
                            )));
                        }
                    }
                }
                let hosts: Vec<String> = hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
                    .collect();
                if hosts.is_empty() {
                    return Err(invalid(
                        "expected memcached://host:port[,host:port...]".into(),
                    ));
                }
                Ok(ChannelUrl::Memcached { hosts, item_size })
            }
            "redis" => {
                after_slashes("host:port[/db]")?;
                Ok(ChannelUrl::Redis(url.to_string()))
            }
            "dynamodb" => {
                let table = after_slashes("table")?;
                if table.is_empty() || table.contains('/') {
                    return Err(invalid("expected dynamodb://table".into()));
                }
                Ok(ChannelUrl::DynamoDb {
                    table: table.to_string(),
                })
            }
            other => Err(invalid(format!(
                "unknown scheme '{other}' (known: dir:, mem:, s3://, memcached://, redis://, \
                 dynamodb://)"
            ))),
        }
    }
}

impl fmt::Display for ChannelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelUrl::Dir(p) => write!(f, "dir:{}", p.display()),
            ChannelUrl::Mem(name) => write!(f, "mem:{name}"),
            ChannelUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            ChannelUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            ChannelUrl::Memcached { hosts, item_size } => {
                write!(f, "memcached://{}", hosts.join(","))?;
                match item_size {
                    Some(n) => write!(f, "?item_size={n}"),
                    None => Ok(()),
                }
            }
            ChannelUrl::Redis(url) => f.write_str(&redact_password(url)),
            ChannelUrl::DynamoDb { table } => write!(f, "dynamodb://{table}"),
        }
    }
}

impl fmt::Debug for ChannelUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelUrl({self})")
    }
}

impl serde::Serialize for ChannelUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text_with_secrets())
    }
}

/// `scheme://user:PASSWORD@host...` with the password replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_round_trip_through_text() {
        for url in [
            "dir:/tmp/x",
            "mem:a",
            "s3://b",
            "s3://b/some/prefix",
            "memcached://a:1,b:2",
            "memcached://h:1?item_size=65536",
            "redis://h:6379/2",
            "dynamodb://t",
        ] {
            let parsed: ChannelUrl = url.parse().unwrap();
            assert_eq!(parsed.to_string(), url);
            assert_eq!(parsed.to_string().parse::<ChannelUrl>().unwrap(), parsed);
        }
        let s3: ChannelUrl = "s3://b/p/".parse().unwrap();
        assert_eq!(
            s3,
            ChannelUrl::S3 {
                bucket: "b".into(),
                prefix: "p".into()
            }
        );
    }

    #[test]
    fn passwords_are_shown_nowhere_but_in_events() {
        let url: ChannelUrl = "redis://:s3cret@h:6379/2".parse().unwrap();
        assert_eq!(url.to_string(), "redis://:***@h:6379/2");
        assert_eq!(format!("{url:?}"), "ChannelUrl(redis://:***@h:6379/2)");
        assert_eq!(
            url.without_secrets().text_with_secrets(),
            "redis://:***@h:6379/2"
        );
        let json = serde_json::to_string(&url).unwrap();
        assert_eq!(json, "\"redis://:s3cret@h:6379/2\"");
        assert_eq!(serde_json::from_str::<ChannelUrl>(&json).unwrap(), url);
        let user: ChannelUrl = "redis://me:pw@h:1".parse().unwrap();
        assert_eq!(user.to_string(), "redis://me:***@h:1");
        let plain: ChannelUrl = "redis://h:1".parse().unwrap();
        assert_eq!(plain.to_string(), "redis://h:1");
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        for (url, says) in [
            ("nothing", "expected SCHEME:LOCATION"),
            ("ftp://x", "unknown scheme 'ftp'"),
            ("dir:", "needs a path"),
            ("s3://", "expected s3://bucket"),
            ("memcached://", "expected memcached://host:port"),
            ("memcached://h:1?size=3", "unknown option 'size=3'"),
            ("memcached://h:1?item_size=10", "item_size '10'"),
            ("dynamodb://", "expected dynamodb://table"),
            ("dynamodb://a/b", "expected dynamodb://table"),
            ("redis:h", "expected redis://"),
        ] {
            let err = url.parse::<ChannelUrl>().unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
