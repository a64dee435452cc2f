//! `baichuan-trainer`: everything around the model that makes a training run: the typed run
//! config, the layer-wise training step, the flat AdamW, metrics, the memory planner and the
//! training loop. The `baichuan` binary (main.rs) is a thin CLI over these modules.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod dist;
pub mod eval;
pub mod fused;
pub mod host_alloc;
pub mod info;
pub mod kernels;
pub mod launch;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod profile;
pub mod step;
pub mod tensorboard;
pub mod train;
pub mod watchdog;
