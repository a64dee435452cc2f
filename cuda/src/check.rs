//! What the kernels share on the host: the dtype index of their per-dtype entry points, raw
//! device pointers, and how a kernel is compared with its ATen reference before it is installed.

use std::ffi::c_void;

use tch::{Kind, Tensor};

/// The position of `kind` among each kernel's per-dtype entry points (bf16, fp16, fp32).
pub(crate) fn dtype_index(kind: Kind) -> usize {
    match kind {
        Kind::BFloat16 => 0,
        Kind::Half => 1,
        Kind::Float => 2,
        other => panic!("CUDA kernel: activations in {other:?} (bf16, fp16 or fp32 expected)"),
    }
}

pub(crate) fn ptr(t: &Tensor) -> *mut c_void {
    t.data_ptr()
}

/// Largest absolute difference relative to the largest magnitude of `b`; NaN anywhere counts
/// as infinite.
pub fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    let d = (&a - &b).abs().max().double_value(&[]);
    if d.is_nan() {
        f64::INFINITY
    } else {
        d / scale
    }
}

/// Tolerance of a kernel against its fp32 ATen reference in `kind`: one rounding apart.
pub fn kernel_tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => 1e-2,
        Kind::Half => 2e-3,
        _ => 1e-5,
    }
}
