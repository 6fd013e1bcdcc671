//! Partitioning a LibSVM file into N parts that workers load by index.
//!
//! A partition location is a directory holding `part-00000-of-00004` ... and `_manifest.json`
//! (row counts, feature count, label set), so a driver can plan a job without reading data.
//! Lines are dealt round-robin, so part sizes differ by at most one row and a file sorted by
//! label still gives every worker both classes.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::libsvm::{self, Layout, LineError};
use super::{DataError, Dataset};

/// Name of the manifest file inside a partition location.
pub const MANIFEST: &str = "_manifest.json";

/// At most this many distinct labels are recorded; more means "not a classification label".
const MAX_DISTINCT_LABELS: usize = 16;

/// What a partition location holds; written by [`split_file`], read by the driver.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Number of partitions.
    pub parts: usize,
    /// Data rows in each partition.
    pub rows: Vec<usize>,
    /// Number of features (columns).
    pub n_features: usize,
    /// Highest 1-based feature index seen in the data.
    pub max_index: usize,
    /// The 1-based line of the source that holds `max_index` (first such line), so that a
    /// stray huge index can be found.
    #[serde(default)]
    pub max_index_line: Option<usize>,
    /// Total stored `index:value` pairs.
    pub nnz: u64,
    /// Distinct label values seen (at most 16).
    pub labels: Vec<f32>,
    /// True when there were more distinct labels than recorded.
    pub labels_truncated: bool,
    /// The file the partitions came from.
    pub source: String,
}

impl Manifest {
    /// Total data rows.
    pub fn total_rows(&self) -> usize {
        self.rows.iter().sum()
    }
}

/// File name of partition `index` of `parts`.
pub fn part_name(index: usize, parts: usize) -> String {
    format!("part-{index:05}-of-{parts:05}")
}

/// Path of partition `index` in `location`.
pub fn part_path(location: &Path, index: usize, parts: usize) -> PathBuf {
    location.join(part_name(index, parts))
}

/// Facts gathered from one pass over a LibSVM file.
#[derive(Debug, Default)]
struct Scan {
    max_index: usize,
    max_index_line: Option<usize>,
    nnz: u64,
    labels: Vec<f32>,
    labels_truncated: bool,
}

impl Scan {
    fn saw_label(&mut self, label: f32) {
        if !self.labels.contains(&label) {
            if self.labels.len() < MAX_DISTINCT_LABELS {
                self.labels.push(label);
            } else {
                self.labels_truncated = true;
            }
        }
    }
}

/// Splits `src` round-robin into `parts` partitions under `out`, validating every line.
///
/// With `n_features` given, an index past it is an error naming the line; without, the
/// feature count is the highest index found. `progress` is called with the bytes consumed.
pub fn split_file(
    src: &Path,
    parts: usize,
    out: &Path,
    n_features: Option<usize>,
    mut progress: impl FnMut(u64),
) -> Result<Manifest, DataError> {
    if parts == 0 {
        return Err(DataError::Invalid("cannot split into 0 partitions".into()));
    }
    let file = File::open(src).map_err(|e| DataError::io(src, e))?;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let mut writers = (0..parts)
        .map(|i| {
            let p = part_path(out, i, parts);
            File::create(&p)
                .map(|f| BufWriter::with_capacity(1 << 16, f))
                .map_err(|e| DataError::io(p, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = vec![0usize; parts];
    let mut scan = Scan::default();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line: Vec<u8> = Vec::new();
    let mut row: Vec<(u32, f32)> = Vec::new();
    let (mut lineno, mut next, mut consumed) = (0usize, 0usize, 0u64);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::io(src, e))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        consumed += n as u64;
        if lineno % 8192 == 0 {
            progress(consumed);
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let parsed = libsvm::parse_row_bytes(text, n_features, &mut row);
        let label = match parsed {
            Ok(Some(label)) => label,
            Ok(None) => continue,
            Err(e) => return Err(parse_error(src, lineno, e)),
        };
        let nnz = row.len() as u64;
        if let Some(&(last, _)) = row.last()
            && last as usize + 1 > scan.max_index
        {
            scan.max_index = last as usize + 1;
            scan.max_index_line = Some(lineno);
        }
        scan.nnz += nnz;
        scan.saw_label(label);
        let w = &mut writers[next];
        w.write_all(text)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| DataError::io(part_path(out, next, parts), e))?;
        rows[next] += 1;
        next = (next + 1) % parts;
    }
    progress(consumed);
    for (i, mut w) in writers.into_iter().enumerate() {
        w.flush()
            .map_err(|e| DataError::io(part_path(out, i, parts), e))?;
    }
    let manifest = Manifest {
        parts,
        rows,
        n_features: n_features.unwrap_or(scan.max_index),
        max_index: scan.max_index,
        max_index_line: scan.max_index_line,
        nnz: scan.nnz,
        labels: scan.labels,
        labels_truncated: scan.labels_truncated,
        source: src.display().to_string(),
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

fn parse_error(path: &Path, line: usize, e: LineError) -> DataError {
    DataError::Parse {
        path: path.to_path_buf(),
        line,
        message: e.to_string(),
    }
}

/// Writes `_manifest.json` atomically (temp file, then rename).
pub fn write_manifest(location: &Path, manifest: &Manifest) -> Result<(), DataError> {
    let path = location.join(MANIFEST);
    let tmp = location.join(format!(".{MANIFEST}.tmp-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    std::fs::write(&tmp, json).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(&path, e))
}

/// Reads the manifest of a partition location.
pub fn read_manifest(location: &Path) -> Result<Manifest, DataError> {
    let path = location.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Manifest {
            path: path.clone(),
            message: "not found: a partition location is made by `lambdaml data split`".into(),
        },
        _ => DataError::io(&path, e),
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| DataError::Manifest {
        path: path.clone(),
        message: format!("invalid manifest: {e}"),
    })?;
    if manifest.rows.len() != manifest.parts || manifest.parts == 0 {
        return Err(DataError::Manifest {
            path,
            message: format!(
                "manifest lists {} row counts for {} parts",
                manifest.rows.len(),
                manifest.parts
            ),
        });
    }
    Ok(manifest)
}

/// Loads partition `index` of the location described by `manifest`.
pub fn load_partition(
    location: &Path,
    manifest: &Manifest,
    index: usize,
    n_features: usize,
    layout: Layout,
) -> Result<Dataset, DataError> {
    if index >= manifest.parts {
        return Err(DataError::Invalid(format!(
            "partition {index} requested but {} holds {} partitions",
            location.display(),
            manifest.parts
        )));
    }
    libsvm::read_file(
        &part_path(location, index, manifest.parts),
        n_features,
        layout,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_deals_round_robin_and_records_facts() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("d.svm");
        std::fs::write(&src, "1 1:1\n# c\n-1 3:2\n1 2:1\n\n-1 1:1 2:2\n1 1:5\n").unwrap();
        let out = dir.path().join("parts");
        let m = split_file(&src, 2, &out, None, |_| {}).unwrap();
        assert_eq!(m.rows, vec![3, 2]);
        assert_eq!(m.n_features, 3);
        assert_eq!(m.nnz, 6);
        assert_eq!(read_manifest(&out).unwrap(), m);
        let p0 = std::fs::read_to_string(part_path(&out, 0, 2)).unwrap();
        assert_eq!(p0, "1 1:1\n1 2:1\n1 1:5\n");
        let ds = load_partition(&out, &m, 1, 3, Layout::Dense).unwrap();
        assert_eq!(ds.labels, vec![-1.0, -1.0]);
    }

    #[test]
    fn split_reports_the_source_line_of_a_bad_index() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("d.svm");
        std::fs::write(&src, "1 1:1\n1 9:1\n").unwrap();
        let err = split_file(&src, 2, &dir.path().join("p"), Some(4), |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.svm:2:") && err.contains("past n_features = 4"),
            "{err}"
        );
    }

    #[test]
    fn missing_manifest_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_manifest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lambdaml data split"), "{err}");
    }
}
