//! `baichuan-curate`: the corpus commands of `baichuan` (`filter`, `dedup`, `quality train`,
//! `quality score`) in a binary that does not load libtorch, for data-processing machines: it
//! needs neither a GPU nor the 4.6 GB torch install, and its memory is the corpus work's alone.
//! The same code runs as `baichuan filter`, `baichuan dedup` and `baichuan quality`.

use anyhow::Result;
use baichuan_curate::cli::{dedup, filter, quality};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baichuan-curate",
    version,
    about = "Filter, score and deduplicate pretraining text (no libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Filter documents and lines by heuristic rules, boilerplate and a quality model.
    Filter(filter::FilterArgs),
    /// Remove exact and near-duplicate documents and sentences (MinHash-LSH).
    Dedup(dedup::DedupArgs),
    /// Train a fastText-format quality classifier, or score documents with one.
    Quality {
        #[command(subcommand)]
        what: QualityCommand,
    },
}

#[derive(Subcommand)]
enum QualityCommand {
    Train(quality::TrainArgs),
    Score(quality::ScoreArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Filter(a) => filter::run(a),
        Command::Dedup(a) => dedup::run(a),
        Command::Quality { what } => match what {
            QualityCommand::Train(a) => quality::train(a),
            QualityCommand::Score(a) => quality::score(a),
        },
    }
}
