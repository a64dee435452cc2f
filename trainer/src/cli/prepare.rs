//! `baichuan prepare`: text or JSONL tokenized once into versioned token shards.

use std::path::PathBuf;

use anyhow::Result;
use baichuan_data::prepare::{prepare, PrepareOptions};
use baichuan_data::Tokenizer;
use baichuan_trainer::dataset;
use clap::Args;

#[derive(Args)]
pub struct PrepareArgs {
    /// Files or directories (.txt and .jsonl files are taken from directories).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// JSONL field holding the document.
    #[arg(long, default_value = "text")]
    text_key: String,
    /// Tokenizing threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Tokens per shard.
    #[arg(long, default_value_t = 1 << 28)]
    shard_tokens: u64,
    /// MiB of text per work item.
    #[arg(long, default_value_t = 4)]
    chunk_mb: usize,
    /// Redo even if the output is up to date.
    #[arg(long)]
    force: bool,
    /// Stop when more than this fraction of the lines is not valid UTF-8 (not text).
    #[arg(long, default_value_t = 0.1)]
    max_invalid_fraction: f64,
}

pub fn run(a: PrepareArgs) -> Result<()> {
    let tok = Tokenizer::open(&a.tokenizer)?;
    let mut opts = PrepareOptions::new(a.input, a.out.clone());
    opts.text_key = a.text_key;
    if let Some(j) = a.jobs {
        opts.jobs = j.max(1);
    }
    opts.shard_tokens = a.shard_tokens.max(1);
    opts.chunk_bytes = a.chunk_mb.max(1) << 20;
    opts.force = a.force;
    opts.max_invalid_fraction = a.max_invalid_fraction;
    let bar = dataset::byte_bar(0, "tokenizing");
    let summary = prepare(&tok, &opts, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    dataset::print_summary(&summary, &a.out);
    Ok(())
}
