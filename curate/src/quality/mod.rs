//! Quality scores per document: a fastText-format linear classifier trained on positive and
//! negative examples (`fasttext`, the classifier of CCNet/Dolma/FineWeb-Edu style pipelines),
//! and the score files both it and a language model's perplexity (CCNet, Wenzek et al. 2020;
//! computed by `baichuan quality perplexity`) are written to.
//!
//! Scores go to `OUT/<name>.scores.jsonl`, one `{"file", "line", "score", ...}` per document,
//! in a directory marked as a side output so it is never mistaken for a corpus.

pub mod fasttext;

use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::corpus::{list_inputs, AtomicFile, Doc, DocReader, Progress, BATCH_BYTES, SIDE_OUTPUT_MARKER};
use crate::{output_err, CurateError, Result};
use fasttext::{FastText, TrainArgs};

/// The label of positive (high-quality) examples.
pub const POSITIVE: &str = "__label__hq";
/// The label of negative examples.
pub const NEGATIVE: &str = "__label__lq";

/// Documents of `inputs`, at most `limit`.
pub fn read_documents(inputs: &[PathBuf], text_key: &str, limit: usize) -> Result<Vec<String>> {
    let progress = Progress::default();
    let mut out = Vec::new();
    for file in list_inputs(inputs)? {
        let mut reader = DocReader::open(&file, text_key)?;
        loop {
            let docs = reader.next_batch(BATCH_BYTES, &progress)?;
            if docs.is_empty() || out.len() >= limit {
                break;
            }
            out.extend(docs.into_iter().map(|d| d.text));
        }
    }
    out.truncate(limit);
    Ok(out)
}

/// How training went: examples and the accuracy on every tenth example, held out.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub positives: usize,
    pub negatives: usize,
    pub held_out: usize,
    pub held_out_accuracy: f64,
}

/// Trains a two-label classifier (`__label__hq` for `positive`, `__label__lq` for
/// `negative`), holding out every tenth example of each to measure accuracy.
pub fn train(positive: &[String], negative: &[String], args: &TrainArgs) -> Result<(FastText, TrainReport)> {
    if positive.is_empty() || negative.is_empty() {
        return Err(CurateError::Options(
            "training needs positive and negative documents; HINT: pass non-empty --positive and --negative".into(),
        ));
    }
    let labels = vec![POSITIVE.to_string(), NEGATIVE.to_string()];
    let mut train_set = Vec::new();
    let mut held = Vec::new();
    for (label, docs) in [(0usize, positive), (1, negative)] {
        for (i, d) in docs.iter().enumerate() {
            if i % 10 == 9 {
                held.push((label, d.as_str()));
            } else {
                train_set.push((label, d.as_str()));
            }
        }
    }
    // Interleave the classes in a seeded order: SGD sees both throughout.
    let mut keyed: Vec<(u64, (usize, &str))> = train_set
        .into_iter()
        .enumerate()
        .map(|(i, e)| (baichuan_data::hash::splitmix64(args.seed ^ i as u64), e))
        .collect();
    keyed.sort_unstable_by_key(|(k, _)| *k);
    let examples: Vec<(usize, &str)> = keyed.into_iter().map(|(_, e)| e).collect();
    let model = FastText::train(&examples, &labels, args)?;
    let correct = held
        .par_iter()
        .filter(|(label, text)| {
            let p = model.prob(text, POSITIVE).unwrap_or(0.0);
            (p >= 0.5) == (*label == 0)
        })
        .count();
    let report = TrainReport {
        positives: positive.len(),
        negatives: negative.len(),
        held_out: held.len(),
        held_out_accuracy: correct as f64 / held.len().max(1) as f64,
    };
    Ok((model, report))
}

/// Summary of a scoring run: documents and score quantiles (p10, p30, p50, p70, p90).
#[derive(Debug, Clone, Serialize)]
pub struct ScoreSummary {
    pub files: usize,
    pub documents: u64,
    pub mean: f64,
    pub quantiles: [f64; 5],
}

#[derive(Serialize)]
struct ScoreRecord<'a> {
    file: &'a str,
    line: u32,
    score: f64,
}

/// Scores every document of `inputs` with `scorer` (called on batches, in order) into
/// `out/<name>.scores.jsonl`.
pub fn write_scores(
    inputs: &[PathBuf],
    out: &Path,
    text_key: &str,
    progress: &Progress,
    mut scorer: impl FnMut(&[Doc]) -> Result<Vec<f64>>,
) -> Result<ScoreSummary> {
    let files = list_inputs(inputs)?;
    fs::create_dir_all(out).map_err(|e| output_err(out, e))?;
    let marker = out.join(SIDE_OUTPUT_MARKER);
    fs::write(&marker, "quality scores of baichuan quality, not a corpus\n").map_err(|e| output_err(&marker, e))?;
    progress.start("scoring", files.iter().map(|f| f.bytes).sum());
    let mut all = Vec::new();
    for file in &files {
        let stem = file
            .name
            .strip_suffix(".txt")
            .or(file.name.strip_suffix(".jsonl"))
            .unwrap_or(&file.name);
        let mut w = AtomicFile::create(&out.join(format!("{stem}.scores.jsonl")))?;
        let mut reader = DocReader::open(file, text_key)?;
        loop {
            let docs = reader.next_batch(1 << 20, progress)?;
            if docs.is_empty() {
                break;
            }
            let scores = scorer(&docs)?;
            for (d, &score) in docs.iter().zip(&scores) {
                let mut line = serde_json::to_vec(&ScoreRecord {
                    file: &file.name,
                    line: d.line,
                    score,
                })
                .map_err(|e| output_err(out, e))?;
                line.push(b'\n');
                w.write_all(&line)?;
                all.push(score);
            }
        }
        w.finish()?;
    }
    all.retain(|s| s.is_finite());
    Ok(summarize(files.len(), &mut all))
}

fn summarize(files: usize, scores: &mut [f64]) -> ScoreSummary {
    scores.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if scores.is_empty() {
            f64::NAN
        } else {
            scores[((scores.len() - 1) as f64 * p).round() as usize]
        }
    };
    ScoreSummary {
        files,
        documents: scores.len() as u64,
        mean: scores.iter().sum::<f64>() / scores.len().max(1) as f64,
        quantiles: [q(0.1), q(0.3), q(0.5), q(0.7), q(0.9)],
    }
}

/// Scores with a fastText model: the probability of `label`, in parallel over each batch.
pub fn score_with_model(
    model: &FastText,
    label: &str,
    inputs: &[PathBuf],
    out: &Path,
    text_key: &str,
    progress: &Progress,
) -> Result<ScoreSummary> {
    if !model.labels().iter().any(|l| l == label) {
        return Err(CurateError::Options(format!(
            "the model has no label {label:?} (it has {:?}); HINT: pass --label",
            model.labels()
        )));
    }
    write_scores(inputs, out, text_key, progress, |docs| {
        Ok(docs
            .par_iter()
            .map(|d| model.prob(&d.text, label).unwrap_or(0.0) as f64)
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_list() {
        let mut s: Vec<f64> = (0..11).map(f64::from).collect();
        let q = summarize(1, &mut s);
        assert_eq!(q.quantiles, [1.0, 3.0, 5.0, 7.0, 9.0]);
        assert_eq!(q.mean, 5.0);
    }
}
