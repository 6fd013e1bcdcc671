//! Datasets: LibSVM parsing, in-memory matrices, synthetic generators and partitioning.
//!
//! This layer knows nothing of channels, platforms or training; it turns bytes on disk into
//! feature matrices and labels, and files into partitions that workers load by index.

pub mod images;
pub mod libsvm;
pub mod location;
pub mod matrix;
pub mod partition;
pub mod rows;
pub mod synth;

use std::path::PathBuf;

pub use location::DataLocation;
pub use matrix::{CsrMatrix, DenseMatrix, Features};

/// Bounds of chunk `i` when a vector of `len` elements is split among `n` workers: the first
/// `len % n` chunks get one extra element.
pub fn chunk_bounds(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    let (q, r) = (len / n, len % n);
    let start = q * i + i.min(r);
    start..start + q + usize::from(i < r)
}

/// One partition (or file) loaded in memory: features plus the raw label of every row.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Feature rows, dense or sparse.
    pub features: Features,
    /// Raw labels as written in the file (mapped to a binary target by the model).
    pub labels: Vec<f32>,
}

impl Dataset {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }
}

/// Errors from reading, parsing or partitioning data. Every variant names the file and,
/// where there is one, the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid LibSVM.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A binary partition file is damaged or of another format.
    #[error("{path}{}: {message}", at_row(*row))]
    Corrupt {
        /// The partition file.
        path: PathBuf,
        /// 1-based row where the damage was found, if at one row.
        row: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A partition location is missing its manifest or the manifest is invalid.
    #[error("{path}: {message}")]
    Manifest {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The labels found do not fit a binary model.
    #[error("{0}")]
    Labels(String),
    /// An argument is out of range (zero partitions, zero rows...).
    #[error("{0}")]
    Invalid(String),
}

fn at_row(row: Option<usize>) -> String {
    row.map(|r| format!(": row {r}")).unwrap_or_default()
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Maps a file's two raw label values to the binary target: the smaller one is the negative
/// class, the larger the positive. Covers {-1,+1}, {0,1} and {1,2} alike.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BinaryLabels {
    /// Raw value of the negative class.
    pub negative: f32,
    /// Raw value of the positive class.
    pub positive: f32,
}

impl BinaryLabels {
    /// Builds the mapping from the distinct labels seen in a dataset.
    pub fn from_distinct(labels: &[f32]) -> Result<Self, DataError> {
        let mut sorted: Vec<f32> = labels.to_vec();
        sorted.sort_by(f32::total_cmp);
        sorted.dedup();
        match sorted.as_slice() {
            [neg, pos] => Ok(BinaryLabels {
                negative: *neg,
                positive: *pos,
            }),
            [only] => Err(DataError::Labels(format!(
                "the data has a single label value ({only}); a binary model needs two classes"
            ))),
            many => Err(DataError::Labels(format!(
                "the data has {} distinct label values ({}); binary models accept two, such as \
                 -1/+1, 0/1 or 1/2",
                many.len(),
                many.iter()
                    .take(8)
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// True when `raw` is the positive class.
    pub fn is_positive(&self, raw: f32) -> bool {
        raw == self.positive
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_tile_the_vector(len in 0usize..500, n in 1usize..40) {
            let mut next = 0;
            for i in 0..n {
                let b = chunk_bounds(len, n, i);
                prop_assert_eq!(b.start, next);
                prop_assert!(b.len() == len / n || b.len() == len / n + 1);
                next = b.end;
            }
            prop_assert_eq!(next, len);
        }
    }
}
