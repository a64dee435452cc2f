//! The rotary-embedding kernels of the training block (`cuda/kernels/rotary.cu`), the model's
//! `RotaryKernel`: one kernel rotates Q and K out of the packed QKV projection, another rotates
//! their gradients back and assembles the QKV gradient with V's. Each reads and writes every
//! element once, where the same rotation in ATen ops with autograd takes about ten passes and
//! as many autograd nodes.
//!
//! Arithmetic in fp32 with the fp32 angle tables and one rounding to the activation dtype
//! (bf16, fp16 or fp32), the NeoX `rotate_half` form of Hugging Face's `apply_rotary_pos_emb`:
//! `y1 = x1 cos - x2 sin`, `y2 = x2 cos + x1 sin` for the halves of each head, and the
//! transposed rotation for the gradient. Where NVRTC or the driver is missing the model's ATen
//! ops compute the same.

use baichuan_model::baichuan::RotaryKernel;
use tch::{Kind, Tensor};

use crate::check::{dtype_index, ptr};
use crate::driver::{kernel_args, Module};
use crate::CudaError;

/// The kernel source.
pub const SOURCE: &str = include_str!("../kernels/rotary.cu");

/// Kernel names, forward then backward per dtype, in [`dtype_index`] order.
pub const NAMES: [&str; 6] = [
    "rotary_fwd_bf16",
    "rotary_bwd_bf16",
    "rotary_fwd_f16",
    "rotary_bwd_f16",
    "rotary_fwd_f32",
    "rotary_bwd_f32",
];

/// The rotary kernels compiled for one CUDA device.
pub struct CudaRotary {
    module: Module,
}

impl std::fmt::Debug for CudaRotary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaRotary")
    }
}

impl CudaRotary {
    pub fn new(device: tch::Device) -> Result<Self, CudaError> {
        Ok(CudaRotary {
            module: Module::load(device, SOURCE, "rotary.cu", &NAMES)?,
        })
    }
}

/// Checks that the angle tables are fp32 on `x`'s device, contiguous, long enough for `seq`.
fn check_tables(x: &Tensor, cos: &Tensor, sin: &Tensor, seq: i64, hd: i64) {
    for t in [cos, sin] {
        assert!(
            t.kind() == Kind::Float && t.is_contiguous() && t.device() == x.device(),
            "rotary kernel: the angle tables must be contiguous fp32 on {:?}",
            x.device()
        );
        assert!(
            t.size()[0] >= seq && t.size()[1] == hd,
            "rotary kernel: tables {:?} too short for {seq} positions of {hd}",
            t.size()
        );
    }
}

impl RotaryKernel for CudaRotary {
    fn describe(&self) -> String {
        "rotary kernel (NVRTC)".into()
    }

    fn forward(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor) {
        let size = qkv.size();
        assert!(
            size.len() == 5 && size[2] == 3 && qkv.is_contiguous(),
            "rotary kernel: qkv must be contiguous (B, T, 3, nh, hd), got {size:?}"
        );
        let (b, seq, nh, hd) = (size[0], size[1], size[3], size[4]);
        check_tables(qkv, cos, sin, seq, hd);
        let q = Tensor::empty([b, seq, nh, hd], (qkv.kind(), qkv.device()));
        let k = Tensor::empty([b, seq, nh, hd], (qkv.kind(), qkv.device()));
        let (mut src, mut qp, mut kp, mut cp, mut sp) = (ptr(qkv), ptr(&q), ptr(&k), ptr(cos), ptr(sin));
        let mut pairs = b * seq * 2 * nh * (hd / 2);
        let (mut seq32, mut nh32, mut hd32) = (seq as i32, nh as i32, hd as i32);
        let mut args = kernel_args!(src, qp, kp, cp, sp, pairs, seq32, nh32, hd32);
        // SAFETY: the arguments match rotary_fwd_*'s parameters; the tensors are live device
        // buffers of the shapes the kernel indexes (checked above).
        unsafe { self.module.launch(2 * dtype_index(qkv.kind()), pairs, &mut args) }
            .unwrap_or_else(|e| panic!("rotary kernel: {e}"));
        (q, k)
    }

    fn backward(&self, dq: &Tensor, dk: &Tensor, dv: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let size = dq.size();
        let (b, seq, nh, hd) = (size[0], size[1], size[2], size[3]);
        check_tables(dq, cos, sin, seq, hd);
        // the kernel indexes (b, t, h) by strides and needs unit stride along the head
        let unit = |t: &Tensor| {
            assert_eq!(t.size(), size, "rotary kernel: dq, dk, dv shapes differ");
            assert_eq!(t.kind(), dq.kind(), "rotary kernel: dq, dk, dv dtypes differ");
            if t.stride()[3] == 1 {
                t.shallow_clone()
            } else {
                t.contiguous()
            }
        };
        let (dq, dk, dv) = (unit(dq), unit(dk), unit(dv));
        let dqkv = Tensor::empty([b, seq, 3, nh, hd], (dq.kind(), dq.device()));
        let (mut qp, mut kp, mut vp, mut op, mut cp, mut sp) =
            (ptr(&dq), ptr(&dk), ptr(&dv), ptr(&dqkv), ptr(cos), ptr(sin));
        let mut items = b * seq * nh * (hd / 2);
        let (mut seq32, mut nh32, mut hd32) = (seq as i32, nh as i32, hd as i32);
        let st = |t: &Tensor| {
            let s = t.stride();
            [s[0], s[1], s[2]]
        };
        let [mut qb, mut qt, mut qh] = st(&dq);
        let [mut kb, mut kt, mut kh] = st(&dk);
        let [mut vb, mut vt, mut vh] = st(&dv);
        let mut args =
            kernel_args!(qp, kp, vp, op, cp, sp, items, seq32, nh32, hd32, qb, qt, qh, kb, kt, kh, vb, vt, vh);
        // SAFETY: the arguments match rotary_bwd_*'s parameters; every pointer addresses a live
        // device buffer that the strides above index within.
        unsafe { self.module.launch(2 * dtype_index(dq.kind()) + 1, items, &mut args) }
            .unwrap_or_else(|e| panic!("rotary kernel: {e}"));
        dqkv
    }
}

/// Installs the rotary kernel on a CUDA model with the fused ops; says what runs.
pub fn install_rotary(model: &mut baichuan_model::Baichuan) -> String {
    let device = model.device();
    if !device.is_cuda() || !model.rotary.fused {
        return "rotary: ATen ops".into();
    }
    match CudaRotary::new(device) {
        Ok(k) => {
            let what = k.describe();
            model.rotary.kernel = Some(std::sync::Arc::new(k));
            format!("rotary: {what}")
        }
        Err(e) => format!("rotary: ATen ops ({e})"),
    }
}
