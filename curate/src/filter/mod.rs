//! `baichuan filter`: heuristic rules (Gopher repetition and quality, C4, FineWeb; `rules`),
//! cross-document boilerplate lines (`boilerplate`) and an optional fastText quality gate, at
//! document and line level. Stages, each a set of independent tasks over a shared file system:
//!
//! 1. **lines** (task per group of files; only with boilerplate on): sorted runs of the
//!    distinct line keys of each multi-line document;
//! 2. **boilerplate** (one task): the keys found in at least `min_documents` documents;
//! 3. **filter** (task per group of files): per document, boilerplate lines out, then the
//!    rules (C4 may cut lines; any rule may drop the document), then the quality score; the
//!    survivors are written under the input names, every removal to `OUT/removed/` with its
//!    rule, measured value and threshold.
//!
//! Every decision depends only on the document and the corpus-wide line counts, so the output
//! does not depend on the number of tasks or threads.

pub mod boilerplate;
pub mod rules;

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use rules::{FilterConfig, Outcome, Reason};

use crate::corpus::{
    list_inputs, rewrite_file, stage_inputs, write_atomic, Doc, DocReader, DocWriter, InputFile, Progress, SideWriter,
    BATCH_BYTES,
};
use crate::dedup::records::{self, create_dir, ItemId};
use crate::manifest::{merge_task_stats, read_stats, write_stats, RunManifest};
use crate::quality::fasttext::FastText;
use crate::{input_err, output_err, CurateError, Result, Stats, Task};

/// `[quality]` of the filter config: drop documents a fastText classifier scores low.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityGate {
    /// A fastText `.bin` model (`baichuan quality train` or fastText itself). Default: none.
    pub model: Option<PathBuf>,
    /// The label whose probability is the score. Default `__label__hq`.
    pub label: String,
    /// Documents scoring below this are dropped. Default 0.5.
    pub min_score: f64,
}

impl Default for QualityGate {
    fn default() -> Self {
        QualityGate {
            model: None,
            label: "__label__hq".into(),
            min_score: 0.5,
        }
    }
}

/// One stage of a multi-process filter run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Lines,
    Boilerplate,
    Filter,
}

/// Settings of a filter run.
#[derive(Debug, Clone)]
pub struct FilterOptions {
    pub config: FilterConfig,
    pub text_key: String,
    /// Buffer of line records per task before a sorted run goes to disk.
    pub memory_mb: usize,
}

impl FilterOptions {
    /// What the manifest records: the config, the text key and the quality model's identity.
    fn settings(&self) -> Result<serde_json::Value> {
        let model = match &self.config.quality.model {
            Some(p) => {
                let m = fs::metadata(p).map_err(|e| input_err(p, e))?;
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                serde_json::json!({"bytes": m.len(), "modified_ns": mtime.to_string()})
            }
            None => serde_json::Value::Null,
        };
        let config = serde_json::to_value(&self.config).map_err(|e| CurateError::Options(e.to_string()))?;
        Ok(serde_json::json!({"config": config, "text_key": self.text_key, "quality_model": model}))
    }
}

/// A removed document or line in `OUT/removed/<name>.jsonl`.
#[derive(Debug, Serialize)]
struct FilterRecord<'a> {
    file: &'a str,
    line: u32,
    level: &'a str,
    rule: &'a str,
    value: f64,
    threshold: f64,
    text: &'a str,
}

/// What happened to one document.
struct Decision {
    /// New text when lines were cut.
    text: Option<String>,
    removed_lines: Vec<(String, Reason)>,
    dropped: Option<Reason>,
}

struct Ctx<'a> {
    opts: &'a FilterOptions,
    files: &'a [InputFile],
    out: &'a Path,
    work: &'a Path,
    progress: &'a Progress,
}

impl Ctx<'_> {
    fn boilerplate_on(&self) -> bool {
        self.opts.config.boilerplate.enabled
    }

    /// Stage 1 for `task`.
    fn lines(&self, task: Task) -> Result<()> {
        let dir = self.work.join("lines");
        records::clear_task_runs(&dir, task)?;
        let budget = (self.opts.memory_mb.max(1) << 20) / 28;
        let mut buf: Vec<(u128, ItemId)> = Vec::new();
        let mut runs = 0;
        let mine = task.files(self.files);
        self.progress
            .start("lines", mine.iter().map(|&f| self.files[f].bytes).sum());
        let mut flush = |buf: &mut Vec<(u128, ItemId)>| -> Result<()> {
            let path = dir.join(format!("t{:05}of{:05}-r{runs:05}.run", task.index, task.count));
            records::write_run(&path, buf)?;
            buf.clear();
            runs += 1;
            Ok(())
        };
        for f in mine {
            let mut reader = DocReader::open(&self.files[f], &self.opts.text_key)?;
            loop {
                let docs = reader.next_batch(BATCH_BYTES, self.progress)?;
                if docs.is_empty() {
                    break;
                }
                let keys: Vec<Vec<u128>> = docs.par_iter().map(|d| boilerplate::document_keys(&d.text)).collect();
                for (doc, keys) in docs.iter().zip(keys) {
                    let id = ItemId {
                        file: f as u32,
                        line: doc.line,
                        sent: 0,
                    };
                    buf.extend(keys.into_iter().map(|k| (k, id)));
                }
                if buf.len() >= budget {
                    flush(&mut buf)?;
                }
            }
        }
        flush(&mut buf)?;
        write_atomic(&task.done_marker(&dir), b"done\n")
    }

    /// Stage 2 (one task).
    fn boilerplate(&self) -> Result<usize> {
        let dir = self.work.join("lines");
        let n = crate::task::finished_tasks(&dir, "lines")?;
        let tag = format!("of{n:05}-");
        let runs = records::run_files(&dir)?;
        let stale: Vec<&PathBuf> = runs.iter().filter(|p| !p.to_string_lossy().contains(&tag)).collect();
        for p in stale {
            fs::remove_file(p).map_err(|e| output_err(p, e))?;
        }
        self.progress.start("boilerplate", 0);
        boilerplate::select(
            &dir,
            &self.work.join("boilerplate.keys"),
            self.opts.config.boilerplate.min_documents,
        )
    }

    /// Stage 3 for `task`.
    fn filter(&self, task: Task) -> Result<Stats> {
        let common = if self.boilerplate_on() {
            boilerplate::load(&self.work.join("boilerplate.keys"))?
        } else {
            Default::default()
        };
        let model = match &self.opts.config.quality.model {
            Some(p) => Some(FastText::load(p)?),
            None => None,
        };
        if let Some(m) = &model {
            let label = &self.opts.config.quality.label;
            if !m.labels().iter().any(|l| l == label) {
                return Err(CurateError::Options(format!(
                    "the quality model has no label {label:?} (it has {:?}); HINT: set quality.label or --quality-label",
                    m.labels()
                )));
            }
        }
        let mine = task.files(self.files);
        self.progress
            .start("filter", mine.iter().map(|&f| self.files[f].bytes).sum());
        let per_file: Vec<Stats> = mine
            .par_iter()
            .map(|&f| self.filter_file(f, &common, model.as_ref()))
            .collect::<Result<_>>()?;
        let mut stats = Stats::default();
        for s in &per_file {
            stats.merge(s);
        }
        Ok(stats)
    }

    fn decide(&self, text: &str, common: &std::collections::HashMap<u128, u64>, model: Option<&FastText>) -> Decision {
        let mut removed_lines = Vec::new();
        let mut current: Option<String> = None;
        if !common.is_empty() && text.contains('\n') {
            let mut kept = Vec::new();
            for line in text.split('\n') {
                match boilerplate::line_key(line) {
                    // value: the documents the line is in; threshold: the minimum for boilerplate
                    Some(k) if common.contains_key(&k) => removed_lines.push((
                        line.trim().to_string(),
                        Reason {
                            rule: "boilerplate".into(),
                            value: common[&k] as f64,
                            threshold: self.opts.config.boilerplate.min_documents as f64,
                        },
                    )),
                    _ => kept.push(line),
                }
            }
            if !removed_lines.is_empty() {
                let kept = kept.join("\n");
                if kept.trim().is_empty() {
                    let dropped = Some(Reason {
                        rule: "boilerplate_only".into(),
                        value: 1.0,
                        threshold: 0.0,
                    });
                    return Decision {
                        text: None,
                        removed_lines,
                        dropped,
                    };
                }
                current = Some(kept);
            }
        }
        let outcome = self.opts.config.apply(current.as_deref().unwrap_or(text));
        removed_lines.extend(outcome.removed_lines);
        if outcome.dropped.is_some() {
            return Decision {
                text: None,
                removed_lines,
                dropped: outcome.dropped,
            };
        }
        let text_now = outcome.text;
        if let Some(m) = model {
            let gate = &self.opts.config.quality;
            let score = m.prob(&text_now, &gate.label).unwrap_or(0.0) as f64;
            if score < gate.min_score {
                let dropped = Some(Reason {
                    rule: "quality_score".into(),
                    value: score,
                    threshold: gate.min_score,
                });
                return Decision {
                    text: None,
                    removed_lines,
                    dropped,
                };
            }
        }
        let changed = text_now != text;
        Decision {
            text: changed.then_some(text_now),
            removed_lines,
            dropped: None,
        }
    }

    fn filter_file(
        &self,
        f: usize,
        common: &std::collections::HashMap<u128, u64>,
        model: Option<&FastText>,
    ) -> Result<Stats> {
        let input = &self.files[f];
        rewrite_file(
            input,
            self.out,
            &self.out.join("removed"),
            &self.opts.text_key,
            self.progress,
            |docs, writer, side, stats| {
                let decisions: Vec<Decision> = docs.par_iter().map(|d| self.decide(&d.text, common, model)).collect();
                for (doc, d) in docs.iter().zip(decisions) {
                    self.record(input, doc, d, writer, side, stats)?;
                }
                Ok(())
            },
        )
    }

    fn record(
        &self,
        input: &InputFile,
        doc: &Doc,
        d: Decision,
        writer: &mut DocWriter,
        side: &mut SideWriter,
        stats: &mut Stats,
    ) -> Result<()> {
        stats.read(doc.text.len());
        let rec = |level, r: &Reason, text| FilterRecord {
            file: &input.name,
            line: doc.line,
            level,
            rule: "",
            value: r.value,
            threshold: r.threshold,
            text,
        };
        for (line, r) in &d.removed_lines {
            side.write(&FilterRecord {
                rule: &r.rule,
                ..rec("line", r, line)
            })?;
            stats.removed_part(&r.rule, line.len());
        }
        match (&d.dropped, &d.text) {
            (Some(r), _) => {
                side.write(&FilterRecord {
                    rule: &r.rule,
                    ..rec("document", r, &doc.text)
                })?;
                stats.removed(&r.rule, doc.text.len());
            }
            (None, Some(t)) => {
                writer.write(doc, Some(t))?;
                stats.kept(t.len());
            }
            (None, None) => {
                writer.write(doc, None)?;
                stats.kept(doc.text.len());
            }
        }
        Ok(())
    }
}

/// Runs one stage as task `task` of a multi-process filter run. Returns the merged stats when
/// this task completes the filter stage.
pub fn run_stage(
    opts: &FilterOptions,
    stage: Stage,
    task: Task,
    inputs: &[PathBuf],
    out: &Path,
    work: &Path,
    progress: &Progress,
) -> Result<Option<Stats>> {
    if stage != Stage::Filter && !opts.config.boilerplate.enabled {
        return Err(CurateError::Options(format!(
            "the {stage:?} stage counts boilerplate lines, which the config turns off; HINT: run only --stage filter"
        )));
    }
    let files = stage_inputs(work, inputs, stage == Stage::Lines, "lines", false)?;
    let ctx = Ctx {
        opts,
        files: &files,
        out,
        work,
        progress,
    };
    match stage {
        Stage::Lines => ctx.lines(task).map(|_| None),
        Stage::Boilerplate if task.index == 0 => ctx.boilerplate().map(|_| None),
        Stage::Boilerplate => Ok(None),
        Stage::Filter => {
            let stats = ctx.filter(task)?;
            merge_task_stats(work, out, task, &stats)
        }
    }
}

/// What `run` did.
#[derive(Debug)]
pub struct RunOutcome {
    pub stats: Stats,
    pub up_to_date: bool,
    /// Distinct boilerplate lines found.
    pub boilerplate_lines: usize,
}

/// `baichuan filter` on one machine: every stage in turn, threads within each.
pub fn run(
    opts: &FilterOptions,
    inputs: &[PathBuf],
    out: &Path,
    force: bool,
    progress: &Progress,
) -> Result<RunOutcome> {
    if opts.config.boilerplate.enabled && opts.config.boilerplate.min_documents < 2 {
        return Err(CurateError::Options(
            "boilerplate.min_documents must be at least 2".into(),
        ));
    }
    let files = list_inputs(inputs)?;
    let manifest = RunManifest::new("filter", opts.settings()?, &files);
    if !force && manifest.up_to_date(out) {
        return Ok(RunOutcome {
            stats: read_stats(out)?,
            up_to_date: true,
            boilerplate_lines: 0,
        });
    }
    create_dir(out)?;
    RunManifest::invalidate(out)?;
    let work = out.join("work");
    let _ = fs::remove_dir_all(&work);
    let files = stage_inputs(&work, inputs, true, "lines", false)?;
    let ctx = Ctx {
        opts,
        files: &files,
        out,
        work: &work,
        progress,
    };
    let mut boilerplate_lines = 0;
    if ctx.boilerplate_on() {
        ctx.lines(Task::ALL)?;
        boilerplate_lines = ctx.boilerplate()?;
    }
    let stats = ctx.filter(Task::ALL)?;
    fs::remove_dir_all(&work).map_err(|e| output_err(&work, e))?;
    write_stats(out, &stats)?;
    manifest.write(out)?;
    Ok(RunOutcome {
        stats,
        up_to_date: false,
        boilerplate_lines,
    })
}
