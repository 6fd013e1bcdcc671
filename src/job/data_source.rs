//! Where partitions live: a local directory, or an S3 prefix (`s3://bucket/prefix`) written
//! by `lambdaml data split ... --out s3://...`. Both hold `part-*` files and `_manifest.json`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::channel::{self, Channel, ChannelUrl};
use crate::data::libsvm::Layout;
use crate::data::partition::{self, MANIFEST, Manifest};
use crate::data::{DataLocation, Dataset};

/// The objects of an S3 location, as a channel.
async fn s3(bucket: &str, prefix: &str) -> anyhow::Result<Arc<dyn Channel>> {
    let url = ChannelUrl::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    };
    Ok(channel::open(&url).await?)
}

/// Reads the manifest of a partition location.
pub async fn read_manifest(location: &DataLocation) -> anyhow::Result<Manifest> {
    let store = match location {
        DataLocation::Local(dir) => return Ok(partition::read_manifest(dir)?),
        DataLocation::S3 { bucket, prefix } => s3(bucket, prefix).await?,
    };
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
    location: &DataLocation,
    manifest: &Manifest,
    index: usize,
    n_features: usize,
    layout: Layout,
) -> anyhow::Result<Dataset> {
    let store = match location {
        DataLocation::Local(dir) => {
            return Ok(partition::load_partition(
                dir, manifest, index, n_features, layout,
            )?);
        }
        DataLocation::S3 { bucket, prefix } => s3(bucket, prefix).await?,
    };
    let name = partition::part_name(index, manifest.parts);
    let bytes = store
        .get(&name)
        .await?
        .with_context(|| format!("{location}/{name} not found"))?;
    Ok(partition::decode_part(
        manifest.format,
        &bytes,
        Path::new(&format!("{location}/{name}")),
        n_features,
        layout,
    )?)
}

/// Uploads the partitions and manifest of local directory `dir` to S3 under `prefix` of
/// `bucket` (manifest last, so a reader never finds a manifest whose parts are missing).
pub async fn upload(
    dir: &Path,
    bucket: &str,
    prefix: &str,
    manifest: &Manifest,
    progress: impl Fn(u64),
) -> anyhow::Result<()> {
    let store = s3(bucket, prefix).await?;
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
