//! The token cross-entropy kernel (`cuda/kernels/cross_entropy.cu`), the model's
//! `LossKernel`: each row's log-sum-exp computed online in fp32 (Milakov and Gimelshein 2018),
//! then the gradient `softmax - onehot` written over the logits, as llm.c's fused classifier
//! does: two reads and one write of the logits in their dtype, where autograd through ATen's
//! fp32 `cross_entropy` makes an fp32 copy, a log-softmax, and as many passes again in
//! backward. It is checked against `cross_entropy_aten` on the device before it is installed.

use baichuan_model::baichuan::{cross_entropy_aten, LossKernel, IGNORE_INDEX};
use tch::{Kind, Tensor};

use crate::check::{dtype_index, kernel_tolerance, ptr, relative_error};
use crate::driver::{kernel_args, Module};
use crate::CudaError;

/// The kernel source.
pub const SOURCE: &str = include_str!("../kernels/cross_entropy.cu");

/// Loss kernel names in [`dtype_index`] order.
pub const NAMES: [&str; 3] = ["cross_entropy_bf16", "cross_entropy_f16", "cross_entropy_f32"];

/// The cross-entropy kernel compiled for one CUDA device.
pub struct CudaLoss {
    module: Module,
}

impl std::fmt::Debug for CudaLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaLoss")
    }
}

impl CudaLoss {
    pub fn new(device: tch::Device) -> Result<Self, CudaError> {
        Ok(CudaLoss {
            module: Module::load(device, SOURCE, "cross_entropy.cu", &NAMES)?,
        })
    }
}

impl LossKernel for CudaLoss {
    fn describe(&self) -> String {
        "cross-entropy kernel (NVRTC)".into()
    }

    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor {
        let size = logits.size();
        assert!(
            size.len() == 2 && logits.is_contiguous(),
            "loss kernel: logits must be contiguous (N, V), got {size:?}"
        );
        let (rows, v) = (size[0], size[1]);
        assert!(
            targets.kind() == Kind::Int64 && targets.size() == [rows] && targets.device() == logits.device(),
            "loss kernel: targets must be int64 ({rows},) on {:?}",
            logits.device()
        );
        let targets = targets.contiguous();
        let losses = Tensor::empty([rows], (Kind::Float, logits.device()));
        let which = dtype_index(logits.kind());
        // 16-byte accesses when every row starts on a 16-byte boundary
        let row_bytes = v * logits.kind().elt_size_in_bytes() as i64;
        let mut vec = (row_bytes % 16 == 0 && (logits.data_ptr() as usize).is_multiple_of(16)) as i32;
        let (mut lp, mut tp, mut op) = (ptr(logits), ptr(&targets), ptr(&losses));
        let (mut rows_, mut v_) = (rows, v);
        let mut scale = grad_scale.unwrap_or(0.0) as f32;
        let mut write_grad = grad_scale.is_some() as i32;
        let mut args = kernel_args!(lp, tp, op, rows_, v_, scale, write_grad, vec);
        // SAFETY: the arguments match cross_entropy_*'s parameters; logits, targets and losses
        // are live contiguous buffers of (rows, v), (rows) and (rows) on this device (checked
        // above). One block of 256 threads per row: 256 items per row.
        unsafe { self.module.launch(which, rows * 256, &mut args) }.unwrap_or_else(|e| panic!("loss kernel: {e}"));
        losses
    }
}

/// Largest difference of `kernel` from [`cross_entropy_aten`] on random logits of `kind` on
/// `device`, relative to the largest value compared: per-row losses, then gradients (after
/// the gradient's rounding to `kind`). Rows include an ignored target and both row lengths,
/// one that takes 16-byte accesses and one that does not; there are more rows than the
/// kernel's grid has blocks on any current GPU (8 per multiprocessor), so blocks take
/// several rows each.
pub fn loss_kernel_error(kernel: &dyn LossKernel, device: tch::Device, kind: Kind) -> (f64, f64) {
    let rel = relative_error;
    let (mut loss_err, mut grad_err) = (0.0f64, 0.0f64);
    for v in [1000i64, 1003] {
        let rows = 1500;
        let logits = (Tensor::randn([rows, v], (Kind::Float, device)) * 3.0).to_kind(kind);
        let mut t: Vec<i64> = (0..rows).map(|r| (r * 131 + 5) % v).collect();
        t[3] = IGNORE_INDEX;
        t[5] = v - 1;
        let targets = Tensor::from_slice(&t).to_device(device);
        let (mine, theirs) = (logits.copy(), logits.copy());
        let a = kernel.cross_entropy(&mine, &targets, Some(0.5));
        let b = cross_entropy_aten(&theirs, &targets, Some(0.5));
        loss_err = loss_err.max(rel(&a, &b));
        grad_err = grad_err.max(rel(&mine, &theirs));
        let plain = kernel.cross_entropy(&logits.copy(), &targets, None);
        loss_err = loss_err.max(rel(&plain, &b));
    }
    (loss_err, grad_err)
}

/// Installs the cross-entropy kernel on a CUDA model with the fused ops, after checking it
/// against the ATen operator in the model's dtype (a kernel that disagrees is not used, and
/// the reason is said); says what runs.
pub fn install_loss(model: &mut baichuan_model::Baichuan) -> String {
    let device = model.device();
    if !device.is_cuda() || !model.rotary.fused {
        return "loss: ATen ops".into();
    }
    let kernel = match CudaLoss::new(device) {
        Ok(k) => k,
        Err(e) => return format!("loss: ATen ops ({e})"),
    };
    let kind = model.kind();
    let (loss_err, grad_err) = loss_kernel_error(&kernel, device, kind);
    // one rounding of the gradient to the dtype, and fp32 exponentials
    let grad_tol = kernel_tolerance(kind);
    if loss_err > 1e-5 || grad_err > grad_tol {
        return format!(
            "loss: ATen ops (the kernel's check failed: loss error {loss_err:.1e}, gradient error {grad_err:.1e})"
        );
    }
    let what = kernel.describe();
    model.loss_kernel = Some(std::sync::Arc::new(kernel));
    format!("loss: {what}, checked (loss error {loss_err:.1e}, gradient {grad_err:.1e})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check that guards the kernel's installation rejects an operator that is wrong,
    /// here one off by one ulp-sized shift in every gradient (run with the ATen operator on
    /// the CPU: the check itself needs no GPU).
    #[test]
    fn the_installation_check_tells_a_wrong_operator_from_a_right_one() {
        #[derive(Debug)]
        struct Aten(f64);
        impl LossKernel for Aten {
            fn describe(&self) -> String {
                "test".into()
            }
            fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor {
                let losses = cross_entropy_aten(logits, targets, grad_scale);
                if grad_scale.is_some() {
                    let _ = logits.shallow_clone().g_add_scalar_(self.0);
                }
                losses
            }
        }
        let (l, g) = loss_kernel_error(&Aten(0.0), tch::Device::Cpu, Kind::Float);
        assert!(l < 1e-6 && g < 1e-6, "{l} {g}");
        let (l, g) = loss_kernel_error(&Aten(1e-3), tch::Device::Cpu, Kind::Float);
        assert!(l < 1e-6 && g > 1e-3, "{l} {g}");
    }
}
