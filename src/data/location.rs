//! Where a dataset or its partitions live, parsed once from `--data`/`--out`: a local path or
//! an S3 prefix.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde_with::{DeserializeFromStr, SerializeDisplay};

/// A local path or `s3://bucket[/prefix]`. Serialised as that text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, SerializeDisplay, DeserializeFromStr)]
pub enum DataLocation {
    /// A file or directory on this machine (or a shared mount).
    Local(PathBuf),
    /// Objects under `prefix` in `bucket`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix, without leading or trailing '/', possibly empty.
        prefix: String,
    },
}

/// A location that cannot be understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid data location '{location}': {message}")]
pub struct LocationError {
    /// The text given.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl DataLocation {
    /// True for a location on S3.
    pub fn is_remote(&self) -> bool {
        matches!(self, DataLocation::S3 { .. })
    }

    /// The local path, if the location is local.
    pub fn local(&self) -> Option<&std::path::Path> {
        match self {
            DataLocation::Local(p) => Some(p),
            DataLocation::S3 { .. } => None,
        }
    }

    /// The same location with a relative local path made absolute.
    pub fn absolute(self) -> std::io::Result<Self> {
        match self {
            DataLocation::Local(p) => Ok(DataLocation::Local(std::path::absolute(p)?)),
            other => Ok(other),
        }
    }
}

impl FromStr for DataLocation {
    type Err = LocationError;

    fn from_str(text: &str) -> Result<Self, LocationError> {
        let fail = |message: &str| LocationError {
            location: text.to_string(),
            message: message.to_string(),
        };
        if text.is_empty() {
            return Err(fail("empty"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(fail("expected s3://bucket[/prefix]"));
            }
            return Ok(DataLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(fail(&format!(
                "'{scheme}://' is not supported: use a local path or s3://bucket/prefix"
            )));
        }
        Ok(DataLocation::Local(PathBuf::from(text)))
    }
}

impl fmt::Display for DataLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataLocation::Local(p) => write!(f, "{}", p.display()),
            DataLocation::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            DataLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_back() {
        for text in ["data/x.svm", "/abs/dir", "s3://b", "s3://b/p/q"] {
            let loc: DataLocation = text.parse().unwrap();
            assert_eq!(loc.to_string(), text);
        }
        assert!("s3://b/p".parse::<DataLocation>().unwrap().is_remote());
        let err = "http://x/y"
            .parse::<DataLocation>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'http://' is not supported"), "{err}");
        assert!("s3://".parse::<DataLocation>().is_err());
    }
}
