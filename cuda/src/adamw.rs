//! The host side of the fused AdamW kernel (`cuda/kernels/adamw.cu`): one launch per aligned
//! run of a flat fp32 buffer reads the master weights, the gradient and both moments once and
//! writes the weights, the moments and the bf16/fp16 parameter copy once (30 bytes per
//! parameter, against about 86 for whole-buffer tensor operations; tch exposes neither
//! `_fused_adamw_` nor the `_foreach_` ops). The arithmetic is the trainer's tensor-op update,
//! in the same order: `torch.lerp`'s formula for the moments, decoupled decay, the bias
//! corrections folded into the step size and eps. Follows the single-kernel multi-tensor
//! updates of apex/PyTorch (`_fused_adamw_`), on one flat buffer instead of a tensor list.

use std::ffi::c_int;

use tch::{Device, Kind, Tensor};

use crate::driver::{kernel_args, Module};
use crate::CudaError;

/// The kernel source.
pub const SOURCE: &str = include_str!("../kernels/adamw.cu");
/// Its entry points: one element per iteration, and four with 16-byte accesses.
pub const NAMES: [&str; 2] = ["baichuan_adamw", "baichuan_adamw4"];

/// The constants of one step, folded as the trainer's tensor-op AdamW folds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepConsts {
    /// 1 - lr * weight_decay (applied on decayed spans only).
    pub decay: f32,
    /// 1 - beta1, 1 - beta2: the lerp weights.
    pub w1: f32,
    pub w2: f32,
    /// -lr * sqrt(1 - beta2^t) / (1 - beta1^t).
    pub step_size: f32,
    /// eps * sqrt(1 - beta2^t).
    pub eps_hat: f32,
    /// Multiplies the gradient as it is read (the clip coefficient): the kernel leaves the
    /// gradient buffer as it was.
    pub grad_scale: f32,
}

impl StepConsts {
    /// The constants of update number `step` (from 1) with learning rate `lr`, betas,
    /// `eps`, decoupled `weight_decay` and `grad_scale` (the clip coefficient).
    pub fn new(lr: f64, (beta1, beta2): (f64, f64), eps: f64, weight_decay: f64, grad_scale: f64, step: u64) -> Self {
        let t = step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        StepConsts {
            decay: (1.0 - lr * weight_decay) as f32,
            w1: (1.0 - beta1) as f32,
            w2: (1.0 - beta2) as f32,
            step_size: (-lr * bias2_sqrt / bias1) as f32,
            eps_hat: (eps * bias2_sqrt) as f32,
            grad_scale: grad_scale as f32,
        }
    }
}

/// Splits `[0, len)` into consecutive (offset, len, decayed) segments from the sorted,
/// disjoint decayed spans.
pub fn segments(decay_spans: &[(i64, i64)], len: i64) -> Vec<(i64, i64, bool)> {
    let mut out = Vec::with_capacity(2 * decay_spans.len() + 1);
    let mut at = 0;
    for &(off, n) in decay_spans {
        if off > at {
            out.push((at, off - at, false));
        }
        if n > 0 {
            out.push((off, n, true));
        }
        at = off + n;
    }
    if at < len {
        out.push((at, len - at, false));
    }
    out
}

/// The buffers of one update: `master`, `exp_avg`, `exp_avg_sq` (contiguous fp32 on the
/// kernel's device, equal lengths) are updated in place from `grad`; `out`, when given, receives
/// the new weights as bf16/fp16 (the model's parameters of the same range).
pub struct Buffers<'a> {
    pub master: &'a Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    pub out: Option<&'a Tensor>,
}

/// (offset, len, decayed) ranges of a shard.
pub type Segments = Vec<(i64, i64, bool)>;

/// The compiled AdamW kernels, for one CUDA device.
pub struct FusedAdamW {
    module: Module,
}

impl FusedAdamW {
    /// Loads NVRTC and the driver, and compiles the kernel for `device`.
    pub fn new(device: Device) -> Result<Self, CudaError> {
        Ok(FusedAdamW {
            module: Module::load(device, SOURCE, "adamw.cu", &NAMES)?,
        })
    }

    /// One update of `b` (see [`Buffers`]); `segments` say which ranges decay. A buffer the
    /// kernel cannot take is `Unavailable` before anything is launched.
    pub fn step(&self, b: &Buffers, segments: &[(i64, i64, bool)], k: StepConsts) -> Result<(), CudaError> {
        let Buffers {
            master,
            grad,
            exp_avg,
            exp_avg_sq,
            out,
        } = *b;
        let n = master.numel() as i64;
        for (what, t) in [
            ("master", master),
            ("grad", grad),
            ("exp_avg", exp_avg),
            ("exp_avg_sq", exp_avg_sq),
        ] {
            if t.kind() != Kind::Float || !t.is_contiguous() || t.numel() as i64 != n || !t.device().is_cuda() {
                return Err(CudaError::Unavailable(format!(
                    "{what} is not a contiguous CUDA fp32 buffer of {n} elements"
                )));
            }
        }
        let out_kind: c_int = match out.map(|o| (o.kind(), o.is_contiguous() && o.numel() as i64 == n)) {
            None => 0,
            Some((Kind::BFloat16, true)) => 1,
            Some((Kind::Half, true)) => 2,
            Some(_) => {
                return Err(CudaError::Unavailable(
                    "the parameter copy is not contiguous bf16/fp16".into(),
                ))
            }
        };
        let base = |t: &Tensor| t.data_ptr() as *mut u8;
        let (p, g, m, v) = (base(master), base(grad), base(exp_avg), base(exp_avg_sq));
        let o = out.map_or(std::ptr::null_mut(), base);
        for &(off, len, decayed) in segments {
            assert!(off >= 0 && off + len <= n, "segment outside the buffer");
            let decay = if decayed { k.decay } else { 1.0 };
            for (start, count, wide) in split_for_vectors([p, g, m, v], o, off, len) {
                let at = |ptr: *mut u8, width: usize| {
                    if ptr.is_null() {
                        ptr
                    } else {
                        ptr.wrapping_add(start as usize * width)
                    }
                };
                let ptrs = [at(p, 4), at(g, 4), at(m, 4), at(v, 4), at(o, 2)];
                let (function, items) = if wide { (1, count / 4) } else { (0, count) };
                self.launch(function, ptrs, out_kind, items, decay, &k)?;
            }
        }
        Ok(())
    }

    /// Launches kernel `which` (0: one element, 1: four) over `items` (elements, or groups of
    /// four) from `ptrs` (master, grad, exp_avg, exp_avg_sq, 16-bit copy or null).
    fn launch(
        &self,
        which: usize,
        ptrs: [*mut u8; 5],
        out_kind: c_int,
        items: i64,
        decay: f32,
        k: &StepConsts,
    ) -> Result<(), CudaError> {
        let [mut pp, mut gp, mut mp, mut vp, mut op] = ptrs;
        let (mut kind, mut count, mut decay) = (out_kind, items, decay);
        let (mut w1, mut w2, mut step_size, mut eps_hat, mut gscale) =
            (k.w1, k.w2, k.step_size, k.eps_hat, k.grad_scale);
        let mut args = kernel_args!(pp, gp, mp, vp, op, kind, count, decay, w1, w2, step_size, eps_hat, gscale);
        // SAFETY: the arguments match the kernel's parameters in order and type; the pointers
        // address `items` elements (or aligned groups of four) inside live CUDA buffers of this
        // device.
        unsafe { self.module.launch(which, items, &mut args) }
    }
}

/// Splits the segment `[off, off + len)` into (start, count, wide) launches: a one-element
/// head until the fp32 pointers reach 16-byte alignment, the largest multiple of four that
/// the wide kernel can take, and a one-element tail. The wide part needs every fp32 pointer
/// 16-byte aligned and the 16-bit copy (when not null) 8-byte aligned at its start; where the
/// buffers disagree on alignment the whole segment goes element by element.
pub fn split_for_vectors(fp32: [*mut u8; 4], half: *mut u8, off: i64, len: i64) -> Vec<(i64, i64, bool)> {
    if len <= 0 {
        return Vec::new();
    }
    let addr = |ptr: *mut u8, width: i64, i: i64| ptr as i64 + width * i;
    // elements before the master pointer is 16-byte aligned (fp32 pointers are 4-aligned)
    let head = ((16 - addr(fp32[0], 4, off).rem_euclid(16)) % 16 / 4).min(len);
    let start = off + head;
    let aligned =
        fp32.iter().all(|&ptr| addr(ptr, 4, start) % 16 == 0) && (half.is_null() || addr(half, 2, start) % 8 == 0);
    let body = if aligned { (len - head) / 4 * 4 } else { 0 };
    if body == 0 {
        return vec![(off, len, false)];
    }
    let mut out = Vec::with_capacity(3);
    if head > 0 {
        out.push((off, head, false));
    }
    out.push((start, body, true));
    if start + body < off + len {
        out.push((start + body, off + len - start - body, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_buffer_in_order() {
        assert_eq!(segments(&[], 5), vec![(0, 5, false)]);
        assert_eq!(
            segments(&[(0, 10), (12, 20)], 32),
            vec![(0, 10, true), (10, 2, false), (12, 20, true)]
        );
        assert_eq!(segments(&[(3, 2)], 9), vec![(0, 3, false), (3, 2, true), (5, 4, false)]);
        assert_eq!(segments(&[(0, 0)], 0), vec![]);
    }

    #[test]
    fn segments_split_into_aligned_groups_of_four_and_scalar_ends() {
        let at = |a: usize| a as *mut u8;
        let fp32 = [at(0x1000), at(0x2000), at(0x3000), at(0x4000)];
        // aligned start: all wide, a scalar tail of 3
        assert_eq!(
            split_for_vectors(fp32, at(0x5000), 0, 11),
            vec![(0, 8, true), (8, 3, false)]
        );
        // offset 35: a head of 1 reaches offset 36, whose addresses are 16-byte aligned
        assert_eq!(
            split_for_vectors(fp32, at(0x5000), 35, 20),
            vec![(35, 1, false), (36, 16, true), (52, 3, false)]
        );
        // a 16-bit copy misaligned against the fp32 buffers (a shard starting at an odd element)
        assert_eq!(split_for_vectors(fp32, at(0x5002), 0, 64), vec![(0, 64, false)]);
        // one fp32 buffer on another alignment than the master
        let skew = [at(0x1000), at(0x2004), at(0x3000), at(0x4000)];
        assert_eq!(
            split_for_vectors(skew, std::ptr::null_mut(), 0, 64),
            vec![(0, 64, false)]
        );
        // no 16-bit copy; too short for a group
        assert_eq!(split_for_vectors(fp32, std::ptr::null_mut(), 1, 3), vec![(1, 3, false)]);
        assert_eq!(split_for_vectors(fp32, std::ptr::null_mut(), 5, 0), vec![]);
        // every element is covered once, in order
        for off in 0..9 {
            for len in 0..23 {
                let parts = split_for_vectors(fp32, at(0x5000), off, len);
                let mut at_ = off;
                for (s, n, wide) in parts {
                    assert_eq!(s, at_);
                    assert!(!wide || (n % 4 == 0 && (0x1000 + 4 * s) % 16 == 0));
                    at_ += n;
                }
                assert_eq!(at_, off + len);
            }
        }
    }
}
