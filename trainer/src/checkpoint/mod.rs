//! Checkpoints: atomic, optionally asynchronous saves; verified loads that fall back to the
//! previous checkpoint; optimizer state that any world size and ZeRO stage can load.
//!
//! ```text
//! <dir>/step-00000100/
//!   manifest.json      step, tokens, world size, ZeRO stage, run config, loader state, loss
//!                      scaler, the flat parameter layout, and size + CRC-32 of every file
//!   model.safetensors  the weights with Hugging Face names (+ config.json, tokenizer.model):
//!                      a model directory `generate`, `export` and transformers can use
//!   optim/shard-00000-of-00004.safetensors
//!                      fp32 master, exp_avg, exp_avg_sq of one rank's range of the flat
//!                      parameter order, named per parameter piece: "exp_avg/<name>@<start>"
//! <dir>/latest         names the newest complete checkpoint; written last, atomically
//! ```
//! [`save`] writes one (atomically: a temporary directory renamed into place, then `latest`);
//! [`load`] finds, verifies and reads one back into another world size or ZeRO stage. The
//! format and its versions are described in docs/ARCHITECTURE.md.

pub mod load;
pub mod save;

pub use load::{load_range, read_manifest, restore, resume_point, verify, verify_files, Restored, Resume};
pub use save::{clean_temporaries, write, write_model_dir, AsyncSaver, Checkpointer, SaveContext, Snapshot};

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use baichuan_data::hash::Fnv1a64;
use baichuan_data::LoaderState;
use serde::{Deserialize, Serialize};

use crate::flat::Slot;
use crate::guard::LossScaler;

/// The format this build writes. 2: files carry a CRC-32 computed while they were written;
/// 1: an FNV-1a 64 checksum (still read and verified).
pub const FORMAT_VERSION: u32 = 2;
pub const LATEST: &str = "latest";
pub(crate) const MANIFEST: &str = "manifest.json";

/// One file of a checkpoint, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    /// CRC-32 (IEEE) of the content, 8 hex digits (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    /// FNV-1a 64 of the content, hex (format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fnv64: Option<String>,
}

impl FileEntry {
    /// The entry of a file of `bytes` bytes with CRC-32 `crc32`.
    pub fn crc32(bytes: u64, crc32: u32) -> Self {
        FileEntry {
            bytes,
            crc32: Some(format!("{crc32:08x}")),
            fnv64: None,
        }
    }
}

/// One rank's range of the flat parameter order in the optimizer shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub start: usize,
    pub len: usize,
}

/// A parameter's place in the flat order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotEntry {
    pub name: String,
    pub offset: usize,
    pub numel: usize,
    pub shape: Vec<i64>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub step: u64,
    pub tokens: u64,
    pub world_size: usize,
    pub zero_stage: u8,
    pub precision: String,
    pub seed: u64,
    pub optimizer_step: u64,
    pub loader: LoaderState,
    pub scaler: LossScaler,
    pub skipped_bad_steps: u64,
    /// Tokens in the training stream when saved, to notice a resume on other data (absent in
    /// checkpoints from before it was recorded).
    #[serde(default)]
    pub train_tokens: Option<u64>,
    pub slots: Vec<SlotEntry>,
    pub shards: Vec<ShardEntry>,
    pub files: HashMap<String, FileEntry>,
    /// The run config (TOML) the checkpoint was made with.
    pub config: String,
}

impl Manifest {
    /// The files a rank whose optimizer range is `[start, start + len)` reads on resume: the
    /// model weights, and the optimizer shards that overlap its range.
    pub fn files_for_range(&self, start: usize, len: usize) -> Vec<String> {
        let mut files = vec![baichuan_model::hf::WEIGHTS_FILE.to_string()];
        files.extend(
            self.shards
                .iter()
                .filter(|s| s.start.max(start) < (s.start + s.len).min(start + len))
                .map(|s| s.file.clone()),
        );
        files
    }
}

/// Size and CRC-32 of a file, read back in 8 MiB blocks (SIMD CRC through `crc32fast`).
pub fn crc32_file(path: &Path) -> Result<(u64, String)> {
    let mut hasher = crc32fast::Hasher::new();
    let n = read_blocks(path, &mut |block| hasher.update(block))?;
    Ok((n, format!("{:08x}", hasher.finalize())))
}

/// Size and FNV-1a 64 of a file (the checksum of format-1 checkpoints).
pub fn fnv1a64_file(path: &Path) -> Result<(u64, String)> {
    let mut h = Fnv1a64::default();
    let n = read_blocks(path, &mut |block| h.update(block))?;
    Ok((n, format!("{:016x}", h.finish())))
}

/// Feeds a file to `f` block by block; returns its length.
fn read_blocks(path: &Path, f: &mut dyn FnMut(&[u8])) -> Result<u64> {
    let mut file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut n = 0u64;
    loop {
        let k = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            return Ok(n);
        }
        n += k as u64;
        f(&buf[..k]);
    }
}

pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

/// The per-parameter pieces of a flat range `[start, start+len)`: (name@start, offset in the
/// range, length).
fn pieces(slots: &[SlotEntry], start: usize, len: usize) -> Vec<(String, usize, usize)> {
    let end = start + len;
    slots
        .iter()
        .filter_map(|s| {
            let (a, b) = (s.offset.max(start), (s.offset + s.numel).min(end));
            (a < b).then(|| (format!("{}@{}", s.name, a - s.offset), a - start, b - a))
        })
        .collect()
}

pub fn slot_entries(slots: &[Slot]) -> Vec<SlotEntry> {
    slots
        .iter()
        .map(|s| SlotEntry {
            name: s.name.clone(),
            offset: s.offset as usize,
            numel: s.numel as usize,
            shape: s.shape.clone(),
        })
        .collect()
}

/// Complete checkpoints in `dir`, newest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut steps: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name().is_some_and(|n| {
                            n.to_string_lossy().starts_with("step-") && !n.to_string_lossy().ends_with(".tmp")
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    steps.sort();
    steps.reverse();
    steps
}

/// A manifest of format `format` with optimizer shards `shards` (file, start, len) and file
/// entries `files`, for tests.
#[cfg(test)]
pub(crate) fn test_manifest(
    format: u32,
    shards: &[(&str, usize, usize)],
    files: HashMap<String, FileEntry>,
) -> Manifest {
    Manifest {
        format_version: format,
        step: 1,
        tokens: 1,
        world_size: shards.len(),
        zero_stage: 1,
        precision: "fp32".into(),
        seed: 0,
        optimizer_step: 1,
        loader: LoaderState {
            epoch: 0,
            next_sample: 0,
        },
        scaler: LossScaler::disabled(),
        skipped_bad_steps: 0,
        train_tokens: None,
        slots: Vec::new(),
        shards: shards
            .iter()
            .map(|&(file, start, len)| ShardEntry {
                file: file.into(),
                start,
                len,
            })
            .collect(),
        files,
        config: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_a_range_at_parameter_boundaries() {
        let slots = vec![
            SlotEntry {
                name: "a".into(),
                offset: 0,
                numel: 10,
                shape: vec![10],
            },
            SlotEntry {
                name: "b".into(),
                offset: 10,
                numel: 5,
                shape: vec![5],
            },
        ];
        assert_eq!(pieces(&slots, 8, 5), vec![("a@8".into(), 0, 2), ("b@0".into(), 2, 3)]);
        assert_eq!(pieces(&slots, 0, 15).len(), 2);
        assert!(pieces(&slots, 15, 0).is_empty());
    }

    #[test]
    fn a_rank_reads_the_weights_and_only_the_shards_overlapping_its_range() {
        let m = test_manifest(FORMAT_VERSION, &[("a", 0, 4), ("b", 4, 4), ("c", 8, 2)], HashMap::new());
        assert_eq!(m.files_for_range(0, 4), vec!["model.safetensors", "a"]);
        assert_eq!(m.files_for_range(3, 2), vec!["model.safetensors", "a", "b"]);
        assert_eq!(m.files_for_range(8, 2), vec!["model.safetensors", "c"]);
        assert_eq!(m.files_for_range(0, 0), vec!["model.safetensors"]);
    }

    #[test]
    fn checksums_match_their_reference_values() {
        let dir = std::env::temp_dir().join(format!("baichuan-ckpt-sum-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        fs::write(&path, b"123456789").unwrap();
        // the standard check values of CRC-32 (IEEE) and FNV-1a 64 for "123456789"
        assert_eq!(crc32_file(&path).unwrap(), (9, "cbf43926".to_string()));
        assert_eq!(fnv1a64_file(&path).unwrap(), (9, "06d5573923c6cdfc".to_string()));
        fs::remove_dir_all(&dir).unwrap();
    }
}
