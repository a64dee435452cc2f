//! The optimizer: AdamW over the flat parameter buffer, with fp32 master weights and moments
//! for this rank's ZeRO range, global gradient-norm clipping, and on CUDA the fused update
//! kernel of `baichuan-cuda`, or the same update on the host's cores (`host.rs`: CPU runs and
//! optimizer offload). The learning-rate schedule is `schedule.rs`.

mod adamw;
pub mod host;

pub use adamw::{AdamWParams, FlatAdamW};
