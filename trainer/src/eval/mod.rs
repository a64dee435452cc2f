//! Evaluation of a trained model: few-shot multiple choice in the layouts and prompts of the
//! reference's C-Eval and MMLU scripts ([`mc`], with the subject tables of [`subjects`]), and of
//! GAOKAO-Bench and AGIEval as the Baichuan-7B report keeps them ([`exams`]), and
//! perplexity on text or token shards ([`ppl`]).

pub mod exams;
pub mod mc;
pub mod ppl;
pub mod probe;
pub mod subjects;

use std::path::{Path, PathBuf};

pub use exams::{load_exam, FileCount};
pub use mc::*;
pub use ppl::{loss_by_position, perplexity, PositionBucket, PositionOptions, PositionReport, PplReport};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Data { path: PathBuf, what: String },
    #[error("{0}")]
    Tokenizer(#[from] baichuan_data::DataError),
}

pub(crate) fn data_err(path: &Path, what: impl Into<String>) -> EvalError {
    EvalError::Data {
        path: path.to_path_buf(),
        what: what.into(),
    }
}
