//! Planning a job before any worker starts: where the partitions are, how many features and
//! steps per epoch, which labels.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::config::JobConfig;
use super::data_source;
use crate::data::partition::{self, Manifest};
use crate::data::synth;
use crate::data::{DataLocation, images};

/// Partitions ready for the workers.
#[derive(Debug, Clone)]
pub struct PreparedData {
    /// The partition location: a directory or `s3://bucket/prefix`.
    pub location: DataLocation,
    /// Its manifest.
    pub manifest: Manifest,
    /// Feature count the model uses.
    pub n_features: usize,
    /// True when the partitions were made for this job and are deleted after it.
    pub temporary: bool,
}

/// Reports progress of long data steps (synthesis, split) to whoever shows it.
pub trait DataProgress {
    /// A new phase with `total` units (rows or bytes).
    fn phase(&self, label: &str, total: u64, bytes: bool);
    /// Units done so far in the current phase.
    fn advance(&self, done: u64);
    /// The phase is over.
    fn done(&self);
}

/// Ensures partitions exist for `cfg` (synthesising and/or splitting into `run_dir` when
/// needed) and returns where they are: a local directory or an S3 prefix.
pub async fn prepare_data(
    cfg: &JobConfig,
    run_dir: &Path,
    ui: &dyn DataProgress,
) -> anyhow::Result<PreparedData> {
    let source = match &cfg.data {
        Some(remote @ DataLocation::S3 { .. }) => {
            let manifest = data_source::read_manifest(remote).await?;
            return partitioned(cfg, remote.clone(), manifest);
        }
        Some(DataLocation::Local(path)) => path.clone(),
        None if cfg.model.is_cnn() => {
            ui.phase("synthesise", cfg.synth_rows as u64, false);
            let set = images::synth_cifar(cfg.synth_rows, cfg.seed);
            ui.done();
            let source = format!(
                "synthetic cifar, {} images, seed {}",
                cfg.synth_rows, cfg.seed
            );
            return split_images(cfg, run_dir.join("partitions"), &set, &source);
        }
        None => synthesize(cfg, ui)?,
    };
    let meta = std::fs::metadata(&source)
        .with_context(|| format!("data '{}' cannot be read", source.display()))?;
    if meta.is_dir() {
        let manifest = partition::read_manifest(&source)?;
        return partitioned(cfg, DataLocation::Local(source), manifest);
    }
    if let Some(set) = read_image_file(&source)? {
        let source = source.display().to_string();
        return split_images(cfg, run_dir.join("partitions"), &set, &source);
    }
    let location = run_dir.join("partitions");
    ui.phase("split", meta.len(), true);
    let manifest = partition::split_file(&source, cfg.workers, &location, cfg.features, |b| {
        ui.advance(b)
    })?;
    ui.done();
    Ok(made(location, manifest))
}

/// Ensures the test set `cfg.test_data` (if any) is partitioned for the workers like the
/// training data `train`: split on the fly from a file into the run folder, or taken as it
/// is from a partition location; checked to fit the training data (same kind, shape and
/// features, known labels).
pub async fn prepare_test_data(
    cfg: &JobConfig,
    run_dir: &Path,
    train: &PreparedData,
    ui: &dyn DataProgress,
) -> anyhow::Result<Option<PreparedData>> {
    let Some(source) = &cfg.test_data else {
        return Ok(None);
    };
    let location = run_dir.join("test-partitions");
    let test = match source {
        remote @ DataLocation::S3 { .. } => {
            let manifest = data_source::read_manifest(remote).await?;
            located(cfg, remote.clone(), manifest, train.n_features)?
        }
        DataLocation::Local(path) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("test data '{}' cannot be read", path.display()))?;
            if meta.is_dir() {
                let manifest = partition::read_manifest(path)?;
                located(cfg, source.clone(), manifest, train.n_features)?
            } else if let Some(set) = read_image_file(path)? {
                split_images(cfg, location, &set, &path.display().to_string())?
            } else {
                ui.phase("split test", meta.len(), true);
                let manifest = partition::split_file(
                    path,
                    cfg.workers,
                    &location,
                    Some(train.n_features),
                    |b| ui.advance(b),
                )
                .with_context(|| {
                    format!(
                        "splitting --test-data '{}' ({} features, as the training data)",
                        path.display(),
                        train.n_features
                    )
                })?;
                ui.done();
                made(location, manifest)
            }
        }
    };
    fits_training(&train.manifest, &test.manifest, source)?;
    Ok(Some(test))
}

/// Partitions made for this job in `location`.
fn made(location: PathBuf, manifest: Manifest) -> PreparedData {
    PreparedData {
        location: DataLocation::Local(location),
        n_features: manifest.n_features,
        manifest,
        temporary: true,
    }
}

/// An existing test partition location, checked to have one partition per worker and no
/// feature past the training data's `n_features`.
fn located(
    cfg: &JobConfig,
    source: DataLocation,
    manifest: Manifest,
    n_features: usize,
) -> anyhow::Result<PreparedData> {
    if manifest.parts != cfg.workers {
        bail!(
            "test data '{source}' holds {} partitions but the job has {} workers: split the \
             test file with --parts {}, or pass the file itself",
            manifest.parts,
            cfg.workers,
            cfg.workers
        );
    }
    if manifest.max_index > n_features {
        bail!(
            "test data '{source}' has feature index {} but the model has {n_features} features: \
             pass --features {}",
            manifest.max_index,
            manifest.max_index
        );
    }
    Ok(PreparedData {
        location: source,
        manifest,
        n_features,
        temporary: false,
    })
}

/// Checks that test partitions hold what the model trained on: images of the same shape, or
/// rows whose labels the training data has.
fn fits_training(train: &Manifest, test: &Manifest, source: &DataLocation) -> anyhow::Result<()> {
    match (&train.images, &test.images) {
        (Some(a), Some(b)) if a.shape != b.shape => bail!(
            "test data '{source}' holds {} images, the training data {}",
            b.shape,
            a.shape
        ),
        (Some(_), Some(_)) | (None, None) => {}
        (Some(_), None) => bail!("test data '{source}' holds rows of features, not images"),
        (None, Some(_)) => bail!("test data '{source}' holds images, not rows of features"),
    }
    if train.images.is_none()
        && !train.labels_truncated
        && let Some(bad) = test.labels.iter().find(|l| !train.labels.contains(l))
    {
        bail!(
            "test data '{source}' has label {bad}, which the training data does not have ({:?})",
            train.labels
        );
    }
    Ok(())
}

/// The images of `path` when it is an image file: CIFAR-10 binary (`*.bin`) or IDX
/// (`*-images-idx3-ubyte[.gz]`, with its labels file beside it); `None` for LibSVM.
pub fn read_image_file(path: &Path) -> anyhow::Result<Option<images::ImageSet>> {
    if images::is_idx(path) {
        let labels = images::idx_labels_path(path).with_context(|| {
            format!(
                "{}: an IDX image file is named *-images-idx3-ubyte[.gz], with its labels in \
                 *-labels-idx1-ubyte[.gz] beside it",
                path.display()
            )
        })?;
        return Ok(Some(images::read_idx(path, &labels)?));
    }
    if path.extension().is_some_and(|e| e == "bin") {
        return Ok(Some(images::read_cifar(&[path])?));
    }
    Ok(None)
}

/// Partitions of `set` for the job, made in `location` (in its run folder).
fn split_images(
    cfg: &JobConfig,
    location: PathBuf,
    set: &images::ImageSet,
    source: &str,
) -> anyhow::Result<PreparedData> {
    let manifest = partition::split_images(set, cfg.workers, &location, source)?;
    Ok(made(location, manifest))
}

/// Checks an existing partition location against the job.
fn partitioned(
    cfg: &JobConfig,
    source: DataLocation,
    manifest: Manifest,
) -> anyhow::Result<PreparedData> {
    if manifest.parts != cfg.workers {
        bail!(
            "data '{source}' holds {} partitions but the job has {} workers: use --workers {} or \
             pass the LibSVM file to split it on the fly",
            manifest.parts,
            cfg.workers,
            manifest.parts
        );
    }
    let n_features = match cfg.features {
        Some(n) if n < manifest.max_index => bail!(
            "--features {n} is below the highest feature index in '{source}' ({})",
            manifest.max_index
        ),
        Some(n) => n,
        None => manifest.n_features,
    };
    Ok(PreparedData {
        location: source,
        manifest,
        n_features,
        temporary: false,
    })
}

/// Writes (once) the synthetic dataset the config asks for and returns its path.
fn synthesize(cfg: &JobConfig, ui: &dyn DataProgress) -> anyhow::Result<PathBuf> {
    let features = match (cfg.synth, cfg.features) {
        (synth::SynthKind::Rcv1 | synth::SynthKind::Blobs, Some(n)) => n,
        (kind, _) => kind.default_features(),
    };
    let dir = cfg.runs_dir.join("data");
    let path = dir.join(format!(
        "{}-{}rows-{}f-seed{}.svm",
        serde_json::to_value(cfg.synth)?.as_str().unwrap_or("synth"),
        cfg.synth_rows,
        features,
        cfg.seed
    ));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".synth.tmp-{}", std::process::id()));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    ui.phase("synthesise", cfg.synth_rows as u64, false);
    synth::generate(
        cfg.synth,
        cfg.synth_rows,
        cfg.seed,
        Some(features),
        &mut out,
        |r| ui.advance(r as u64),
    )
    .and_then(|_| out.into_inner().map_err(|e| e.into_error()).map(drop))
    .with_context(|| format!("writing {}", tmp.display()))?;
    ui.done();
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Minibatches per epoch: enough to cover the smallest worker's training rows with
/// `batch_size`-row batches; every worker runs that many, so collectives line up.
pub fn steps_per_epoch(
    manifest: &Manifest,
    val_ratio: f64,
    batch_size: usize,
) -> anyhow::Result<usize> {
    let (worker, rows) = manifest
        .rows
        .iter()
        .enumerate()
        .min_by_key(|(_, r)| **r)
        .context("no partitions")?;
    let train = rows - (val_ratio * *rows as f64).floor() as usize;
    if train == 0 {
        bail!(
            "partition {worker} has {rows} rows and no training rows after the validation \
             split: use fewer workers or more data"
        );
    }
    Ok(train.div_ceil(batch_size))
}

/// Copies of the parameter vector a worker holds at once (parameters, gradient, the
/// collective's buffers and encoded frames, the checkpoint), a deliberate over-estimate.
const PARAM_COPIES: u64 = 8;

/// Bytes worker `worker` needs for its partition and its model, estimated from the
/// manifest before anything is allocated.
pub fn worker_bytes(cfg: &JobConfig, manifest: &Manifest, n_features: usize, worker: usize) -> u64 {
    let rows = manifest.rows.get(worker).copied().unwrap_or(0) as u64;
    let total = manifest.total_rows().max(1) as u64;
    let data = if cfg.model.is_sparse() {
        // Round-robin parts hold about their share of the stored pairs.
        let nnz = manifest.nnz.saturating_mul(rows) / total;
        nnz.saturating_mul(8)
            .saturating_add(rows.saturating_mul(12))
    } else {
        rows.saturating_mul(n_features as u64 + 1).saturating_mul(4)
    };
    let params = if cfg.model.is_clustering() {
        (cfg.k as u64).saturating_mul(n_features as u64 + 1)
    } else {
        n_features as u64 + 1
    };
    data.saturating_add(params.saturating_mul(4 * PARAM_COPIES))
}

/// Fails when a worker of `cfg` would need more memory than `memory_mb` gives it, saying
/// why (which line of the data made the model this wide) and what to do, so that no worker
/// allocates gigabytes and is killed for it. `worker`: check one worker, or all.
pub fn check_memory(
    cfg: &JobConfig,
    manifest: &Manifest,
    n_features: usize,
    worker: Option<usize>,
) -> anyhow::Result<()> {
    let limit = cfg.memory_mb as u64 * 1024 * 1024;
    let workers: Vec<usize> = match worker {
        Some(w) => vec![w],
        None => (0..manifest.parts).collect(),
    };
    let Some((w, need)) = workers
        .into_iter()
        .map(|w| (w, worker_bytes(cfg, manifest, n_features, w)))
        .max_by_key(|(_, b)| *b)
    else {
        return Ok(());
    };
    if need <= limit {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let wide = match manifest.max_index_line {
        Some(line) if n_features == manifest.max_index => format!(
            " The model has {n_features} features because of index {} on line {line} of {}.",
            manifest.max_index, manifest.source
        ),
        _ => format!(" The model has {n_features} features."),
    };
    let sparse = if cfg.model.is_sparse() {
        ""
    } else {
        ", use a sparse model (e.g. --model sparse_lr)"
    };
    bail!(
        "worker {w} would need about {:.1} GiB for its {} rows and model, more than \
         --memory-mb {} gives it.{wide} Pass --features to bound the model{sparse}, use \
         more workers, or give workers more memory (--memory-mb, at most 10240).",
        gib(need),
        manifest.rows.get(w).copied().unwrap_or(0),
        cfg.memory_mb
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::partition::PartFormat;

    #[test]
    fn a_stray_index_that_widens_a_dense_model_is_named() {
        let m = Manifest {
            parts: 2,
            rows: vec![500, 500],
            n_features: 100_000_000,
            max_index: 100_000_000,
            max_index_line: Some(3),
            nnz: 20_000,
            labels: vec![0.0, 1.0],
            labels_truncated: false,
            source: "data.svm".into(),
            format: PartFormat::Rows,
            images: None,
        };
        let cfg = JobConfig::default();
        let err = check_memory(&cfg, &m, m.n_features, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("index 100000000 on line 3 of data.svm")
                && err.contains("--features")
                && err.contains("sparse_lr")
                && !err.contains("  "),
            "{err}"
        );
        // The same data as a sparse model needs its pairs and a 100M-value model: 3 GB.
        let sparse = JobConfig {
            model: crate::algo::ModelKind::SparseLr,
            ..JobConfig::default()
        };
        assert!(check_memory(&sparse, &m, m.n_features, Some(0)).is_err());
        assert!(check_memory(&sparse, &m, 1_000_000, Some(0)).is_ok());
        // The default job fits easily.
        let small = Manifest {
            n_features: 28,
            max_index: 28,
            ..m
        };
        assert!(check_memory(&cfg, &small, 28, None).is_ok());
    }

    #[test]
    fn steps_follow_the_smallest_partition() {
        let m = Manifest {
            parts: 2,
            rows: vec![1000, 999],
            n_features: 2,
            max_index: 2,
            max_index_line: None,
            nnz: 0,
            labels: vec![0.0, 1.0],
            labels_truncated: false,
            source: String::new(),
            format: PartFormat::Rows,
            images: None,
        };
        // 999 - 99 = 900 training rows -> 9 batches of 100.
        assert_eq!(steps_per_epoch(&m, 0.1, 100).unwrap(), 9);
        assert_eq!(steps_per_epoch(&m, 0.1, 7).unwrap(), 129);
        let tiny = Manifest {
            rows: vec![0, 1],
            ..m
        };
        assert!(
            steps_per_epoch(&tiny, 0.1, 10)
                .unwrap_err()
                .to_string()
                .contains("partition 0")
        );
    }
}
