//! exp's own seeded randomness (docs/design.md §3 "Randomness").
//!
//! candle's CPU random tensors come from an unseeded thread RNG, so nothing in exp draws from
//! them. Every random draw comes from a ChaCha8 stream derived from the run's seed and the
//! purpose of the draw: adding a dropout layer does not change the shuffling order, and the
//! initial weights do not depend on how many batches were drawn before.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a random stream is used for; each purpose has its own independent ChaCha stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Initial weights.
    Init = 1,
    /// Per-epoch shuffling of the training set.
    Shuffle = 2,
    /// Dropout masks.
    Dropout = 3,
    /// The `train_limit` / `val_limit` subset of the training set.
    Subset = 4,
    /// Random crops and flips of training batches.
    Augment = 5,
    /// The random samples of a sweep (`[sweep] random`).
    Sweep = 6,
    /// Which examples are in which split, drawn by fraction or limit (`data.split_seed`).
    Split = 7,
}

/// A seeded random stream.
pub struct ExpRng(ChaCha8Rng);

impl ExpRng {
    /// The stream for `purpose` under `seed`.
    pub fn new(seed: u64, purpose: Purpose) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(purpose as u64);
        ExpRng(rng)
    }

    /// `n` draws from U(-bound, bound), PyTorch's default initialiser for conv and linear.
    pub fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(-bound..bound)).collect()
    }

    /// A keep-mask for inverted dropout: `1/(1-p)` with probability `1-p`, else 0.
    ///
    /// The words are drawn in bulk (a dropout layer draws hundreds of thousands per step), and
    /// each is turned into a uniform float exactly as `rand`'s `random::<f32>()` does — the top
    /// 24 bits times 2⁻²⁴ — so the masks are the per-draw ones, bit for bit (tested).
    pub fn dropout_mask(&mut self, n: usize, p: f32) -> Vec<f32> {
        let scale = 1.0 / (1.0 - p);
        let mut words = vec![0u32; n];
        self.0.fill(&mut words[..]);
        words
            .into_iter()
            .map(|word| {
                let uniform = (word >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                if uniform < p {
                    0.0
                } else {
                    scale
                }
            })
            .collect()
    }

    /// A uniform draw from `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// A uniform draw from [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.random()
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.0.random()
    }

    /// One 64-bit draw, e.g. to seed a device's own generator.
    pub fn next_u64(&mut self) -> u64 {
        self.0.random()
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<u32> {
        use rand::seq::SliceRandom;
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut self.0);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a = ExpRng::new(7, Purpose::Shuffle).permutation(100);
        let b = ExpRng::new(7, Purpose::Shuffle).permutation(100);
        let c = ExpRng::new(7, Purpose::Subset).permutation(100);
        let d = ExpRng::new(8, Purpose::Shuffle).permutation(100);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
    }

    #[test]
    fn uniform_respects_bound() {
        let xs = ExpRng::new(1, Purpose::Init).uniform(10_000, 0.25);
        assert!(xs.iter().all(|x| (-0.25..0.25).contains(x)));
        let mean: f32 = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn bulk_dropout_mask_equals_per_draw_sampling() {
        for (n, p) in [(1, 0.5), (17, 0.25), (100_003, 0.5), (4096, 0.1)] {
            let mut per_draw = ExpRng::new(7, Purpose::Dropout);
            let expected: Vec<f32> = (0..n)
                .map(|_| {
                    if per_draw.0.random::<f32>() < p {
                        0.0
                    } else {
                        1.0 / (1.0 - p)
                    }
                })
                .collect();
            let mut bulk = ExpRng::new(7, Purpose::Dropout);
            assert_eq!(bulk.dropout_mask(n, p), expected, "n = {n}, p = {p}");
            // The stream continues at the same place.
            assert_eq!(bulk.0.random::<u32>(), per_draw.0.random::<u32>());
        }
    }

    #[test]
    fn dropout_mask_keeps_expected_fraction() {
        let m = ExpRng::new(1, Purpose::Dropout).dropout_mask(20_000, 0.25);
        let kept = m.iter().filter(|&&x| x > 0.0).count() as f32 / m.len() as f32;
        assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 4.0 / 3.0).abs() < 1e-6));
    }
}
