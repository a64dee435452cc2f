//! `baichuan quality`: train a fastText-format quality classifier, score documents with it, or
//! score them by a baichuan model's perplexity (CCNet's approach), on the GPU when there is one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baichuan_curate::quality::fasttext::{FastText, TrainArgs as FtArgs};
use baichuan_curate::quality::{self, ScoreSummary};
use baichuan_curate::Progress;
use baichuan_trainer::config::DeviceChoice;
use clap::{Args, Subcommand};
use tch::Tensor;

#[derive(Subcommand)]
pub enum QualityCommand {
    /// Train a classifier: positive (high-quality) and negative documents.
    Train(TrainArgs),
    /// Score documents with a fastText model (ours or fastText's own .bin).
    Score(ScoreArgs),
    /// Score documents by a baichuan model's perplexity (lower is more like its training data).
    Perplexity(PerplexityArgs),
}

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

pub fn run(what: QualityCommand) -> Result<()> {
    match what {
        QualityCommand::Train(a) => train(a),
        QualityCommand::Score(a) => score(a),
        QualityCommand::Perplexity(a) => perplexity(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
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

fn print_summary(s: &ScoreSummary, out: &std::path::Path, what: &str) {
    let [p10, p30, p50, p70, p90] = s.quantiles;
    println!(
        "quality: {} documents in {} files; {what} mean {:.4}, p10 {p10:.4} p30 {p30:.4} p50 {p50:.4} p70 {p70:.4} p90 {p90:.4}; scores in {}",
        s.documents,
        s.files,
        s.mean,
        out.display()
    );
}

fn score(a: ScoreArgs) -> Result<()> {
    super::thread_pool(a.jobs)?;
    let model = FastText::load(&a.model)?;
    let progress = Progress::default();
    let summary = super::with_progress(&progress, || {
        quality::score_with_model(&model, &a.label, &a.input, &a.out, &a.text_key, &progress)
    })?;
    print_summary(&summary, &a.out, &format!("P({})", a.label));
    Ok(())
}

fn perplexity(a: PerplexityArgs) -> Result<()> {
    let (model, tok) = super::load_for_inference(&a.model, a.device)?;
    let context = model.config.max_position_embeddings as usize;
    let max_tokens = a.max_tokens.unwrap_or(context);
    if max_tokens < 2 || max_tokens > context {
        bail!("--max-tokens {max_tokens}: must be 2..={context} (the model's context)");
    }
    let bos = model.config.bos_token_id as u32;
    let progress = Progress::default();
    let summary = super::with_progress(&progress, || {
        quality::write_scores(&a.input, &a.out, &a.text_key, &progress, |docs| {
            let mut scores = Vec::with_capacity(docs.len());
            for d in docs {
                // BOS then the document: every token of the document is predicted.
                let mut ids = vec![bos];
                ids.extend(tok.encode(&d.text).map_err(|e| baichuan_curate::CurateError::Options(e.to_string()))?);
                ids.truncate(max_tokens);
                if ids.len() < 2 {
                    scores.push(f64::NAN);
                    continue;
                }
                let ids: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
                let tokens = Tensor::from_slice(&ids).view([1, ids.len() as i64]).to_device(model.device());
                let loss = baichuan_trainer::step::eval_loss(&model, &tokens, 4096);
                scores.push(loss.exp());
            }
            Ok(scores)
        })
    })?;
    print_summary(&summary, &a.out, "perplexity");
    Ok(())
}
