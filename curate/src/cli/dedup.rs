//! `baichuan dedup`: exact and MinHash-LSH near-duplicate removal at document and sentence
//! level (baichuan-curate's `dedup`), on one machine with threads, or one stage of a
//! multi-machine run as task I of N (flags, SLURM array or RANK/WORLD_SIZE).

use std::path::PathBuf;

use crate::dedup::minhash::{optimal_banding, LshParams};
use crate::dedup::{self, DedupOptions, Level, Stage};
use crate::Progress;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum LevelArg {
    Document,
    Sentence,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum StageArg {
    Signatures,
    Buckets,
    Clusters,
    Write,
}

#[derive(Args)]
pub struct DedupArgs {
    /// Files or directories (.txt one document per line, .jsonl with --text-key).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Output directory: survivors under the input names, removed/, stats.json, manifest.json.
    #[arg(long)]
    out: PathBuf,
    /// Granularity: whole documents, sentences across documents, or documents then sentences.
    #[arg(long, value_enum, default_value = "document")]
    level: LevelArg,
    /// Jaccard threshold: choose bands x rows for it as datasketch does (250 permutations
    /// unless --num-perm). Default: datatrove's 14 bands x 8 rows.
    #[arg(long)]
    threshold: Option<f64>,
    /// Shingle size in units (words; each CJK character is a unit).
    #[arg(long, default_value_t = 5)]
    ngram: usize,
    #[arg(long)]
    num_perm: Option<usize>,
    #[arg(long, requires = "rows")]
    bands: Option<usize>,
    #[arg(long, requires = "bands")]
    rows: Option<usize>,
    /// Seed of the permutations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sentences with fewer units are left alone (sentence level).
    #[arg(long, default_value_t = 10)]
    min_sentence_units: usize,
    /// Keep the work directory (signatures, edges, clusters) after a one-machine run.
    #[arg(long)]
    keep_work: bool,
    /// Run one stage as one task of a multi-machine run (all tasks of a stage finish before
    /// the next stage starts; clusters is a single task).
    #[arg(long, value_enum)]
    stage: Option<StageArg>,
    #[command(flatten)]
    run: super::RunArgs,
}

/// The banding the flags ask for.
fn lsh_params(a: &DedupArgs) -> Result<LshParams> {
    let base = LshParams {
        ngram: a.ngram,
        seed: a.seed,
        ..LshParams::DEFAULT
    };
    let p = match (a.bands.zip(a.rows), a.threshold) {
        (Some((bands, rows)), _) => LshParams {
            bands,
            rows,
            num_perm: a.num_perm.unwrap_or(bands * rows),
            ..base
        },
        (None, Some(t)) => {
            if !(0.0..=1.0).contains(&t) {
                bail!("--threshold {t} is not a Jaccard similarity; HINT: pass a value in (0, 1), e.g. 0.7");
            }
            let num_perm = a.num_perm.unwrap_or(250);
            let (bands, rows) = optimal_banding(t, num_perm);
            LshParams {
                bands,
                rows,
                num_perm,
                ..base
            }
        }
        (None, None) => match a.num_perm {
            Some(num_perm) if num_perm != base.num_perm => {
                let (bands, rows) = optimal_banding(0.7, num_perm);
                LshParams {
                    bands,
                    rows,
                    num_perm,
                    ..base
                }
            }
            _ => base,
        },
    };
    p.validate()?;
    Ok(p)
}

pub fn run(a: DedupArgs) -> Result<()> {
    super::progress::thread_pool(a.run.jobs)?;
    let lsh = lsh_params(&a)?;
    let opts = DedupOptions {
        level: match a.level {
            LevelArg::Document => Level::Document,
            LevelArg::Sentence => Level::Sentence,
            LevelArg::Both => Level::Both,
        },
        lsh,
        min_sentence_units: a.min_sentence_units,
        text_key: a.run.text_key.clone(),
        memory_mb: a.run.memory_mb,
    };
    let half = (1.0 - 0.5f64.powf(1.0 / lsh.bands as f64)).powf(1.0 / lsh.rows as f64);
    println!(
        "dedup: {}-gram shingles, {} permutations, {} bands x {} rows (a pair at Jaccard {half:.2} is found half the time); level {:?}",
        lsh.ngram, lsh.num_perm, lsh.bands, lsh.rows, opts.level
    );
    let progress = Progress::default();
    let Some(stage) = a.stage else {
        let outcome = super::progress::with_progress(&progress, || {
            dedup::run(&opts, &a.input, &a.out, a.run.force, a.keep_work, &progress)
        })
        .with_context(|| format!("dedup into {}", a.out.display()))?;
        if outcome.up_to_date {
            println!(
                "dedup: {} is up to date; nothing to do (--force redoes it)",
                a.out.display()
            );
        }
        print!("{}", outcome.stats.summary());
        println!(
            "dedup: survivors in {}, removed text and reasons in {}",
            a.out.display(),
            a.out.join("removed").display()
        );
        return Ok(());
    };
    let task = a.run.task()?;
    let stage = match stage {
        StageArg::Signatures => Stage::Signatures,
        StageArg::Buckets => Stage::Buckets,
        StageArg::Clusters => Stage::Clusters,
        StageArg::Write => Stage::Write,
    };
    let work = a.run.work.clone().unwrap_or_else(|| a.out.join("work"));
    println!(
        "dedup: stage {stage:?}, task {} of {}, work directory {}",
        task.index,
        task.count,
        work.display()
    );
    let stats = super::progress::with_progress(&progress, || {
        dedup::run_stage(&opts, stage, task, &a.input, &a.out, &work, &progress)
    })
    .with_context(|| format!("dedup stage {stage:?} (task {} of {})", task.index, task.count))?;
    if let Some(stats) = stats {
        print!("{}", stats.summary());
        println!(
            "dedup: every write task has finished; stats in {}",
            a.out.join("stats.json").display()
        );
    }
    Ok(())
}
