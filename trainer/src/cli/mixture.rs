//! `baichuan mixture`: learning the weights of a `[[data.sources]]` mixture (DoReMi,
//! [`baichuan_trainer::tools::doremi`]).

use std::path::PathBuf;

use anyhow::Result;
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::tools::doremi::{self, DoremiOptions};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum MixtureCommand {
    /// Learn domain weights with DoReMi: a proxy model trained against the reference model
    /// (trained first with `baichuan train` on the config's base mixture); writes
    /// `<out-dir>/weights.toml`, a ready `[[data.sources]]` block.
    Doremi(DoremiArgs),
}

#[derive(Args)]
pub struct DoremiArgs {
    /// The run config of the reference (its `[[data.sources]]` are the domains).
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. --set train.lr=1e-3 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// The reference model directory; default `<run_dir>/model` of the config.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Proxy training steps; default the config's `train.steps`.
    #[arg(long)]
    steps: Option<u64>,
    /// Step size of the domain weights' exponentiated-gradient update.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Share of uniform weights mixed in after each update.
    #[arg(long, default_value_t = 1e-3)]
    smoothing: f64,
    /// Where `weights.toml` and the per-step `doremi.jsonl` go; default `<run_dir>/doremi`.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn run(what: MixtureCommand) -> Result<()> {
    match what {
        MixtureCommand::Doremi(a) => doremi(a),
    }
}

fn doremi(a: DoremiArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.config, &a.overrides)?;
    let run_dir = cfg.job.run_dir.clone();
    let opts = DoremiOptions {
        reference: a.reference.unwrap_or_else(|| run_dir.join("model")),
        steps: a.steps.unwrap_or(cfg.train.steps),
        eta: a.eta,
        smoothing: a.smoothing,
        out_dir: a.out_dir.unwrap_or_else(|| run_dir.join("doremi")),
    };
    let r = doremi::run(&cfg, &opts)?;
    println!("{:<24} {:>10} {:>10} {:>10}", "source", "config", "average", "last");
    let configured: f64 = cfg.data.sources.iter().map(|s| s.weight).sum();
    for (i, name) in r.names.iter().enumerate() {
        println!(
            "{name:<24} {:>10.4} {:>10.4} {:>10.4}",
            cfg.data.sources[i].weight / configured,
            r.average[i],
            r.last[i]
        );
    }
    println!(
        "wrote the averaged weights to {} (a [[data.sources]] block)",
        r.weights_file.display()
    );
    Ok(())
}
