//! Where partitions live: a local directory, or an S3 prefix (`s3://bucket/prefix`) written
//! by `lambdaml data split ... --out s3://...`. Both hold `part-*` files and `_manifest.json`.

use std::path::Path;

use anyhow::Context;

use crate::channel;
use crate::data::Dataset;
use crate::data::libsvm::{self, Layout};
use crate::data::partition::{self, MANIFEST, Manifest};

fn is_remote(location: &str) -> bool {
    location.starts_with("s3://")
}

/// Reads the manifest of a partition location.
pub async fn read_manifest(location: &str) -> anyhow::Result<Manifest> {
    if !is_remote(location) {
        return Ok(partition::read_manifest(Path::new(location))?);
    }
    let store = channel::open(location).await?;
    let bytes = store
        .get(MANIFEST)
        .await?
        .with_context(|| format!("{location}/{MANIFEST} not found: make partitions with `lambdaml data split ... --out {location}`"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{location}/{MANIFEST} is not a valid manifest"))?;
    Ok(manifest)
}

/// Loads partition `index` of `location`.
pub async fn load_partition(
    location: &str,
    manifest: &Manifest,
    index: usize,
    n_features: usize,
    layout: Layout,
) -> anyhow::Result<Dataset> {
    if !is_remote(location) {
        return Ok(partition::load_partition(
            Path::new(location),
            manifest,
            index,
            n_features,
            layout,
        )?);
    }
    let name = partition::part_name(index, manifest.parts);
    let store = channel::open(location).await?;
    let bytes = store
        .get(&name)
        .await?
        .with_context(|| format!("{location}/{name} not found"))?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{location}/{name} is not UTF-8 text"))?;
    Ok(libsvm::parse_text(
        text,
        Path::new(&format!("{location}/{name}")),
        n_features,
        layout,
    )?)
}

/// Uploads the partitions and manifest of local directory `dir` to `url` (manifest last,
/// so a reader never finds a manifest whose parts are missing).
pub async fn upload(
    dir: &Path,
    url: &str,
    manifest: &Manifest,
    progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let store = channel::open(url).await?;
    let mut sent = 0u64;
    for i in 0..manifest.parts {
        let name = partition::part_name(i, manifest.parts);
        let bytes = std::fs::read(dir.join(&name)).with_context(|| format!("reading {name}"))?;
        sent += bytes.len() as u64;
        store.put(&name, bytes.into()).await?;
        progress(sent);
    }
    let json = serde_json::to_vec_pretty(manifest)?;
    store.put(MANIFEST, json.into()).await?;
    Ok(())
}
