//! `baichuan train`: one rank of a training run (a single process is a world of one).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baichuan_trainer::checkpoint::{read_manifest, Parent, Resume};
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::schedule::Schedule;
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
    /// Start a decay branch from this checkpoint of a "wsd" or "constant" run's stable phase,
    /// in this config's own run directory (with --decay-steps).
    #[arg(long, requires = "decay_steps", conflicts_with_all = ["resume", "no_resume"])]
    decay_from: Option<PathBuf>,
    /// The decay branch's length in steps: it ends at the checkpoint's step plus this.
    #[arg(long, requires = "decay_from")]
    decay_steps: Option<u64>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut cfg = RunConfig::load(&a.config, &a.overrides)?;
    let mut resume = match (a.resume, a.no_resume) {
        (Some(path), _) => Resume::From(path),
        (None, true) => Resume::No,
        (None, false) => Resume::Latest,
    };
    let mut parent = None;
    if let (Some(from), Some(steps)) = (&a.decay_from, a.decay_steps) {
        let branch = decay_branch(&mut cfg, from, steps)?;
        resume = branch.0;
        parent = Some(branch.1);
    }
    let summary = train(
        &cfg,
        &TrainOptions {
            resume,
            parent,
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

/// Turns `cfg` into the decay branch of `steps` steps from checkpoint `from` (see README's
/// "Learning-rate schedules and decay branches"): "wsd" ending at the checkpoint's step +
/// `steps`, whose decay starts where the checkpoint stands. Resumes the branch's own latest
/// checkpoint when it has one, else the parent's.
fn decay_branch(cfg: &mut RunConfig, from: &Path, steps: u64) -> Result<(Resume, Parent)> {
    let m = read_manifest(from).with_context(|| format!("--decay-from {}", from.display()))?;
    let parent = RunConfig::from_toml(&m.config, &[])
        .with_context(|| format!("--decay-from {}: the config saved in its manifest", from.display()))?;
    let p = &parent.train;
    let at = m.step;
    let stable = p.lr_schedule().stable();
    if p.schedule == Schedule::Cosine {
        bail!(
            "--decay-from {}: its run used train.schedule = \"cosine\", whose rate at step {at} already depends on the \
             run's length; HINT: decay branches start from a \"wsd\" or \"constant\" run",
            from.display()
        );
    }
    if !(stable.start <= at && at <= stable.end) {
        bail!(
            "--decay-from {}: step {at} is outside its run's stable phase (from step {}{}); HINT: pick a checkpoint \
             after the warm-up and before the run's own decay",
            from.display(),
            stable.start,
            if stable.end == u64::MAX {
                String::new()
            } else {
                format!(" to step {}", stable.end)
            }
        );
    }
    if cfg.train.lr != p.lr {
        bail!(
            "--decay-from {}: its run's peak train.lr is {} and this config's {}: the branch would not continue it; \
             HINT: use the parent's train.lr",
            from.display(),
            p.lr,
            cfg.train.lr
        );
    }
    let ckpt_dir = cfg
        .checkpoint
        .dir
        .clone()
        .unwrap_or_else(|| cfg.job.run_dir.join("checkpoints"));
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if from.parent().is_some_and(|d| same(d, &ckpt_dir)) {
        bail!(
            "--decay-from {}: the branch would write into its parent's checkpoint directory; HINT: give the branch its \
             own run, e.g. --set job.run_dir=\"{}-decay-{at}\"",
            from.display(),
            cfg.job.run_dir.display()
        );
    }
    cfg.train.schedule = Schedule::Wsd;
    cfg.train.steps = at + steps;
    cfg.train.decay_steps = Some(steps);
    let own = std::fs::read_dir(&ckpt_dir)
        .map(|r| {
            r.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
        .unwrap_or(false);
    let resume = if own {
        Resume::Latest
    } else {
        Resume::From(from.to_path_buf())
    };
    let parent = Parent {
        checkpoint: from.display().to_string(),
        step: at,
    };
    println!(
        "decay branch: from {} (step {at}) over {steps} steps to step {} ({:?} to {:e}){}",
        from.display(),
        at + steps,
        cfg.train.decay_shape,
        cfg.train.min_lr,
        if own {
            "; resuming the branch's own latest checkpoint"
        } else {
            ""
        }
    );
    Ok((resume, parent))
}
