//! `baichuan-model`: the Baichuan-7B architecture (a LLaMA-style decoder) on libtorch via
//! `tch`, its presets and parameter accounting, Hugging Face weight import/export, and
//! KV-cache generation. Knows nothing of ranks, buckets or loss scaling: the trainer wraps it.

pub mod autograd;
pub mod baichuan;
pub mod config;
pub mod documents;
pub mod generate;
pub mod hf;
pub mod pinned;

pub use baichuan::{Baichuan, Block, KvCache};
pub use config::{Layout, ModelConfig};
pub use documents::{DocAttention, Documents};

/// Errors of the model crate; each message names the file or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("{file}: {msg}")]
    Format { file: String, msg: String },
    #[error("{0}")]
    Io(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
