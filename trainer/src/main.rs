//! The `baichuan` command line: parses the arguments and hands them to the subcommand's
//! module under `cli/`, one file per subcommand.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baichuan",
    version,
    about = "Pretrain Baichuan-7B-architecture language models on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML run config (resuming from the latest checkpoint, if any).
    Train(cli::train::TrainArgs),
    /// Start one `train` process per slot of a hostfile (or --nproc local ranks).
    Launch(cli::launch::LaunchArgs),
    /// Benchmark a training step of CONFIG's model on random tokens (or `bench comm`).
    Bench(cli::bench::BenchArgs),
    /// Write a freshly initialised model directory (a seed checkpoint).
    Init(cli::init::InitArgs),
    /// Rewrite a model directory in Baichuan or LLaMA layout, optionally sharded.
    Export(cli::export::ExportArgs),
    /// Generate text from a model directory, streaming tokens as they come.
    Generate(cli::generate::GenerateArgs),
    /// Evaluate a model directory: `eval mc` (C-Eval/MMLU few-shot) or `eval ppl` (perplexity).
    Eval {
        #[command(subcommand)]
        what: cli::eval::EvalCommand,
    },
    /// Train a SentencePiece tokenizer on a corpus, or compare tokenizers (`tokenizer stats`).
    Tokenizer {
        #[command(subcommand)]
        what: cli::tokenizer::TokenizerCommand,
    },
    /// Filter documents and lines by heuristic rules, boilerplate and a quality model.
    Filter(baichuan_curate::cli::filter::FilterArgs),
    /// Train and apply document quality scorers (fastText classifier, model perplexity).
    Quality {
        #[command(subcommand)]
        what: QualityCommand,
    },
    /// Remove exact and near-duplicate documents and sentences (MinHash-LSH), in stages or at once.
    Dedup(baichuan_curate::cli::dedup::DedupArgs),
    /// Plan a scaling sweep (IsoFLOP profiles or an N x D grid) and run it (`sweep plan`, `sweep run`).
    Sweep {
        #[command(subcommand)]
        what: cli::sweep::SweepCommand,
    },
    /// Scaling-law fits of finished runs or a CSV (`scaling fit`).
    Scaling {
        #[command(subcommand)]
        what: cli::scaling::ScalingCommand,
    },
    /// Learn the weights of a `[[data.sources]]` mixture (`mixture doremi`).
    Mixture {
        #[command(subcommand)]
        what: cli::mixture::MixtureCommand,
    },
    /// Plot the metrics of one or more run directories (overlaid) into a PNG.
    Plot(cli::plot::PlotArgs),
    /// Parameter count, FLOPs per token, the per-GPU memory plan and the checkpoint of a config.
    Info(cli::info::InfoArgs),
    /// Tokenize UTF-8 text (one document per line) or JSONL into token shards.
    Prepare(cli::prepare::PrepareArgs),
    /// Encode stdin to ids (or pieces), or decode ids to text.
    Tokenize(cli::tokenize::TokenizeArgs),
}

#[derive(Subcommand)]
enum QualityCommand {
    /// Train a classifier on positive (high-quality) and negative documents (fastText format).
    Train(baichuan_curate::cli::quality::TrainArgs),
    /// Score documents with a fastText model (ours or fastText's own .bin).
    Score(baichuan_curate::cli::quality::ScoreArgs),
    /// Score documents by a baichuan model's perplexity (lower is more like its training data).
    Perplexity(cli::perplexity::PerplexityArgs),
}

fn main() -> Result<()> {
    baichuan_trainer::host_alloc::tune_host_allocator();
    match Cli::parse().command {
        Command::Train(a) => cli::train::run(a),
        Command::Launch(a) => cli::launch::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Init(a) => cli::init::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Generate(a) => cli::generate::run(a),
        Command::Eval { what } => cli::eval::run(what),
        Command::Dedup(a) => baichuan_curate::cli::dedup::run(a),
        Command::Tokenizer { what } => cli::tokenizer::run(what),
        Command::Filter(a) => baichuan_curate::cli::filter::run(a),
        Command::Quality { what } => match what {
            QualityCommand::Train(a) => baichuan_curate::cli::quality::train(a),
            QualityCommand::Score(a) => baichuan_curate::cli::quality::score(a),
            QualityCommand::Perplexity(a) => cli::perplexity::run(a),
        },
        Command::Mixture { what } => cli::mixture::run(what),
        Command::Scaling { what } => cli::scaling::run(what),
        Command::Sweep { what } => cli::sweep::run(what),
        Command::Plot(a) => cli::plot::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Prepare(a) => cli::prepare::run(a),
        Command::Tokenize(a) => cli::tokenize::run(a),
    }
}
