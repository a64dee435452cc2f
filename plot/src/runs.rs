//! `baichuan plot`: the curves of one or more runs (read from their `metrics.jsonl`) overlaid
//! in a PNG: loss (training solid, validation dashed) against tokens, learning rate, throughput
//! and gradient norm.

use std::path::{Path, PathBuf};

use crate::{render_png, write_file, Mark, Paint, Panel, PlotError, Series};

/// One run's curves, read from `<run>/metrics.jsonl` (or that file itself).
struct RunCurves {
    label: String,
    steps: usize,
    /// (tokens, value) per series key.
    series: std::collections::BTreeMap<&'static str, Vec<(f64, f64)>>,
}

const KEYS: [&str; 5] = ["loss", "valid_loss", "lr", "tokens_per_s", "grad_norm"];

fn read_run(path: &Path) -> Result<RunCurves, PlotError> {
    let file = if path.is_dir() {
        path.join("metrics.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| PlotError::Io {
        what: format!(
            "{}: cannot read; HINT: pass run directories (a run's job.run_dir holds metrics.jsonl)",
            file.display()
        ),
        source,
    })?;
    let mut series: std::collections::BTreeMap<&'static str, Vec<(f64, f64)>> = std::collections::BTreeMap::new();
    let mut steps = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // a torn last line (a run killed mid-write) is skipped; damage elsewhere is an error
        let row: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == text.lines().count() => continue,
            Err(e) => return Err(PlotError::Metrics(format!("{}: line {}: {e}", file.display(), i + 1))),
        };
        let Some(tokens) = row["tokens"].as_f64() else {
            return Err(PlotError::Metrics(format!(
                "{}: line {}: no `tokens` field; is this a baichuan metrics.jsonl?",
                file.display(),
                i + 1
            )));
        };
        steps += 1;
        for key in KEYS {
            if let Some(v) = row[key].as_f64() {
                series.entry(key).or_default().push((tokens, v));
            }
        }
    }
    if steps == 0 {
        return Err(PlotError::Metrics(format!("{}: no steps logged yet", file.display())));
    }
    let label = path
        .canonicalize()
        .ok()
        .and_then(|p| {
            let p = if p.is_file() { p.parent()?.to_path_buf() } else { p };
            p.file_name().map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| path.display().to_string());
    Ok(RunCurves { label, steps, series })
}

/// Plots `runs` overlaid into `out` (PNG, width x height); returns a one-line summary.
pub fn plot_runs(runs: &[PathBuf], out: &Path, width: u32, height: u32) -> Result<String, PlotError> {
    let curves: Vec<RunCurves> = runs.iter().map(|r| read_run(r)).collect::<Result<_, _>>()?;
    // runs with the same directory name are told apart by the paths they were given
    let labels: Vec<String> = curves
        .iter()
        .zip(runs)
        .map(|(c, path)| {
            if curves.iter().filter(|o| o.label == c.label).count() > 1 {
                path.display().to_string()
            } else {
                c.label.clone()
            }
        })
        .collect();
    let single = curves.len() == 1;
    let line = |c: usize, key: &str, label: String, dashed: bool| Series {
        label,
        points: curves[c].series.get(key).cloned().unwrap_or_default(),
        paint: Paint::Palette(c),
        mark: if dashed { Mark::Dashed } else { Mark::Line },
    };
    let mut loss = Vec::new();
    for (c, l) in labels.iter().enumerate() {
        loss.push(line(
            c,
            "loss",
            if single { "train".into() } else { format!("{l} train") },
            false,
        ));
        if curves[c].series.contains_key("valid_loss") {
            loss.push(line(
                c,
                "valid_loss",
                if single { "valid".into() } else { format!("{l} valid") },
                true,
            ));
        }
    }
    let per_run = |key: &str| -> Vec<Series> {
        labels
            .iter()
            .enumerate()
            .map(|(c, l)| line(c, key, l.clone(), false))
            .collect()
    };
    let panel = |title: &str, y: &str, log_y: bool, series: Vec<Series>| Panel {
        title: title.into(),
        x_label: "tokens".into(),
        y_label: y.into(),
        log_y,
        series,
        ..Panel::default()
    };
    let panels = [
        panel("loss", "loss", false, loss),
        panel("learning rate", "lr", true, per_run("lr")),
        panel("throughput", "tokens/s", false, per_run("tokens_per_s")),
        panel("grad norm", "grad norm", false, per_run("grad_norm")),
    ];
    write_file(out, &render_png(&panels, 2, width, height)?)?;
    let steps: usize = curves.iter().map(|c| c.steps).sum();
    Ok(format!(
        "plotted {} run{} ({steps} steps) to {}: loss (validation dashed), learning rate, throughput, grad norm against tokens",
        curves.len(),
        if single { "" } else { "s" },
        out.display()
    ))
}
