//! LibSVM text format: `label idx:val idx:val ...`, indices 1-based.
//!
//! Accepted as in the wild: `#` comments (whole-line or trailing), blank lines, `qid:N`
//! tokens (ignored), unsorted indices (sorted). Rejected with file and line: a byte that is
//! not UTF-8 (anywhere, comments included), a label or value that is not a finite number, a
//! token without `:`, index 0, an index past the declared feature count, and an index given
//! twice in one row (dense and sparse models would otherwise read it differently).

use std::path::Path;

use super::{CsrMatrix, DataError, Dataset, DenseMatrix, Features};

/// Which in-memory layout to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Row-major dense matrix.
    Dense,
    /// CSR sparse matrix.
    Sparse,
}

/// Why one line failed to parse (the caller adds file and line).
#[derive(Debug, Clone, PartialEq)]
pub enum LineError {
    /// A malformed token, with a message.
    Malformed(String),
    /// A 1-based index above the feature count.
    IndexPastEnd {
        /// The index found.
        index: u64,
        /// The number of features allowed.
        n_features: usize,
    },
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Malformed(m) => f.write_str(m),
            LineError::IndexPastEnd { index, n_features } => write!(
                f,
                "feature index {index} is past n_features = {n_features} \
                 (pass a larger --features, or leave it out to infer it)"
            ),
        }
    }
}

/// Parses one line, calling `feature(index0, value)` for every feature with a 0-based index.
///
/// Returns `Ok(None)` for blank and comment-only lines, `Ok(Some(label))` otherwise.
/// `n_features` bounds the indices when given.
pub fn parse_line(
    line: &str,
    n_features: Option<usize>,
    mut feature: impl FnMut(u32, f32),
) -> Result<Option<f32>, LineError> {
    let content = match line.find('#') {
        Some(pos) => &line[..pos],
        None => line,
    };
    let mut tokens = content.split_ascii_whitespace();
    let Some(label_tok) = tokens.next() else {
        return Ok(None);
    };
    let label = parse_finite(label_tok)
        .ok_or_else(|| LineError::Malformed(format!("label '{label_tok}' is not a number")))?;
    for tok in tokens {
        let Some((idx, val)) = tok.split_once(':') else {
            return Err(LineError::Malformed(format!(
                "token '{tok}' is not of the form index:value"
            )));
        };
        if idx == "qid" {
            continue;
        }
        let index: u64 = idx.parse().map_err(|_| {
            LineError::Malformed(format!(
                "index '{idx}' in '{tok}' is not a positive integer"
            ))
        })?;
        if index == 0 {
            return Err(LineError::Malformed(format!(
                "index 0 in '{tok}': LibSVM indices start at 1"
            )));
        }
        if let Some(n) = n_features
            && index > n as u64
        {
            return Err(LineError::IndexPastEnd {
                index,
                n_features: n,
            });
        }
        if index > u32::MAX as u64 {
            return Err(LineError::Malformed(format!("index {index} is too large")));
        }
        let value = parse_finite(val).ok_or_else(|| {
            LineError::Malformed(format!("value '{val}' in '{tok}' is not a finite number"))
        })?;
        feature((index - 1) as u32, value);
    }
    Ok(Some(label))
}

/// One line of a file as text, or where it stops being UTF-8.
pub fn line_text(bytes: &[u8]) -> Result<&str, LineError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        LineError::Malformed(format!(
            "byte 0x{:02x} at column {} is not UTF-8 (LibSVM files are text)",
            bytes[at],
            at + 1
        ))
    })
}

/// Parses one line into `row` (0-based indices, sorted, each at most once) and returns its
/// label, `None` for blank and comment-only lines.
pub fn parse_row(
    line: &str,
    n_features: Option<usize>,
    row: &mut Vec<(u32, f32)>,
) -> Result<Option<f32>, LineError> {
    row.clear();
    let label = parse_line(line, n_features, |i, v| row.push((i, v)))?;
    if !row.windows(2).all(|w| w[0].0 < w[1].0) {
        row.sort_by_key(|&(i, _)| i);
        if let Some(w) = row.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(LineError::Malformed(format!(
                "feature index {} appears more than once in the row",
                w[0].0 + 1
            )));
        }
    }
    Ok(label)
}

fn parse_finite(s: &str) -> Option<f32> {
    s.parse::<f32>().ok().filter(|v| v.is_finite())
}

/// Parses a whole LibSVM text into a dataset with exactly `n_features` columns.
/// `path` only names the source in errors.
pub fn parse_text(
    text: &str,
    path: &Path,
    n_features: usize,
    layout: Layout,
) -> Result<Dataset, DataError> {
    parse_bytes(text.as_bytes(), path, n_features, layout)
}

/// Parses the bytes of a LibSVM file (checking each line is UTF-8) into a dataset with
/// exactly `n_features` columns. `path` only names the source in errors.
pub fn parse_bytes(
    bytes: &[u8],
    path: &Path,
    n_features: usize,
    layout: Layout,
) -> Result<Dataset, DataError> {
    let mut labels = Vec::new();
    let mut dense = DenseMatrix {
        n_features,
        values: Vec::new(),
    };
    let mut csr = CsrMatrix {
        n_features,
        ..CsrMatrix::default()
    };
    let mut row: Vec<(u32, f32)> = Vec::new();
    for (lineno, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let parsed = line_text(line).and_then(|line| parse_row(line, Some(n_features), &mut row));
        let label = match parsed {
            Ok(Some(label)) => label,
            Ok(None) => continue,
            Err(e) => {
                return Err(DataError::Parse {
                    path: path.to_path_buf(),
                    line: lineno + 1,
                    message: e.to_string(),
                });
            }
        };
        labels.push(label);
        match layout {
            Layout::Dense => {
                let start = dense.values.len();
                dense.values.resize(start + n_features, 0.0);
                let dense_row = &mut dense.values[start..];
                for &(i, v) in &row {
                    dense_row[i as usize] = v;
                }
            }
            Layout::Sparse => {
                for &(i, v) in &row {
                    if v != 0.0 {
                        csr.indices.push(i);
                        csr.values.push(v);
                    }
                }
                csr.indptr.push(csr.indices.len());
            }
        }
    }
    let features = match layout {
        Layout::Dense => Features::Dense(dense),
        Layout::Sparse => Features::Sparse(csr),
    };
    Ok(Dataset { features, labels })
}

/// Reads and parses a LibSVM file.
pub fn read_file(path: &Path, n_features: usize, layout: Layout) -> Result<Dataset, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_bytes(&bytes, path, n_features, layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (f32, Vec<(u32, f32)>);

    fn parse(line: &str, n: Option<usize>) -> Result<Option<Row>, LineError> {
        let mut feats = Vec::new();
        parse_line(line, n, |i, v| feats.push((i, v))).map(|l| l.map(|l| (l, feats)))
    }

    #[test]
    fn a_repeated_index_is_refused_whatever_the_layout_and_order() {
        for text in ["1 2:1 2:3\n", "1 3:1 1:2 3:5\n"] {
            for layout in [Layout::Dense, Layout::Sparse] {
                let err = parse_text(text, Path::new("f.svm"), 4, layout)
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.starts_with("f.svm:1:") && err.contains("appears more than once"),
                    "{err}"
                );
            }
        }
        // Unsorted but distinct indices are fine, and read the same in both layouts.
        let dense = parse_text("1 3:1 1:2\n", Path::new("f"), 3, Layout::Dense).unwrap();
        let Features::Dense(m) = dense.features else {
            panic!()
        };
        assert_eq!(m.values, vec![2.0, 0.0, 1.0]);
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_named_by_line_and_column() {
        let bytes = b"1 1:1\n0 1:2 # caf\xe9\n1 2:1\n";
        let err = parse_bytes(bytes, Path::new("f.svm"), 2, Layout::Dense)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f.svm:2:") && err.contains("byte 0xe9 at column 12"),
            "{err}"
        );
    }

    #[test]
    fn parses_labels_features_comments_and_qid() {
        assert_eq!(
            parse("+1 qid:3 1:0.5 4:-2 # trailing", Some(4)).unwrap(),
            Some((1.0, vec![(0, 0.5), (3, -2.0)]))
        );
        assert_eq!(parse("   ", None).unwrap(), None);
        assert_eq!(parse("# only a comment", None).unwrap(), None);
        assert_eq!(parse("0", None).unwrap(), Some((0.0, vec![])));
    }

    #[test]
    fn rejects_bad_tokens() {
        assert!(matches!(parse("x 1:1", None), Err(LineError::Malformed(_))));
        assert!(matches!(parse("1 1-1", None), Err(LineError::Malformed(_))));
        assert!(matches!(parse("1 0:1", None), Err(LineError::Malformed(_))));
        assert!(matches!(
            parse("1 1:nan", None),
            Err(LineError::Malformed(_))
        ));
        assert_eq!(
            parse("1 5:1", Some(4)),
            Err(LineError::IndexPastEnd {
                index: 5,
                n_features: 4
            })
        );
    }

    #[test]
    fn builds_dense_and_sparse_identically() {
        let text = "1 3:1 1:2\n\n-1 2:0.5\n";
        let dense = parse_text(text, Path::new("t"), 3, Layout::Dense).unwrap();
        let sparse = parse_text(text, Path::new("t"), 3, Layout::Sparse).unwrap();
        let Features::Dense(d) = dense.features else {
            panic!()
        };
        let Features::Sparse(s) = sparse.features else {
            panic!()
        };
        assert_eq!(d.values, vec![2.0, 0.0, 1.0, 0.0, 0.5, 0.0]);
        assert_eq!(s.indptr, vec![0, 2, 3]);
        assert_eq!(s.indices, vec![0, 2, 1]);
        assert_eq!(s.values, vec![2.0, 1.0, 0.5]);
        assert_eq!(dense.labels, vec![1.0, -1.0]);
    }

    #[test]
    fn error_names_file_and_line() {
        let err = parse_text("1 1:1\n1 1:x\n", Path::new("data.svm"), 2, Layout::Dense)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("data.svm:2:"), "{err}");
    }
}
