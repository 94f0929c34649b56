//! Statistics for comparing two runs on the same eval set.

/// The exact two-sided McNemar test: a binomial test on the discordant pairs.
///
/// `fixed` examples were wrong in A and right in B, `broken` the reverse. Under the null
/// hypothesis (A and B equally accurate) each discordant example is fixed or broken with
/// probability ½, so the p-value is `min(1, 2·P[X ≤ min(fixed, broken)])` for
/// X ~ Binomial(fixed + broken, ½). No discordant pairs: p = 1.
pub fn mcnemar_exact(fixed: u64, broken: u64) -> f64 {
    let n = fixed + broken;
    if n == 0 {
        return 1.0;
    }
    let k = fixed.min(broken);
    // Sum C(n, i) / 2^n for i ≤ k in log space: n can be 10,000s, where 2^n overflows.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        terms.push(ln_choose + ln_half_n);
    }
    let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact binomial sums with integers, for small n.
    fn reference(fixed: u64, broken: u64) -> f64 {
        let n = fixed + broken;
        if n == 0 {
            return 1.0;
        }
        let k = fixed.min(broken);
        let mut choose: u128 = 1;
        let mut sum: u128 = 0;
        for i in 0..=k {
            if i > 0 {
                choose = choose * (n - i + 1) as u128 / i as u128;
            }
            sum += choose;
        }
        (2.0 * sum as f64 / 2f64.powi(n as i32)).min(1.0)
    }

    #[test]
    fn matches_exact_sums() {
        for (b, c) in [
            (0, 0),
            (0, 1),
            (1, 1),
            (3, 0),
            (10, 2),
            (2, 10),
            (25, 25),
            (40, 60),
            (0, 100),
        ] {
            let (ours, exact) = (mcnemar_exact(b, c), reference(b, c));
            assert!(
                (ours - exact).abs() <= 1e-12 * exact.max(1e-300),
                "({b},{c}): {ours} vs {exact}"
            );
        }
        // Textbook values: 10 fixed vs 2 broken gives p = 0.03857.
        assert!((mcnemar_exact(10, 2) - 0.038574).abs() < 1e-6);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
    }

    #[test]
    fn large_counts_stay_finite() {
        let p = mcnemar_exact(5000, 4000);
        assert!(p > 0.0 && p < 1e-20, "{p}");
        assert!((mcnemar_exact(3000, 3000) - 1.0).abs() < 1e-12);
    }
}
