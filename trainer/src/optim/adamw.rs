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
//! writes the low-precision parameters. State in host memory (CPU runs, and GPU runs with
//! `train.optimizer_offload = "cpu"`) is updated by the same arithmetic on the host's cores
//! (`host.rs`). Offloaded, the master weights and moments live in (pinned) host memory, the
//! reducer copies the reduced gradient there bucket by bucket, and the update runs in chunks
//! while a copier thread sends each finished chunk back to the device in the parameter dtype
//! (ZeRO-Offload, Ren et al. 2021).

use tch::{Device, Kind, Tensor};

use baichuan_cuda::adamw::{segments, Buffers, FusedAdamW, Segments, StepConsts};
use baichuan_cuda::CudaError;

use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::DistError;
use crate::flat::{layout, Slot};

use super::host::{self, HostBuffers};

/// Elements of the offloaded shard updated before the copier thread sends them to the device
/// (64 MB of fp32: the copy of one chunk overlaps the update of the next); `info`'s memory
/// plan counts one staging chunk (`tools::memory_plan::OFFLOAD_CHUNK`).
pub const OFFLOAD_CHUNK: usize = 1 << 24;

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
    /// The (offset, len, decayed) segments of the shard, for the host update.
    segments: Segments,
    /// Master weights and moments in host memory while the parameters are on a GPU.
    offload: bool,
    /// Offload with parameters in 16 bits on a GPU: the pinned host buffer of one chunk that
    /// each chunk is rounded into before its (blocking) copy to the device.
    staging: Option<Tensor>,
    /// Elements per offloaded chunk.
    chunk: usize,
}

/// A zeroed host buffer for offloaded state beside `device`: pinned when it is a GPU (so that
/// copies run asynchronously), allocated pinned directly (a 7B model's state would not fit
/// twice in host memory).
fn host_zeros(len: i64, kind: Kind, device: Device) -> Result<Tensor, DistError> {
    if !device.is_cuda() {
        return Ok(Tensor::zeros([len], (kind, Device::Cpu)));
    }
    baichuan_model::pinned::zeros_pinned(len, kind).map_err(|e| {
        DistError::Protocol(format!(
            "optimizer offload: cannot allocate {:.2} GiB of pinned host memory ({e}); HINT: the host needs 16 bytes \
             per parameter of each rank's shard (baichuan info --offload)",
            len as f64 * kind.elt_size_in_bytes() as f64 / (1u64 << 30) as f64
        ))
    })
}

/// Threads of the host update: libtorch's intra-op threads (the trainer gives each local rank
/// its share of the cores).
fn host_threads() -> usize {
    tch::get_num_threads().max(1) as usize
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
    /// rank's copy equal to rank 0's, and sets up fp32 state for `shard` (in host memory with
    /// `offload`).
    pub fn new(
        params: &[(String, &Tensor)],
        shard: (usize, usize),
        comm: &dyn Communicator,
        offload: bool,
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
        let alias = kind == Kind::Float && !offload;
        let master = if alias {
            flat.narrow(0, lo, len)
        } else if offload {
            let m = host_zeros(len, Kind::Float, device)?;
            tch::no_grad(|| m.shallow_clone().copy_(&flat.narrow(0, lo, len)));
            m
        } else {
            flat.narrow(0, lo, len).to_kind(Kind::Float)
        };
        let zeros = || -> Result<Tensor, DistError> {
            if offload {
                host_zeros(len, Kind::Float, device)
            } else {
                Ok(Tensor::zeros([len], (Kind::Float, device)))
            }
        };
        let decay_spans = decay_spans(&slots, lo, lo + len);
        Ok(FlatAdamW {
            segments: segments(&decay_spans, len),
            decay_spans,
            slots,
            exp_avg: zeros()?,
            exp_avg_sq: zeros()?,
            master,
            staging: (offload && device.is_cuda() && kind != Kind::Float)
                .then(|| host_zeros(len.min(OFFLOAD_CHUNK as i64), kind, device))
                .transpose()?,
            params: flat,
            shard,
            step: 0,
            alias,
            fused: None,
            params_fresh: std::cell::Cell::new(false),
            offload,
            chunk: OFFLOAD_CHUNK,
        })
    }

    /// Whether the master weights and moments live in host memory while the parameters are
    /// on a GPU (or are kept apart from fp32 parameters on the CPU).
    pub fn is_offloaded(&self) -> bool {
        self.offload
    }

    /// A host fp32 buffer of the shard's length for the reduced gradient (pinned beside a
    /// GPU), which the reducer fills when offloading.
    pub fn host_grad_buffer(&self) -> Result<Tensor, DistError> {
        host_zeros(self.shard.1 as i64, Kind::Float, self.params.device())
    }

    /// Uses the fused CUDA kernel for the updates from now on; an error (not CUDA, no NVRTC)
    /// leaves the tensor-op update in place.
    pub fn enable_fused(&mut self) -> Result<(), CudaError> {
        let kernel = FusedAdamW::new(self.master.device())?;
        self.fused = Some((kernel, self.segments.clone()));
        Ok(())
    }

    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Enables the fused kernel when `wanted` and on CUDA; says which update runs, and why.
    pub fn choose_update(&mut self, wanted: bool) -> String {
        if self.offload {
            return format!(
                "offloaded: state in host memory, {} host threads{}",
                host_threads(),
                if host::uses_avx2() { " (AVX2)" } else { "" }
            );
        }
        if !self.master.device().is_cuda() {
            return format!(
                "host update, {} threads{}",
                host_threads(),
                if host::uses_avx2() { " (AVX2)" } else { "" }
            );
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
        if self.master.device() == Device::Cpu {
            self.host_update(grad, h.kernel_consts(self.step));
        } else {
            self.tensor_update(grad, h);
        }
        Ok(())
    }

    /// The update as whole-buffer tensor operations on the state's device (CUDA without the
    /// fused kernel), for update number `self.step`.
    fn tensor_update(&mut self, grad: &Tensor, h: AdamWParams) {
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
    }

    /// The update of state in host memory: all at once, or offloaded in chunks, each sent to
    /// the device by a copier thread while the next is updated.
    fn host_update(&mut self, grad: &Tensor, k: StepConsts) {
        let n = self.shard.1;
        for (what, t) in [
            ("master", &self.master),
            ("gradient", grad),
            ("exp_avg", &self.exp_avg),
            ("exp_avg_sq", &self.exp_avg_sq),
        ] {
            assert!(
                t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() == n,
                "the host update needs a contiguous fp32 host {what} of the shard's {n} elements"
            );
        }
        let ptrs = [&self.master, grad, &self.exp_avg, &self.exp_avg_sq].map(|t| t.data_ptr() as *mut f32);
        // SAFETY: four distinct contiguous fp32 host buffers of n elements (checked above) that
        // outlive the call; each chunk's slices are created for its update alone, and the copier
        // thread reads a chunk only after its update returned, through libtorch.
        let buffers = |a: usize, len: usize| unsafe {
            HostBuffers {
                p: std::slice::from_raw_parts_mut(ptrs[0].add(a), len),
                g: std::slice::from_raw_parts(ptrs[1].add(a), len),
                m: std::slice::from_raw_parts_mut(ptrs[2].add(a), len),
                v: std::slice::from_raw_parts_mut(ptrs[3].add(a), len),
            }
        };
        let threads = host_threads();
        if !self.offload {
            host::update(buffers(0, n), 0, &self.segments, &k, threads);
            return;
        }
        let (params, master) = (
            self.params.narrow(0, self.shard.0 as i64, n as i64),
            self.master.shallow_clone(),
        );
        let staging = self.staging.as_ref().map(Tensor::shallow_clone);
        let segments = &self.segments;
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(i64, i64)>(4);
            s.spawn(move || {
                let _guard = tch::no_grad_guard();
                for (a, len) in rx {
                    let chunk = master.narrow(0, a, len);
                    let to = params.narrow(0, a, len);
                    match &staging {
                        // round on the host, then a pinned copy (half the bytes over PCIe)
                        Some(st) => {
                            let st = st.narrow(0, 0, len);
                            st.shallow_clone().copy_(&chunk);
                            to.shallow_clone().copy_(&st);
                        }
                        None => to.shallow_clone().copy_(&chunk),
                    }
                }
            });
            let mut a = 0;
            while a < n {
                let len = self.chunk.min(n - a);
                host::update(buffers(a, len), a, segments, &k, threads);
                tx.send((a as i64, len as i64))
                    .expect("the copier thread runs until the sender is dropped");
                a += len;
            }
        });
        self.params_fresh.set(true);
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
    use crate::dist::comm::Solo;

    #[test]
    fn parameters_become_views_of_the_flat_buffer_and_fp32_master_aliases_it() {
        let a = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let params = vec![("a".to_string(), &a), ("b".to_string(), &b)];
        let opt = FlatAdamW::new(&params, (0, 9), &Solo, false).unwrap();
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
        let a = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu));
        let opt = FlatAdamW::new(&[("a".to_string(), &a)], (0, 4), &Solo, false).unwrap();
        let grad = Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]);
        let n = opt.grad_norm(&grad, &Solo, false).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let clipped = &grad * FlatAdamW::clip_coef(n, 1.0);
        assert!((opt.grad_norm(&clipped, &Solo, false).unwrap() - 1.0).abs() < 1e-5);
    }

    fn hyper() -> AdamWParams {
        AdamWParams {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_scale: 0.6,
        }
    }

    /// A 10 x 100 matrix and a 37-vector (decayed and not), as parameters of `kind`.
    fn two_params(kind: Kind) -> (Tensor, Tensor) {
        tch::manual_seed(11);
        let opts = (Kind::Float, tch::Device::Cpu);
        (
            Tensor::randn([10, 100], opts).to_kind(kind),
            Tensor::randn([37], opts).to_kind(kind),
        )
    }

    /// The host update (the kernel's folded arithmetic, on the CPU's cores) equals the
    /// whole-buffer tensor-op update (the CUDA fallback, torch's lerp/addcdiv) to rounding over
    /// three steps, decayed matrix and undecayed vector alike.
    #[test]
    fn the_host_update_equals_the_tensor_update() {
        let (a, b) = two_params(Kind::Float);
        let (a2, b2) = (a.copy(), b.copy());
        let mut host = FlatAdamW::new(&[("a".into(), &a), ("b".into(), &b)], (0, 1037), &Solo, false).unwrap();
        let mut ops = FlatAdamW::new(&[("a".into(), &a2), ("b".into(), &b2)], (0, 1037), &Solo, false).unwrap();
        for _ in 0..3 {
            let grad = Tensor::randn([1037], (Kind::Float, tch::Device::Cpu));
            host.update(&grad.copy(), hyper()).unwrap();
            ops.step += 1;
            ops.tensor_update(&grad, hyper());
        }
        let worst = (&host.master - &ops.master)
            .abs()
            .divide(&ops.master.abs().clamp_min(1e-3))
            .max()
            .double_value(&[]);
        assert!(worst < 1e-5, "host update differs from the tensor update by {worst}");
        assert!(worst > 0.0 || host.master.equal(&ops.master));
    }

    /// Offloaded state on the CPU (kept apart from the fp32 parameters and written back in
    /// chunks) gives the same bits as the state aliasing the parameters; in bf16 the
    /// parameters equal the master weights rounded, as without offload.
    #[test]
    fn offloaded_state_gives_the_same_bits() {
        for kind in [Kind::Float, Kind::BFloat16] {
            let (a, b) = two_params(kind);
            let (a2, b2) = (a.copy(), b.copy());
            let mut plain = FlatAdamW::new(&[("a".into(), &a), ("b".into(), &b)], (0, 1037), &Solo, false).unwrap();
            let mut off = FlatAdamW::new(&[("a".into(), &a2), ("b".into(), &b2)], (0, 1037), &Solo, true).unwrap();
            off.chunk = 100; // eleven chunks, the last one short, boundaries inside both parameters
            assert!(off.is_offloaded() && off.master.data_ptr() != off.params.data_ptr());
            for _ in 0..3 {
                let grad = Tensor::randn([1037], (Kind::Float, tch::Device::Cpu));
                plain.update(&grad, hyper()).unwrap();
                plain.write_back(&Solo, None).unwrap();
                off.update(&grad, hyper()).unwrap();
                off.write_back(&Solo, None).unwrap();
            }
            assert!(plain.master.equal(&off.master), "{kind:?}: master weights");
            assert!(plain.exp_avg_sq.equal(&off.exp_avg_sq), "{kind:?}: second moments");
            assert!(plain.params.equal(&off.params), "{kind:?}: parameters");
            assert!(a.equal(&a2) && b.equal(&b2), "{kind:?}: the model's views");
            assert!(
                off.params.equal(&off.master.to_kind(kind)),
                "{kind:?}: params are the rounded master"
            );
        }
    }
}
