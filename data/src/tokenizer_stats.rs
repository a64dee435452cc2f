//! `baichuan tokenizer stats`: what Baichuan-7B's tokenizer table reports (tokens per character,
//! its "compression rate": 0.737 for Baichuan-7B against 1.312 for LLaMA on its corpus), with bytes
//! per token, the share of byte-fallback tokens, `<unk>` count, pieces never used, and encoding
//! speed, per tokenizer and input file.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::spm_train::for_each_document;
use crate::{DataError, Tokenizer};

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
pub fn measure(tok: &Tokenizer, files: &[PathBuf], text_key: &str) -> Result<TokenizerStats, DataError> {
    let bytes_ids = tok.byte_piece_ids();
    let mut is_byte = vec![false; tok.vocab_size()];
    for id in bytes_ids {
        is_byte[id as usize] = true;
    }
    let unk = tok.unk_id();
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
