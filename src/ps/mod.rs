//! Hybrid mode: a parameter server on a VM (`lambdaml ps serve`) that function workers push
//! gradients or models to and pull the model from, over gRPC (tonic).
//!
//! [`store`] holds the models and their round logic, [`server`] serves them (auth, expiry,
//! snapshots to disk), and [`client`] speaks the wire protocol for workers, the driver and
//! `lambdaml ps status`. The collective of `--sync ps` that workers train with is
//! `comm::ps`. This module is a leaf: it imports nothing from the rest of the crate, so the
//! server can be read, tested and deployed on its own.

pub mod client;
pub mod server;
pub mod store;

/// The generated gRPC types and stubs of `proto/ps.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("lambdaml.ps.v1");
}

use bytes::Bytes;

/// Bytes of f32 data per streamed message: far below gRPC's 4 MiB default limit, large
/// enough that per-message overhead does not matter.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The metadata key carrying the token.
pub const TOKEN_HEADER: &str = "authorization";

/// `values` as little-endian bytes, cut into [`CHUNK_BYTES`] pieces (at least one, so the
/// header always has a message to ride on).
pub fn to_chunks(values: &[f32]) -> Vec<Bytes> {
    let per = CHUNK_BYTES / 4;
    if values.is_empty() {
        return vec![Bytes::new()];
    }
    values
        .chunks(per)
        .map(|c| {
            let mut b = Vec::with_capacity(c.len() * 4);
            for v in c {
                b.extend_from_slice(&v.to_le_bytes());
            }
            Bytes::from(b)
        })
        .collect()
}

/// Appends little-endian f32 `bytes` to `out`; an error when the length is not a multiple of 4.
pub fn extend_from_bytes(out: &mut Vec<f32>, bytes: &[u8]) -> Result<(), String> {
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "a chunk of {} bytes is not a whole number of f32 values",
            bytes.len()
        ));
    }
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(())
}

/// `HOST:PORT` (or a URL) as the URL tonic connects to.
pub fn endpoint_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_chunking() {
        let v: Vec<f32> = (0..(CHUNK_BYTES / 4 * 2 + 3))
            .map(|i| i as f32 * 0.5)
            .collect();
        let chunks = to_chunks(&v);
        assert_eq!(chunks.len(), 3);
        let mut back = Vec::new();
        for c in &chunks {
            extend_from_bytes(&mut back, c).unwrap();
        }
        assert_eq!(back, v);
        assert_eq!(to_chunks(&[]).len(), 1);
        assert!(extend_from_bytes(&mut back, &[0u8; 3]).is_err());
    }
}
