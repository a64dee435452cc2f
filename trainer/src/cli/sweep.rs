//! `baichuan sweep`: plan a scaling sweep (IsoFLOP profiles or an N x D grid, with the rules of
//! [`baichuan_trainer::sweep`]) and run it here one run after another, or write a SLURM array
//! script for a cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::metrics::mfu::datasheet_half_peak;
use baichuan_trainer::sweep::{self, Plan, PlannedRun, Target};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum SweepCommand {
    /// Write one config per run and plan.toml into --out, and print the plan as a table.
    Plan(PlanArgs),
    /// Run a plan's runs and their decay branches here, one after another (finished ones are
    /// skipped, interrupted ones resume), or write a SLURM array script (--slurm).
    Run(RunArgs),
}

#[derive(Args)]
pub struct PlanArgs {
    /// The base run config (data, tokenizer, sequence length, precision, device).
    #[arg(long)]
    config: PathBuf,
    /// Override a base config value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Compute budgets in FLOPs: one IsoFLOP profile each.
    #[arg(long = "budget", num_args = 1..)]
    budgets: Vec<f64>,
    /// Sizes per profile.
    #[arg(long, default_value_t = 3)]
    sizes: usize,
    /// Ratio between neighbouring sizes of a profile.
    #[arg(long, default_value_t = 2.0)]
    size_step: f64,
    /// Explicit runs instead of profiles: NxD pairs of non-embedding parameters and tokens,
    /// e.g. 1e5x2e6.
    #[arg(long = "grid", num_args = 1..)]
    grid: Vec<String>,
    /// Width over depth of the model family.
    #[arg(long, default_value_t = 64.0)]
    aspect: f64,
    /// Attention head dimension (the width is a multiple of it).
    #[arg(long, default_value_t = 64)]
    head_dim: i64,
    /// GPU for the hours estimate (A100, A800, H100, H200, H800).
    #[arg(long, default_value = "H100")]
    gpu: String,
    /// MFU for the hours estimate (`baichuan bench` measures it).
    #[arg(long, default_value_t = 0.4)]
    mfu: f64,
    /// Every run's batch in sequences, instead of the rule's.
    #[arg(long)]
    batch: Option<i64>,
    /// Every run's peak learning rate, instead of the rule's.
    #[arg(long)]
    lr: Option<f64>,
    /// The sweep's directory: plan.toml, configs/, runs/.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct RunArgs {
    /// plan.toml of `sweep plan`.
    plan: PathBuf,
    /// Write a SLURM array script (one task per run, its branches after it) instead of running.
    #[arg(long)]
    slurm: Option<PathBuf>,
}

pub fn run(what: SweepCommand) -> Result<()> {
    match what {
        SweepCommand::Plan(a) => plan(a),
        SweepCommand::Run(a) => run_plan(a),
    }
}

fn plan(a: PlanArgs) -> Result<()> {
    let base = RunConfig::load(&a.config, &a.overrides)?;
    let model = base.model.resolve().context("the base config's [model]")?;
    let seq = base.data.seq_len;
    let peak = datasheet_half_peak(&a.gpu.to_uppercase()).with_context(|| {
        format!(
            "--gpu {}: not in the table; HINT: A100, A800, H100, H200 or H800",
            a.gpu
        )
    })?;
    if !(a.mfu > 0.0 && a.mfu <= 1.0) || a.size_step <= 1.0 || a.sizes == 0 || a.head_dim < 2 || a.head_dim % 2 != 0 {
        bail!("--mfu must be in (0, 1], --size-step > 1, --sizes >= 1 and --head-dim even");
    }
    let mut targets = Vec::new();
    for &c in &a.budgets {
        targets.extend(
            sweep::profile_sizes(c, a.sizes, a.size_step)
                .into_iter()
                .map(|n| Target::IsoFlop { budget: c, params: n }),
        );
    }
    for spec in &a.grid {
        let (n, d) = spec
            .split_once('x')
            .and_then(|(n, d)| Some((n.trim().parse::<f64>().ok()?, d.trim().parse::<f64>().ok()?)))
            .with_context(|| format!("--grid {spec:?}: expected NxD, e.g. 1e5x2e6"))?;
        targets.push(Target::Grid { params: n, tokens: d });
    }
    if targets.is_empty() {
        bail!("nothing to plan: give --budget C... or --grid NxD...");
    }
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let mut runs: Vec<PlannedRun> = Vec::new();
    for t in targets {
        let Some(run) = sweep::plan_run(t, &model, seq, a.aspect, a.head_dim, a.batch, a.lr) else {
            println!("skipped {t:?}: fewer than 10 steps of its batch");
            continue;
        };
        if runs.iter().any(|r| r.name == run.name) {
            println!("skipped {t:?}: the same model and budget as {}", run.name);
            continue;
        }
        runs.push(run);
    }
    if runs.is_empty() {
        bail!("every planned run was skipped; HINT: raise the budgets or lower --batch");
    }
    std::fs::create_dir_all(a.out.join("configs")).with_context(|| format!("creating {}", a.out.display()))?;
    for run in &runs {
        let run_dir = a.out.join(&run.run_dir).display().to_string();
        let mut sets = a.overrides.clone();
        sets.extend(sweep::overrides(run, &run_dir, base.train.micro_batch_size));
        let cfg = RunConfig::from_toml(&text, &sets).with_context(|| format!("the config of {}", run.name))?;
        cfg.validate(1).with_context(|| format!("the config of {}", run.name))?;
        let path = a.out.join(&run.config);
        std::fs::write(&path, cfg.to_toml()).with_context(|| format!("writing {}", path.display()))?;
    }
    let plan = Plan {
        base: a.config.display().to_string(),
        formula: "D = C / ModelConfig::flops_per_token(seq_len) (6 x (non-embedding + head parameters) + attention)"
            .into(),
        seq_len: seq,
        runs,
    };
    let path = a.out.join("plan.toml");
    std::fs::write(&path, toml::to_string_pretty(&plan)?).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{:<24} {:>10} {:>6} {:>6} {:>11} {:>10} {:>6} {:>6} {:>9} {:>11}",
        "run", "N", "layers", "width", "D", "FLOPs", "batch", "steps", "lr", "GPU-hours"
    );
    for r in &plan.runs {
        println!(
            "{:<24} {:>10.3e} {:>6} {:>6} {:>11.3e} {:>10.3e} {:>6} {:>6} {:>9.2e} {:>11.3e}",
            r.name,
            r.params as f64,
            r.shape.layers,
            r.shape.hidden,
            r.tokens as f64,
            r.flops,
            r.batch,
            r.steps,
            r.lr,
            r.flops / (a.mfu * peak) / 3600.0
        );
    }
    println!(
        "GPU-hours at {:.0}% MFU of one {} ({:.0} TFLOP/s bf16 dense); each run adds decay branches from 40% and 60% \
         of its steps. Wrote {} and {} configs",
        100.0 * a.mfu,
        a.gpu,
        peak / 1e12,
        path.display(),
        plan.runs.len()
    );
    Ok(())
}

/// Reads a plan, and the directory its `configs/` and `runs/` paths are relative to (the plan
/// file's).
pub fn read_plan(path: &Path) -> Result<(Plan, PathBuf)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let plan: Plan = toml::from_str(&text).with_context(|| format!("{}: not a sweep plan", path.display()))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((plan, dir))
}

/// Whether `run_dir` finished `steps` steps (its metrics reach them and its model is saved).
fn finished(run_dir: &Path, steps: u64) -> bool {
    let last = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .ok()
        .and_then(|t| {
            t.lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        })
        .and_then(|v| v["step"].as_u64());
    last == Some(steps) && run_dir.join("model/config.json").exists()
}

/// Every run directory of a plan, main runs and branches, with the step count each ends at.
pub fn plan_dirs(plan: &Plan, dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    for r in &plan.runs {
        v.push((dir.join(&r.run_dir), r.steps));
        for &from in &r.branches {
            let (branch, n) = r.branch(from);
            v.push((dir.join(branch), from + n));
        }
    }
    v
}

fn run_plan(a: RunArgs) -> Result<()> {
    let (plan, dir) = read_plan(&a.plan)?;
    let exe = std::env::current_exe().context("locating the baichuan binary")?;
    if let Some(script) = &a.slurm {
        return write_slurm(&plan, &dir, &exe, script);
    }
    let mut failed = Vec::new();
    for r in &plan.runs {
        for (args, run_dir, steps) in commands(r, &dir) {
            if finished(&run_dir, steps) {
                println!("sweep: {} is finished", run_dir.display());
                continue;
            }
            println!("sweep: {} ({})", run_dir.display(), args.join(" "));
            let status = Command::new(&exe)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", exe.display()))?;
            if !status.success() {
                println!(
                    "sweep: {} FAILED ({status}); its branches wait for it",
                    run_dir.display()
                );
                failed.push(run_dir.display().to_string());
                break;
            }
            match super::scaling::run_point(&run_dir)? {
                Err(why) if why.starts_with("diverged") => {
                    println!(
                        "sweep: {} FLAGGED: {why}; `scaling fit` leaves it out",
                        run_dir.display()
                    )
                }
                _ => {}
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed: {}; HINT: fix and run `sweep run` again (finished runs are skipped)",
            failed.len(),
            failed.join(", ")
        );
    }
    println!(
        "sweep: every run is finished; fit with `baichuan scaling fit --plan {}`",
        a.plan.display()
    );
    Ok(())
}

/// The `baichuan` arguments of a run and then of its branches, with their run directories and
/// final steps.
fn commands(r: &PlannedRun, dir: &Path) -> Vec<(Vec<String>, PathBuf, u64)> {
    let config = dir.join(&r.config).display().to_string();
    let main_dir = dir.join(&r.run_dir);
    let mut v = vec![(
        vec![
            "train".into(),
            "--config".into(),
            config.clone(),
            "--set".into(),
            format!("job.run_dir={:?}", main_dir.display().to_string()),
        ],
        main_dir.clone(),
        r.steps,
    )];
    for &from in &r.branches {
        let (branch, n) = r.branch(from);
        let branch_dir = dir.join(branch);
        v.push((
            vec![
                "train".into(),
                "--config".into(),
                config.clone(),
                "--set".into(),
                format!("job.run_dir={:?}", branch_dir.display().to_string()),
                "--decay-from".into(),
                main_dir
                    .join(format!("checkpoints/step-{from:08}"))
                    .display()
                    .to_string(),
                "--decay-steps".into(),
                n.to_string(),
            ],
            branch_dir,
            from + n,
        ));
    }
    v
}

fn write_slurm(plan: &Plan, dir: &Path, exe: &Path, script: &Path) -> Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut text = format!(
        "#!/bin/bash\n# The sweep {} as a SLURM array: task i trains run i, then its decay branches.\n\
         # Submit with: sbatch {}  (add your partition, GPUs and time limit below)\n\
         #SBATCH --array=0-{}\n#SBATCH --job-name=baichuan-sweep\n#SBATCH --requeue\nset -euo pipefail\n\
         B={}\ncase \"$SLURM_ARRAY_TASK_ID\" in\n",
        plan.base,
        script.display(),
        plan.runs.len() - 1,
        quote(&exe.display().to_string())
    );
    for (i, r) in plan.runs.iter().enumerate() {
        text.push_str(&format!("  {i})  # {}\n", r.name));
        for (args, _, _) in commands(r, dir) {
            let line: Vec<String> = args.iter().map(|a| quote(a)).collect();
            text.push_str(&format!("    \"$B\" {}\n", line.join(" ")));
        }
        text.push_str("    ;;\n");
    }
    text.push_str("esac\n");
    std::fs::write(script, text).with_context(|| format!("writing {}", script.display()))?;
    println!("wrote {} ({} array tasks)", script.display(), plan.runs.len());
    Ok(())
}
