//! Checkpoints: atomic, optionally asynchronous saves; verified loads that fall back to the
//! previous checkpoint; optimizer state that any world size and ZeRO stage can load.
//!
//! Layout (DESIGN.md):
//! ```text
//! <dir>/step-00000100/
//!   manifest.json      step, tokens, world size, ZeRO stage, run config, loader state, loss
//!                      scaler, the flat parameter layout, and size + FNV-1a checksum per file
//!   model.safetensors  the weights with Hugging Face names (+ config.json, tokenizer.model):
//!                      a model directory `generate`, `export` and transformers can use
//!   optim/shard-00000-of-00004.safetensors
//!                      fp32 master, exp_avg, exp_avg_sq of one rank's range of the flat
//!                      parameter order, named per parameter piece: "exp_avg/<name>@<start>"
//! <dir>/latest         names the newest complete checkpoint; written last, atomically
//! ```
//! A save writes into `step-N.tmp/`, fsyncs every file, lets rank 0 write the manifest after
//! every rank has finished, renames the directory into place and only then rewrites `latest`
//! (temporary name + rename). A crash or `kill -9` at any moment leaves the previous
//! checkpoint and `latest` intact. Saves copy the state to host memory, then write on a
//! background thread, so the training loop waits only for the copy.
//! Loading reads the manifest, checks the format version and every file's size and checksum,
//! and assembles this rank's range of the flat order from whichever shards overlap it (the
//! resharding that makes another world size or ZeRO stage work).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use baichuan_data::LoaderState;
use baichuan_model::{hf, Layout, ModelConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dist::store::StoreClient;
use crate::optim::Slot;
use crate::precision::LossScaler;

pub const FORMAT_VERSION: u32 = 1;
pub const LATEST: &str = "latest";
const MANIFEST: &str = "manifest.json";

/// One file of a checkpoint, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    /// FNV-1a 64 of the content, hex.
    pub fnv64: String,
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

/// Everything of this rank that a checkpoint holds, copied to host memory.
pub struct Snapshot {
    pub step: u64,
    pub tokens: u64,
    pub rank: usize,
    pub world: usize,
    /// The rank's range of the flat order it writes (empty for ranks that write none).
    pub range: (usize, usize),
    pub master: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Rank 0 only: the full parameters (for model.safetensors).
    pub params: Option<Tensor>,
    pub manifest: Manifest,
}

pub fn fnv1a64_file(path: &Path) -> Result<(u64, String)> {
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        for &b in &buf[..k] {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok((n, format!("{h:016x}")))
}

fn fsync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
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

/// Writes a Hugging Face model directory (config.json, model.safetensors in `flat`'s dtype,
/// tokenizer.model) straight from a flat parameter buffer laid out as `slots`; no model is built.
pub fn write_model_dir(
    dir: &Path,
    slots: &[SlotEntry],
    flat: &Tensor,
    config: &ModelConfig,
    tokenizer: Option<&Path>,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tensors: Vec<(String, Tensor)> = slots
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                flat.narrow(0, s.offset as i64, s.numel as i64).view(s.shape.as_slice()),
            )
        })
        .collect();
    hf::write_safetensors(&tensors, &dir.join(hf::WEIGHTS_FILE))?;
    let json = config.to_hf_json(Layout::Baichuan, hf::torch_dtype_name(flat.kind()));
    fs::write(dir.join(hf::CONFIG_FILE), serde_json::to_string_pretty(&json)? + "\n")?;
    if let Some(tok) = tokenizer.filter(|t| t.exists()) {
        hf::copy_tokenizer(tok, dir)?;
    }
    Ok(())
}

/// Writes this rank's part of a checkpoint; rank 0 then completes it. `store` coordinates
/// ranks (None in a single process). Blocking: run it on a background thread for async saves.
pub fn write(
    dir: &Path,
    snap: Snapshot,
    store: Option<&StoreClient>,
    model: Option<&ModelConfig>,
    tokenizer: Option<&Path>,
    keep_last: usize,
) -> Result<PathBuf> {
    let tmp = dir.join(format!("step-{:08}.tmp", snap.step));
    fs::create_dir_all(tmp.join("optim")).with_context(|| format!("creating {}", tmp.display()))?;
    let mut files = HashMap::new();
    if snap.range.1 > 0 {
        let name = format!("optim/shard-{:05}-of-{:05}.safetensors", snap.rank, snap.world);
        let mut tensors = Vec::new();
        for (piece, off, len) in pieces(&snap.manifest.slots, snap.range.0, snap.range.1) {
            for (kind, t) in [
                ("master", &snap.master),
                ("exp_avg", &snap.exp_avg),
                ("exp_avg_sq", &snap.exp_avg_sq),
            ] {
                tensors.push((format!("{kind}/{piece}"), t.narrow(0, off as i64, len as i64)));
            }
        }
        let path = tmp.join(&name);
        hf::write_safetensors(&tensors, &path)?;
        let (bytes, fnv64) = fnv1a64_file(&path)?;
        files.insert(name, FileEntry { bytes, fnv64 });
    }
    if let Some(store) = store {
        store.set(
            &format!("ckpt/{}/{}", snap.step, snap.rank),
            serde_json::to_string(&files)?.as_bytes(),
        )?;
    }
    if snap.rank != 0 {
        return Ok(tmp);
    }
    // rank 0: the model directory, then the manifest once every rank has written
    if let (Some(params), Some(config)) = (&snap.params, model) {
        write_model_dir(&tmp, &snap.manifest.slots, params, config, tokenizer)?;
        for f in ["config.json", "model.safetensors"] {
            let (bytes, fnv64) = fnv1a64_file(&tmp.join(f))?;
            files.insert(f.to_string(), FileEntry { bytes, fnv64 });
        }
    }
    let mut manifest = snap.manifest;
    if let Some(store) = store {
        store.wait_all(
            &format!("ckpt/{}/", snap.step),
            snap.world,
            &format!("checkpoint {}", snap.step),
        )?;
        for r in 1..snap.world {
            let theirs: HashMap<String, FileEntry> =
                serde_json::from_slice(&store.get(&format!("ckpt/{}/{r}", snap.step))?)?;
            files.extend(theirs);
        }
    }
    manifest.files = files;
    let text = serde_json::to_string_pretty(&manifest)?;
    fs::write(tmp.join(MANIFEST), text + "\n")?;
    fs::File::open(tmp.join(MANIFEST))?.sync_all()?;
    fsync_dir(&tmp.join("optim"));
    fsync_dir(&tmp);
    let final_dir = step_dir(dir, manifest.step);
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp, &final_dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    fsync_dir(dir);
    let latest_tmp = dir.join("latest.tmp");
    fs::write(
        &latest_tmp,
        format!("{}\n", final_dir.file_name().expect("step dir").to_string_lossy()),
    )?;
    fs::File::open(&latest_tmp)?.sync_all()?;
    fs::rename(&latest_tmp, dir.join(LATEST))?;
    fsync_dir(dir);
    prune(dir, keep_last)?;
    Ok(final_dir)
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

/// Keeps the newest `keep` checkpoints (0 keeps all) and removes leftover temporaries.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    if keep > 0 {
        for old in list(dir).into_iter().skip(keep) {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    Ok(())
}

/// Removes temporaries of interrupted saves (call before training starts, from rank 0).
pub fn clean_temporaries(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
}

/// Reads and verifies a checkpoint: format version, and each file's size and checksum.
pub fn verify(path: &Path) -> Result<Manifest> {
    let text = fs::read_to_string(path.join(MANIFEST))
        .with_context(|| format!("{}: no readable {MANIFEST} (an incomplete checkpoint?)", path.display()))?;
    let m: Manifest = serde_json::from_str(&text).with_context(|| format!("{}: invalid {MANIFEST}", path.display()))?;
    if m.format_version > FORMAT_VERSION {
        bail!(
            "{}: checkpoint format {} is newer than this baichuan reads ({FORMAT_VERSION}); HINT: upgrade",
            path.display(),
            m.format_version
        );
    }
    for (name, entry) in &m.files {
        let (bytes, fnv) = fnv1a64_file(&path.join(name))?;
        if bytes != entry.bytes || fnv != entry.fnv64 {
            bail!(
                "{}: {name} is damaged ({bytes} bytes, checksum {fnv}; the manifest says {} bytes, {})",
                path.display(),
                entry.bytes,
                entry.fnv64
            );
        }
    }
    Ok(m)
}

/// The checkpoint to resume from: `latest` if it verifies, else the newest one that does.
/// Returns None when `dir` holds none.
pub fn find_resumable(dir: &Path) -> Result<Option<(PathBuf, Manifest)>> {
    let mut candidates = list(dir);
    if let Ok(name) = fs::read_to_string(dir.join(LATEST)) {
        let p = dir.join(name.trim());
        candidates.retain(|c| c != &p);
        candidates.insert(0, p);
    }
    for c in candidates {
        match verify(&c) {
            Ok(m) => return Ok(Some((c, m))),
            Err(e) => eprintln!("checkpoint: skipping {}: {e:#}", c.display()),
        }
    }
    Ok(None)
}

/// This rank's master weights and moments for its range `[start, start+len)`, assembled from
/// whichever saved shards overlap it (another world size or ZeRO stage is fine).
pub fn load_range(path: &Path, m: &Manifest, start: usize, len: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let out: Vec<Tensor> = (0..3)
        .map(|_| Tensor::zeros([len as i64], (Kind::Float, Device::Cpu)))
        .collect();
    let mut covered = 0usize;
    for shard in &m.shards {
        let (a, b) = (shard.start.max(start), (shard.start + shard.len).min(start + len));
        if a >= b {
            continue;
        }
        let tensors: HashMap<String, Tensor> = hf::read_safetensors(&path.join(&shard.file))?.into_iter().collect();
        for (piece, off, n) in pieces(&m.slots, a, b - a) {
            for (i, kind) in ["master", "exp_avg", "exp_avg_sq"].iter().enumerate() {
                let key = format!("{kind}/{piece}");
                let t = tensors
                    .get(&key)
                    .with_context(|| format!("{}: {} lacks {key}", path.display(), shard.file))?;
                tch::no_grad(|| out[i].narrow(0, (a - start + off) as i64, n as i64).copy_(t));
            }
        }
        covered += b - a;
    }
    if covered != len {
        bail!(
            "{}: the optimizer shards cover {covered} of the {len} values this rank needs",
            path.display()
        );
    }
    let mut it = out.into_iter();
    Ok((
        it.next().expect("master"),
        it.next().expect("exp_avg"),
        it.next().expect("exp_avg_sq"),
    ))
}

/// A background writer: at most one save in flight; `wait` joins it.
#[derive(Default)]
pub struct AsyncSaver {
    handle: Option<std::thread::JoinHandle<Result<PathBuf>>>,
}

impl AsyncSaver {
    /// Starts `job` after the previous save has finished (whose error, if any, is returned).
    pub fn start(&mut self, job: impl FnOnce() -> Result<PathBuf> + Send + 'static) -> Result<()> {
        self.wait()?;
        self.handle = Some(std::thread::spawn(job));
        Ok(())
    }

    pub fn wait(&mut self) -> Result<Option<PathBuf>> {
        match self.handle.take() {
            None => Ok(None),
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?
                .map(Some),
        }
    }
}

impl Drop for AsyncSaver {
    /// A run that stops (even with an error) lets a save in flight finish: exiting while it
    /// writes would tear libtorch down under it. A failed save leaves the previous checkpoint.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("checkpoint: the background save failed: {e:#}");
        }
    }
}

/// What the writer thread needs besides the snapshot.
#[derive(Clone)]
pub struct SaveContext {
    pub dir: PathBuf,
    pub store: Option<Arc<StoreClient>>,
    pub model: ModelConfig,
    pub tokenizer: Option<PathBuf>,
    pub keep_last: usize,
}

impl SaveContext {
    /// Writes `snap` (see [`write`]).
    pub fn write(&self, snap: Snapshot) -> Result<PathBuf> {
        write(
            &self.dir,
            snap,
            self.store.as_deref(),
            Some(&self.model),
            self.tokenizer.as_deref(),
            self.keep_last,
        )
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
}
