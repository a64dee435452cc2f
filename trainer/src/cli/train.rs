//! `baichuan train`: one rank of a training run (a single process is a world of one).

use std::path::PathBuf;

use anyhow::Result;
use baichuan_trainer::checkpoint::Resume;
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::{train, TrainOptions};
use clap::Args;

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. --set train.lr=1e-3 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Resume from this checkpoint directory instead of checkpoint.dir's latest.
    #[arg(long, conflicts_with = "no_resume")]
    resume: Option<PathBuf>,
    /// Start from scratch even if checkpoints exist.
    #[arg(long)]
    no_resume: bool,
    /// Save a checkpoint and stop after this step (as a preemption would).
    #[arg(long)]
    stop_after: Option<u64>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.config, &a.overrides)?;
    let resume = match (a.resume, a.no_resume) {
        (Some(path), _) => Resume::From(path),
        (None, true) => Resume::No,
        (None, false) => Resume::Latest,
    };
    let summary = train(
        &cfg,
        &TrainOptions {
            resume,
            stop_after: a.stop_after,
        },
    )?;
    if let (true, Some(first), Some(last)) = (summary.main, summary.losses.first(), summary.losses.last()) {
        let last_step = summary.first_step + summary.losses.len() as u64 - 1;
        println!(
            "loss: {first:.4} at step {} -> {last:.4} at step {last_step}",
            summary.first_step
        );
    }
    if summary.preempted {
        if summary.main {
            println!(
                "stopped by SIGTERM at step {} of {}: the checkpoint is saved; exiting with {} so the scheduler \
                 requeues the job (the same command resumes it)",
                summary.first_step + summary.losses.len() as u64 - 1,
                cfg.train.steps,
                baichuan_trainer::trainer::EXIT_PREEMPTED
            );
        }
        std::process::exit(baichuan_trainer::trainer::EXIT_PREEMPTED);
    }
    Ok(())
}
