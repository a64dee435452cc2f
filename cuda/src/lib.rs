//! `baichuan-cuda`: everything that talks to CUDA below libtorch.
//!
//! - [`loader`]: the one library search (the dynamic linker, then the folders of pip's CUDA
//!   wheels beside the loaded libtorch) and the one symbol macro, for libcuda, NVRTC and NCCL.
//! - [`driver`]: the CUDA driver and NVRTC entry points, compiling kernel sources to PTX, and
//!   [`driver::Module`], which loads compiled kernels and launches them on libtorch's stream.
//! - [`nccl`]: the NCCL entry points (the communicator built on them is the trainer's
//!   `dist::nccl`).
//! - The kernels, each a `.cu` file under `cuda/kernels/` compiled at run time by NVRTC, with
//!   its host side here: [`adamw`] (the fused AdamW update), [`rotary`], [`loss`] and
//!   [`swiglu`] (the model's `RotaryKernel`, `LossKernel` and `SwigluKernel`, each checked
//!   against its ATen form on the device before it is installed).
//!
//! Every library is opened with `dlopen`, so this crate builds and its tests run on machines
//! without CUDA; what needs a GPU reports itself unavailable, with the reason. The kernels take
//! plain numbers and tensors: this crate knows nothing of the optimizer or the trainer.
//! See docs/ARCHITECTURE.md for where each kernel slots into the training step.

pub mod adamw;
mod check;
pub mod driver;
pub mod loader;
pub mod loss;
pub mod nccl;
pub mod rotary;
pub mod swiglu;

pub use check::{kernel_tolerance, relative_error};

/// Why something CUDA could not be done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    /// A library, a device or a buffer layout the kernel needs is not there (the caller falls
    /// back to ATen ops, or reports the reason).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A driver, NVRTC or NCCL call failed.
    #[error("{0}")]
    Call(String),
}
