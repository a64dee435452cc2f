//! `baichuan-data`: the SentencePiece tokenizer, raw text corpora to token streams, and the
//! deterministic, resumable sample order that slices global batches over ranks.

pub mod bpe;
pub mod hash;
pub mod loader;
pub mod mixture;
pub mod prepare;
pub mod shard;
pub mod spm_train;
pub mod text;
pub mod tokenizer;
pub mod tokenizer_stats;

pub use loader::{Batch, Interleaved, Loader, LoaderState, Prefetcher, SampleOrder, TokenRange, TokenSource};
pub use mixture::{Mixture, SourceState};
pub use tokenizer::Tokenizer;

/// Errors of the data crate; each names the file or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {msg}")]
    Input { path: String, msg: String },
    #[error("data config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
