//! `baichuan-trainer`: everything around the model that makes a training run. The `baichuan`
//! binary (main.rs, cli/) is a thin command line over these modules; docs/ARCHITECTURE.md maps
//! them and the data flow between them.
//!
//! - the run: [`config`] (the typed TOML run config), [`dataset`] (a run's data),
//!   [`trainer`] (`Trainer` and the loop), [`step`] (one micro-batch through the layer-wise
//!   schedule), [`guard`] (loss scaler, bad steps), [`schedule`] (learning rate)
//! - the state: [`flat`] (the flat parameter layout), [`optim`] (AdamW), [`checkpoint`],
//!   [`runlock`] (one run per run directory), [`sigterm`] (preemption as a flag)
//! - many processes: [`dist`] (environment, store, communicators, gradient buckets, launcher,
//!   watchdog)
//! - around the run: [`metrics`], [`eval`], [`tools`] (bench, breakdown, memory plan, DoReMi),
//!   [`scaling`] (scaling-law fits), [`sweep`] (planning scaling sweeps)

pub mod checkpoint;
pub mod config;
pub mod dataset;
pub mod dist;
pub mod eval;
pub mod flat;
pub mod guard;
pub mod host_alloc;
pub mod metrics;
pub mod optim;
pub mod runlock;
pub mod scaling;
pub mod scaling_plot;
pub mod schedule;
pub mod sigterm;
pub mod step;
pub mod sweep;
pub mod tools;
pub mod trainer;

pub use trainer::{train, TrainOptions, TrainSummary, Trainer};
