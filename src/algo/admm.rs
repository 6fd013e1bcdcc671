//! Consensus ADMM (Boyd et al., *Distributed Optimization and Statistical Learning via ADMM*,
//! section 7.1, in scaled form) for linear models.
//!
//! The problem is `minimize sum_i f_i(w) + g(w)`, where `f_i` is worker i's mean loss over its
//! training rows and `g` the regulariser on the weights (not the bias):
//! `g = (lam/2) ||w||^2` (L2) or `lam ||w||_1` (L1). Each round:
//!
//! ```text
//! w_i = argmin f_i(w) + (rho/2) ||w - z + u_i||^2     (local epochs of minibatch SGD)
//! z   = prox_{g / (n rho)}( mean_i (w_i + u_i) )      (the same on every worker)
//! u_i = u_i + w_i - z
//! ```

use serde::{Deserialize, Serialize};

/// The global regulariser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Reg {
    /// `(lam/2) ||w||^2`.
    L2,
    /// `lam ||w||_1`.
    L1,
}

/// Adds the gradient of the proximal term `(rho/2)||w - z + u||^2` to `grad`.
pub fn add_proximal_gradient(grad: &mut [f32], w: &[f32], z: &[f32], u: &[f32], rho: f32) {
    for (((g, wi), zi), ui) in grad.iter_mut().zip(w).zip(z).zip(u) {
        *g += rho * (wi - zi + ui);
    }
}

/// The z-update: `prox` of the regulariser applied to `v = mean_i (w_i + u_i)`. The last
/// element (the bias) is not regularised and is copied.
pub fn z_update(v: &[f32], reg: Reg, lam: f32, rho: f32, n_workers: usize, z: &mut [f32]) {
    let d = v.len() - 1;
    let n_rho = n_workers as f32 * rho;
    match reg {
        Reg::L2 => {
            let shrink = n_rho / (lam + n_rho);
            for (zi, vi) in z[..d].iter_mut().zip(&v[..d]) {
                *zi = shrink * vi;
            }
        }
        Reg::L1 => {
            let kappa = lam / n_rho;
            for (zi, vi) in z[..d].iter_mut().zip(&v[..d]) {
                *zi = vi.signum() * (vi.abs() - kappa).max(0.0);
            }
        }
    }
    z[d] = v[d];
}

/// `u += w - z`.
pub fn u_update(u: &mut [f32], w: &[f32], z: &[f32]) {
    for ((ui, wi), zi) in u.iter_mut().zip(w).zip(z) {
        *ui += wi - zi;
    }
}

/// Euclidean distance between two vectors.
pub fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l2_prox_minimises_the_augmented_objective() {
        // argmin_z (lam/2)z^2 + (n rho/2)(z - v)^2 has derivative zero at the prox.
        let (lam, rho, n) = (0.5f32, 2.0f32, 4usize);
        let v = [1.5f32, -3.0, 0.7];
        let mut z = [0f32; 3];
        z_update(&v, Reg::L2, lam, rho, n, &mut z);
        for i in 0..2 {
            let deriv = lam * z[i] + n as f32 * rho * (z[i] - v[i]);
            assert!(deriv.abs() < 1e-5, "{deriv}");
        }
        assert_eq!(z[2], v[2], "bias is not regularised");
    }

    #[test]
    fn l1_prox_soft_thresholds() {
        let mut z = [0f32; 4];
        // kappa = lam / (n rho) = 1 / (2 * 0.5) = 1.
        z_update(&[3.0, -0.5, -2.0, 9.0], Reg::L1, 1.0, 0.5, 2, &mut z);
        assert_eq!(z, [2.0, 0.0, -1.0, 9.0]);
    }
}
