//! Cross-document boilerplate: lines (navigation, cookie notices, legal footers) that recur in
//! many documents, removed from every document that has other text. Counting is exact and
//! bounded in memory: each task writes sorted runs of `(line key, document)` for the distinct
//! lines of its multi-line documents; one merge keeps the keys seen in at least
//! `min_documents` documents. CCNet removes repeated paragraphs per shard (Wenzek et al. 2020);
//! counting over the whole corpus, as here, does not depend on how it is sharded.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::dedup::records::{self, ItemId};
use crate::{input_err, Result};

/// `[boilerplate]` of the filter config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Boilerplate {
    /// Default true.
    pub enabled: bool,
    /// A line in at least this many distinct documents is boilerplate. Default 20: rare enough
    /// that a quotation shared by a handful of pages survives, while template lines of a site
    /// (which repeat on hundreds of its pages) go.
    pub min_documents: u64,
}

impl Default for Boilerplate {
    fn default() -> Self {
        Boilerplate {
            enabled: true,
            min_documents: 20,
        }
    }
}

/// The key of a line: its trimmed text, with runs of whitespace collapsed.
pub fn line_key(line: &str) -> Option<u128> {
    let norm: Vec<&str> = line.split_whitespace().collect();
    (!norm.is_empty()).then(|| xxh3_128(norm.join(" ").as_bytes()))
}

/// Distinct line keys of a document; none for a one-line document (there the line is the
/// document, a matter for dedup).
pub fn document_keys(text: &str) -> Vec<u128> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() < 2 {
        return Vec::new();
    }
    let mut keys: Vec<u128> = lines.into_iter().filter_map(line_key).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Merges the count runs and writes the keys seen in at least `min_documents` documents, each
/// with its document count (16 + 8 bytes, little-endian).
pub fn select(run_dir: &Path, out: &Path, min_documents: u64) -> Result<usize> {
    let runs = records::run_files(run_dir)?;
    let mut keys: Vec<u8> = Vec::new();
    let mut n = 0;
    records::merge_runs_keyed(&runs, |key, items: &[ItemId]| {
        if items.len() as u64 >= min_documents {
            keys.extend_from_slice(&key.to_le_bytes());
            keys.extend_from_slice(&(items.len() as u64).to_le_bytes());
            n += 1;
        }
        Ok(())
    })?;
    crate::corpus::write_atomic(out, &keys)?;
    Ok(n)
}

/// The boilerplate keys a `select` wrote, with the number of documents each line is in.
pub fn load(path: &Path) -> Result<HashMap<u128, u64>> {
    let bytes =
        std::fs::read(path).map_err(|e| input_err(path, format!("{e}; HINT: run the boilerplate stage first")))?;
    if bytes.len() % 24 != 0 {
        return Err(input_err(path, "truncated; HINT: rerun the boilerplate stage"));
    }
    Ok(bytes
        .chunks_exact(24)
        .map(|c| {
            let key = u128::from_le_bytes(c[..16].try_into().expect("16 bytes"));
            (key, u64::from_le_bytes(c[16..].try_into().expect("8 bytes")))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_spacing_and_single_lines() {
        assert_eq!(line_key("  Home |  About "), line_key("Home | About"));
        assert_eq!(line_key("   "), None);
        assert!(document_keys("just one line").is_empty());
        assert_eq!(document_keys("a\nb\n\na").len(), 2);
    }
}
