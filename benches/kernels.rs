//! Compute kernels on one core: a KMeans assignment pass and one LR/SVM training epoch,
//! dense (HIGGS-like) and sparse (RCV1-like). Throughput is reported in rows per second.
//!
//! `cargo bench --bench kernels`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambdaml::algo::kmeans;
use lambdaml::algo::linear::{Linear, Loss};
use lambdaml::algo::sgd;
use lambdaml::data::libsvm::{Layout, parse_text};
use lambdaml::data::synth::{self, SynthKind};
use lambdaml::data::{BinaryLabels, Dataset};

fn dataset(kind: SynthKind, rows: usize, layout: Layout) -> Dataset {
    let mut text = Vec::new();
    synth::generate(kind, rows, 1, None, &mut text, |_| {}).unwrap();
    let text = String::from_utf8(text).unwrap();
    parse_text(&text, Path::new("synth"), kind.default_features(), layout).unwrap()
}

fn kmeans_assign(c: &mut Criterion) {
    let mut group = c.benchmark_group("kmeans_assign_k16");
    for (name, kind, rows, layout) in [
        ("dense_higgs", SynthKind::Higgs, 50_000, Layout::Dense),
        ("sparse_rcv1", SynthKind::Rcv1, 5_000, Layout::Sparse),
    ] {
        let ds = dataset(kind, rows, layout);
        let k = 16;
        let centroids = kmeans::kmeans_pp(&ds.features, k, 3);
        let sq = kmeans::row_sq_norms(&ds.features);
        let mut stats = vec![0f32; kmeans::stats_len(k, ds.features.n_features())];
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(name, |b| {
            b.iter(|| kmeans::assign(black_box(&ds.features), &sq, &centroids, k, &mut stats))
        });
    }
    group.finish();
}

fn linear_epoch(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear_epoch_batch1000");
    for (name, kind, rows, layout, loss) in [
        (
            "lr_dense_higgs",
            SynthKind::Higgs,
            50_000,
            Layout::Dense,
            Loss::Logistic,
        ),
        (
            "svm_dense_higgs",
            SynthKind::Higgs,
            50_000,
            Layout::Dense,
            Loss::Hinge,
        ),
        (
            "lr_sparse_rcv1",
            SynthKind::Rcv1,
            20_000,
            Layout::Sparse,
            Loss::Logistic,
        ),
        (
            "svm_sparse_rcv1",
            SynthKind::Rcv1,
            20_000,
            Layout::Sparse,
            Loss::Hinge,
        ),
    ] {
        let ds = dataset(kind, rows, layout);
        let model = Linear {
            loss,
            n_features: ds.features.n_features(),
            lam: 1e-4,
        };
        let labels = BinaryLabels::from_distinct(&ds.labels).unwrap();
        let y = model.targets(&ds.labels, labels);
        let order = sgd::block_order(rows, 1, 0, 0);
        let steps = rows.div_ceil(1000);
        let mut params = vec![0f32; model.n_params()];
        let mut grad = vec![0f32; model.n_params()];
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                for step in 0..steps {
                    let rows = &order[sgd::batch_bounds(order.len(), steps, step)];
                    model.gradient(&params, &ds.features, &y, rows, &mut grad);
                    sgd::step(&mut params, &grad, 0.1);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kmeans_assign, linear_epoch);
criterion_main!(benches);
