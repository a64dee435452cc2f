//! Pinned (page-locked) host tensors allocated directly (`model/csrc/pinned.cpp`), as
//! `torch.empty(n, pin_memory=True)`: the GPU copies to and from them asynchronously, and,
//! unlike tch's `pin_memory` (a copy of an existing tensor), they need no ordinary host buffer
//! of the same size first. Needs CUDA: elsewhere libtorch's error comes back.

use std::ffi::{c_char, c_int};

use tch::{Kind, TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn baichuan_empty_pinned(
        numel: i64,
        dtype: c_int,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// c10's `ScalarType` code of the floating kinds offload uses.
fn scalar_type(kind: Kind) -> Result<c_int, TchError> {
    Ok(match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::BFloat16 => 15,
        other => return Err(TchError::Kind(format!("pinned buffers of {other:?} are not supported"))),
    })
}

/// A zeroed 1-D pinned host tensor of `numel` elements of `kind` (a floating kind).
pub fn zeros_pinned(numel: i64, kind: Kind) -> Result<Tensor, TchError> {
    let dtype = scalar_type(kind)?;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut err = [0 as c_char; 512];
    // SAFETY: the shim writes one new handle into `out` on success (which we then own) and at
    // most `err.len()` bytes into `err`.
    let rc = unsafe { baichuan_empty_pinned(numel, dtype, &mut out, err.as_mut_ptr(), err.len()) };
    if rc != 0 {
        // SAFETY: the shim NUL-terminates the message within the buffer
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(TchError::Torch(msg.to_string_lossy().into_owned()));
    }
    // SAFETY: on success `out` is a fresh `at::Tensor*` that nothing else owns
    let mut t = unsafe { Tensor::from_ptr(out) };
    let _ = t.zero_();
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without CUDA the allocation is libtorch's error, returned, not a crash.
    #[test]
    fn without_cuda_pinning_is_an_error() {
        if tch::Cuda::is_available() {
            eprintln!("not run here: this machine has CUDA (pinned_tensors_on_cuda covers it)");
            return;
        }
        let e = zeros_pinned(1000, Kind::Float).expect_err("no CUDA, no pinned memory");
        assert!(!e.to_string().is_empty());
        assert!(zeros_pinned(10, Kind::Int64).is_err());
    }

    /// A zeroed pinned tensor of the asked size and dtype (scripts/gpu_check.sh runs it).
    #[test]
    #[ignore = "needs CUDA (scripts/gpu_check.sh runs it: GPU_CHECK_ONLY=7b)"]
    fn pinned_tensors_on_cuda() {
        let t = zeros_pinned(1000, Kind::BFloat16).unwrap();
        assert_eq!((t.size(), t.kind()), (vec![1000], Kind::BFloat16));
        assert!(t.is_pinned(tch::Device::Cuda(0)));
        assert_eq!(t.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
