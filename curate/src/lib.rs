//! `baichuan-curate`: the front half of pretraining, from raw text to the clean text that
//! `baichuan prepare` tokenizes. Heuristic filters (Gopher, C4, FineWeb rules with CJK-aware
//! forms) and cross-document boilerplate removal (`filter`), a fastText-format linear quality
//! classifier (`quality`), and exact plus MinHash-LSH near-duplicate removal at document and
//! sentence level, run as independent stages over a shared file system (`dedup`).
//!
//! Follows the Baichuan-7B data recipe (rules and quality-model scores at document and sentence
//! granularity, then LSH deduplication at both granularities), with datatrove's pipeline
//! (signatures, buckets, clusters, filter) as the design peer. Inputs and outputs are the
//! formats the rest of baichuan reads: `.txt` (one document per line) and `.jsonl` with a text
//! key. Every removal is written to a side output with its reason; nothing is lost silently.

#[cfg(feature = "cli")]
pub mod cli;
pub mod corpus;
pub mod dedup;
pub mod filter;
pub mod manifest;
pub mod quality;
pub mod script;
pub mod stats;
pub mod task;

pub use corpus::{InputFile, Progress};
pub use stats::Stats;
pub use task::Task;

/// Errors of the curation crate; each names the file or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum CurateError {
    /// Bad or unreadable input (a corpus file, a model, a config file).
    #[error("{path}: {msg}")]
    Input { path: String, msg: String },
    /// A write under the output directory failed; earlier complete outputs are untouched.
    #[error("{path}: {msg}")]
    Output { path: String, msg: String },
    /// Inconsistent options (flags or config values).
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    FastText(#[from] quality::fasttext::FastTextError),
    #[error(transparent)]
    Data(#[from] baichuan_data::DataError),
}

pub type Result<T> = std::result::Result<T, CurateError>;

pub(crate) fn input_err(path: &std::path::Path, msg: impl std::fmt::Display) -> CurateError {
    CurateError::Input {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

pub(crate) fn output_err(path: &std::path::Path, msg: impl std::fmt::Display) -> CurateError {
    CurateError::Output {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}
