//! `baichuan plot`: the curves of one or more runs, overlaid, into a PNG (`baichuan-plot`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct PlotArgs {
    /// Run directories (each with its metrics.jsonl).
    #[arg(required = true, num_args = 1..)]
    runs: Vec<PathBuf>,
    #[arg(long, default_value = "curves.png")]
    out: PathBuf,
    /// Image size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1600x1000")]
    size: String,
}

/// `WIDTHxHEIGHT` of an image, as the option `flag` gave it.
pub fn parse_size(text: &str, flag: &str) -> Result<(u32, u32)> {
    text.split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| (200..=10000).contains(&w) && (150..=10000).contains(&h))
        .with_context(|| {
            format!("{flag} {text:?}: expected WIDTHxHEIGHT (200 to 10000 by 150 to 10000), e.g. 1600x1000")
        })
}

pub fn run(a: PlotArgs) -> Result<()> {
    let (w, h) = parse_size(&a.size, "--size")?;
    let summary = baichuan_plot::plot_runs(&a.runs, &a.out, w, h)?;
    println!("{summary}");
    Ok(())
}
