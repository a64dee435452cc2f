//! `baichuan scaling fit`: scaling-law fits (Approach 3 with bootstrap intervals, Approach 2 per
//! IsoFLOP profile) of finished runs or a CSV, and the compute-optimal N and D they predict
//! ([`baichuan_trainer::scaling`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::scaling::{self, Estimate, Point};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum ScalingCommand {
    /// Fit L(N, D) = E + A / N^alpha + B / D^beta (and the IsoFLOP parabolas) to finished runs or a
    /// CSV; print the parameters with bootstrap intervals and the compute-optimal N and D.
    Fit(FitArgs),
}

#[derive(Args)]
pub struct FitArgs {
    /// Run directories (each with config.toml and metrics.jsonl; the last validation loss is
    /// the run's loss).
    #[arg(long = "run", num_args = 1..)]
    runs: Vec<PathBuf>,
    /// The plan.toml of a sweep: its finished runs and decay branches.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// A CSV with a header and columns params,tokens,loss[,flops] (flops default 6ND).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Compute budgets (FLOPs) to give the optimal N and D for.
    #[arg(long = "budget", num_args = 1..)]
    budgets: Vec<f64>,
    /// Predict the loss of these N,D pairs (e.g. 7e9,1.2e12).
    #[arg(long = "predict", num_args = 1..)]
    predict: Vec<String>,
    /// Leave out the K points of highest loss (Besiroglu et al. drop 5 of Chinchilla's).
    #[arg(long, default_value_t = 0)]
    drop_highest: usize,
    /// Bootstrap refits for the intervals.
    #[arg(long, default_value_t = 200)]
    bootstrap: usize,
    /// Interval level.
    #[arg(long, default_value_t = 0.95)]
    level: f64,
    /// Write the fit as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the fit into this PNG: IsoFLOP profiles with the frontier, N_opt against compute,
    /// and fitted against measured loss.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The plot's size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "2100x700")]
    plot_size: String,
}

pub fn run(what: ScalingCommand) -> Result<()> {
    match what {
        ScalingCommand::Fit(a) => fit(a),
    }
}

/// A finished run as a point: non-embedding parameters (decoder blocks and final norm; the
/// embedding table and the output head are vocabulary matrices, excluded as Kaplan et al.
/// do), the tokens of its last step, its last validation loss, and its FLOPs by the project's
/// formula (`ModelConfig::flops_per_token` times tokens). Returns why a run is left out:
/// unfinished, or diverged (a non-finite loss, skipped steps, or a final tenth of the steps
/// whose mean training loss is more than 25% above the run's lowest).
pub fn run_point(dir: &Path) -> Result<std::result::Result<Point, String>> {
    let cfg = RunConfig::load(&dir.join("config.toml"), &[])?;
    let model = cfg
        .model
        .resolve()
        .with_context(|| format!("{}: [model]", dir.display()))?;
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).with_context(|| {
        format!(
            "{}: no metrics.jsonl; HINT: pass finished run directories",
            dir.display()
        )
    })?;
    let rows: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let Some(last) = rows.last() else {
        return Ok(Err("no steps logged".into()));
    };
    if last["step"].as_u64() != Some(cfg.train.steps) {
        return Ok(Err(format!(
            "unfinished: step {} of {}",
            last["step"].as_u64().unwrap_or(0),
            cfg.train.steps
        )));
    }
    let losses: Vec<f64> = rows.iter().filter_map(|r| r["loss"].as_f64()).collect();
    if losses.iter().any(|l| !l.is_finite()) || last["skipped_steps"].as_u64().unwrap_or(0) > 0 {
        return Ok(Err("diverged: non-finite or skipped steps".into()));
    }
    let Some(valid) = rows.iter().rev().find_map(|r| r["valid_loss"].as_f64()) else {
        return Ok(Err(
            "no validation loss logged; HINT: set data.valid_fraction and eval.interval".into(),
        ));
    };
    // a blow-up: the last tenth of the steps ends well above the run's best (a decay branch
    // starts low, so its first loss says nothing; its best does)
    let tail = &losses[losses.len() - (losses.len() / 10).max(1)..];
    let end = tail.iter().sum::<f64>() / tail.len() as f64;
    let best = losses.iter().copied().fold(f64::INFINITY, f64::min);
    if end > 1.25 * best {
        return Ok(Err(format!(
            "diverged: the training loss ends at {end:.4}, more than 25% above the run's lowest {best:.4}"
        )));
    }
    let tokens = last["tokens"].as_f64().unwrap_or(0.0);
    let params = (model.num_parameters() - 2 * model.embedding_parameters()) as f64;
    Ok(Ok(Point {
        params,
        tokens,
        loss: valid,
        flops: model.flops_per_token(cfg.data.seq_len) * tokens,
    }))
}

fn show(e: &Estimate) -> String {
    format!("{:.4e} [{:.4e}, {:.4e}]", e.value, e.low, e.high)
}

fn fit(a: FitArgs) -> Result<()> {
    let mut pts = Vec::new();
    if let Some(csv) = &a.csv {
        let text = std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
        pts.extend(scaling::read_csv(&text, &csv.display().to_string()).map_err(anyhow::Error::msg)?);
    }
    let mut dirs = a.runs.clone();
    if let Some(plan) = &a.plan {
        let (plan, dir) = super::sweep::read_plan(plan)?;
        dirs.extend(super::sweep::plan_dirs(&plan, &dir).into_iter().map(|(d, _)| d));
    }
    for dir in &dirs {
        if !dir.join("metrics.jsonl").exists() {
            println!("left out {}: not run", dir.display());
            continue;
        }
        match run_point(dir)? {
            Ok(p) => pts.push(p),
            Err(why) => println!("left out {}: {why}", dir.display()),
        }
    }
    if a.drop_highest > 0 {
        pts.sort_by(|x, y| x.loss.total_cmp(&y.loss));
        let dropped = pts.split_off(pts.len().saturating_sub(a.drop_highest));
        println!(
            "left out the {} point(s) of highest loss (from {:.4})",
            dropped.len(),
            dropped[0].loss
        );
    }
    if pts.is_empty() {
        bail!("no data: pass --csv FILE, --run DIR... or --plan PLAN");
    }
    if !(0.5..1.0).contains(&a.level) {
        bail!("--level {} must be in [0.5, 1)", a.level);
    }
    println!("{} points", pts.len());
    let fit = scaling::fit_with_bootstrap(&pts, a.bootstrap, a.level, 1).map_err(anyhow::Error::msg)?;
    println!(
        "Approach 3: L(N, D) = E + A / N^alpha + B / D^beta (Huber {:.3e}; {:.0}% intervals over {} bootstrap refits)",
        fit.huber,
        100.0 * a.level,
        fit.resamples
    );
    for (name, e) in [
        ("E", &fit.e),
        ("A", &fit.a),
        ("B", &fit.b),
        ("alpha", &fit.alpha),
        ("beta", &fit.beta),
    ] {
        println!("  {name:<6} {}", show(e));
    }
    let iso = scaling::fit_isoflop(&pts);
    match &iso {
        Ok(iso) => {
            println!("Approach 2: {} IsoFLOP profiles", iso.profiles.len());
            for p in &iso.profiles {
                println!(
                    "  C {:.3e}: {} runs, N_opt {:.4e}, loss at N_opt {:.4}",
                    p.flops, p.runs, p.n_opt, p.loss_at_opt
                );
            }
            for s in &iso.skipped {
                println!("  left out the profile at {s}");
            }
            println!("  N_opt = {:.4e} C^{:.4}", iso.n_coef, iso.n_exp);
        }
        Err(why) => println!("Approach 2: not fitted ({why})"),
    }
    let mut budgets = Vec::new();
    for &c in &a.budgets {
        let n = fit.interval(|l| l.optimum(c).0);
        let d = fit.interval(|l| l.optimum(c).1);
        let loss = fit.interval(|l| {
            let (n, d) = l.optimum(c);
            l.loss(n, d)
        });
        println!(
            "budget {c:.3e} FLOPs: N_opt {}, D_opt {}, loss {}",
            show(&n),
            show(&d),
            show(&loss)
        );
        if let Ok(iso) = &iso {
            let (n2, d2) = iso.optimum(c);
            println!("  Approach 2: N_opt {n2:.4e}, D_opt {d2:.4e}");
        }
        budgets.push(serde_json::json!({"flops": c, "n_opt": n, "d_opt": d, "loss": loss}));
    }
    let mut predictions = Vec::new();
    for spec in &a.predict {
        let (n, d) = spec
            .split_once(',')
            .and_then(|(n, d)| Some((n.trim().parse::<f64>().ok()?, d.trim().parse::<f64>().ok()?)))
            .with_context(|| format!("--predict {spec:?}: expected N,D, e.g. 7e9,1.2e12"))?;
        let loss = fit.interval(|l| l.loss(n, d));
        println!("N {n:.3e}, D {d:.3e}: loss {}", show(&loss));
        predictions.push(serde_json::json!({"params": n, "tokens": d, "loss": loss}));
    }
    if let Some(out) = &a.plot {
        let (w, h) = super::plot::parse_size(&a.plot_size, "--plot-size")?;
        let panels = baichuan_trainer::scaling_plot::panels(&pts, &fit, iso.as_ref().ok(), &a.budgets);
        let png = baichuan_plot::render_png(&panels, 3, w, h)?;
        baichuan_plot::write_file(out, &png)?;
        println!(
            "plotted {}: IsoFLOP profiles with their minima, N_opt against compute, fitted against measured loss",
            out.display()
        );
    }
    if let Some(out) = &a.json {
        let doc = serde_json::json!({
            "points": pts,
            "approach3": fit,
            "approach2": iso.as_ref().ok(),
            "budgets": budgets,
            "predictions": predictions,
        });
        std::fs::write(out, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
