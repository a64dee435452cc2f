//! `baichuan filter`: heuristic rules, cross-document boilerplate and a fastText quality gate
//! (baichuan-curate's `filter`), on one machine with threads or one stage of a multi-machine run.

use std::path::PathBuf;

use crate::filter::{self, FilterConfig, FilterOptions, Stage};
use crate::Progress;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum StageArg {
    Lines,
    Boilerplate,
    Filter,
}

#[derive(Args)]
pub struct FilterArgs {
    /// Files or directories (.txt one document per line, .jsonl with --text-key).
    #[arg(long, required_unless_present = "print_config", num_args = 1..)]
    input: Vec<PathBuf>,
    /// Output directory: survivors under the input names, removed/, stats.json, manifest.json.
    #[arg(long, required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Rules and thresholds (TOML; unknown keys are errors). Default: every rule on with the
    /// published thresholds (see --print-config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the default config, with where each threshold comes from, and exit.
    #[arg(long)]
    print_config: bool,
    /// fastText model scoring documents (overrides quality.model).
    #[arg(long)]
    quality_model: Option<PathBuf>,
    /// Drop documents whose quality score is below this (overrides quality.min_score).
    #[arg(long)]
    min_score: Option<f64>,
    /// The label whose probability is the score (overrides quality.label).
    #[arg(long)]
    quality_label: Option<String>,
    /// Run one stage as one task of a multi-machine run: lines (all tasks), boilerplate (one
    /// task), filter (all tasks).
    #[arg(long, value_enum)]
    stage: Option<StageArg>,
    #[command(flatten)]
    run: super::RunArgs,
}

pub fn run(a: FilterArgs) -> Result<()> {
    if a.print_config {
        print!("{}", filter::rules::default_toml());
        return Ok(());
    }
    let out = a.out.clone().context("--out is required")?;
    super::progress::thread_pool(a.run.jobs)?;
    let mut config = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            FilterConfig::from_toml_str(&text, p)?
        }
        None => FilterConfig::default(),
    };
    if let Some(m) = &a.quality_model {
        config.quality.model = Some(m.clone());
    }
    if let Some(s) = a.min_score {
        config.quality.min_score = s;
    }
    if let Some(l) = &a.quality_label {
        config.quality.label = l.clone();
    }
    if a.min_score.is_some() && config.quality.model.is_none() {
        anyhow::bail!("--min-score needs a model; HINT: pass --quality-model MODEL (from `baichuan quality train`)");
    }
    let opts = FilterOptions {
        config,
        text_key: a.run.text_key.clone(),
        memory_mb: a.run.memory_mb,
    };
    let progress = Progress::default();
    let Some(stage) = a.stage else {
        let outcome =
            super::progress::with_progress(&progress, || filter::run(&opts, &a.input, &out, a.run.force, &progress))
                .with_context(|| format!("filter into {}", out.display()))?;
        if outcome.up_to_date {
            println!(
                "filter: {} is up to date; nothing to do (--force redoes it)",
                out.display()
            );
        } else if opts.config.boilerplate.enabled {
            println!(
                "filter: {} boilerplate lines (in at least {} documents)",
                outcome.boilerplate_lines, opts.config.boilerplate.min_documents
            );
        }
        print!("{}", outcome.stats.summary());
        println!(
            "filter: survivors in {}, removed text and reasons in {}",
            out.display(),
            out.join("removed").display()
        );
        return Ok(());
    };
    let task = a.run.task()?;
    let stage = match stage {
        StageArg::Lines => Stage::Lines,
        StageArg::Boilerplate => Stage::Boilerplate,
        StageArg::Filter => Stage::Filter,
    };
    let work = a.run.work.clone().unwrap_or_else(|| out.join("work"));
    println!(
        "filter: stage {stage:?}, task {} of {}, work directory {}",
        task.index,
        task.count,
        work.display()
    );
    let stats = super::progress::with_progress(&progress, || {
        filter::run_stage(&opts, stage, task, &a.input, &out, &work, &progress)
    })
    .with_context(|| format!("filter stage {stage:?} (task {} of {})", task.index, task.count))?;
    if let Some(stats) = stats {
        print!("{}", stats.summary());
        println!(
            "filter: every filter task has finished; stats in {}",
            out.join("stats.json").display()
        );
    }
    Ok(())
}
