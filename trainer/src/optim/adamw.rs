//! AdamW on one flat fp32 master buffer (the layout of `flat.rs`), and global gradient-norm
//! clipping.
//!
//! The update is `torch.optim.AdamW`'s single-tensor algorithm (Loshchilov & Hutter 2019:
//! decoupled decay, bias-corrected moments) applied with a handful of whole-buffer tensor
//! operations instead of a loop over hundreds of parameters. Weight decay touches matrices
//! only: the decayed parameters' ranges of the buffer are coalesced into a few spans.
//! In fp32 the model's parameters are views of the master buffer, so the update needs no
//! copy back; in lower precision the master is copied into the parameters after each step.
//! On CUDA, `enable_fused` swaps the tensor operations for one kernel (`baichuan_cuda::adamw`) that also
//! writes the low-precision parameters.

use tch::{Kind, Tensor};

use baichuan_cuda::adamw::{segments, Buffers, FusedAdamW, Segments, StepConsts};
use baichuan_cuda::CudaError;

use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::DistError;
use crate::flat::{layout, Slot};

/// Hyper-parameters of one AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Multiplies the gradient before the update (the clip coefficient), folded into the
    /// fused kernel's read; 1.0 leaves it as it is.
    pub grad_scale: f64,
}

/// The model's parameters as views of one flat buffer, and fp32 master weights and AdamW
/// moments for this rank's shard of it (all of it below ZeRO stage 1).
pub struct FlatAdamW {
    pub slots: Vec<Slot>,
    /// Every parameter, flat, in the parameter dtype; the model's tensors are views of it.
    pub params: Tensor,
    /// (start, len) of this rank's shard of the flat order.
    pub shard: (usize, usize),
    /// fp32 master weights of the shard (a view of `params` when those are fp32).
    pub master: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Coalesced (offset, len) spans of the shard that receive weight decay, shard-relative.
    decay_spans: Vec<(i64, i64)>,
    pub step: u64,
    alias: bool,
    /// The fused CUDA kernel and its (offset, len, decayed) segments of the shard, when enabled.
    fused: Option<(FusedAdamW, Segments)>,
    /// The last update already wrote the low-precision parameters (the fused kernel does).
    params_fresh: std::cell::Cell<bool>,
}

/// Coalesces the decayed slots into contiguous spans, clipped to `[lo, hi)`, shard-relative.
fn decay_spans(slots: &[Slot], lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut spans: Vec<(i64, i64)> = Vec::new();
    for s in slots.iter().filter(|s| s.decay) {
        let (a, b) = (s.offset.max(lo), (s.offset + s.numel).min(hi));
        if a >= b {
            continue;
        }
        match spans.last_mut() {
            Some((off, len)) if *off + *len == a - lo => *len += b - a,
            _ => spans.push((a - lo, b - a)),
        }
    }
    spans
}

impl AdamWParams {
    /// The fused kernel's constants for update number `step`.
    pub fn kernel_consts(&self, step: u64) -> StepConsts {
        StepConsts::new(
            self.lr,
            (self.beta1, self.beta2),
            self.eps,
            self.weight_decay,
            self.grad_scale,
            step,
        )
    }
}

impl FlatAdamW {
    /// Moves the parameters into one flat buffer (they become views of it), makes every
    /// rank's copy equal to rank 0's, and sets up fp32 state for `shard`.
    pub fn new(
        params: &[(String, &Tensor)],
        shard: (usize, usize),
        comm: &dyn Communicator,
    ) -> Result<Self, DistError> {
        let slots = layout(params);
        let total: i64 = slots.iter().map(|s| s.numel).sum();
        let (kind, device) = params
            .first()
            .map_or((Kind::Float, tch::Device::Cpu), |(_, t)| (t.kind(), t.device()));
        let flat = Tensor::zeros([total], (kind, device));
        tch::no_grad(|| {
            for ((_, t), s) in params.iter().zip(&slots) {
                let view = flat.narrow(0, s.offset, s.numel).view(s.shape.as_slice());
                view.shallow_clone().copy_(t);
                t.shallow_clone().set_data(&view);
            }
        });
        comm.broadcast(&flat, 0).wait()?;
        let (lo, len) = (shard.0 as i64, shard.1 as i64);
        let alias = kind == Kind::Float;
        let master = if alias {
            flat.narrow(0, lo, len)
        } else {
            flat.narrow(0, lo, len).to_kind(Kind::Float)
        };
        Ok(FlatAdamW {
            decay_spans: decay_spans(&slots, lo, lo + len),
            slots,
            exp_avg: Tensor::zeros([len], (Kind::Float, device)),
            exp_avg_sq: Tensor::zeros([len], (Kind::Float, device)),
            master,
            params: flat,
            shard,
            step: 0,
            alias,
            fused: None,
            params_fresh: std::cell::Cell::new(false),
        })
    }

    /// Uses the fused CUDA kernel for the updates from now on; an error (not CUDA, no NVRTC)
    /// leaves the tensor-op update in place.
    pub fn enable_fused(&mut self) -> Result<(), CudaError> {
        let kernel = FusedAdamW::new(self.master.device())?;
        let segments = segments(&self.decay_spans, self.shard.1 as i64);
        self.fused = Some((kernel, segments));
        Ok(())
    }

    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Enables the fused kernel when `wanted` and on CUDA; says which update runs, and why.
    pub fn choose_update(&mut self, wanted: bool) -> String {
        if !self.master.device().is_cuda() {
            return "whole-buffer tensor ops".into();
        }
        if !wanted {
            return "whole-buffer tensor ops (train.fused_optimizer = false)".into();
        }
        match self.enable_fused() {
            Ok(()) => "fused CUDA kernel (NVRTC)".into(),
            Err(e) => format!("whole-buffer tensor ops ({e})"),
        }
    }

    pub fn numel(&self) -> i64 {
        self.params.numel() as i64
    }

    /// Global L2 norm of the gradient; `grad` is this rank's shard, summed over ranks when
    /// `sharded`.
    pub fn grad_norm(&self, grad: &Tensor, comm: &dyn Communicator, sharded: bool) -> Result<f64, DistError> {
        let norm = grad.norm().double_value(&[]); // one pass, no temporary
        let sq = norm * norm;
        let sq = if sharded {
            comm.all_reduce_scalar(sq, ReduceOp::Sum)?
        } else {
            sq
        };
        Ok(sq.sqrt())
    }

    /// The factor that brings a gradient of norm `norm` to at most `max_norm` (as torch's
    /// clip_grad_norm_): 1.0 when it is within bounds or clipping is off (`max_norm` 0).
    pub fn clip_coef(norm: f64, max_norm: f64) -> f64 {
        if max_norm > 0.0 {
            (max_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        }
    }

    /// One AdamW update of the shard's master weights from the shard's gradient times
    /// `h.grad_scale` (the tensor path scales the gradient in place; the fused kernel scales as
    /// it reads and leaves the buffer as it was). With the
    /// fused kernel a buffer it cannot take (not contiguous fp32) falls back to the tensor
    /// operations; a failed kernel launch is an error.
    pub fn update(&mut self, grad: &Tensor, h: AdamWParams) -> Result<(), CudaError> {
        self.step += 1;
        if let Some((kernel, segments)) = &self.fused {
            let k = h.kernel_consts(self.step);
            let out = (!self.alias).then(|| self.params.narrow(0, self.shard.0 as i64, self.shard.1 as i64));
            let buffers = Buffers {
                master: &self.master,
                grad,
                exp_avg: &self.exp_avg,
                exp_avg_sq: &self.exp_avg_sq,
                out: out.as_ref(),
            };
            match kernel.step(&buffers, segments, k) {
                Ok(()) => {
                    self.params_fresh.set(true);
                    return Ok(());
                }
                Err(CudaError::Unavailable(why)) => {
                    eprintln!("optimizer: the fused kernel cannot take these buffers ({why}); using tensor operations");
                    self.fused = None;
                }
                Err(e) => return Err(e),
            }
        }
        let step = self.step as i32;
        if h.grad_scale != 1.0 {
            let _ = grad
                .shallow_clone()
                .f_mul_scalar_(h.grad_scale)
                .expect("the gradient is a float buffer");
        }
        tch::no_grad(|| {
            if h.weight_decay > 0.0 {
                for &(off, len) in &self.decay_spans {
                    let _ = self
                        .master
                        .narrow(0, off, len)
                        .f_mul_scalar_(1.0 - h.lr * h.weight_decay)
                        .expect("the master weights are a float buffer");
                }
            }
            // few whole-buffer passes (the update is memory-bound): m and v by lerp, and the
            // bias correction of v folded into eps and the step size:
            //   lr/b1 * m / (sqrt(v)/b2s + eps) = (lr*b2s/b1) * m / (sqrt(v) + eps*b2s)
            let _ = self.exp_avg.lerp_(grad, 1.0 - h.beta1);
            let _ = self.exp_avg_sq.lerp_(&grad.square(), 1.0 - h.beta2);
            let bias1 = 1.0 - h.beta1.powi(step);
            let bias2_sqrt = (1.0 - h.beta2.powi(step)).sqrt();
            let mut denom = self.exp_avg_sq.sqrt();
            let _ = denom.f_add_scalar_(h.eps * bias2_sqrt).expect("a float buffer");
            let _ = self
                .master
                .addcdiv_(&(&self.exp_avg * (-h.lr * bias2_sqrt / bias1)), &denom);
        });
        Ok(())
    }

    /// Writes the shard's master weights into the parameters and, when the state is sharded
    /// (`shards`), all-gathers every rank's shard so all ranks hold the whole model.
    pub fn write_back(&self, comm: &dyn Communicator, shards: Option<&[(usize, usize)]>) -> Result<(), DistError> {
        if !self.alias && !self.params_fresh.replace(false) {
            tch::no_grad(|| {
                self.params
                    .narrow(0, self.shard.0 as i64, self.shard.1 as i64)
                    .copy_(&self.master);
            });
        }
        match shards {
            Some(ranges) => comm.all_gather(&self.params, ranges).wait(),
            None => Ok(()),
        }
    }

    /// The whole model's fp32 master weights, flat (gathered from every rank when sharded).
    pub fn full_master(&self, comm: &dyn Communicator, shards: Option<&[(usize, usize)]>) -> Result<Tensor, DistError> {
        if self.alias {
            return Ok(self.params.shallow_clone()); // gathered by write_back
        }
        let full = Tensor::zeros([self.numel()], (Kind::Float, self.params.device()));
        tch::no_grad(|| {
            full.narrow(0, self.shard.0 as i64, self.shard.1 as i64)
                .copy_(&self.master)
        });
        if let Some(ranges) = shards {
            comm.all_gather(&full, ranges).wait()?;
        }
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_views_of_the_flat_buffer_and_fp32_master_aliases_it() {
        use crate::dist::comm::Solo;
        let a = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let params = vec![("a".to_string(), &a), ("b".to_string(), &b)];
        let opt = FlatAdamW::new(&params, (0, 9), &Solo).unwrap();
        assert_eq!(opt.numel(), 9);
        assert_eq!(opt.decay_spans, vec![(0, 6)]);
        tch::no_grad(|| {
            let _ = opt.master.shallow_clone().fill_(2.0);
        });
        assert_eq!(a.double_value(&[1, 2]), 2.0);
        assert_eq!(b.double_value(&[0]), 2.0);
        // autograd still fills .grad() of a view parameter
        (&a * 3.0).sum(Kind::Float).backward();
        assert_eq!(a.grad().double_value(&[0, 0]), 3.0);
    }

    #[test]
    fn decay_spans_are_clipped_to_the_shard() {
        let mk = |offset, numel, decay| Slot {
            name: String::new(),
            offset,
            numel,
            shape: vec![numel],
            decay,
        };
        let slots = vec![mk(0, 10, true), mk(10, 2, false), mk(12, 10, true), mk(22, 10, true)];
        assert_eq!(decay_spans(&slots, 0, 32), vec![(0, 10), (12, 20)]);
        assert_eq!(decay_spans(&slots, 5, 15), vec![(0, 5), (7, 3)]);
        assert_eq!(decay_spans(&slots, 10, 12), vec![]);
    }

    #[test]
    fn clipping_bounds_the_norm() {
        use crate::dist::comm::Solo;
        let a = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu));
        let opt = FlatAdamW::new(&[("a".to_string(), &a)], (0, 4), &Solo).unwrap();
        let grad = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]);
        let n = opt.grad_norm(&grad, &Solo, false).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let clipped = &grad * FlatAdamW::clip_coef(n, 1.0);
        assert!((opt.grad_norm(&clipped, &Solo, false).unwrap() - 1.0).abs() < 1e-5);
    }

    /// The kernel's arithmetic, written out on the CPU in f32 with the folded constants, equals
    /// the tensor-op update (the code the GPU path replaces) to rounding.
    #[test]
    fn folded_constants_reproduce_the_tensor_update() {
        let n = 1000;
        tch::manual_seed(11);
        let w = Tensor::randn([n], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let w2d = w.view([10, 100]);
        let params = vec![("w".to_string(), &w2d)];
        let mut opt = FlatAdamW::new(&params, (0, n as usize), &crate::dist::comm::Solo).unwrap();
        let h = AdamWParams {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_scale: 0.6,
        };
        let mut p: Vec<f32> = Vec::try_from(&opt.master).unwrap();
        let (mut m, mut v) = (vec![0f32; n as usize], vec![0f32; n as usize]);
        for step in 1..=3u64 {
            let grad = Tensor::randn([n], (Kind::Float, tch::Device::Cpu));
            let g: Vec<f32> = Vec::try_from(&grad).unwrap();
            opt.update(&grad, h).unwrap();
            let k = h.kernel_consts(step);
            for i in 0..n as usize {
                let g = |i: usize| g[i] * k.grad_scale;
                m[i] += k.w1 * (g(i) - m[i]);
                v[i] += k.w2 * (g(i) * g(i) - v[i]);
                p[i] = p[i] * k.decay + (m[i] * k.step_size) / (v[i].sqrt() + k.eps_hat);
            }
        }
        let want: Vec<f32> = Vec::try_from(&opt.master).unwrap();
        let worst = p
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) / b.abs().max(1e-3)).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "kernel arithmetic differs from the tensor update by {worst}"
        );
    }
}
