//! The SwiGLU kernels (`cuda/kernels/swiglu.cu`), the model's `SwigluKernel`: forward reads the
//! gate and up projections once and writes `silu(g) * u`; backward reads them and the
//! product's gradient once and writes both gradients, where ATen's ops with autograd take five
//! passes forward and backward together and keep `silu(g)` for backward. Checked against
//! `SwigluAten` before they are installed; with them the training block splices its MLP
//! product out of autograd.

use baichuan_model::baichuan::{SwigluAten, SwigluKernel};
use tch::{Kind, Tensor};

use crate::check::{dtype_index, kernel_tolerance, ptr, relative_error};
use crate::driver::{kernel_args, Module};
use crate::CudaError;

/// The kernel source.
pub const SOURCE: &str = include_str!("../kernels/swiglu.cu");

/// SwiGLU kernel names, forward then backward per dtype, in [`dtype_index`] order.
pub const NAMES: [&str; 6] = [
    "swiglu_fwd_bf16",
    "swiglu_bwd_bf16",
    "swiglu_fwd_f16",
    "swiglu_bwd_f16",
    "swiglu_fwd_f32",
    "swiglu_bwd_f32",
];

/// The SwiGLU kernels compiled for one CUDA device.
pub struct CudaSwiglu {
    module: Module,
}

impl std::fmt::Debug for CudaSwiglu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaSwiglu")
    }
}

impl CudaSwiglu {
    pub fn new(device: tch::Device) -> Result<Self, CudaError> {
        Ok(CudaSwiglu {
            module: Module::load(device, SOURCE, "swiglu.cu", &NAMES)?,
        })
    }
}

/// Contiguous views of same-shaped, same-dtype tensors, and whether all of them allow
/// 16-byte accesses (element count a multiple of the vector width, 16-byte aligned).
fn same_layout(ts: &[&Tensor]) -> (Vec<Tensor>, i32) {
    let (size, kind) = (ts[0].size(), ts[0].kind());
    let out: Vec<Tensor> = ts
        .iter()
        .map(|t| {
            assert!(
                t.size() == size && t.kind() == kind && t.device() == ts[0].device(),
                "swiglu kernel: operands differ in shape, dtype or device"
            );
            t.contiguous()
        })
        .collect();
    let width = 16 / kind.elt_size_in_bytes() as i64;
    let aligned = out.iter().all(|t| (t.data_ptr() as usize).is_multiple_of(16));
    (out, (ts[0].numel() as i64 % width == 0 && aligned) as i32)
}

impl SwigluKernel for CudaSwiglu {
    fn describe(&self) -> String {
        "SwiGLU kernel (NVRTC)".into()
    }

    fn forward(&self, g: &Tensor, u: &Tensor) -> Tensor {
        let (ops, vec) = same_layout(&[g, u]);
        let a = Tensor::empty(g.size(), (g.kind(), g.device()));
        let (mut gp, mut up, mut ap) = (ptr(&ops[0]), ptr(&ops[1]), ptr(&a));
        let mut n = g.numel() as i64;
        let mut vec = vec;
        let items = if vec == 1 {
            n / (16 / g.kind().elt_size_in_bytes() as i64)
        } else {
            n
        };
        let mut args = kernel_args!(gp, up, ap, n, vec);
        // SAFETY: the arguments match swiglu_fwd_*'s parameters; g, u and a are live contiguous
        // device buffers of n elements (checked above), 16-byte aligned where vec is set.
        unsafe { self.module.launch(2 * dtype_index(g.kind()), items, &mut args) }
            .unwrap_or_else(|e| panic!("swiglu kernel: {e}"));
        a
    }

    fn backward(&self, g: &Tensor, u: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
        let (ops, vec) = same_layout(&[g, u, da]);
        let dg = Tensor::empty(g.size(), (g.kind(), g.device()));
        let du = Tensor::empty(g.size(), (g.kind(), g.device()));
        let (mut gp, mut up, mut dap, mut dgp, mut dup) =
            (ptr(&ops[0]), ptr(&ops[1]), ptr(&ops[2]), ptr(&dg), ptr(&du));
        let mut n = g.numel() as i64;
        let mut vec = vec;
        let items = if vec == 1 {
            n / (16 / g.kind().elt_size_in_bytes() as i64)
        } else {
            n
        };
        let mut args = kernel_args!(gp, up, dap, dgp, dup, n, vec);
        // SAFETY: the arguments match swiglu_bwd_*'s parameters; every buffer is a live
        // contiguous device buffer of n elements (checked above), 16-byte aligned where vec is set.
        unsafe { self.module.launch(2 * dtype_index(g.kind()) + 1, items, &mut args) }
            .unwrap_or_else(|e| panic!("swiglu kernel: {e}"));
        (dg, du)
    }
}

/// Largest difference of `kernel` from [`SwigluAten`] on random operands of `kind` on
/// `device`, relative to the largest value compared: the product, then both gradients. Sizes
/// with and without 16-byte accesses.
pub fn swiglu_kernel_error(kernel: &dyn SwigluKernel, device: tch::Device, kind: Kind) -> (f64, f64) {
    let (mut fwd, mut bwd) = (0.0f64, 0.0f64);
    for n in [4096i64, 4099] {
        let draw = || (Tensor::randn([n], (Kind::Float, device)) * 4.0).to_kind(kind);
        let (g, u, da) = (draw(), draw(), draw());
        fwd = fwd.max(relative_error(&kernel.forward(&g, &u), &SwigluAten.forward(&g, &u)));
        let (dg1, du1) = kernel.backward(&g, &u, &da);
        let (dg2, du2) = SwigluAten.backward(&g, &u, &da);
        bwd = bwd.max(relative_error(&dg1, &dg2)).max(relative_error(&du1, &du2));
    }
    (fwd, bwd)
}

/// Installs the SwiGLU kernel on a CUDA model with the fused ops (the training block then
/// splices its MLP product out of autograd), after checking it against [`SwigluAten`] in the
/// model's dtype; says what runs.
pub fn install_swiglu(model: &mut baichuan_model::Baichuan) -> String {
    let device = model.device();
    if !device.is_cuda() || !model.rotary.fused {
        return "swiglu: ATen ops".into();
    }
    let kernel = match CudaSwiglu::new(device) {
        Ok(k) => k,
        Err(e) => return format!("swiglu: ATen ops ({e})"),
    };
    let kind = model.kind();
    let (fwd, bwd) = swiglu_kernel_error(&kernel, device, kind);
    let tol = kernel_tolerance(kind);
    if fwd > tol || bwd > tol {
        return format!(
            "swiglu: ATen ops (the kernel's check failed: product error {fwd:.1e}, gradient error {bwd:.1e})"
        );
    }
    let what = kernel.describe();
    model.rotary.swiglu = Some(std::sync::Arc::new(kernel));
    format!("swiglu: {what}, checked (product error {fwd:.1e}, gradient {bwd:.1e})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SwiGLU check measures a right operator as right and a wrong one as wrong (on the
    /// CPU with the ATen operator: the check itself needs no GPU).
    #[test]
    fn the_swiglu_check_tells_a_wrong_operator_from_a_right_one() {
        #[derive(Debug)]
        struct Off(f64);
        impl SwigluKernel for Off {
            fn describe(&self) -> String {
                "test".into()
            }
            fn forward(&self, g: &Tensor, u: &Tensor) -> Tensor {
                SwigluAten.forward(g, u) * (1.0 + self.0)
            }
            fn backward(&self, g: &Tensor, u: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
                SwigluAten.backward(g, u, da)
            }
        }
        let (f, b) = swiglu_kernel_error(&Off(0.0), tch::Device::Cpu, Kind::Float);
        assert!(f == 0.0 && b == 0.0, "{f} {b}");
        let (f, _) = swiglu_kernel_error(&Off(1e-3), tch::Device::Cpu, Kind::Float);
        assert!(f > kernel_tolerance(Kind::Float), "{f}");
    }

    #[test]
    fn cpu_models_keep_the_aten_rotation() {
        let c = baichuan_model::ModelConfig::tiny();
        let mut m = baichuan_model::Baichuan::new(&c, tch::Device::Cpu).unwrap();
        assert_eq!(crate::rotary::install_rotary(&mut m), "rotary: ATen ops");
        assert!(m.rotary.kernel.is_none());
        assert_eq!(crate::loss::install_loss(&mut m), "loss: ATen ops");
        assert!(m.loss_kernel.is_none());
        assert_eq!(install_swiglu(&mut m), "swiglu: ATen ops");
        assert!(m.rotary.swiglu.is_none());
    }
}
