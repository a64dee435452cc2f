//! `baichuan export`: a model directory rewritten in Baichuan or LLaMA layout, in a dtype,
//! optionally sharded.

use std::path::PathBuf;

use anyhow::{Context, Result};
use baichuan_model::{hf, Layout};
use baichuan_trainer::config::Precision;
use clap::{Args, ValueEnum};
use tch::Device;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Fused W_pack, as Baichuan-7B is published.
    Baichuan,
    /// Separate q/k/v: loads in transformers' LlamaForCausalLM without custom code.
    Llama,
}

#[derive(Args)]
pub struct ExportArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "baichuan")]
    format: Format,
    #[arg(long, value_enum, default_value = "fp32")]
    dtype: Precision,
    /// Largest shard in bytes (suffixes KB, MB, GB); one file when omitted.
    #[arg(long)]
    max_shard_size: Option<String>,
    /// Overwrite a model already in --out (never the --model directory itself).
    #[arg(long)]
    force: bool,
}

/// Parses a byte size such as `5GB`, `300MB`, `1024`.
fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_uppercase();
    let (num, mult) = [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)]
        .iter()
        .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim().to_string(), *m)))
        .unwrap_or((t.clone(), 1));
    let value: f64 = num
        .parse()
        .with_context(|| format!("--max-shard-size {text:?}: expected e.g. 5GB"))?;
    Ok((value * mult as f64) as u64)
}

pub fn run(a: ExportArgs) -> Result<()> {
    let same = match (std::fs::canonicalize(&a.model), std::fs::canonicalize(&a.out)) {
        (Ok(m), Ok(o)) => m == o,
        _ => false,
    };
    if same {
        anyhow::bail!(
            "--out {} is the --model directory: the export would overwrite the weights it reads; HINT: export to \
             another directory",
            a.out.display()
        );
    }
    super::refuse_to_overwrite_model(&a.out, a.force)?;
    let m = hf::load_pretrained(&a.model, Device::Cpu).with_context(|| format!("loading {}", a.model.display()))?;
    let shard = a.max_shard_size.as_deref().map(parse_size).transpose()?;
    let layout = match a.format {
        Format::Baichuan => Layout::Baichuan,
        Format::Llama => Layout::Llama,
    };
    hf::save_pretrained(&m, &a.out, layout, a.dtype.kind(), shard)?;
    let tok = a.model.join(hf::TOKENIZER_FILE);
    if tok.exists() {
        hf::copy_tokenizer(&tok, &a.out)?;
    }
    println!("exported {} to {}", a.model.display(), a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("5GB").unwrap(), 5 << 30);
        assert_eq!(parse_size("300 mb").unwrap(), 300 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("five").is_err());
    }
}
