//! Elementwise `exp` and `ln_1p` for the logistic loss, written so that the compiler can
//! vectorise them over a block of rows.
//!
//! `f32::exp` and `f32::ln_1p` call the C library one value at a time (about 20 ns a row
//! for the loss and its slope, more than the row's dot product and update together). These
//! are the Cephes single-precision polynomials, branch-free, within 2 ulp of the library
//! on the ranges the loss uses (tests below), and identical on every machine: no fused
//! multiply-add, no table, plain IEEE operations.

/// Rows handled together by the vectorised loss.
pub const BLOCK: usize = 8;

/// `e^x` for `x <= 0` (the loss only needs `exp(-|z|)`); 0 below about -87.3.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5 * 2^23 trick, which vectorises without SSE4.1.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = horner(
        &[
            1.987_569_1e-4,
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ],
        r,
    );
    let e = p * r * r + r + 1.0;
    // n is in [-126, 0]: its float bits minus the shifter's are the integer n.
    let n_int = t.to_bits() as i32 - SHIFTER.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    e * scale
}

/// `ln(1 + e)` for `e` in `[0, 1]`.
#[inline(always)]
pub fn ln_1p_unit(e: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let u = 1.0 + e;
    // u is in [1, 2]: ln u = k ln 2 + ln m with m in [sqrt(1/2), sqrt(2)).
    let big = u > 2.0 * SQRT_HALF;
    let m = if big { u * 0.5 } else { u };
    let k = if big { 1.0 } else { 0.0 };
    let x = m - 1.0;
    let z = x * x;
    let p = horner(
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_4e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
        x,
    );
    let y = x * z * p - 0.5 * z;
    let ln_u = x + y + k * std::f32::consts::LN_2;
    // 1 + e rounded away the low bits of e; this adds back what was lost.
    let lost = (e - (u - 1.0)) / u;
    ln_u + lost
}

/// The polynomial with `coefficients` (highest power first) at `x`.
#[inline(always)]
fn horner(coefficients: &[f32], x: f32) -> f32 {
    let mut p = coefficients[0];
    for &c in &coefficients[1..] {
        p = p * x + c;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library() {
        let mut worst = 0;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_nonpositive(x), x.exp());
            if want > f32::MIN_POSITIVE {
                worst = worst.max(ulps(got, want));
            }
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-1e4), exp_nonpositive(-87.0));
    }

    #[test]
    fn ln_1p_is_within_two_ulp_of_the_library() {
        let mut worst = 0;
        for i in 0..=1_000_000 {
            let e = i as f32 * 1e-6;
            worst = worst.max(ulps(ln_1p_unit(e), e.ln_1p()));
        }
        for i in 1..200 {
            let e = 2f32.powi(-i / 2);
            worst = worst.max(ulps(ln_1p_unit(e), e.ln_1p()));
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(ln_1p_unit(0.0), 0.0);
    }
}
