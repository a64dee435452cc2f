//! The Baichuan SentencePiece tokenizer (BPE, 64000 pieces, byte fallback) through the
//! `sentencepiece` crate, which wraps Google's C++ library: the same code Python's
//! `sentencepiece` runs, so ids agree exactly.
//!
//! Training text follows the reference: no BOS, EOS appended after each document.

use std::path::{Path, PathBuf};

use sentencepiece::SentencePieceProcessor;

use crate::bpe::Bpe;
use crate::DataError;

/// A loaded SentencePiece model. Encoding uses the native BPE encoder ([`Bpe`]) when the
/// model is of the kind it covers (Baichuan's is), else the C++ library.
pub struct Tokenizer {
    sp: SentencePieceProcessor,
    fast: Option<Bpe>,
    path: PathBuf,
    eos: u32,
    bos: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Opens a `tokenizer.model`; the error names the file and how to get one.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        if !path.is_file() {
            return Err(DataError::Input {
                path: path.display().to_string(),
                msg: "tokenizer model not found; HINT: scripts/setup.sh builds the Baichuan-7B \
                      tokenizer into assets/tokenizer.model, and model directories carry one"
                    .into(),
            });
        }
        let sp = SentencePieceProcessor::open(path).map_err(|e| DataError::Input {
            path: path.display().to_string(),
            msg: format!("not a SentencePiece model: {e}"),
        })?;
        let eos = sp.eos_id().unwrap_or(2);
        let bos = sp.bos_id().unwrap_or(1);
        let fast = Bpe::from_proto(&sp.to_serialized_proto());
        Ok(Tokenizer {
            sp,
            fast,
            path: path.to_path_buf(),
            eos,
            bos,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn vocab_size(&self) -> usize {
        self.sp.len()
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The id of `<unk>`.
    pub fn unk_id(&self) -> u32 {
        self.sp.unk_id()
    }

    /// Ids of the byte-fallback pieces `<0x00>`..`<0xFF>` the model has (none without byte fallback).
    pub fn byte_piece_ids(&self) -> Vec<u32> {
        (0..=255u8)
            .filter_map(|b| self.sp.piece_to_id(&format!("<0x{b:02X}>")).ok().flatten())
            .collect()
    }

    /// Token ids of `text` (no BOS, no EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match &self.fast {
            Some(bpe) => {
                let mut ids = Vec::with_capacity(text.len() / 2 + 1);
                bpe.encode(text, &mut ids);
                Ok(ids)
            }
            None => self.encode_with_library(text),
        }
    }

    /// Token ids through Google's C++ library, whatever the model.
    pub fn encode_with_library(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let pieces = self.sp.encode(text).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(pieces.into_iter().map(|p| p.id).collect())
    }

    /// Whether the native encoder serves this model.
    pub fn is_native(&self) -> bool {
        self.fast.is_some()
    }

    /// Pieces of `text`, for inspection (`baichuan tokenize --pieces`).
    pub fn encode_pieces(&self, text: &str) -> Result<Vec<(u32, String)>, DataError> {
        let pieces = self.sp.encode(text).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(pieces.into_iter().map(|p| (p.id, p.piece)).collect())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(DataError::Tokenizer(format!(
                "id {bad} is outside the vocabulary of {} ({})",
                self.vocab_size(),
                self.path.display()
            )));
        }
        self.sp
            .decode_piece_ids(ids)
            .map_err(|e| DataError::Tokenizer(e.to_string()))
    }

    /// Appends a training document to `out`: its ids followed by EOS.
    pub fn encode_document_into(&self, text: &str, out: &mut Vec<u32>) -> Result<(), DataError> {
        match &self.fast {
            Some(bpe) => bpe.encode(text, out),
            None => out.extend(self.encode_with_library(text)?),
        }
        out.push(self.eos);
        Ok(())
    }

    /// A training document: its ids followed by EOS.
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::new();
        self.encode_document_into(text, &mut ids)?;
        Ok(ids)
    }
}
