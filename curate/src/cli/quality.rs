//! `baichuan quality train` and `quality score`: a fastText-format quality classifier trained on
//! positive and negative documents, and document scores from it. Free of libtorch (the
//! `baichuan-curate` binary uses it); `quality perplexity` is in `perplexity.rs`.

use std::path::PathBuf;

use crate::quality::fasttext::{FastText, TrainArgs as FtArgs};
use crate::quality::{self, ScoreSummary};
use crate::Progress;
use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long, required = true, num_args = 1..)]
    positive: Vec<PathBuf>,
    #[arg(long, required = true, num_args = 1..)]
    negative: Vec<PathBuf>,
    /// Where the model goes (fastText .bin format).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 32)]
    dim: usize,
    #[arg(long, default_value_t = 0.5)]
    lr: f64,
    #[arg(long, default_value_t = 5)]
    epoch: usize,
    #[arg(long, default_value_t = 2)]
    word_ngrams: usize,
    /// Character n-grams from minn to maxn (0 turns them off): what makes Chinese work.
    #[arg(long, default_value_t = 2)]
    minn: usize,
    #[arg(long, default_value_t = 4)]
    maxn: usize,
    #[arg(long, default_value_t = 200_000)]
    bucket: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// At most this many documents per class.
    #[arg(long, default_value_t = 1_000_000)]
    max_docs: usize,
    #[arg(long, default_value = "text")]
    text_key: String,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Directory of `<name>.scores.jsonl` files.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = quality::POSITIVE)]
    label: String,
    #[arg(long, default_value = "text")]
    text_key: String,
    #[arg(long)]
    jobs: Option<usize>,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let positive = quality::read_documents(&a.positive, &a.text_key, a.max_docs).context("reading --positive")?;
    let negative = quality::read_documents(&a.negative, &a.text_key, a.max_docs).context("reading --negative")?;
    let args = FtArgs {
        dim: a.dim,
        lr: a.lr,
        epoch: a.epoch,
        word_ngrams: a.word_ngrams,
        minn: a.minn,
        maxn: a.maxn,
        bucket: a.bucket,
        seed: a.seed,
        ..FtArgs::default()
    };
    let started = std::time::Instant::now();
    let (model, report) = quality::train(&positive, &negative, &args)?;
    model.save(&a.out)?;
    println!(
        "quality: trained on {} positive and {} negative documents in {:.1} s; held-out accuracy {:.3} on {} documents; model {}",
        report.positives,
        report.negatives,
        started.elapsed().as_secs_f64(),
        report.held_out_accuracy,
        report.held_out,
        a.out.display()
    );
    Ok(())
}

pub fn print_summary(s: &ScoreSummary, out: &std::path::Path, what: &str) {
    let [p10, p30, p50, p70, p90] = s.quantiles;
    println!(
        "quality: {} documents in {} files; {what} mean {:.4}, p10 {p10:.4} p30 {p30:.4} p50 {p50:.4} p70 {p70:.4} p90 {p90:.4}; scores in {}",
        s.documents,
        s.files,
        s.mean,
        out.display()
    );
}

pub fn score(a: ScoreArgs) -> Result<()> {
    super::progress::thread_pool(a.jobs)?;
    let model = FastText::load(&a.model)?;
    let progress = Progress::default();
    let summary = super::progress::with_progress(&progress, || {
        quality::score_with_model(&model, &a.label, &a.input, &a.out, &a.text_key, &progress)
    })?;
    print_summary(&summary, &a.out, &format!("P({})", a.label));
    Ok(())
}
