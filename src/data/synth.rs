//! Synthetic datasets with the shape of the paper's benchmarks, so every workload runs
//! without downloads.
//!
//! - **higgs**: 28 dense features (21 "low-level" Gaussians and 7 nonlinear "high-level"
//!   features), labels 0/1 drawn from a logistic model with label noise: learnable by a linear
//!   model, not separable (like HIGGS, a linear model tops out near 70% accuracy).
//! - **rcv1**: 47,236 sparse features with Zipf-distributed term frequencies, about 0.2%
//!   non-zeros per row, unit-norm rows, labels -1/+1 from a sparse linear rule with noise.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal, Zipf};

/// Which synthetic dataset to generate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum SynthKind {
    /// Dense, 28 features, labels 0/1 (HIGGS-like).
    Higgs,
    /// Sparse, 47,236 features, ~0.2% non-zeros, labels -1/+1 (RCV1-like).
    Rcv1,
    /// Dense Gaussian clusters for KMeans: 8 well-separated centres in 16 dimensions (by
    /// default), the label is the cluster index.
    Blobs,
    /// 3x32x32 images in 10 classes, in CIFAR-10's binary format, for the CNNs
    /// ([`super::images::synth_cifar`]).
    Cifar,
}

impl SynthKind {
    /// Feature count the generator uses unless told otherwise.
    pub fn default_features(self) -> usize {
        match self {
            SynthKind::Higgs => HIGGS_FEATURES,
            SynthKind::Rcv1 => RCV1_FEATURES,
            SynthKind::Blobs => BLOBS_FEATURES,
            SynthKind::Cifar => super::images::ImageShape::CIFAR.pixels(),
        }
    }
}

/// Feature count of the HIGGS-like set.
pub const HIGGS_FEATURES: usize = 28;
/// Default feature count of the blobs set.
pub const BLOBS_FEATURES: usize = 16;
/// Clusters in the blobs set.
pub const BLOBS_CLUSTERS: usize = 8;

/// Feature count of the RCV1-like set.
pub const RCV1_FEATURES: usize = 47_236;

const HIGGS_LOW: usize = 21;

/// Terms of the RCV1-like set that carry the label.
const RCV1_INFORMATIVE_TERMS: usize = 300;

/// Writes `rows` rows of the chosen dataset in LibSVM format (`cifar`: image records). `n_features` applies to rcv1
/// and blobs (higgs always has 28). `progress` is called with the rows written so far.
pub fn generate(
    kind: SynthKind,
    rows: usize,
    seed: u64,
    n_features: Option<usize>,
    out: &mut impl Write,
    progress: impl FnMut(usize),
) -> std::io::Result<()> {
    match kind {
        SynthKind::Higgs => higgs(rows, seed, out, progress),
        SynthKind::Rcv1 => rcv1(
            rows,
            seed,
            n_features.unwrap_or(RCV1_FEATURES),
            out,
            progress,
        ),
        SynthKind::Blobs => blobs(
            rows,
            seed,
            n_features.unwrap_or(BLOBS_FEATURES),
            out,
            progress,
        ),
        SynthKind::Cifar => {
            let set = super::images::synth_cifar(rows, seed);
            out.write_all(&set.records(0..set.len()))?;
            let mut progress = progress;
            progress(rows);
            Ok(())
        }
    }
}

fn blobs(
    rows: usize,
    seed: u64,
    n_features: usize,
    out: &mut impl Write,
    progress: impl FnMut(usize),
) -> std::io::Result<()> {
    let mut truth = StdRng::seed_from_u64(0x424c_4f42);
    // Centres far apart relative to the unit spread of each cluster.
    let centres: Vec<Vec<f32>> = (0..BLOBS_CLUSTERS)
        .map(|_| {
            (0..n_features)
                .map(|_| truth.random_range(-10.0..10.0))
                .collect()
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed);
    write_rows(rows, out, progress, |line| {
        let c = rng.random_range(0..BLOBS_CLUSTERS);
        use std::fmt::Write as _;
        let _ = write!(line, "{c}");
        for (j, centre) in centres[c].iter().enumerate() {
            let noise: f32 = StandardNormal.sample(&mut rng);
            let _ = write!(line, " {}:{:.4}", j + 1, centre + noise);
        }
    })
}

fn higgs(
    rows: usize,
    seed: u64,
    out: &mut impl Write,
    progress: impl FnMut(usize),
) -> std::io::Result<()> {
    // The "physics" (true weights) is fixed; the seed only draws the events, so two seeds
    // give two samples of the same problem.
    let mut truth = StdRng::seed_from_u64(0x4849_4747_5300);
    let w_low: Vec<f32> = (0..HIGGS_LOW)
        .map(|_| StandardNormal.sample(&mut truth))
        .collect();
    let norm = w_low.iter().map(|w| w * w).sum::<f32>().sqrt();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = [0f32; HIGGS_FEATURES];
    write_rows(rows, out, progress, |line| {
        for v in x.iter_mut().take(HIGGS_LOW) {
            *v = StandardNormal.sample(&mut rng);
        }
        // High-level features: invariant-mass-like combinations of the low-level ones.
        for k in 0..HIGGS_FEATURES - HIGGS_LOW {
            let (a, b) = (x[3 * k], x[3 * k + 1]);
            x[HIGGS_LOW + k] = ((a * a + b * b).sqrt() - 1.25) + 0.3 * a * b;
        }
        let linear = w_low.iter().zip(&x).map(|(w, v)| w * v).sum::<f32>() / norm;
        let nonlinear = 0.5 * x[HIGGS_LOW] - 0.4 * x[0] * x[1];
        let p = 1.0 / (1.0 + (-(1.1 * linear + nonlinear)).exp());
        let label = u8::from(rng.random::<f32>() < p);
        use std::fmt::Write as _;
        let _ = write!(line, "{label}");
        for (j, v) in x.iter().enumerate() {
            let _ = write!(line, " {}:{:.4}", j + 1, v);
        }
    })
}

fn rcv1(
    rows: usize,
    seed: u64,
    n_features: usize,
    out: &mut impl Write,
    progress: impl FnMut(usize),
) -> std::io::Result<()> {
    let n_features = n_features.max(2);
    let mut truth = StdRng::seed_from_u64(0x5243_5631);
    // Zipf over term ranks, with ranks scattered over the index space so frequent terms are
    // not all at the front.
    let zipf = Zipf::new(n_features as f64, 1.05).expect("valid zipf parameters");
    let scatter: Vec<u32> = {
        let mut p: Vec<u32> = (0..n_features as u32).collect();
        for i in (1..p.len()).rev() {
            p.swap(i, truth.random_range(0..=i));
        }
        p
    };
    // As in RCV1, the class is carried by frequent terms (present in most rows), so a linear
    // model learns it from a moderate number of rows; the long tail of rare terms is noise.
    let mean_nnz = ((n_features as f64) * 0.002).max(4.0);
    let informative = 0..RCV1_INFORMATIVE_TERMS.min(n_features);
    let mut w = vec![0f32; n_features];
    for &feature in &scatter[informative] {
        w[feature as usize] = StandardNormal.sample(&mut truth);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut feats: Vec<(u32, f32)> = Vec::new();
    write_rows(rows, out, progress, |line| {
        let k = rng.random_range((mean_nnz * 0.5) as usize..=(mean_nnz * 1.5) as usize);
        feats.clear();
        for _ in 0..k {
            let rank = (zipf.sample(&mut rng) as usize - 1).min(n_features - 1);
            let tf = 0.05 + rng.random::<f32>();
            feats.push((scatter[rank], tf));
        }
        feats.sort_unstable_by_key(|&(i, _)| i);
        feats.dedup_by_key(|&mut (i, _)| i);
        let norm = feats.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        let score: f32 = feats.iter().map(|&(i, v)| w[i as usize] * v).sum::<f32>() / norm;
        let noise: f32 = StandardNormal.sample(&mut rng);
        let label = if score + 0.1 * noise >= 0.0 {
            "+1"
        } else {
            "-1"
        };
        line.push_str(label);
        use std::fmt::Write as _;
        for &(i, v) in &feats {
            let _ = write!(line, " {}:{:.5}", i + 1, v / norm);
        }
    })
}

/// Writes `rows` LibSVM lines, each filled by `row` into a reused buffer, and reports
/// progress every 4096 rows.
fn write_rows(
    rows: usize,
    out: &mut impl Write,
    mut progress: impl FnMut(usize),
    mut row: impl FnMut(&mut String),
) -> std::io::Result<()> {
    let mut line = String::with_capacity(4096);
    for r in 0..rows {
        line.clear();
        row(&mut line);
        line.push('\n');
        out.write_all(line.as_bytes())?;
        if r % 4096 == 0 {
            progress(r);
        }
    }
    progress(rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::libsvm::{Layout, parse_text};
    use crate::data::{BinaryLabels, Features};
    use std::path::Path;

    #[test]
    fn higgs_is_deterministic_and_balanced_enough() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate(SynthKind::Higgs, 2000, 7, None, &mut a, |_| {}).unwrap();
        generate(SynthKind::Higgs, 2000, 7, None, &mut b, |_| {}).unwrap();
        assert_eq!(a, b);
        let ds = parse_text(
            std::str::from_utf8(&a).unwrap(),
            Path::new("h"),
            28,
            Layout::Dense,
        )
        .unwrap();
        let pos = ds.labels.iter().filter(|&&l| l == 1.0).count();
        assert!((600..1400).contains(&pos), "{pos} positives of 2000");
    }

    #[test]
    fn rcv1_has_the_advertised_sparsity() {
        let mut a = Vec::new();
        generate(SynthKind::Rcv1, 500, 3, None, &mut a, |_| {}).unwrap();
        let ds = parse_text(
            std::str::from_utf8(&a).unwrap(),
            Path::new("r"),
            RCV1_FEATURES,
            Layout::Sparse,
        )
        .unwrap();
        let Features::Sparse(m) = &ds.features else {
            panic!()
        };
        let density = m.values.len() as f64 / (500.0 * RCV1_FEATURES as f64);
        assert!((0.001..0.003).contains(&density), "density {density}");
        BinaryLabels::from_distinct(&ds.labels).unwrap();
    }
}
