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

/// Parses one line of bytes into `row` as [`parse_row`] does, with the same result and the
/// same errors, but about three times as fast on the lines real files hold.
///
/// The common line (ASCII, plain decimals, sorted indices) is read byte by byte here;
/// anything else (a comment, `qid`, an exponent, a long mantissa, a byte that is not ASCII,
/// anything wrong) is handed to [`parse_row`], which accepts or names it.
pub fn parse_row_bytes(
    line: &[u8],
    n_features: Option<usize>,
    row: &mut Vec<(u32, f32)>,
) -> Result<Option<f32>, LineError> {
    row.clear();
    match fast::parse_line(line, n_features, row) {
        Some(label) => Ok(label),
        None => line_text(line).and_then(|text| parse_row(text, n_features, row)),
    }
}

/// The fast path of [`parse_row_bytes`]: `None` means "not sure, ask the full parser".
mod fast {
    /// Powers of ten that are exact in `f32` (5^10 < 2^24).
    const POW10: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];

    #[inline(always)]
    fn is_space(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c)
    }

    /// Reads a number at `line[*at..]` up to the next whitespace (or the end), advancing
    /// `at` past it. A decimal `[+-]digits[.digits]` whose digits fit in 24 bits, with at
    /// most ten after the point, is the quotient of two exact `f32`, rounded once: the
    /// correctly rounded value that `str::parse` gives too (Clinger's fast path). Anything
    /// else (an exponent, a long mantissa) goes to `str::parse`; `None` if that fails.
    #[inline(always)]
    fn number(line: &[u8], at: &mut usize) -> Option<f32> {
        let start = *at;
        let mut i = start;
        let negative = match line.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let (mut mantissa, mut digits, mut after_point, mut point) = (0u64, 0usize, 0usize, false);
        while let Some(&b) = line.get(i) {
            let d = b.wrapping_sub(b'0');
            if d < 10 {
                // Saturates far above 2^24: such a mantissa takes the slow path anyway.
                mantissa = (mantissa * 10 + u64::from(d)).min(1 << 40);
                digits += 1;
                after_point += usize::from(point);
            } else if b == b'.' && !point {
                point = true;
            } else {
                break;
            }
            i += 1;
        }
        let ends = line.get(i).is_none_or(|&b| is_space(b));
        if ends && digits > 0 && mantissa < 1 << 24 && after_point < POW10.len() {
            *at = i;
            let v = mantissa as f32 / POW10[after_point];
            return Some(if negative { -v } else { v });
        }
        while line.get(i).is_some_and(|&b| !is_space(b)) {
            i += 1;
        }
        *at = i;
        let text = std::str::from_utf8(&line[start..i]).ok()?;
        text.parse::<f32>().ok().filter(|v| v.is_finite())
    }

    /// Moves `at` past whitespace; false at the end of the line.
    #[inline(always)]
    fn skip_space(line: &[u8], at: &mut usize) -> bool {
        while line.get(*at).is_some_and(|&b| is_space(b)) {
            *at += 1;
        }
        *at < line.len()
    }

    /// The label of the line and its features in `row`, or `None` for anything the full
    /// parser must look at. Every byte is either read as part of a number, an index, `:` or
    /// ASCII whitespace, or makes the line go to the full parser: comments, `qid`, bytes
    /// that are not ASCII, unsorted or repeated indices and every error go there.
    pub(super) fn parse_line(
        line: &[u8],
        n_features: Option<usize>,
        row: &mut Vec<(u32, f32)>,
    ) -> Option<Option<f32>> {
        let mut at = 0;
        if !skip_space(line, &mut at) {
            return Some(None);
        }
        let label = number(line, &mut at)?;
        let limit = n_features.map_or(u32::MAX as u64, |n| (n as u64).min(u32::MAX as u64));
        let mut previous: Option<u32> = None;
        while skip_space(line, &mut at) {
            let start = at;
            let mut index = 0u64;
            while let Some(d) = line
                .get(at)
                .map(|b| b.wrapping_sub(b'0'))
                .filter(|&d| d < 10)
            {
                index = index * 10 + u64::from(d);
                at += 1;
                if at - start > 10 {
                    return None;
                }
            }
            if at == start || line.get(at) != Some(&b':') || index == 0 || index > limit {
                return None;
            }
            at += 1;
            let value = number(line, &mut at)?;
            let i = (index - 1) as u32;
            if previous.is_some_and(|p| p >= i) {
                return None;
            }
            previous = Some(i);
            row.push((i, value));
        }
        Some(Some(label))
    }
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
        let parsed = parse_row_bytes(line, Some(n_features), &mut row);
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
    use proptest::prelude::*;

    type Row = (f32, Vec<(u32, f32)>);

    /// Tokens of every kind the fast path reads or must hand over.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u32..40, -99_999i32..99_999, 0u32..7)
                .prop_map(|(i, v, p)| format!("{i}:{}", v as f64 / 10f64.powi(p as i32))),
            (1u32..40, any::<f32>()).prop_map(|(i, v)| format!("{i}:{v}")),
            (1u32..40, any::<f32>()).prop_map(|(i, v)| format!("{i}:{v:e}")),
            (0u64..20_000_000_000).prop_map(|i| format!("{i}:1")),
            Just("qid:3".to_string()),
            Just("3:1.2.3".to_string()),
            Just("3:".to_string()),
            Just(":4".to_string()),
            Just("7:-".to_string()),
            Just("5:1e99".to_string()),
            Just("2:123456789.25".to_string()),
            Just("4:0.0000000001".to_string()),
            Just("#c".to_string()),
            Just("1:é".to_string()),
            Just("\t".to_string()),
        ]
    }

    proptest! {
        /// The fast path gives what the full parser gives, errors included.
        #[test]
        fn the_fast_path_agrees_with_the_full_parser(
            label in prop_oneof![Just("+1".to_string()), Just("-1".to_string()), Just("0.5".to_string()), Just("x".to_string()), Just(String::new())],
            tokens in proptest::collection::vec(token(), 0..8),
            n in prop_oneof![Just(None), Just(Some(30usize))],
        ) {
            let line = format!("{label} {}", tokens.join(" "));
            let mut slow = Vec::new();
            let want = parse_row(&line, n, &mut slow);
            let mut fast = Vec::new();
            let got = parse_row_bytes(line.as_bytes(), n, &mut fast);
            prop_assert_eq!(&got, &want, "{}", line);
            if want.is_ok() {
                let bits = |r: &[(u32, f32)]| r.iter().map(|(i, v)| (*i, v.to_bits())).collect::<Vec<_>>();
                prop_assert_eq!(bits(&fast), bits(&slow), "{}", line);
            }
        }
    }

    #[test]
    fn decimals_read_by_the_fast_path_are_correctly_rounded() {
        for v in [
            "0.1",
            "-0.7563",
            "16777215",
            "1.6636",
            "3.4028234",
            "0.0000000001",
            "-0",
        ] {
            let mut row = Vec::new();
            parse_row_bytes(format!("1 1:{v}").as_bytes(), None, &mut row).unwrap();
            assert_eq!(
                row[0].1.to_bits(),
                v.parse::<f32>().unwrap().to_bits(),
                "{v}"
            );
        }
    }

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
