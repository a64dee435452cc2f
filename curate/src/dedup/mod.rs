//! `baichuan dedup`: exact and MinHash-LSH near-duplicate removal at document and sentence
//! level, as four stages whose tasks are independent processes sharing a work directory
//! (datatrove's MinhashDedup design: signatures, buckets, clusters, filter):
//!
//! 1. **signatures** (task per group of files): per item (document or sentence), the exact key
//!    of its normalised text and one key per LSH band, buffered and written as sorted runs
//!    `work/sig/bBBB/tIIIIIofNNNNN-rRRRRR.run` whenever the buffer reaches its memory budget.
//! 2. **buckets** (task per band): a k-way merge of the band's runs; every item whose key
//!    matches an earlier item's yields an edge to the first item of that key.
//! 3. **clusters** (one task): union-find over the edges, the root being the first item of the
//!    cluster in corpus order; per input file, the sorted list of items to remove.
//! 4. **write** (task per group of files): streams each input file and writes the survivors
//!    under the same name, the removed text with its cluster's representative to
//!    `OUT/removed/`, and per-task stats that the last task to finish merges.
//!
//! Memory is the run buffer in stage 1, one merge heap in stage 2 and the duplicate items in
//! stage 3, so it does not grow with the corpus beyond that. The representative of a cluster is
//! its first item in corpus order and items are numbered by (file, line, sentence), so the
//! result is the same for any number of tasks or threads.

pub mod minhash;
pub mod records;
pub mod sentence;

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::corpus::{
    list_inputs, rewrite_file, stage_inputs, write_atomic, Doc, DocReader, DocWriter, InputFile, Progress, SideWriter,
    BATCH_BYTES,
};
use crate::manifest::{merge_task_stats, read_stats, write_stats, RunManifest};
use crate::{input_err, output_err, CurateError, Result, Stats, Task};
use minhash::{exact_key, units, LshParams, MinHasher};
use records::{create_dir, ItemId, Removal};

/// Which granularity to deduplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Document,
    Sentence,
    /// Documents first, then sentences of the surviving documents.
    Both,
}

/// One stage of a multi-process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Signatures,
    Buckets,
    Clusters,
    Write,
}

/// Settings of a dedup run (all but the memory budget are recorded in the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DedupOptions {
    pub level: Level,
    pub lsh: LshParams,
    /// Sentences shorter than this many units (words; a CJK character counts as one) are
    /// neither deduplicated nor used as representatives.
    pub min_sentence_units: usize,
    pub text_key: String,
    /// Buffer of signature records per task before a sorted run goes to disk.
    #[serde(skip)]
    pub memory_mb: usize,
}

impl Default for DedupOptions {
    fn default() -> Self {
        DedupOptions {
            level: Level::Document,
            lsh: LshParams::DEFAULT,
            min_sentence_units: 10,
            text_key: "text".into(),
            memory_mb: 256,
        }
    }
}

/// Where one pipeline reads and writes.
struct Ctx<'a> {
    opts: &'a DedupOptions,
    level: Level,
    files: &'a [InputFile],
    out: &'a Path,
    work: &'a Path,
    removed: &'a Path,
    progress: &'a Progress,
}

impl Ctx<'_> {
    fn exact_band(&self) -> usize {
        self.opts.lsh.bands
    }

    fn band_dir(&self, band: usize) -> PathBuf {
        self.work.join("sig").join(format!("b{band:03}"))
    }

    fn edges_path(&self, band: usize) -> PathBuf {
        self.work.join("edges").join(format!("b{band:03}.edges"))
    }

    fn removals_path(&self, file: usize) -> PathBuf {
        self.work.join("clusters").join(format!("f{file:06}.rm"))
    }

    /// Items of one document and their keys (exact key last).
    fn keys(&self, hasher: &MinHasher, file: usize, doc: &Doc) -> Vec<(ItemId, Vec<u128>)> {
        let item = |sent: usize| ItemId {
            file: file as u32,
            line: doc.line,
            sent: sent as u32,
        };
        let keys_of = |text: &str, min_units: usize| -> Option<Vec<u128>> {
            let u = units(text);
            if u.is_empty() || u.len() < min_units {
                return None;
            }
            let mut keys = hasher.band_keys(&hasher.signature(&hasher.shingle_hashes(&u)));
            keys.push(exact_key(&u));
            Some(keys)
        };
        match self.level {
            Level::Sentence => sentence::sentence_spans(&doc.text)
                .into_iter()
                .enumerate()
                .filter_map(|(s, span)| {
                    keys_of(&doc.text[span], self.opts.min_sentence_units.max(1)).map(|k| (item(s), k))
                })
                .collect(),
            _ => keys_of(&doc.text, 1).map(|k| (item(0), k)).into_iter().collect(),
        }
    }

    /// Stage 1 for `task`.
    fn signatures(&self, task: Task) -> Result<()> {
        let hasher = MinHasher::new(self.opts.lsh);
        let nb = self.opts.lsh.bands + 1;
        let prefix = format!("t{:05}of{:05}-", task.index, task.count);
        for band in 0..nb {
            records::clear_task_runs(&self.band_dir(band), task)?;
        }
        let budget = (self.opts.memory_mb.max(1) << 20) / 28;
        let mut bufs: Vec<Vec<(u128, ItemId)>> = vec![Vec::new(); nb];
        let mut buffered = 0usize;
        let mut runs = 0usize;
        let flush = |bufs: &mut Vec<Vec<(u128, ItemId)>>, runs: &mut usize| -> Result<()> {
            bufs.par_iter_mut().enumerate().try_for_each(|(band, buf)| {
                let path = self.band_dir(band).join(format!("{prefix}r{:05}.run", *runs));
                records::write_run(&path, buf)?;
                buf.clear();
                Ok::<(), CurateError>(())
            })?;
            *runs += 1;
            Ok(())
        };
        let mine = task.files(self.files);
        self.progress
            .start("signatures", mine.iter().map(|&f| self.files[f].bytes).sum());
        for f in mine {
            let mut reader = DocReader::open(&self.files[f], &self.opts.text_key)?;
            loop {
                let docs = reader.next_batch(BATCH_BYTES, self.progress)?;
                if docs.is_empty() {
                    break;
                }
                let keyed: Vec<Vec<(ItemId, Vec<u128>)>> = docs.par_iter().map(|d| self.keys(&hasher, f, d)).collect();
                for (item, keys) in keyed.into_iter().flatten() {
                    for (band, key) in keys.into_iter().enumerate() {
                        bufs[band].push((key, item));
                    }
                    buffered += nb;
                }
                if buffered >= budget {
                    flush(&mut bufs, &mut runs)?;
                    buffered = 0;
                }
            }
        }
        if buffered > 0 || runs == 0 {
            flush(&mut bufs, &mut runs)?;
        }
        write_atomic(
            &task.done_marker(&self.work.join("sig")),
            format!("{runs} runs\n").as_bytes(),
        )
    }

    /// Stage 2 for the bands `task` owns (in parallel).
    fn buckets(&self, task: Task) -> Result<()> {
        let n = crate::task::finished_tasks(&self.work.join("sig"), "signatures")?;
        let tag = format!("of{n:05}-");
        let nb = self.opts.lsh.bands + 1;
        let bands: Vec<usize> = (0..nb).filter(|&b| task.owns(b)).collect();
        self.progress.start("buckets", bands.len() as u64);
        bands.par_iter().try_for_each(|&band| {
            let runs: Vec<PathBuf> = records::run_files(&self.band_dir(band))?
                .into_iter()
                .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().contains(&tag)))
                .collect();
            create_dir(&self.work.join("edges"))?;
            let mut edges = records::EdgeWriter::create(&self.edges_path(band))?;
            records::merge_runs(&runs, |items| {
                for &it in &items[1..] {
                    edges.push(it, items[0])?;
                }
                Ok(())
            })?;
            edges.finish()?;
            self.progress.bytes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
    }

    /// Stage 3 (one task).
    fn clusters(&self) -> Result<()> {
        let nb = self.opts.lsh.bands + 1;
        let mut all = records::Clusters::default();
        let mut exact = records::Clusters::default();
        for band in 0..nb {
            let path = self.edges_path(band);
            if !path.exists() {
                return Err(input_err(
                    &path,
                    "missing; HINT: the buckets stage has not finished every band",
                ));
            }
            records::read_edges(&path, |a, rep| {
                all.union(a, rep);
                if band == self.exact_band() {
                    exact.union(a, rep);
                }
            })?;
        }
        let dir = self.work.join("clusters");
        let _ = fs::remove_dir_all(&dir);
        create_dir(&dir)?;
        let members = all.members();
        let mut start = 0;
        while start < members.len() {
            let file = members[start].0.file;
            let end = start + members[start..].iter().take_while(|(it, _)| it.file == file).count();
            let removals: Vec<Removal> = members[start..end]
                .iter()
                .map(|&(item, rep)| Removal {
                    item,
                    rep,
                    exact: exact.find(item) == rep,
                })
                .collect();
            records::write_removals(&self.removals_path(file as usize), &removals)?;
            start = end;
        }
        write_atomic(&dir.join("done"), format!("{} removals\n", members.len()).as_bytes())
    }

    /// Stage 4 for `task`; returns this task's stats.
    fn write(&self, task: Task) -> Result<Stats> {
        let done = self.work.join("clusters").join("done");
        if !done.exists() {
            return Err(input_err(&done, "missing; HINT: run the clusters stage first"));
        }
        let mine = task.files(self.files);
        self.progress
            .start("write", mine.iter().map(|&f| self.files[f].bytes).sum());
        let per_file = mine
            .par_iter()
            .map(|&f| self.write_file(f))
            .collect::<Result<Vec<Stats>>>()?;
        let mut stats = Stats::default();
        for s in &per_file {
            stats.merge(s);
        }
        Ok(stats)
    }

    fn write_file(&self, f: usize) -> Result<Stats> {
        let input = &self.files[f];
        let removals = records::read_removals(&self.removals_path(f))?;
        let mut next = 0;
        let sentence = self.level == Level::Sentence;
        rewrite_file(
            input,
            self.out,
            self.removed,
            &self.opts.text_key,
            self.progress,
            |docs, writer, side, stats| {
                for doc in docs {
                    stats.read(doc.text.len());
                    while next < removals.len() && removals[next].item.line < doc.line {
                        next += 1;
                    }
                    let start = next;
                    while next < removals.len() && removals[next].item.line == doc.line {
                        next += 1;
                    }
                    let mine = &removals[start..next];
                    if mine.is_empty() {
                        writer.write(doc, None)?;
                        stats.kept(doc.text.len());
                    } else if !sentence {
                        let r = mine[0];
                        let rule = if r.exact { "exact_duplicate" } else { "near_duplicate" };
                        side.write(&self.record(input, doc, None, rule, r.rep, &doc.text))?;
                        stats.removed(rule, doc.text.len());
                    } else {
                        self.write_without_sentences(input, doc, mine, writer, side, stats)?;
                    }
                }
                Ok(())
            },
        )
    }

    fn write_without_sentences(
        &self,
        input: &InputFile,
        doc: &Doc,
        removals: &[Removal],
        writer: &mut DocWriter,
        side: &mut SideWriter,
        stats: &mut Stats,
    ) -> Result<()> {
        let spans = sentence::sentence_spans(&doc.text);
        let mut kept = String::with_capacity(doc.text.len());
        let mut k = 0;
        for (s, span) in spans.into_iter().enumerate() {
            let sent = &doc.text[span];
            if k < removals.len() && removals[k].item.sent as usize == s {
                let r = removals[k];
                k += 1;
                let rule = if r.exact {
                    "exact_duplicate_sentence"
                } else {
                    "near_duplicate_sentence"
                };
                side.write(&self.record(input, doc, Some(s as u32), rule, r.rep, sent))?;
                stats.removed_part(rule, sent.len());
            } else {
                kept.push_str(sent);
            }
        }
        if units(&kept).is_empty() {
            side.write(&self.record(input, doc, None, "only_duplicate_sentences", removals[0].rep, &kept))?;
            stats.removed("only_duplicate_sentences", kept.len());
        } else {
            let text = kept.trim_end();
            writer.write(doc, Some(text))?;
            stats.kept(text.len());
        }
        Ok(())
    }

    fn record<'a>(
        &'a self,
        input: &'a InputFile,
        doc: &Doc,
        sentence: Option<u32>,
        rule: &'a str,
        rep: ItemId,
        text: &'a str,
    ) -> DupRecord<'a> {
        let sentence_level = self.level == Level::Sentence;
        DupRecord {
            file: &input.name,
            line: doc.line,
            sentence,
            rule,
            duplicate_of: Location {
                file: &self.files[rep.file as usize].name,
                line: rep.line,
                sentence: sentence_level.then_some(rep.sent),
            },
            text,
        }
    }
}

/// A removed document or sentence in `OUT/removed/<name>.jsonl`.
#[derive(Debug, Serialize)]
struct DupRecord<'a> {
    file: &'a str,
    line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    sentence: Option<u32>,
    rule: &'a str,
    duplicate_of: Location<'a>,
    text: &'a str,
}

#[derive(Debug, Serialize)]
struct Location<'a> {
    file: &'a str,
    line: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    sentence: Option<u32>,
}

/// Runs one stage of a multi-process dedup as task `task` (document or sentence level).
/// Returns the merged stats when this task completes the write stage.
pub fn run_stage(
    opts: &DedupOptions,
    stage: Stage,
    task: Task,
    inputs: &[PathBuf],
    out: &Path,
    work: &Path,
    progress: &Progress,
) -> Result<Option<Stats>> {
    opts.lsh.validate()?;
    if opts.level == Level::Both {
        return Err(CurateError::Options(
            "--stage runs one level; HINT: run the document stages into one directory, then the sentence stages on it"
                .into(),
        ));
    }
    let files = stage_inputs(work, inputs, stage == Stage::Signatures, "signatures", true)?;
    let removed = out.join("removed");
    let ctx = Ctx {
        opts,
        level: opts.level,
        files: &files,
        out,
        work,
        removed: &removed,
        progress,
    };
    match stage {
        Stage::Signatures => ctx.signatures(task).map(|_| None),
        Stage::Buckets => ctx.buckets(task).map(|_| None),
        Stage::Clusters if task.index == 0 => ctx.clusters().map(|_| None),
        Stage::Clusters => Ok(None),
        Stage::Write => {
            let stats = ctx.write(task)?;
            merge_task_stats(work, out, task, &stats)
        }
    }
}

/// One level on one machine: every stage in turn, threads within each.
fn pipeline(
    opts: &DedupOptions,
    level: Level,
    inputs: &[PathBuf],
    out: &Path,
    work: &Path,
    removed: &Path,
    progress: &Progress,
) -> Result<Stats> {
    let files = stage_inputs(work, inputs, true, "signatures", true)?;
    let ctx = Ctx {
        opts,
        level,
        files: &files,
        out,
        work,
        removed,
        progress,
    };
    ctx.signatures(Task::ALL)?;
    ctx.buckets(Task::ALL)?;
    ctx.clusters()?;
    ctx.write(Task::ALL)
}

/// What `run` did.
#[derive(Debug)]
pub struct RunOutcome {
    pub stats: Stats,
    /// The manifest matched: nothing was redone.
    pub up_to_date: bool,
}

/// `baichuan dedup` on one machine: all stages, with rayon's threads.
pub fn run(
    opts: &DedupOptions,
    inputs: &[PathBuf],
    out: &Path,
    force: bool,
    keep_work: bool,
    progress: &Progress,
) -> Result<RunOutcome> {
    opts.lsh.validate()?;
    let files = list_inputs(inputs)?;
    let settings = serde_json::to_value(opts).map_err(|e| CurateError::Options(e.to_string()))?;
    let manifest = RunManifest::new("dedup", settings, &files);
    if !force && manifest.up_to_date(out) {
        return Ok(RunOutcome {
            stats: read_stats(out)?,
            up_to_date: true,
        });
    }
    create_dir(out)?;
    RunManifest::invalidate(out)?;
    let work = out.join("work");
    let _ = fs::remove_dir_all(&work);
    let removed = out.join("removed");
    let stats = match opts.level {
        Level::Both => {
            let mid = work.join("documents");
            let first = pipeline(
                opts,
                Level::Document,
                inputs,
                &mid,
                &work.join("document"),
                &removed.join("document"),
                progress,
            )?;
            let second = pipeline(
                opts,
                Level::Sentence,
                std::slice::from_ref(&mid),
                out,
                &work.join("sentence"),
                &removed.join("sentence"),
                progress,
            )?;
            first.then(&second)
        }
        level => pipeline(opts, level, inputs, out, &work, &removed, progress)?,
    };
    if !keep_work {
        fs::remove_dir_all(&work).map_err(|e| output_err(&work, e))?;
    }
    write_stats(out, &stats)?;
    manifest.write(out)?;
    Ok(RunOutcome {
        stats,
        up_to_date: false,
    })
}
