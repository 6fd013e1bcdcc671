//! Feature matrices: dense row-major and compressed sparse rows (CSR).

/// Dense row-major matrix of `f32` features.
#[derive(Debug, Clone, Default)]
pub struct DenseMatrix {
    /// Number of columns.
    pub n_features: usize,
    /// `n_rows * n_features` values, row after row.
    pub values: Vec<f32>,
}

impl DenseMatrix {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.values.len().checked_div(self.n_features).unwrap_or(0)
    }

    /// Row `i` as a slice.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.n_features..(i + 1) * self.n_features]
    }

    /// Reorders the rows so that row `i` holds what row `order[i]` held. In place, with one
    /// row of scratch: a partition never needs twice its memory.
    ///
    /// # Panics
    /// If `order` is not a permutation of the rows.
    pub fn permute_rows(&mut self, order: &[u32]) {
        let d = self.n_features;
        assert_eq!(
            order.len(),
            self.n_rows(),
            "a row order of the wrong length"
        );
        let mut placed = vec![false; order.len()];
        let mut held = vec![0f32; d];
        // Each cycle of the permutation: keep its first row aside, pull every row of the
        // cycle into place, and put the kept row where the cycle closes.
        for start in 0..order.len() {
            if placed[start] {
                continue;
            }
            held.copy_from_slice(self.row(start));
            let mut i = start;
            loop {
                placed[i] = true;
                let from = order[i] as usize;
                if from == start {
                    self.values[i * d..(i + 1) * d].copy_from_slice(&held);
                    break;
                }
                assert!(!placed[from], "the row order takes row {from} twice");
                self.values.copy_within(from * d..(from + 1) * d, i * d);
                i = from;
            }
        }
    }
}

/// A zeroed buffer of `len` values for a [`DenseMatrix`], on transparent huge pages where
/// the kernel offers them on request (Linux, `transparent_hugepage` = `madvise` or
/// `always`).
///
/// An epoch visits a partition's rows in blocks taken in shuffled order: with 4 KiB pages
/// nearly every block of a partition of tens of megabytes starts with a TLB miss, a page
/// walk before the cache miss.
/// The advice must come before the first write, while no page is mapped yet, so that the
/// first touch of each aligned 2 MiB stretch maps a huge page.
pub fn zeroed_values(len: usize) -> Vec<f32> {
    // `calloc` of a large block maps fresh zero pages without touching them.
    let values = vec![0f32; len];
    advise_huge_pages(&values);
    values
}

/// Size of a transparent huge page on x86_64 and (with 4 KiB base pages) arm64.
const HUGE_PAGE: usize = 2 << 20;

/// The whole huge pages inside `bytes` bytes from address `start`: only those can be
/// backed by one (a huge page never spans another allocation's memory).
fn huge_page_span(start: usize, bytes: usize) -> Option<std::ops::Range<usize>> {
    let lo = start.checked_next_multiple_of(HUGE_PAGE)?;
    let hi = start.checked_add(bytes)? / HUGE_PAGE * HUGE_PAGE;
    (hi > lo).then_some(lo..hi)
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(values: &[f32]) {
    if let Some(span) = huge_page_span(values.as_ptr() as usize, std::mem::size_of_val(values)) {
        // SAFETY: the span lies inside the allocation of `values`; MADV_HUGEPAGE changes how
        // its pages are backed, never their contents. Failure (no THP) leaves 4 KiB pages.
        unsafe {
            libc::madvise(
                span.start as *mut libc::c_void,
                span.len(),
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_values: &[f32]) {}

/// Compressed sparse row matrix with 0-based column indices sorted within each row.
#[derive(Debug, Clone)]
pub struct CsrMatrix {
    /// Number of columns.
    pub n_features: usize,
    /// Row `i` spans `indptr[i]..indptr[i + 1]` of `indices` and `values`.
    pub indptr: Vec<usize>,
    /// Column index of every stored value.
    pub indices: Vec<u32>,
    /// Stored values.
    pub values: Vec<f32>,
}

impl Default for CsrMatrix {
    fn default() -> Self {
        CsrMatrix {
            n_features: 0,
            indptr: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        }
    }
}

impl CsrMatrix {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.indptr.len() - 1
    }

    /// Row `i` as (column indices, values).
    #[inline]
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// Reorders the rows so that row `i` holds what row `order[i]` held (`order` a
    /// permutation of the rows). Rows differ in length, so this builds the arrays anew.
    pub fn permute_rows(&mut self, order: &[u32]) {
        assert_eq!(
            order.len(),
            self.n_rows(),
            "a row order of the wrong length"
        );
        let mut indptr = Vec::with_capacity(self.indptr.len());
        let mut indices = Vec::with_capacity(self.indices.len());
        let mut values = Vec::with_capacity(self.values.len());
        indptr.push(0);
        for &r in order {
            let (i, v) = self.row(r as usize);
            indices.extend_from_slice(i);
            values.extend_from_slice(v);
            indptr.push(indices.len());
        }
        debug_assert_eq!(indices.len(), self.indices.len(), "not a permutation");
        (self.indptr, self.indices, self.values) = (indptr, indices, values);
    }
}

/// Feature rows in the layout the model asked for.
#[derive(Debug, Clone)]
pub enum Features {
    /// Every value stored.
    Dense(DenseMatrix),
    /// Only non-zeros stored.
    Sparse(CsrMatrix),
}

impl Features {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        match self {
            Features::Dense(m) => m.n_rows(),
            Features::Sparse(m) => m.n_rows(),
        }
    }

    /// Number of columns.
    pub fn n_features(&self) -> usize {
        match self {
            Features::Dense(m) => m.n_features,
            Features::Sparse(m) => m.n_features,
        }
    }

    /// Reorders the rows so that row `i` holds what row `order[i]` held (`order` a
    /// permutation of the rows).
    pub fn permute_rows(&mut self, order: &[u32]) {
        match self {
            Features::Dense(m) => m.permute_rows(order),
            Features::Sparse(m) => m.permute_rows(order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_spans_stay_inside_the_buffer() {
        const MB: usize = 1 << 20;
        // A buffer that starts mid-page covers the whole pages after its start only.
        assert_eq!(huge_page_span(3 * MB, 10 * MB), Some(4 * MB..12 * MB));
        assert_eq!(huge_page_span(4 * MB, 4 * MB), Some(4 * MB..8 * MB));
        // Smaller than a huge page, or no whole page inside: nothing to advise.
        assert_eq!(huge_page_span(3 * MB, 2 * MB), None);
        assert_eq!(huge_page_span(0, MB), None);
        assert_eq!(huge_page_span(usize::MAX - MB, 2 * MB), None);
    }

    #[test]
    fn permuted_rows_are_the_rows_of_the_order() {
        // Two cycles (0 -> 2 -> 3 -> 0 and 1 <-> 4) and a fixed point (5).
        let order = [2u32, 4, 3, 0, 1, 5];
        let mut dense = DenseMatrix {
            n_features: 2,
            values: (0..12).map(|v| v as f32).collect(),
        };
        dense.permute_rows(&order);
        let rows: Vec<&[f32]> = (0..6).map(|i| dense.row(i)).collect();
        let want: [&[f32]; 6] = [
            &[4., 5.],
            &[8., 9.],
            &[6., 7.],
            &[0., 1.],
            &[2., 3.],
            &[10., 11.],
        ];
        assert_eq!(rows, want);

        let mut sparse = CsrMatrix {
            n_features: 9,
            indptr: vec![0, 1, 1, 3, 4, 6, 6],
            indices: vec![0, 1, 2, 3, 4, 5],
            values: vec![10., 20., 21., 30., 40., 41.],
        };
        sparse.permute_rows(&order);
        let rows: Vec<_> = (0..6).map(|i| sparse.row(i)).collect();
        let want: [(&[u32], &[f32]); 6] = [
            (&[1, 2], &[20., 21.]),
            (&[4, 5], &[40., 41.]),
            (&[3], &[30.]),
            (&[0], &[10.]),
            (&[], &[]),
            (&[], &[]),
        ];
        assert_eq!(rows, want);
    }

    #[test]
    #[should_panic(expected = "takes row 1 twice")]
    fn a_row_order_that_repeats_a_row_is_refused() {
        let mut dense = DenseMatrix {
            n_features: 1,
            values: vec![0., 1., 2.],
        };
        dense.permute_rows(&[1, 1, 0]);
    }

    #[test]
    fn zeroed_values_are_zero() {
        let v = zeroed_values(3 << 20);
        assert_eq!(v.len(), 3 << 20);
        assert!(v.iter().all(|&x| x == 0.0));
    }
}
