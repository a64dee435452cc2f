//! Raw text corpora to a token stream: a directory (or list) of UTF-8 `.txt` files, one
//! document per line as the reference's `data_dir`, or JSONL with a `text` field.
//!
//! Each non-empty line becomes its ids followed by EOS (no BOS), as the reference's
//! train.py does. Unlike the reference, invalid UTF-8 is repaired (U+FFFD) and counted rather
//! than silently dropped, and nothing is discarded between documents or files. Files are
//! tokenized in parallel (one thread per core) and concatenated in sorted path order.

use std::fs;
use std::path::{Path, PathBuf};

use crate::tokenizer::Tokenizer;
use crate::DataError;

/// Counts reported after tokenizing.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TextStats {
    pub files: usize,
    pub bytes: u64,
    pub documents: u64,
    pub tokens: u64,
    pub empty_lines: u64,
    pub invalid_utf8_lines: u64,
}

/// A directory holding a file of this name is skipped when listing inputs: the side outputs of
/// `baichuan filter` and `baichuan dedup` (removed text and reasons) live in one.
pub const SIDE_OUTPUT_MARKER: &str = ".baichuan-side-output";

/// Expands files and directories (recursively, `.txt`/`.jsonl` files) into a sorted list,
/// skipping directories marked with [`SIDE_OUTPUT_MARKER`].
pub fn list_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).map_err(|e| DataError::Input {
            path: input.display().to_string(),
            msg: format!("{e}; HINT: check data.path"),
        })?;
        if meta.is_dir() {
            let mut stack = vec![input.clone()];
            while let Some(dir) = stack.pop() {
                if dir.join(SIDE_OUTPUT_MARKER).exists() {
                    continue;
                }
                let entries = fs::read_dir(&dir).map_err(|e| DataError::Input {
                    path: dir.display().to_string(),
                    msg: e.to_string(),
                })?;
                for entry in entries {
                    let path = entry
                        .map_err(|e| DataError::Input {
                            path: dir.display().to_string(),
                            msg: e.to_string(),
                        })?
                        .path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "jsonl")) {
                        out.push(path);
                    }
                }
            }
        } else {
            out.push(input.clone());
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(DataError::Input {
            path: inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            msg: "no .txt or .jsonl files found; HINT: point data.path at a directory of UTF-8 text files".into(),
        });
    }
    Ok(out)
}

/// The document texts of one line: the line itself (`.txt`) or its JSON `text_key` field.
fn document_of(
    line: &str,
    jsonl: bool,
    text_key: &str,
    path: &Path,
    lineno: usize,
) -> Result<Option<String>, DataError> {
    if !jsonl {
        return Ok(Some(line.to_string()));
    }
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| DataError::Input {
        path: format!("{}:{lineno}", path.display()),
        msg: format!("invalid JSON line: {e}"),
    })?;
    match value.get(text_key) {
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        _ => Err(DataError::Input {
            path: format!("{}:{lineno}", path.display()),
            msg: format!("no string field {text_key:?}; HINT: pass the right key (--text-key)"),
        }),
    }
}

/// Tokenizes newline-separated lines into documents (ids + EOS each). `first_line` is the
/// 1-based line number of the first line in `path`, for error messages.
pub fn tokenize_lines(
    tok: &Tokenizer,
    bytes: &[u8],
    jsonl: bool,
    text_key: &str,
    path: &Path,
    first_line: usize,
) -> Result<(Vec<u32>, TextStats), DataError> {
    let mut stats = TextStats::default();
    let mut ids = Vec::with_capacity(bytes.len() / 3);
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop(); // the final newline ends the last line; it does not open an empty one
    }
    for (i, raw) in lines.into_iter().enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match std::str::from_utf8(raw) {
            Ok(s) => std::borrow::Cow::Borrowed(s),
            Err(_) => {
                stats.invalid_utf8_lines += 1;
                String::from_utf8_lossy(raw)
            }
        };
        if line.trim().is_empty() {
            stats.empty_lines += 1;
            continue;
        }
        if let Some(doc) = document_of(&line, jsonl, text_key, path, first_line + i)? {
            tok.encode_document_into(&doc, &mut ids)?;
            stats.documents += 1;
        }
    }
    stats.tokens = ids.len() as u64;
    Ok((ids, stats))
}
