//! Partitioning a LibSVM file into N parts that workers load by index.
//!
//! A partition location is a directory holding `part-00000-of-00004` ... and `_manifest.json`
//! (row counts, feature count, label set, file format), so a driver can plan a job without
//! reading data. Lines are dealt round-robin, so part sizes differ by at most one row and a
//! file sorted by label still gives every worker both classes. Parts are written in the
//! binary format of [`super::rows`] (parsed once, by the split); locations written as LibSVM
//! text by earlier versions still load.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::libsvm::{self, Layout, LineError};
use super::rows::{self, RowWriter};
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
    /// How the partition files are encoded (LibSVM text in manifests that do not say).
    #[serde(default)]
    pub format: PartFormat,
    /// Image locations: the images' shape, classes and channel statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<super::images::ImageFacts>,
}

/// How the partition files of a location are encoded.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PartFormat {
    /// LibSVM text, as locations written before the binary format hold.
    #[default]
    Libsvm,
    /// Parsed rows in the binary format of [`super::rows`].
    Rows,
    /// Image records of [`super::images`] (CIFAR-10's binary format for 3x32x32 images):
    /// a label byte and `n_features` pixel bytes each.
    Images,
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
    progress: impl FnMut(u64),
) -> Result<Manifest, DataError> {
    // Blocks of lines are parsed a piece per core, then dealt in file order.
    let cut = Cut {
        block: BLOCK,
        pieces: rayon::current_num_threads().clamp(1, 16),
    };
    split_in(src, parts, out, n_features, progress, cut)
}

/// Deals the images of `set` round-robin into `parts` image partitions under `out` (records
/// in CIFAR-10's binary format for 3x32x32 images), with the set's channel statistics in the
/// manifest so every worker normalises alike. `source` names the input in the manifest.
pub fn split_images(
    set: &super::images::ImageSet,
    parts: usize,
    out: &Path,
    source: &str,
) -> Result<Manifest, DataError> {
    if parts == 0 {
        return Err(DataError::Invalid("cannot split into 0 partitions".into()));
    }
    if set.is_empty() {
        return Err(DataError::Invalid(format!("{source} holds no images")));
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let mut rows = Vec::with_capacity(parts);
    for i in 0..parts {
        let path = part_path(out, i, parts);
        let mine: Vec<usize> = (i..set.len()).step_by(parts).collect();
        rows.push(mine.len());
        std::fs::write(&path, set.records(mine)).map_err(|e| DataError::io(&path, e))?;
    }
    let facts = set.facts();
    let manifest = Manifest {
        parts,
        rows,
        n_features: set.shape.pixels(),
        max_index: set.shape.pixels(),
        max_index_line: None,
        nnz: (set.len() * set.shape.pixels()) as u64,
        labels: (0..facts.classes).map(|c| c as f32).collect(),
        labels_truncated: false,
        source: source.to_string(),
        format: PartFormat::Images,
        images: Some(facts),
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// How [`split_in`] cuts the text it parses in parallel.
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// Bytes read at a time (then up to the end of the line).
    block: u64,
    /// Pieces a block is cut into.
    pieces: usize,
}

fn split_in(
    src: &Path,
    parts: usize,
    out: &Path,
    n_features: Option<usize>,
    mut progress: impl FnMut(u64),
    cut: Cut,
) -> Result<Manifest, DataError> {
    if parts == 0 {
        return Err(DataError::Invalid("cannot split into 0 partitions".into()));
    }
    let file = File::open(src).map_err(|e| DataError::io(src, e))?;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let mut writers = (0..parts)
        .map(|i| RowWriter::create(&part_path(out, i, parts)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = vec![0usize; parts];
    let mut scan = Scan::default();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut block: Vec<u8> = Vec::new();
    let (mut lines_before, mut next, mut consumed) = (0usize, 0usize, 0u64);
    while next_block(&mut reader, &mut block, cut.block).map_err(|e| DataError::io(src, e))? {
        consumed += block.len() as u64;
        let parsed: Vec<ParsedPiece> = line_pieces(&block, cut.pieces)
            .into_par_iter()
            .map(|piece| parse_piece(piece, n_features))
            .collect();
        for piece in parsed {
            let mut start = 0;
            for r in &piece.rows {
                let line = lines_before + r.line;
                if r.top as usize > scan.max_index {
                    scan.max_index = r.top as usize;
                    scan.max_index_line = Some(line);
                }
                scan.nnz += u64::from(r.nnz);
                scan.saw_label(r.label);
                writers[next].push_encoded(&piece.bytes[start..r.end], r.nnz)?;
                start = r.end;
                rows[next] += 1;
                next = (next + 1) % parts;
            }
            if let Some((line, e)) = piece.error {
                return Err(parse_error(src, lines_before + line, e));
            }
            lines_before += piece.lines;
        }
        progress(consumed);
    }
    progress(consumed);
    for w in writers {
        w.finish()?;
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
        format: PartFormat::Rows,
        images: None,
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// Bytes of text parsed together; pieces of it are parsed in parallel.
const BLOCK: u64 = 8 << 20;

/// Reads the next whole lines, about `size` bytes of them, into `block`; false at the end.
fn next_block(reader: &mut impl BufRead, block: &mut Vec<u8>, size: u64) -> std::io::Result<bool> {
    block.clear();
    reader.by_ref().take(size).read_to_end(block)?;
    if block.last().is_some_and(|&b| b != b'\n') {
        reader.read_until(b'\n', block)?;
    }
    Ok(!block.is_empty())
}

/// Cuts `block` into about `n` pieces of whole lines.
fn line_pieces(block: &[u8], n: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..=n {
        let end = if i == n {
            block.len()
        } else {
            let at = (block.len() * i / n).max(start);
            match block[at..].iter().position(|&b| b == b'\n') {
                Some(nl) => at + nl + 1,
                None => block.len(),
            }
        };
        if end > start {
            pieces.push(&block[start..end]);
        }
        start = end;
    }
    pieces
}

/// What the split needs of one row, besides its encoded bytes.
struct RowFacts {
    /// End of the row's bytes in [`ParsedPiece::bytes`].
    end: usize,
    label: f32,
    nnz: u32,
    /// Highest 1-based index in the row (0 for none).
    top: u32,
    /// 1-based line within the piece.
    line: usize,
}

/// One piece of lines, parsed and encoded as partition rows.
struct ParsedPiece {
    bytes: Vec<u8>,
    rows: Vec<RowFacts>,
    /// Lines in the piece (blank and comment lines included).
    lines: usize,
    /// The first bad line (1-based within the piece) and why; rows after it are not parsed.
    error: Option<(usize, LineError)>,
}

fn parse_piece(piece: &[u8], n_features: Option<usize>) -> ParsedPiece {
    let text = piece.strip_suffix(b"\n").unwrap_or(piece);
    let mut out = ParsedPiece {
        bytes: Vec::with_capacity(piece.len()),
        rows: Vec::new(),
        lines: 0,
        error: None,
    };
    let mut row: Vec<(u32, f32)> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        out.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match libsvm::parse_row_bytes(line, n_features, &mut row) {
            Ok(Some(label)) => {
                rows::encode_row(label, &row, &mut out.bytes);
                out.rows.push(RowFacts {
                    end: out.bytes.len(),
                    label,
                    nnz: row.len() as u32,
                    top: row.last().map_or(0, |&(i, _)| i + 1),
                    line: out.lines,
                });
            }
            Ok(None) => {}
            Err(e) => {
                out.error = Some((out.lines, e));
                break;
            }
        }
    }
    out
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
    let path = part_path(location, index, manifest.parts);
    let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
    decode_part(manifest.format, &bytes, &path, n_features, layout)
}

/// Decodes the bytes of one partition file written in `format`; `path` names it in errors.
pub fn decode_part(
    format: PartFormat,
    bytes: &[u8],
    path: &Path,
    n_features: usize,
    layout: Layout,
) -> Result<Dataset, DataError> {
    match format {
        PartFormat::Libsvm => libsvm::parse_bytes(bytes, path, n_features, layout),
        PartFormat::Rows => rows::decode(bytes, path, n_features, layout),
        PartFormat::Images => super::images::decode_part(bytes, path, n_features),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Features;

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
        let p0 = load_partition(&out, &m, 0, 3, Layout::Dense).unwrap();
        assert_eq!(p0.labels, vec![1.0, 1.0, 1.0]);
        let Features::Dense(x) = p0.features else {
            panic!("dense")
        };
        assert_eq!(x.values, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 5.0, 0.0, 0.0]);
        let ds = load_partition(&out, &m, 1, 3, Layout::Dense).unwrap();
        assert_eq!(ds.labels, vec![-1.0, -1.0]);
    }

    #[test]
    fn a_location_of_libsvm_text_from_an_earlier_version_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("d.svm");
        std::fs::write(&src, "1 1:1\n-1 3:2\n").unwrap();
        let out = dir.path().join("parts");
        split_file(&src, 1, &out, None, |_| {}).unwrap();
        std::fs::copy(&src, part_path(&out, 0, 1)).unwrap();
        let json = std::fs::read_to_string(out.join(MANIFEST)).unwrap();
        let old = json.replace(",\n  \"format\": \"rows\"", "");
        assert_ne!(old, json);
        std::fs::write(out.join(MANIFEST), old).unwrap();
        let m = read_manifest(&out).unwrap();
        assert_eq!(m.format, PartFormat::Libsvm);
        let ds = load_partition(&out, &m, 0, 3, Layout::Sparse).unwrap();
        assert_eq!(ds.labels, vec![1.0, -1.0]);
    }

    /// Cut into small blocks and pieces, a file splits as it does line by line: same rows in
    /// the same partitions, same facts, and a bad line named by its number in the file.
    #[test]
    fn blocks_and_pieces_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("d.svm");
        let mut text = String::new();
        for i in 0..500 {
            match i % 7 {
                3 => text.push_str("# a comment\n"),
                5 => text.push_str("\r\n"),
                _ => text.push_str(&format!(
                    "{} {}:{}.5 {}:1\r\n",
                    i % 2,
                    i % 9 + 1,
                    i,
                    i % 9 + 20
                )),
            }
        }
        text.push_str("1 2:3"); // no newline at the end
        std::fs::write(&src, &text).unwrap();
        let whole = Cut {
            block: 1 << 30,
            pieces: 1,
        };
        let small = Cut {
            block: 97,
            pieces: 3,
        };
        let a = split_in(&src, 3, &dir.path().join("a"), None, |_| {}, whole).unwrap();
        let b = split_in(&src, 3, &dir.path().join("b"), None, |_| {}, small).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.total_rows(), 500 - 71 - 71 + 1); // less comments and blank lines
        for i in 0..3 {
            let read = |d: &str| std::fs::read(part_path(&dir.path().join(d), i, 3)).unwrap();
            assert_eq!(read("a"), read("b"));
        }
        let bad = text.replacen("1 7:249.5", "1 7:x", 1);
        assert_ne!(bad, text);
        std::fs::write(&src, bad).unwrap();
        for cut in [whole, small] {
            let err = split_in(&src, 3, &dir.path().join("c"), None, |_| {}, cut).unwrap_err();
            assert!(err.to_string().contains("d.svm:250:"), "{err}");
        }
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
