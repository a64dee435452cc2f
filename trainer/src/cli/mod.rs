//! The subcommands of `baichuan`, one file each: its arguments (clap) and what it runs.
//! Errors carry context naming the file or flag at fault (anyhow), and end with a HINT where a
//! fix is known. Helpers shared by several subcommands live here.

pub mod bench;
pub mod eval;
pub mod export;
pub mod generate;
pub mod info;
pub mod init;
pub mod launch;
pub mod mixture;
pub mod perplexity;
pub mod plot;
pub mod prepare;
pub mod scaling;
pub mod sweep;
pub mod tokenize;
pub mod tokenizer;
pub mod train;

use std::path::Path;

use anyhow::{Context, Result};
use baichuan_data::Tokenizer;
use baichuan_model::{hf, Baichuan};
use baichuan_trainer::config::DeviceChoice;
use tch::{Device, Kind};

/// Refuses to write a model into `out` when it already holds one (trained weights are not
/// overwritten by accident), unless `force`.
pub fn refuse_to_overwrite_model(out: &Path, force: bool) -> Result<()> {
    let existing = ["config.json", "model.safetensors", "model.safetensors.index.json"]
        .iter()
        .find(|f| out.join(f).exists());
    if let (Some(f), false) = (existing, force) {
        anyhow::bail!(
            "--out {} already holds a model ({f}); writing there would replace its weights. HINT: choose another \
             --out, or pass --force to overwrite it",
            out.display()
        );
    }
    Ok(())
}

/// Loads a model directory with its tokenizer onto `device` (bf16 on CUDA, fp32 on the CPU),
/// for inference.
pub fn load_for_inference(model: &Path, device: DeviceChoice) -> Result<(Baichuan, Tokenizer)> {
    let tokenizer = Tokenizer::open(&model.join(hf::TOKENIZER_FILE))
        .with_context(|| format!("{}: the model directory needs its tokenizer.model", model.display()))?;
    let mut m = hf::load_pretrained(model, Device::Cpu).with_context(|| format!("loading {}", model.display()))?;
    let bad: Vec<String> = m
        .named_parameters()
        .iter()
        .filter(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        .map(|(n, _)| n.clone())
        .collect();
    if !bad.is_empty() {
        eprintln!(
            "warning: {}: {} weight tensor(s) hold NaN or infinite values ({}{}): the model's output is meaningless; \
             HINT: use an earlier checkpoint of the run",
            model.display(),
            bad.len(),
            bad.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if bad.len() > 3 { ", ..." } else { "" }
        );
    }
    let device = device.resolve().context("--device")?;
    m.to(device, if device.is_cuda() { Kind::BFloat16 } else { Kind::Float });
    Ok((m, tokenizer))
}
