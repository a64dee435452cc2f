//! `baichuan tokenizer stats`: what Baichuan-7B's tokenizer table reports (tokens per character,
//! its "compression rate": 0.737 for Baichuan-7B against 1.312 for LLaMA on its corpus), with bytes
//! per token, the share of byte-fallback tokens, `<unk>` count, pieces never used, and encoding
//! speed, per tokenizer and input file. Reads SentencePiece models (`tokenizer.model`, through our
//! encoder) and Hugging Face `tokenizer.json` files (through the `tokenizers` crate), so families
//! without a SentencePiece model (GPT-2-style byte-level BPE: Falcon, MPT, ...) compare too.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::spm_train::for_each_document;
use crate::{DataError, Tokenizer};

/// A tokenizer of either kind.
pub enum AnyTokenizer {
    SentencePiece(Box<Tokenizer>),
    HuggingFace {
        tok: Box<tokenizers::Tokenizer>,
        path: PathBuf,
    },
}

impl AnyTokenizer {
    /// A `.json` file is a Hugging Face tokenizer; anything else a SentencePiece model.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        if path.extension().is_some_and(|e| e == "json") {
            let tok = tokenizers::Tokenizer::from_file(path).map_err(|e| DataError::Input {
                path: path.display().to_string(),
                msg: format!("not a Hugging Face tokenizer.json: {e}"),
            })?;
            return Ok(AnyTokenizer::HuggingFace {
                tok: Box::new(tok),
                path: path.to_path_buf(),
            });
        }
        Ok(AnyTokenizer::SentencePiece(Box::new(Tokenizer::open(path)?)))
    }

    pub fn path(&self) -> &Path {
        match self {
            AnyTokenizer::SentencePiece(t) => t.path(),
            AnyTokenizer::HuggingFace { path, .. } => path,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            AnyTokenizer::SentencePiece(t) => t.vocab_size(),
            AnyTokenizer::HuggingFace { tok, .. } => tok.get_vocab_size(true),
        }
    }

    /// Ids of `text`, without BOS, EOS or any other added special token.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            AnyTokenizer::SentencePiece(t) => t.encode(text),
            AnyTokenizer::HuggingFace { tok, .. } => tok
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| DataError::Tokenizer(e.to_string())),
        }
    }

    fn unk_id(&self) -> Option<u32> {
        match self {
            AnyTokenizer::SentencePiece(t) => Some(t.unk_id()),
            AnyTokenizer::HuggingFace { tok, .. } => tok.token_to_id("<unk>"),
        }
    }

    fn byte_piece_ids(&self) -> Vec<u32> {
        match self {
            AnyTokenizer::SentencePiece(t) => t.byte_piece_ids(),
            AnyTokenizer::HuggingFace { tok, .. } => (0..=255u8)
                .filter_map(|b| tok.token_to_id(&format!("<0x{b:02X}>")))
                .collect(),
        }
    }
}

/// One tokenizer on one file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileStats {
    pub file: String,
    pub documents: u64,
    pub chars: u64,
    pub bytes: u64,
    pub tokens: u64,
    pub byte_tokens: u64,
    pub unk_tokens: u64,
    /// Seconds spent encoding (not reading).
    pub seconds: f64,
}

impl FileStats {
    pub fn tokens_per_char(&self) -> f64 {
        self.tokens as f64 / self.chars.max(1) as f64
    }

    pub fn bytes_per_token(&self) -> f64 {
        self.bytes as f64 / self.tokens.max(1) as f64
    }

    pub fn byte_token_share(&self) -> f64 {
        self.byte_tokens as f64 / self.tokens.max(1) as f64
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// One tokenizer over every file: per-file stats, the total, and pieces never produced.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizerStats {
    pub tokenizer: String,
    pub vocab_size: usize,
    pub files: Vec<FileStats>,
    pub total: FileStats,
    pub unused_pieces: usize,
}

/// Encodes every document of `files` with `tok` (no BOS or EOS) and counts.
pub fn measure(tok: &AnyTokenizer, files: &[PathBuf], text_key: &str) -> Result<TokenizerStats, DataError> {
    let bytes_ids = tok.byte_piece_ids();
    let mut is_byte = vec![false; tok.vocab_size()];
    for id in bytes_ids {
        is_byte[id as usize] = true;
    }
    let unk = tok.unk_id().unwrap_or(u32::MAX);
    let mut used = vec![false; tok.vocab_size()];
    let mut out = Vec::new();
    let mut total = FileStats {
        file: "all".into(),
        ..FileStats::default()
    };
    for path in files {
        let mut s = FileStats {
            file: path.display().to_string(),
            ..FileStats::default()
        };
        let mut failure = None;
        for_each_document(
            std::slice::from_ref(path),
            text_key,
            |doc| {
                let start = Instant::now();
                match tok.encode(doc) {
                    Ok(ids) => {
                        s.seconds += start.elapsed().as_secs_f64();
                        s.documents += 1;
                        s.chars += doc.chars().count() as u64;
                        s.bytes += doc.len() as u64;
                        s.tokens += ids.len() as u64;
                        for &id in &ids {
                            let id = id as usize;
                            if id < used.len() {
                                used[id] = true;
                                s.byte_tokens += is_byte[id] as u64;
                            }
                            s.unk_tokens += (id as u32 == unk) as u64;
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            },
            |_| {},
        )?;
        if let Some(e) = failure {
            return Err(e);
        }
        total.documents += s.documents;
        total.chars += s.chars;
        total.bytes += s.bytes;
        total.tokens += s.tokens;
        total.byte_tokens += s.byte_tokens;
        total.unk_tokens += s.unk_tokens;
        total.seconds += s.seconds;
        out.push(s);
    }
    Ok(TokenizerStats {
        tokenizer: tok.path().display().to_string(),
        vocab_size: tok.vocab_size(),
        files: out,
        total,
        unused_pieces: used.iter().filter(|u| !**u).count(),
    })
}
