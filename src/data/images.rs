//! Image data: the CIFAR-10 binary format (also the partition format of image locations),
//! the IDX format of (Fashion-)MNIST, a learnable synthetic CIFAR-format set, per-channel
//! statistics, and the batches a network trains on (normalised, randomly cropped and flipped).
//!
//! A record is one label byte then the pixels, channel-major (all of the first channel's rows,
//! then the second's...). With 3x32x32 pixels that is exactly a CIFAR-10 record, so CIFAR-10
//! files are partitions as they are; a 1x28x28 record holds one MNIST image.

use std::io::Read;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::DataError;

/// The size of the images of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    /// Colour channels (3 for CIFAR, 1 for MNIST).
    pub channels: usize,
    /// Rows of pixels.
    pub height: usize,
    /// Columns of pixels.
    pub width: usize,
}

impl ImageShape {
    /// CIFAR-10's 3x32x32.
    pub const CIFAR: ImageShape = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };

    /// Pixels per image (all channels).
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Bytes of one record: the label byte and the pixels.
    pub fn record_len(&self) -> usize {
        1 + self.pixels()
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// What a location of image partitions records about its images, so every worker normalises
/// the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// Size of every image.
    pub shape: ImageShape,
    /// Number of classes (labels are `0..classes`).
    pub classes: usize,
    /// Mean of each channel's pixels over the whole source, in [0, 1].
    pub mean: Vec<f32>,
    /// Standard deviation of each channel's pixels, in [0, 1] (never 0).
    pub std: Vec<f32>,
}

/// Images in memory: a label and `shape.pixels()` bytes per image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Size of every image.
    pub shape: ImageShape,
    /// One class per image.
    pub labels: Vec<u8>,
    /// `labels.len() * shape.pixels()` bytes, image after image.
    pub pixels: Vec<u8>,
}

/// Most classes a label byte may name in a dataset we accept (CIFAR-100 has 100).
pub const MAX_CLASSES: usize = 100;

impl ImageSet {
    /// An empty set of images of `shape`.
    pub fn new(shape: ImageShape) -> Self {
        ImageSet {
            shape,
            labels: Vec::new(),
            pixels: Vec::new(),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.pixels();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Appends the records of `bytes` (label byte + pixels each); `path` names it in errors.
    pub fn extend_from_records(&mut self, bytes: &[u8], path: &Path) -> Result<(), DataError> {
        let records = checked_records(bytes, self.shape.pixels(), path)?;
        self.labels.reserve(records.len());
        self.pixels.reserve(records.len() * self.shape.pixels());
        for record in records {
            self.labels.push(record[0]);
            self.pixels.extend_from_slice(&record[1..]);
        }
        Ok(())
    }

    /// The records of images `rows`, in order: what an image partition file holds.
    pub fn records(&self, rows: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut out = Vec::new();
        for i in rows {
            out.push(self.labels[i]);
            out.extend_from_slice(self.image(i));
        }
        out
    }

    /// Number of classes: one more than the largest label.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| usize::from(m) + 1)
    }

    /// Per-channel mean and standard deviation of the pixels, scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.shape.channels;
        let plane = self.shape.height * self.shape.width;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for image in self.pixels.chunks_exact(self.shape.pixels()) {
            for (ch, pixels) in image.chunks_exact(plane).enumerate() {
                for &p in pixels {
                    let v = f64::from(p) / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| {
                let m = s / n;
                ((q / n - m * m).max(0.0).sqrt() as f32).max(1e-3)
            })
            .collect();
        (mean, std)
    }

    /// The facts a partition location records about this set.
    pub fn facts(&self) -> ImageFacts {
        let (mean, std) = self.channel_stats();
        ImageFacts {
            shape: self.shape,
            classes: self.classes(),
            mean,
            std,
        }
    }
}

/// The records of `bytes` (a label byte and `pixels` pixel bytes each), once the length is a
/// whole number of records and every label a class; `path` names the file in errors.
fn checked_records<'b>(
    bytes: &'b [u8],
    pixels: usize,
    path: &Path,
) -> Result<std::slice::ChunksExact<'b, u8>, DataError> {
    let corrupt = |message: String| DataError::Corrupt {
        path: path.to_path_buf(),
        row: None,
        message,
    };
    let len = pixels + 1;
    if !bytes.len().is_multiple_of(len) {
        return Err(corrupt(format!(
            "{} bytes is not a whole number of image records of {len} bytes (a label byte and \
             {pixels} pixels)",
            bytes.len()
        )));
    }
    let records = bytes.chunks_exact(len);
    if let Some(i) = records
        .clone()
        .position(|r| usize::from(r[0]) >= MAX_CLASSES)
    {
        return Err(corrupt(format!(
            "record {}: label {} is not a class (at most {MAX_CLASSES})",
            i + 1,
            bytes[i * len]
        )));
    }
    Ok(records)
}

/// A partition of image records of `pixels` bytes each, as a dataset of dense rows (pixel
/// values 0-255) and class labels; `path` names it in errors.
pub fn decode_part(bytes: &[u8], path: &Path, pixels: usize) -> Result<super::Dataset, DataError> {
    let records = checked_records(bytes, pixels, path)?;
    let mut labels = Vec::with_capacity(records.len());
    let mut values = Vec::with_capacity(records.len() * pixels);
    for record in records {
        labels.push(f32::from(record[0]));
        values.extend(record[1..].iter().map(|&p| f32::from(p)));
    }
    Ok(super::Dataset {
        features: super::Features::Dense(super::DenseMatrix {
            n_features: pixels,
            values,
        }),
        labels,
    })
}

/// Reads CIFAR-10 binary files (`data_batch_1.bin`...: records of 3x32x32 pixels), one after
/// the other.
pub fn read_cifar(paths: &[impl AsRef<Path>]) -> Result<ImageSet, DataError> {
    let mut set = ImageSet::new(ImageShape::CIFAR);
    for path in paths {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        set.extend_from_records(&bytes, path)?;
    }
    Ok(set)
}

/// True when `path` names an IDX file (MNIST's format), gzipped or not, by its name.
pub fn is_idx(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.contains("-idx3-") || name.contains("-idx1-") || name.ends_with(".idx")
}

/// The bytes of a file, gunzipped when it starts with gzip's magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::io(path, e))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header of unsigned bytes with `rank` dimensions; returns the dimensions and
/// the data after the header, checked to hold exactly their product.
fn idx_body<'b>(
    bytes: &'b [u8],
    rank: u8,
    path: &Path,
) -> Result<(Vec<usize>, &'b [u8]), DataError> {
    let corrupt = |message: String| DataError::Corrupt {
        path: path.to_path_buf(),
        row: None,
        message,
    };
    let header = 4 + 4 * usize::from(rank);
    if bytes.len() < header
        || bytes[0] != 0
        || bytes[1] != 0
        || bytes[2] != 0x08
        || bytes[3] != rank
    {
        return Err(corrupt(format!(
            "not an IDX file of unsigned bytes with {rank} dimensions (magic 0x000008{rank:02x})"
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| corrupt(format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() != total {
        return Err(corrupt(format!(
            "dimensions {dims:?} need {total} bytes after the header, the file has {}",
            body.len()
        )));
    }
    Ok((dims, body))
}

/// Reads an IDX image file (`*-images-idx3-ubyte[.gz]`) and its label file: grey images, one
/// channel.
pub fn read_idx(images: &Path, labels: &Path) -> Result<ImageSet, DataError> {
    let image_bytes = read_maybe_gz(images)?;
    let (dims, pixels) = idx_body(&image_bytes, 3, images)?;
    let label_bytes = read_maybe_gz(labels)?;
    let (ldims, label_body) = idx_body(&label_bytes, 1, labels)?;
    if ldims[0] != dims[0] {
        return Err(DataError::Invalid(format!(
            "{} holds {} images but {} holds {} labels",
            images.display(),
            dims[0],
            labels.display(),
            ldims[0]
        )));
    }
    if let Some(i) = label_body
        .iter()
        .position(|&l| usize::from(l) >= MAX_CLASSES)
    {
        return Err(DataError::Corrupt {
            path: labels.to_path_buf(),
            row: Some(i + 1),
            message: format!("label {} is not a class", label_body[i]),
        });
    }
    Ok(ImageSet {
        shape: ImageShape {
            channels: 1,
            height: dims[1],
            width: dims[2],
        },
        labels: label_body.to_vec(),
        pixels: pixels.to_vec(),
    })
}

/// The label file beside an IDX image file: `...-images-idx3-ubyte[.gz]` ->
/// `...-labels-idx1-ubyte[.gz]`.
pub fn idx_labels_path(images: &Path) -> Option<std::path::PathBuf> {
    let name = images.file_name()?.to_string_lossy();
    let labels = name.replace("images-idx3", "labels-idx1");
    (labels != name).then(|| images.with_file_name(labels))
}

/// Classes of the synthetic CIFAR-format set.
pub const SYNTH_CLASSES: usize = 10;

/// `rows` synthetic 3x32x32 images in 10 classes. A class is a texture: a grating with the
/// class's orientation and frequency, at a random phase, under a random colour tint, plus
/// noise. Colour says nothing of the class and the random phase defeats any fixed pixel
/// template, so a linear model on pixels does poorly while a small CNN learns it.
pub fn synth_cifar(rows: usize, seed: u64) -> ImageSet {
    let shape = ImageShape::CIFAR;
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC1FA_5EED);
    let mut set = ImageSet::new(shape);
    set.labels.reserve(rows);
    set.pixels.reserve(rows * shape.pixels());
    let plane = shape.height * shape.width;
    let mut image = vec![0f32; plane];
    for _ in 0..rows {
        let class = rng.random_range(0..SYNTH_CLASSES);
        // Five orientations x two frequencies; the orientation jitters a little.
        let angle = (class % 5) as f32 * std::f32::consts::PI / 5.0 + rng.random_range(-0.1..0.1);
        let freq = if class < 5 { 0.35 } else { 0.8 } * rng.random_range(0.9..1.1);
        let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        let (s, c) = angle.sin_cos();
        for y in 0..shape.height {
            for x in 0..shape.width {
                let t = (x as f32 * c + y as f32 * s) * freq + phase;
                image[y * shape.width + x] = t.sin();
            }
        }
        let contrast: f32 = rng.random_range(0.25..0.45);
        set.labels.push(class as u8);
        for _ in 0..shape.channels {
            let base: f32 = rng.random_range(0.25..0.75);
            let tint: f32 = rng.random_range(0.5..1.0);
            for &v in &image {
                let noise: f32 = StandardNormal.sample(&mut rng);
                let p = base + contrast * tint * v + 0.08 * noise;
                set.pixels.push((p.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    set
}

/// How training images are varied: the usual CIFAR augmentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// Zero padding around the image before a random crop of its original size (0: none).
    pub pad: usize,
    /// Mirror half of the images left to right.
    pub flip: bool,
}

impl Augment {
    /// Random crop with 4 pixels of padding and horizontal flips.
    pub const CIFAR: Augment = Augment { pad: 4, flip: true };
}

/// Fills `out` with images `rows` of `pixels` (one image of `facts.shape` per row, values
/// 0-255 as `f32`), normalised per channel, `[batch, channels, height, width]`; with
/// `augment`, each image is cropped and flipped at random from `rng`.
pub fn fill_batch(
    pixels: &[f32],
    facts: &ImageFacts,
    rows: &[u32],
    augment: Option<(Augment, &mut StdRng)>,
    out: &mut Vec<f32>,
) {
    let shape = facts.shape;
    let (h, w, n) = (shape.height, shape.width, shape.pixels());
    let scale: Vec<f32> = facts.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = facts
        .mean
        .iter()
        .zip(&facts.std)
        .map(|(m, s)| m / s)
        .collect();
    out.clear();
    out.resize(rows.len() * n, 0.0);
    let mut augment = augment;
    for (dst, &row) in out.chunks_exact_mut(n).zip(rows) {
        let src = &pixels[row as usize * n..(row as usize + 1) * n];
        let (dy, dx, flip) = match augment.as_mut() {
            Some((a, rng)) if a.pad > 0 || a.flip => {
                let p = a.pad as i32;
                let dy = rng.random_range(-p..=p) as isize;
                let dx = rng.random_range(-p..=p) as isize;
                (dy, dx, a.flip && rng.random_bool(0.5))
            }
            _ => (0, 0, false),
        };
        for ch in 0..shape.channels {
            let (sc, sh) = (scale[ch], shift[ch]);
            let plane_src = &src[ch * h * w..(ch + 1) * h * w];
            let plane_dst = &mut dst[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    // Padding is black before normalisation, as torchvision pads.
                    let v = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        0.0
                    } else {
                        plane_src[sy as usize * w + sx as usize]
                    };
                    plane_dst[y * w + x] = v * sc - sh;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar_records_round_trip_and_bad_sizes_are_named() {
        let set = synth_cifar(7, 1);
        let bytes = set.records(0..set.len());
        assert_eq!(bytes.len(), 7 * 3073);
        let mut back = ImageSet::new(ImageShape::CIFAR);
        back.extend_from_records(&bytes, Path::new("x.bin"))
            .unwrap();
        assert_eq!(back, set);
        let err = back
            .extend_from_records(&bytes[..3000], Path::new("x.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.bin") && err.contains("3073"), "{err}");
        let mut bad = bytes.clone();
        bad[3073] = 200;
        let err = ImageSet::new(ImageShape::CIFAR)
            .extend_from_records(&bad, Path::new("x.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("record 2") && err.contains("200"), "{err}");
    }

    #[test]
    fn idx_files_are_read_gzipped_or_not_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        images.extend(0u8..12);
        let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 7, 1];
        let img = dir.path().join("t-images-idx3-ubyte.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &images).unwrap();
        std::fs::write(&img, gz.finish().unwrap()).unwrap();
        let lab = idx_labels_path(&img).unwrap();
        assert!(lab.ends_with("t-labels-idx1-ubyte.gz"));
        std::fs::write(&lab, &labels).unwrap();
        let set = read_idx(&img, &lab).unwrap();
        assert_eq!(
            set.shape,
            ImageShape {
                channels: 1,
                height: 2,
                width: 3
            }
        );
        assert_eq!(set.labels, vec![7, 1]);
        assert_eq!(set.image(1), &[6, 7, 8, 9, 10, 11]);
        std::fs::write(&lab, &labels[..9]).unwrap();
        let err = read_idx(&img, &lab).unwrap_err().to_string();
        assert!(err.contains("need 2 bytes"), "{err}");
    }

    #[test]
    fn batches_are_normalised_and_augmentation_stays_in_the_image() {
        let facts = ImageFacts {
            shape: ImageShape {
                channels: 1,
                height: 2,
                width: 3,
            },
            classes: 2,
            mean: vec![0.5],
            std: vec![0.25],
        };
        let pixels: Vec<f32> = vec![0.0, 51.0, 102.0, 153.0, 204.0, 255.0];
        let mut out = Vec::new();
        fill_batch(&pixels, &facts, &[0], None, &mut out);
        let want: Vec<f32> = pixels.iter().map(|p| (p / 255.0 - 0.5) / 0.25).collect();
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{out:?} vs {want:?}");
        }
        // A flip without padding mirrors each row.
        let want = out.clone();
        let mut rng = StdRng::seed_from_u64(3);
        let flip = Augment { pad: 0, flip: true };
        let mut flipped = false;
        for _ in 0..20 {
            fill_batch(&pixels, &facts, &[0], Some((flip, &mut rng)), &mut out);
            if out != want {
                assert_eq!(out[0], want[2]);
                assert_eq!(out[3], want[5]);
                flipped = true;
            }
        }
        assert!(flipped);
    }

    #[test]
    fn synthetic_classes_are_not_told_apart_by_colour() {
        let set = synth_cifar(2000, 5);
        assert_eq!(set.classes(), 10);
        // Mean brightness per class stays within a few levels of the overall mean.
        let mut sum = [0f64; 10];
        let mut count = [0f64; 10];
        for i in 0..set.len() {
            let l = usize::from(set.labels[i]);
            sum[l] += set.image(i).iter().map(|&p| f64::from(p)).sum::<f64>() / 3072.0;
            count[l] += 1.0;
        }
        let means: Vec<f64> = sum.iter().zip(&count).map(|(s, c)| s / c).collect();
        let all = means.iter().sum::<f64>() / 10.0;
        assert!(means.iter().all(|m| (m - all).abs() < 6.0), "{means:?}");
    }
}
