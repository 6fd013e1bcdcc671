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
}

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
}
