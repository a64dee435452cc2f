//! `baichuan quality perplexity`: each document's perplexity under a baichuan model directory
//! (CCNet's quality signal, Wenzek et al. 2020: low perplexity under a model of clean text), on
//! the GPU when there is one. Writes the same score files as `quality score`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use baichuan_curate::{quality, Progress};
use baichuan_trainer::config::DeviceChoice;
use clap::Args;
use tch::Tensor;

#[derive(Args)]
pub struct PerplexityArgs {
    /// A baichuan model directory (`init`, `train` or `export` output).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Tokens scored per document (default: the model's context).
    #[arg(long)]
    max_tokens: Option<usize>,
    #[arg(long, default_value = "text")]
    text_key: String,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let (model, tok) = super::load_for_inference(&a.model, a.device)?;
    let context = model.config.max_position_embeddings as usize;
    let max_tokens = a.max_tokens.unwrap_or(context);
    if max_tokens < 2 || max_tokens > context {
        bail!("--max-tokens {max_tokens}: must be 2..={context} (the model's context)");
    }
    let bos = model.config.bos_token_id as u32;
    let progress = Progress::default();
    let summary = baichuan_curate::cli::progress::with_progress(&progress, || {
        quality::write_scores(&a.input, &a.out, &a.text_key, &progress, |docs| {
            let mut scores = Vec::with_capacity(docs.len());
            for d in docs {
                // BOS then the document: every token of the document is predicted.
                let mut ids = vec![bos];
                ids.extend(
                    tok.encode(&d.text)
                        .map_err(|e| baichuan_curate::CurateError::Options(e.to_string()))?,
                );
                ids.truncate(max_tokens);
                if ids.len() < 2 {
                    scores.push(f64::NAN);
                    continue;
                }
                let ids: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
                let tokens = Tensor::from_slice(&ids)
                    .view([1, ids.len() as i64])
                    .to_device(model.device());
                let loss = baichuan_trainer::step::eval_loss(&model, &tokens, 4096, None);
                scores.push(loss.exp());
            }
            Ok(scores)
        })
    })?;
    baichuan_curate::cli::quality::print_summary(&summary, &a.out, "perplexity");
    Ok(())
}
