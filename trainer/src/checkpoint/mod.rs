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
//! <dir>/abandoned-<time>-after-step-N/
//!                      checkpoints of a branch the run left (see [`set_aside_later`])
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

/// The format this build writes. 3: the manifest carries a CRC-32 of itself
/// (`manifest_crc32`); 2: files carry a CRC-32 computed while they were written; 1: an FNV-1a
/// 64 checksum. All three are read and verified.
pub const FORMAT_VERSION: u32 = 3;
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

/// Where a decay branch started: its parent checkpoint's directory and step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub checkpoint: String,
    pub step: u64,
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
    /// A decay branch's parent: the checkpoint it started from (`train --decay-from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// CRC-32 of the manifest itself (format 3): of the compact JSON, keys sorted, of every
    /// field but this one (see [`Manifest::to_json`] and [`Manifest::from_json`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_crc32: Option<String>,
}

/// The CRC-32 of a manifest's JSON value without its `manifest_crc32` field: of the compact
/// text with keys in sorted order (serde_json's map), so any field changed by hand shows.
fn manifest_digest(mut value: serde_json::Value) -> String {
    if let Some(map) = value.as_object_mut() {
        map.remove("manifest_crc32");
    }
    format!("{:08x}", crc32fast::hash(value.to_string().as_bytes()))
}

impl Manifest {
    /// The manifest's text as saved: pretty JSON with its own checksum.
    pub fn to_json(&self) -> Result<String> {
        let mut m = self.clone();
        m.manifest_crc32 = None;
        m.manifest_crc32 = Some(manifest_digest(serde_json::to_value(&m)?));
        Ok(serde_json::to_string_pretty(&m)? + "\n")
    }

    /// Parses a manifest's text (from `path`, for messages) and checks its own checksum; format
    /// 3 and later must carry one.
    pub fn from_json(text: &str, path: &Path) -> Result<Manifest> {
        let value: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{}: invalid {MANIFEST}", path.display()))?;
        if let Some(v) = value["format_version"]
            .as_u64()
            .filter(|&v| v > u64::from(FORMAT_VERSION))
        {
            anyhow::bail!(
                "{}: checkpoint format {v} is newer than this baichuan reads ({FORMAT_VERSION}); HINT: upgrade",
                path.display()
            );
        }
        let m: Manifest =
            serde_json::from_value(value.clone()).with_context(|| format!("{}: invalid {MANIFEST}", path.display()))?;
        match &m.manifest_crc32 {
            Some(want) => {
                let got = manifest_digest(value);
                if &got != want {
                    anyhow::bail!(
                        "{}: {MANIFEST} is damaged or was edited (its checksum is {got}; it says {want})",
                        path.display()
                    );
                }
            }
            None if m.format_version >= 3 => {
                anyhow::bail!("{}: {MANIFEST} lacks its checksum (manifest_crc32)", path.display())
            }
            None => {}
        }
        Ok(m)
    }

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

/// The step a checkpoint directory `step-N` holds.
pub fn step_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

/// The branch rule: a run that starts at `from_step` (0 for a fresh start) in `dir`, which
/// holds checkpoints of later steps, starts a new branch; those later checkpoints belong to the
/// branch it leaves, and must never win over the new one (at the next automatic resume, or
/// when pruning). They are moved, untouched, into `dir/abandoned-<UTC time>-after-step-<from>/`
/// (with `latest` rewritten to name `keep`, the checkpoint resumed from if it lies in `dir`, or
/// removed); returns that folder and the steps moved, or None when there were none.
pub fn set_aside_later(dir: &Path, from_step: u64, keep: Option<&Path>) -> Result<Option<(PathBuf, Vec<u64>)>> {
    let later: Vec<PathBuf> = list(dir)
        .into_iter()
        .filter(|p| step_of(p).is_some_and(|s| s > from_step))
        .collect();
    if later.is_empty() {
        return Ok(None);
    }
    let mut folder = dir.join(format!("abandoned-{}-after-step-{from_step:08}", utc_stamp()));
    let mut n = 1;
    while folder.exists() {
        n += 1;
        folder = dir.join(format!("abandoned-{}-after-step-{from_step:08}-{n}", utc_stamp()));
    }
    fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let mut steps = Vec::new();
    for p in later.iter().rev() {
        let name = p.file_name().expect("a step directory");
        fs::rename(p, folder.join(name))
            .with_context(|| format!("moving {} into {}", p.display(), folder.display()))?;
        steps.extend(step_of(p));
    }
    let latest = dir.join(LATEST);
    if latest.exists() {
        fs::rename(&latest, folder.join(LATEST)).with_context(|| format!("moving {}", latest.display()))?;
    }
    if let Some(name) = keep.filter(|k| k.parent() == Some(dir)).and_then(|k| k.file_name()) {
        let tmp = dir.join("latest.tmp");
        fs::write(&tmp, format!("{}\n", name.to_string_lossy()))
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &latest).with_context(|| format!("writing {}", latest.display()))?;
    }
    Ok(Some((folder, steps)))
}

/// Now as `YYYYMMDDTHHMMSSZ` (UTC), for folder names.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc_stamp_at(secs)
}

/// `secs` after the Unix epoch as `YYYYMMDDTHHMMSSZ`.
fn utc_stamp_at(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // days since 1970-01-01 to a civil date (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
            sources: Vec::new(),
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
        parent: None,
        manifest_crc32: None,
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
    fn stamps_are_utc_civil_times() {
        // reference values from Python's datetime.fromtimestamp(s, UTC)
        assert_eq!(utc_stamp_at(0), "19700101T000000Z");
        assert_eq!(utc_stamp_at(951_786_123), "20000229T010203Z");
        assert_eq!(utc_stamp_at(1_795_000_000), "20261118T110640Z");
    }

    #[test]
    fn the_manifest_checksum_catches_an_edited_field() {
        let path = Path::new("ckpt");
        let mut m = test_manifest(FORMAT_VERSION, &[("a", 0, 4)], HashMap::new());
        m.files.insert("a".into(), FileEntry::crc32(4, 7));
        m.files.insert("b".into(), FileEntry::crc32(5, 8));
        let text = m.to_json().unwrap();
        let back = Manifest::from_json(&text, path).unwrap();
        assert_eq!(back.optimizer_step, m.optimizer_step);
        assert!(back.manifest_crc32.is_some());
        let edited = text.replace("\"optimizer_step\": 1,", "\"optimizer_step\": 2,");
        assert_ne!(edited, text);
        let e = Manifest::from_json(&edited, path).unwrap_err().to_string();
        assert!(e.contains("damaged or was edited"), "{e}");
        // reformatting (key order, whitespace) is not an edit
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        Manifest::from_json(&value.to_string(), path).unwrap();
        // format 3 must carry its checksum; format 2 had none
        let mut bare: serde_json::Value = serde_json::from_str(&text).unwrap();
        bare.as_object_mut().unwrap().remove("manifest_crc32");
        assert!(Manifest::from_json(&bare.to_string(), path)
            .unwrap_err()
            .to_string()
            .contains("lacks"));
        bare["format_version"] = 2.into();
        Manifest::from_json(&bare.to_string(), path).unwrap();
    }

    #[test]
    fn later_checkpoints_are_moved_aside_with_latest_rewritten() {
        let dir = std::env::temp_dir().join(format!("baichuan-ckpt-aside-{}", std::process::id()));
        for s in [5, 10, 15] {
            fs::create_dir_all(step_dir(&dir, s)).unwrap();
            fs::write(step_dir(&dir, s).join("x"), s.to_string()).unwrap();
        }
        fs::write(dir.join(LATEST), "step-00000015\n").unwrap();
        assert!(set_aside_later(&dir, 15, None).unwrap().is_none());
        let (folder, steps) = set_aside_later(&dir, 5, Some(&step_dir(&dir, 5))).unwrap().unwrap();
        assert_eq!(steps, vec![10, 15]);
        assert_eq!(list(&dir), vec![step_dir(&dir, 5)]);
        assert_eq!(fs::read_to_string(folder.join("step-00000015/x")).unwrap(), "15");
        assert_eq!(fs::read_to_string(folder.join(LATEST)).unwrap(), "step-00000015\n");
        assert_eq!(fs::read_to_string(dir.join(LATEST)).unwrap(), "step-00000005\n");
        assert!(folder
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-after-step-00000005"));
        // a fresh start moves everything; a second folder of the same second gets a suffix
        let (again, steps) = set_aside_later(&dir, 0, None).unwrap().unwrap();
        assert_eq!(steps, vec![5]);
        assert_ne!(again, folder);
        assert!(list(&dir).is_empty() && !dir.join(LATEST).exists());
        fs::remove_dir_all(&dir).unwrap();
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
