//! LibSVM text format: `label idx:val idx:val ...`, indices 1-based.
//!
//! Accepted as in the wild: `#` comments (whole-line or trailing), blank lines, `qid:N`
//! tokens (ignored), unsorted indices (sorted for CSR). Rejected with file and line: a label
//! or value that is not a finite number, a token without `:`, index 0, and an index past the
//! declared feature count.

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
    let mut labels = Vec::new();
    let mut dense = DenseMatrix {
        n_features,
        values: Vec::new(),
    };
    let mut csr = CsrMatrix {
        n_features,
        ..CsrMatrix::default()
    };
    let mut row_buf: Vec<(u32, f32)> = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        row_buf.clear();
        let parsed = parse_line(line, Some(n_features), |i, v| row_buf.push((i, v)));
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
                let row = &mut dense.values[start..];
                for &(i, v) in &row_buf {
                    row[i as usize] = v;
                }
            }
            Layout::Sparse => {
                if !row_buf.is_sorted_by_key(|&(i, _)| i) {
                    row_buf.sort_by_key(|&(i, _)| i);
                }
                for &(i, v) in &row_buf {
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
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_text(&text, path, n_features, layout)
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
