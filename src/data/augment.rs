//! On-the-fly augmentation of training batches (`[train.augment]`): random crop with padding
//! and horizontal flip, torchvision's `RandomCrop(size, padding)` then
//! `RandomHorizontalFlip()`.
//!
//! The batch already lives on the training device, normalised. Each transformed pixel is a
//! copy of one source pixel or of the padding value. The draws (crop offsets and coin per
//! example) come from exp's seeded stream on the host; on the CPU they become one index and an
//! `index_select`, on a GPU three numbers per example go up and one kernel makes the copies
//! (no per-pixel index is built or uploaded). Both give the same bits, and no image leaves the
//! device.

use candle_core::{DType, Device, Result, Tensor};

use crate::rng::{ExpRng, Purpose};
use crate::spec::AugmentSpec;

/// Draws and applies the augmentation of each training batch.
pub struct Augmenter {
    rng: ExpRng,
    padding: usize,
    flip: bool,
    /// Per channel, the normalised value of a black pixel (what the padding holds).
    fill: Tensor,
}

impl Augmenter {
    /// An augmenter for `spec`, or None when it is off. `fill` is the normalised value of a
    /// black pixel per channel: torchvision pads the raw image, before normalisation.
    pub fn new(
        spec: &AugmentSpec,
        seed: u64,
        fill: &[f32],
        device: &Device,
        dtype: DType,
    ) -> Result<Option<Augmenter>> {
        if spec.is_off() {
            return Ok(None);
        }
        Ok(Some(Augmenter {
            rng: ExpRng::new(seed, Purpose::Augment),
            padding: spec.crop_padding,
            flip: spec.flip,
            fill: Tensor::from_slice(fill, fill.len(), device)?.to_dtype(dtype)?,
        }))
    }

    /// The augmented batch `xs` (N, C, H, W): a fresh draw per example.
    pub fn apply(&mut self, xs: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = xs.dims4()?;
        if c != self.fill.elem_count() {
            candle_core::bail!(
                "augmentation: {c} channels but {} fill values",
                self.fill.elem_count()
            );
        }
        let draws = self.draws(n);
        if !xs.device().is_cpu() {
            #[cfg(feature = "cuda")]
            {
                let params: Vec<u32> = draws
                    .iter()
                    .flat_map(|d| [d.dy as u32, d.dx as u32, d.mirrored as u32])
                    .collect();
                let params = Tensor::from_vec(params, 3 * n, xs.device())?;
                return xs.contiguous()?.apply_op3_no_bwd(
                    &self.fill,
                    &params,
                    &GpuAugment {
                        padding: self.padding,
                    },
                );
            }
        }
        let index = self.index(&draws, c, h, w);
        let len = index.len();
        let index = Tensor::from_vec(index, len, xs.device())?;
        let source = Tensor::cat(&[&xs.flatten_all()?, &self.fill], 0)?;
        source.index_select(&index, 0)?.reshape((n, c, h, w))
    }

    /// One draw per example, in the stream's order: the crop window's offsets in the padded
    /// image (in 0..=2p), then the coin.
    fn draws(&mut self, n: usize) -> Vec<Draw> {
        (0..n)
            .map(|_| {
                let (dy, dx) = if self.padding > 0 {
                    let span = 2 * self.padding + 1;
                    (self.rng.below(span), self.rng.below(span))
                } else {
                    (0, 0)
                };
                let mirrored = self.flip && self.rng.coin();
                Draw { dy, dx, mirrored }
            })
            .collect()
    }

    /// For every output element, the flat index of its source in `[batch…, fill…]`: element
    /// `len + ch` is channel `ch`'s padding value.
    fn index(&self, draws: &[Draw], c: usize, h: usize, w: usize) -> Vec<u32> {
        let p = self.padding as isize;
        let size = draws.len() * c * h * w;
        let mut index = Vec::with_capacity(size);
        for (e, draw) in draws.iter().enumerate() {
            let (dy, dx, mirrored) = (draw.dy as isize, draw.dx as isize, draw.mirrored);
            for ch in 0..c {
                for i in 0..h {
                    let y = i as isize + dy - p;
                    for j in 0..w {
                        let jj = if mirrored { w - 1 - j } else { j };
                        let x = jj as isize + dx - p;
                        let inside = (0..h as isize).contains(&y) && (0..w as isize).contains(&x);
                        index.push(if inside {
                            (((e * c + ch) * h + y as usize) * w + x as usize) as u32
                        } else {
                            (size + ch) as u32
                        });
                    }
                }
            }
        }
        index
    }
}

/// The augmentation of one example.
#[derive(Debug, Clone, Copy)]
struct Draw {
    dy: usize,
    dx: usize,
    mirrored: bool,
}

/// The GPU path: operands batch, fill values, draws (u32, three per example).
#[cfg(feature = "cuda")]
struct GpuAugment {
    padding: usize,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp3 for GpuAugment {
    fn name(&self) -> &'static str {
        "exp-augment"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("exp-augment: the CPU builds an index instead")
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
        fill: &candle_core::CudaStorage,
        fl: &candle_core::Layout,
        params: &candle_core::CudaStorage,
        pl: &candle_core::Layout,
    ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
        crate::cuda::augment((x, xl), (fill, fl), (params, pl), self.padding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose every element is distinct: 2 examples, 2 channels, 3×4.
    fn batch() -> Tensor {
        Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 3, 4))
            .unwrap()
    }

    fn augment(spec: &AugmentSpec, seed: u64, xs: &Tensor) -> Vec<f32> {
        let mut a = Augmenter::new(spec, seed, &[-1.0, -2.0], &Device::Cpu, DType::F32)
            .unwrap()
            .unwrap();
        let out = a.apply(xs).unwrap();
        assert_eq!(out.dims(), xs.dims(), "augmentation keeps the shape");
        out.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn off_by_default_flip_included() {
        let spec = AugmentSpec::default();
        assert!(!spec.flip);
        assert_eq!(spec.crop_padding, 0);
        assert!(Augmenter::new(&spec, 1, &[0.0], &Device::Cpu, DType::F32)
            .unwrap()
            .is_none());
    }

    #[test]
    fn crop_is_a_shift_with_padding_and_seeded() {
        let spec = AugmentSpec {
            crop_padding: 2,
            flip: false,
        };
        let xs = batch();
        let input: Vec<f32> = xs.flatten_all().unwrap().to_vec1().unwrap();
        let a = augment(&spec, 7, &xs);
        assert_eq!(a, augment(&spec, 7, &xs), "same seed, same crops");
        let seeds_differ = (8..20).any(|s| augment(&spec, s, &xs) != a);
        assert!(seeds_differ);
        let changed = (1..20).any(|s| augment(&spec, s, &xs) != input);
        assert!(changed, "crops never moved the image");
        // Every output pixel is its channel's padding value or the input pixel at one
        // shift (dy, dx) per example, the same for all channels, |dy|, |dx| ≤ 2.
        for s in 1..20 {
            let out = augment(&spec, s, &xs);
            for e in 0..2 {
                let shifts: Vec<(isize, isize)> = (-2..=2)
                    .flat_map(|dy| (-2..=2).map(move |dx| (dy, dx)))
                    .filter(|&(dy, dx)| {
                        (0..2).all(|ch| {
                            (0..3).all(|i| {
                                (0..4).all(|j| {
                                    let (y, x) = (i as isize + dy, j as isize + dx);
                                    let got = out[((e * 2 + ch) * 3 + i) * 4 + j];
                                    if (0..3).contains(&y) && (0..4).contains(&x) {
                                        got == input
                                            [((e * 2 + ch) * 3 + y as usize) * 4 + x as usize]
                                    } else {
                                        got == -1.0 - ch as f32
                                    }
                                })
                            })
                        })
                    })
                    .collect();
                assert!(
                    !shifts.is_empty(),
                    "seed {s} example {e}: not a padded shift"
                );
            }
        }
    }

    #[test]
    fn flip_mirrors_rows_or_keeps_the_image() {
        let spec = AugmentSpec {
            crop_padding: 0,
            flip: true,
        };
        let xs = batch();
        let input: Vec<f32> = xs.flatten_all().unwrap().to_vec1().unwrap();
        let mirrored: Vec<f32> = xs
            .flip(&[3])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (mut kept, mut flipped) = (0, 0);
        for s in 1..20 {
            let out = augment(&spec, s, &xs);
            for e in 0..2 {
                let r = e * 24..(e + 1) * 24;
                if out[r.clone()] == input[r.clone()] {
                    kept += 1;
                } else {
                    assert_eq!(out[r.clone()], mirrored[r], "seed {s} example {e}");
                    flipped += 1;
                }
            }
        }
        assert!(kept > 5 && flipped > 5, "kept {kept}, flipped {flipped}");
    }
}
