//! `baichuan init`: a freshly initialised model directory (a seed checkpoint).

use std::path::PathBuf;

use anyhow::Result;
use baichuan_model::{hf, Baichuan, Layout};
use baichuan_trainer::config::{Precision, RunConfig};
use clap::Args;
use tch::Device;

#[derive(Args)]
pub struct InitArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: Precision,
    /// Overwrite a model already in --out.
    #[arg(long)]
    force: bool,
}

pub fn run(a: InitArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.config, &a.overrides)?;
    let resolved = cfg.validate(1)?;
    super::refuse_to_overwrite_model(&a.out, a.force)?;
    tch::manual_seed(cfg.job.seed as i64);
    let model = Baichuan::new(&resolved.model, Device::Cpu)?;
    hf::save_pretrained(&model, &a.out, Layout::Baichuan, a.dtype.kind(), None)?;
    if cfg.data.tokenizer.exists() {
        hf::copy_tokenizer(&cfg.data.tokenizer, &a.out)?;
    } else {
        eprintln!(
            "warning: tokenizer {} not found; the model directory has none",
            cfg.data.tokenizer.display()
        );
    }
    println!(
        "wrote a freshly initialised model ({} parameters) to {}",
        resolved.model.num_parameters(),
        a.out.display()
    );
    Ok(())
}
