//! `baichuan info`: parameter count, FLOPs per token, the per-GPU memory plan and the
//! checkpoint's size and write time of a config, from its shapes alone.

use std::path::PathBuf;

use anyhow::{bail, Result};
use baichuan_trainer::config::{Precision, RunConfig};
use baichuan_trainer::tools::memory_plan::{report, PlanInput};
use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long, default_value_t = 8)]
    world_size: u64,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: Precision,
    #[arg(long, default_value_t = 1)]
    zero_stage: u8,
    #[arg(long)]
    activation_checkpointing: bool,
    /// With --activation-checkpointing: recompute every N-th block only (1: every block).
    #[arg(long, default_value_t = 1)]
    checkpoint_every: u64,
    /// Plan the optimizer state in host memory (`train.optimizer_offload = "cpu"`).
    #[arg(long)]
    offload: bool,
    /// GB/s one rank writes to the checkpoint directory, for the checkpoint's write time
    /// (`scripts/bench_checkpoint.sh` measures this machine's).
    #[arg(long, default_value_t = 1.0)]
    write_gbps: f64,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.config, &a.overrides)?;
    let model = cfg.model.resolve()?;
    if a.zero_stage > 2 {
        bail!("--zero-stage {}: stages 0, 1 and 2 are supported", a.zero_stage);
    }
    if a.checkpoint_every == 0 {
        bail!("--checkpoint-every 0: must be at least 1 (1 recomputes every block)");
    }
    if a.write_gbps <= 0.0 {
        bail!("--write-gbps {}: must be positive", a.write_gbps);
    }
    let input = PlanInput {
        world_size: a.world_size,
        param_bytes: a.dtype.kind().elt_size_in_bytes() as u64,
        zero_stage: a.zero_stage,
        activation_checkpointing: a.activation_checkpointing,
        checkpoint_every: a.checkpoint_every,
        offload: a.offload,
        micro_batch_size: cfg.train.micro_batch_size as u64,
        seq_len: cfg.data.seq_len as u64,
        loss_chunk_tokens: cfg.train.loss_chunk_tokens as u64,
        write_bytes_per_s: a.write_gbps * 1e9,
    };
    print!("{}", report(&model, &input));
    Ok(())
}
