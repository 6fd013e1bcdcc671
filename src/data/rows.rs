//! The binary partition format that `lambdaml data split` writes: rows already parsed, so a
//! worker loads its partition with one read and one pass instead of parsing text a second
//! time (the driver has parsed and validated every line while splitting). On a 200,000-row
//! dense file, parsing the partition again was a third of a whole one-worker run.
//!
//! Layout, little-endian:
//!
//! ```text
//! magic   8 bytes  "LMLROWS1"
//! rows    u64      number of rows
//! nnz     u64      stored index:value pairs, all rows together
//! rows x  { label f32, len u32, len x { index u32 (0-based), value f32 } }
//! ```
//!
//! Rows are written as they stream past (the counts are patched in at the end), so a split
//! never holds a partition in memory. A reader checks the counts against the length of the
//! bytes before it allocates anything, and every row's indices (in range, strictly
//! increasing) and values (finite) as it copies them, so a corrupt or foreign file is an
//! error naming the file and the row, never a silently wrong model.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::libsvm::Layout;
use super::{CsrMatrix, DataError, Dataset, DenseMatrix, Features};

const MAGIC: &[u8; 8] = b"LMLROWS1";
const HEADER: usize = 24;
/// Bytes of a row's label and length, and of one index:value pair.
const ROW_HEAD: usize = 8;
const PAIR: usize = 8;

/// Streams rows into a partition file; [`RowWriter::finish`] writes the counts.
pub struct RowWriter {
    path: PathBuf,
    out: BufWriter<File>,
    rows: u64,
    nnz: u64,
}

impl RowWriter {
    /// Creates (or truncates) the partition file at `path`.
    pub fn create(path: &Path) -> Result<Self, DataError> {
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        out.write_all(&[0; HEADER])
            .map_err(|e| DataError::io(path, e))?;
        Ok(RowWriter {
            path: path.to_path_buf(),
            out,
            rows: 0,
            nnz: 0,
        })
    }

    /// Appends one row already encoded by [`encode_row`], holding `nnz` pairs.
    pub fn push_encoded(&mut self, row: &[u8], nnz: u32) -> Result<(), DataError> {
        debug_assert_eq!(row.len(), ROW_HEAD + nnz as usize * PAIR);
        self.out
            .write_all(row)
            .map_err(|e| DataError::io(&self.path, e))?;
        self.rows += 1;
        self.nnz += u64::from(nnz);
        Ok(())
    }

    /// Writes the header with the final counts and flushes the file.
    pub fn finish(mut self) -> Result<(), DataError> {
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&self.rows.to_le_bytes());
        header[16..].copy_from_slice(&self.nnz.to_le_bytes());
        let io = |e| DataError::io(&self.path, e);
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        self.out.write_all(&header).map_err(io)?;
        self.out.flush().map_err(io)
    }
}

/// Appends the encoding of one row (its label and its (0-based index, value) pairs, indices
/// strictly increasing) to `out`.
pub fn encode_row(label: f32, row: &[(u32, f32)], out: &mut Vec<u8>) {
    let len = u32::try_from(row.len()).expect("a parsed row has fewer than 2^32 features");
    out.reserve(ROW_HEAD + row.len() * PAIR);
    out.extend_from_slice(&label.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    for &(i, v) in row {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A little-endian cursor over bytes whose total length was checked against the header.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u32(&mut self) -> u32 {
        let v = u32::from_le_bytes(self.bytes[self.at..self.at + 4].try_into().unwrap());
        self.at += 4;
        v
    }

    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
}

/// True when `bytes` start like a partition file of this format.
pub fn is_rows_file(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Decodes a partition file's bytes into a dataset with exactly `n_features` columns.
/// `path` names the file in errors. Zeros stored explicitly are kept in the dense layout and
/// dropped in the sparse one, as the LibSVM parser does.
pub fn decode(
    bytes: &[u8],
    path: &Path,
    n_features: usize,
    layout: Layout,
) -> Result<Dataset, DataError> {
    let corrupt = |row: Option<usize>, message: String| DataError::Corrupt {
        path: path.to_path_buf(),
        row,
        message,
    };
    if bytes.len() < HEADER || !is_rows_file(bytes) {
        return Err(corrupt(
            None,
            "not a lambdaml partition file (make partitions with `lambdaml data split`)".into(),
        ));
    }
    let count = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (rows, nnz) = (count(8), count(16));
    let expected = rows
        .checked_mul(ROW_HEAD as u64)
        .zip(nnz.checked_mul(PAIR as u64))
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|body| body.checked_add(HEADER as u64));
    if expected != Some(bytes.len() as u64) {
        return Err(corrupt(
            None,
            format!(
                "{} bytes, but its header promises {rows} rows and {nnz} values (truncated or \
                 not written to the end)",
                bytes.len()
            ),
        ));
    }
    // Both counts are now bounded by the length of bytes in memory.
    let (rows, nnz) = (rows as usize, nnz as usize);
    let mut labels = Vec::with_capacity(rows);
    let mut dense = Vec::new();
    let mut csr = CsrMatrix {
        n_features,
        ..CsrMatrix::default()
    };
    match layout {
        Layout::Dense => {
            let cells = rows.checked_mul(n_features).ok_or_else(|| {
                corrupt(
                    None,
                    format!("{rows} rows x {n_features} features overflow"),
                )
            })?;
            dense = super::matrix::zeroed_values(cells);
        }
        Layout::Sparse => {
            csr.indptr.reserve(rows);
            csr.indices.reserve(nnz);
            csr.values.reserve(nnz);
        }
    }
    let mut cur = Cursor { bytes, at: HEADER };
    let mut seen = 0usize;
    for r in 0..rows {
        let bad = |message: String| corrupt(Some(r + 1), message);
        let label = cur.f32();
        if !label.is_finite() {
            return Err(bad(format!("label {label} is not a finite number")));
        }
        let len = cur.u32() as usize;
        seen += len;
        if seen > nnz {
            return Err(bad(format!(
                "rows hold more values than the header's {nnz}"
            )));
        }
        labels.push(label);
        let mut next = 0u32;
        for _ in 0..len {
            let (i, v) = (cur.u32(), cur.f32());
            if i < next || i as usize >= n_features {
                return Err(bad(if i as usize >= n_features {
                    format!(
                        "feature index {} is past n_features = {n_features}",
                        i as u64 + 1
                    )
                } else {
                    format!("feature index {} is out of order", i as u64 + 1)
                }));
            }
            if !v.is_finite() {
                return Err(bad(format!(
                    "feature {} is {v}, not a finite number",
                    i as u64 + 1
                )));
            }
            next = i + 1;
            match layout {
                Layout::Dense => dense[r * n_features + i as usize] = v,
                Layout::Sparse if v != 0.0 => {
                    csr.indices.push(i);
                    csr.values.push(v);
                }
                Layout::Sparse => {}
            }
        }
        if layout == Layout::Sparse {
            csr.indptr.push(csr.indices.len());
        }
    }
    if seen != nnz {
        return Err(corrupt(
            None,
            format!("rows hold {seen} values, the header says {nnz}"),
        ));
    }
    let features = match layout {
        Layout::Dense => Features::Dense(DenseMatrix {
            n_features,
            values: dense,
        }),
        Layout::Sparse => Features::Sparse(csr),
    };
    Ok(Dataset { features, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::libsvm;
    use proptest::prelude::*;

    fn write(rows: &[(f32, Vec<(u32, f32)>)]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let mut w = RowWriter::create(&path).unwrap();
        for (label, row) in rows {
            let mut bytes = Vec::new();
            encode_row(*label, row, &mut bytes);
            w.push_encoded(&bytes, row.len() as u32).unwrap();
        }
        w.finish().unwrap();
        std::fs::read(&path).unwrap()
    }

    fn text_of(rows: &[(f32, Vec<(u32, f32)>)]) -> String {
        rows.iter()
            .map(|(l, r)| {
                let pairs: Vec<String> = r.iter().map(|(i, v)| format!("{}:{v}", i + 1)).collect();
                format!("{l} {}\n", pairs.join(" "))
            })
            .collect()
    }

    fn row() -> impl Strategy<Value = (f32, Vec<(u32, f32)>)> {
        (
            prop_oneof![Just(-1f32), Just(1f32)],
            proptest::collection::btree_map(0u32..30, -1e3f32..1e3, 0..12),
        )
            .prop_map(|(l, m)| {
                let mut pairs: Vec<(u32, f32)> = m.into_iter().collect();
                if let Some(p) = pairs.first_mut() {
                    p.1 = 0.0; // an explicit zero, kept dense and dropped sparse
                }
                (l, pairs)
            })
    }

    fn same(a: &Dataset, b: &Dataset) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        bits(&a.labels) == bits(&b.labels)
            && match (&a.features, &b.features) {
                (Features::Dense(x), Features::Dense(y)) => {
                    x.n_features == y.n_features && bits(&x.values) == bits(&y.values)
                }
                (Features::Sparse(x), Features::Sparse(y)) => {
                    x.indptr == y.indptr
                        && x.indices == y.indices
                        && bits(&x.values) == bits(&y.values)
                }
                _ => false,
            }
    }

    proptest! {
        /// A partition file loads as the LibSVM text of the same rows parses.
        #[test]
        fn decodes_as_the_parser_reads_the_same_rows(rows in proptest::collection::vec(row(), 0..40)) {
            let bytes = write(&rows);
            let text = text_of(&rows);
            for layout in [Layout::Dense, Layout::Sparse] {
                let got = decode(&bytes, Path::new("p"), 30, layout).unwrap();
                let want = libsvm::parse_text(&text, Path::new("t"), 30, layout).unwrap();
                prop_assert!(same(&got, &want));
            }
        }

        /// No truncation or flipped byte makes the decoder panic or allocate past the input.
        #[test]
        fn damaged_files_are_errors_not_panics(
            rows in proptest::collection::vec(row(), 1..10),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let bytes = write(&rows);
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode(short, Path::new("p"), 30, Layout::Dense).is_err());
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] = byte;
            let _ = decode(&flipped, Path::new("p"), 30, Layout::Dense);
            let _ = decode(&flipped, Path::new("p"), 30, Layout::Sparse);
        }
    }

    #[test]
    fn errors_name_the_file_and_row() {
        let mut bytes = write(&[(1.0, vec![(0, 1.0)]), (1.0, vec![(2, 1.0), (5, 2.0)])]);
        let err = decode(&bytes, Path::new("part-1"), 4, Layout::Dense).unwrap_err();
        assert_eq!(
            err.to_string(),
            "part-1: row 2: feature index 6 is past n_features = 4"
        );
        // The first row's value becomes NaN.
        let at = HEADER + ROW_HEAD + 4;
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let err = decode(&bytes, Path::new("part-1"), 8, Layout::Sparse).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("part-1: row 1: feature 1 is NaN"),
            "{err}"
        );
        let err = decode(b"1 1:2\n", Path::new("part-1"), 8, Layout::Sparse).unwrap_err();
        assert!(
            err.to_string().contains("not a lambdaml partition"),
            "{err}"
        );
    }

    #[test]
    fn a_header_promising_more_than_the_bytes_hold_is_refused_before_allocating() {
        let mut bytes = write(&[(1.0, vec![(0, 1.0)])]);
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = decode(&bytes, Path::new("p"), usize::MAX / 2, Layout::Dense).unwrap_err();
        assert!(err.to_string().contains("header promises"), "{err}");
    }
}
