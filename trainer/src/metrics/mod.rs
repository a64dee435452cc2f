//! Step logs: one JSON object per step in `<run_dir>/metrics.jsonl`, and the same series in a
//! TensorBoard event file beside it (`train/*` and `valid/*` tags), so `tensorboard --logdir
//! <runs>` shows every run. [`mfu`] holds the device's peak FLOP/s and memory readings.

pub mod mfu;
pub mod tensorboard;

pub use mfu::{peak_flops, peak_memory_mb, slow_precision_warning};

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use tensorboard::EventWriter;

/// One step's record, written as a JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub step_time_s: f64,
    pub peak_memory_mb: f64,
    /// Time the step waited for gradient collectives after its backward.
    pub comm_wait_s: f64,
    /// Milliseconds from the start of the last micro-batch to the issue of each bucket's
    /// collective, and to the end of its backward (overlap diagnostics).
    pub bucket_issue_ms: Vec<f64>,
    pub backward_end_ms: f64,
    /// fp16: the loss scale after this step (1 otherwise).
    pub loss_scale: f64,
    /// Steps skipped so far for inf/NaN gradients.
    pub skipped_steps: u64,
    /// Mean token loss on the held-out data, on evaluation steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
    /// exp(valid_loss).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_ppl: Option<f64>,
    /// Mixtures: each source's tokens and epochs so far, and its validation loss on
    /// evaluation steps (`valid_loss` is then the mean over the sources with held-out data).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sources: std::collections::BTreeMap<String, SourceRecord>,
    /// `[[eval.mc]]`: each benchmark subset's accuracy, on evaluation steps.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mc: std::collections::BTreeMap<String, f64>,
}

/// One source's line of a [`StepRecord`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SourceRecord {
    pub tokens: u64,
    pub epochs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
}

impl StepRecord {
    /// The record's TensorBoard scalars.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let v = vec![
            ("train/loss", self.loss),
            ("train/lr", self.lr),
            ("train/grad_norm", self.grad_norm),
            ("train/tokens_per_s", self.tokens_per_s),
            ("train/mfu", self.mfu),
            ("train/step_time_s", self.step_time_s),
            ("train/peak_memory_mb", self.peak_memory_mb),
            ("train/comm_wait_s", self.comm_wait_s),
            ("train/loss_scale", self.loss_scale),
            ("train/skipped_steps", self.skipped_steps as f64),
            ("train/tokens", self.tokens as f64),
        ];
        let mut v: Vec<(String, f64)> = v.into_iter().map(|(k, x)| (k.to_string(), x)).collect();
        if let Some(l) = self.valid_loss {
            v.push(("valid/loss".into(), l));
        }
        if let Some(p) = self.valid_ppl {
            v.push(("valid/ppl".into(), p));
        }
        for (name, acc) in &self.mc {
            v.push((format!("valid/mc/{name}"), *acc));
        }
        for (name, s) in &self.sources {
            v.push((format!("sources/{name}/tokens"), s.tokens as f64));
            v.push((format!("sources/{name}/epochs"), s.epochs));
            if let Some(l) = s.valid_loss {
                v.push((format!("valid/loss/{name}"), l));
            }
        }
        v
    }
}

/// Appends step records to `<run_dir>/metrics.jsonl` and a TensorBoard event file beside it.
pub struct MetricsLog {
    out: BufWriter<File>,
    events: EventWriter,
}

impl MetricsLog {
    /// Opens `<run_dir>/metrics.jsonl` and a new event file. Resuming at `resumed_at`, the lines
    /// of later steps (written after that checkpoint by the run that stopped) are dropped, and
    /// the event file starts with a session start at the next step, so TensorBoard drops them
    /// too: every step appears once. Otherwise both start afresh.
    pub fn open(run_dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let kept: String = match resumed_at {
            None => String::new(),
            Some(step) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
        };
        std::fs::write(&path, kept).with_context(|| format!("writing {}", path.display()))?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if resumed_at.is_none() {
            // a fresh start: the event files of an earlier run here go, as its JSON lines do
            for old in tensorboard::event_files(run_dir) {
                std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
            }
        }
        let events = EventWriter::create(run_dir, resumed_at.map_or(0, |s| s + 1))?;
        Ok(MetricsLog {
            out: BufWriter::new(file),
            events,
        })
    }

    pub fn write(&mut self, record: &StepRecord) -> Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        let scalars = record.scalars();
        let refs: Vec<(&str, f64)> = scalars.iter().map(|(k, x)| (k.as_str(), *x)).collect();
        self.events.scalars(record.step, &refs)?;
        self.events.flush()?;
        Ok(())
    }
}
