//! Loading a checkpoint: finding the newest one every rank can verify, checking the files
//! each rank reads (size and checksum), and assembling this rank's range of the flat order
//! from whichever optimizer shards overlap it: the resharding that lets a run saved by one
//! world size or ZeRO stage resume on another.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baichuan_model::hf;
use tch::{Device, Kind, Tensor};

use super::{crc32_file, fnv1a64_file, list, pieces, slot_entries, Manifest, FORMAT_VERSION, LATEST, MANIFEST};
use crate::dataset::Datasets;
use crate::dist::comm::{Communicator, ReduceOp};
use crate::guard::LossScaler;
use crate::optim::FlatAdamW;

/// Where a run starts from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Resume {
    /// From the latest complete checkpoint of `checkpoint.dir`, if there is one.
    #[default]
    Latest,
    /// From scratch, ignoring existing checkpoints.
    No,
    /// From this checkpoint directory.
    From(PathBuf),
}

/// Reads a checkpoint's manifest and checks that this build reads its format.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
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
    Ok(m)
}

/// Checks the size and checksum of the files `names` of checkpoint `path` against its manifest
/// (CRC-32 for format 2, FNV-1a 64 for format 1). Sizes are checked first, for all of them, so
/// a truncated file is found without reading any.
pub fn verify_files(path: &Path, m: &Manifest, names: &[String]) -> Result<()> {
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let entry = m
            .files
            .get(name)
            .with_context(|| format!("{}: the manifest lists no {name}", path.display()))?;
        let bytes = fs::metadata(path.join(name))
            .with_context(|| format!("{}: {name} is missing", path.display()))?
            .len();
        if bytes != entry.bytes {
            bail!(
                "{}: {name} is damaged ({bytes} bytes; the manifest says {})",
                path.display(),
                entry.bytes
            );
        }
        entries.push((name, entry));
    }
    for (name, entry) in entries {
        let (got, want) = match (&entry.crc32, &entry.fnv64) {
            (Some(want), _) => (crc32_file(&path.join(name))?.1, want),
            (None, Some(want)) => (fnv1a64_file(&path.join(name))?.1, want),
            (None, None) => bail!("{}: the manifest has no checksum for {name}", path.display()),
        };
        if &got != want {
            bail!(
                "{}: {name} is damaged ({} bytes, checksum {got}; the manifest says {}, {want})",
                path.display(),
                entry.bytes,
                entry.bytes
            );
        }
    }
    Ok(())
}

/// Reads a checkpoint and verifies every file it lists (what a tool or a test wants; a
/// resuming rank verifies only what it reads, see [`resume_point`]).
pub fn verify(path: &Path) -> Result<Manifest> {
    let m = read_manifest(path)?;
    let mut names: Vec<String> = m.files.keys().cloned().collect();
    names.sort();
    verify_files(path, &m, &names)?;
    Ok(m)
}

/// The checkpoints of `dir` to try, in order: `latest` first, then the others newest first.
fn candidates(dir: &Path) -> Vec<PathBuf> {
    let mut candidates = list(dir);
    if let Ok(name) = fs::read_to_string(dir.join(LATEST)) {
        let p = dir.join(name.trim());
        candidates.retain(|c| c != &p);
        candidates.insert(0, p);
    }
    candidates
}

/// Reads `path`'s manifest and verifies the files a rank with optimizer range `range` reads.
fn check_mine(path: &Path, range: (usize, usize)) -> Result<Manifest> {
    let m = read_manifest(path)?;
    verify_files(path, &m, &m.files_for_range(range.0, range.1))?;
    Ok(m)
}

/// Whether every rank says `ok`.
fn all_ranks(ok: bool, comm: &dyn Communicator) -> Result<bool> {
    let bad = comm.all_reduce_scalar(if ok { 0.0 } else { 1.0 }, ReduceOp::Sum)?;
    Ok(bad == 0.0)
}

/// The checkpoint to resume from, as `resume` asks, for a rank whose optimizer range is
/// `range`. Each rank verifies only the files it reads (the weights and the shards overlapping
/// its range), and the ranks agree: the newest checkpoint that verified on every rank is
/// taken, and a checkpoint damaged for any rank is skipped by all. `checkpoint.dir` must be
/// one directory that every rank sees (a shared filesystem).
pub fn resume_point(
    resume: &Resume,
    dir: &Path,
    range: (usize, usize),
    comm: &dyn Communicator,
) -> Result<Option<(PathBuf, Manifest)>> {
    match resume {
        Resume::No => Ok(None),
        Resume::From(path) => {
            let mine = check_mine(path, range);
            if !all_ranks(mine.is_ok(), comm)? {
                mine?;
                bail!("{}: damaged for another rank (see its output)", path.display());
            }
            Ok(Some((path.clone(), mine?)))
        }
        Resume::Latest => {
            let candidates = candidates(dir);
            let n = candidates.len() as f64;
            let sum = comm.all_reduce_scalar(n, ReduceOp::Sum)?;
            if sum != n * comm.world() as f64 {
                bail!(
                    "{}: the ranks see different checkpoints; HINT: checkpoint.dir must be a directory all ranks share",
                    dir.display()
                );
            }
            for c in candidates {
                let mine = check_mine(&c, range);
                let agreed = all_ranks(mine.is_ok(), comm)?;
                match mine {
                    Ok(m) if agreed => return Ok(Some((c, m))),
                    Ok(_) => eprintln!(
                        "checkpoint: skipping {}: another rank found its files damaged",
                        c.display()
                    ),
                    Err(e) => eprintln!("checkpoint: skipping {}: {e:#}", c.display()),
                }
            }
            Ok(None)
        }
    }
}

/// What a resumed run continues with, besides the restored weights, moments and data position.
#[derive(Debug, Clone)]
pub struct Restored {
    pub step: u64,
    pub skipped_bad_steps: u64,
    pub scaler: LossScaler,
}

/// Loads checkpoint `path` (manifest `m`) into the optimizer (weights of every parameter, fp32
/// master weights and moments of this rank's range) and the data loader. `main` reports.
pub fn restore(path: &Path, m: &Manifest, opt: &mut FlatAdamW, data: &mut Datasets, main: bool) -> Result<Restored> {
    let slots = slot_entries(&opt.slots);
    if m.slots != slots {
        bail!(
            "{}: the checkpoint's parameters differ from this model's; HINT: resume with the model config it was \
             saved with, or --no-resume",
            path.display()
        );
    }
    let weights: HashMap<String, Tensor> = hf::read_safetensors(&path.join(hf::WEIGHTS_FILE))?
        .into_iter()
        .collect();
    let (master, exp_avg, exp_avg_sq) = load_range(path, m, opt.shard.0, opt.shard.1)?;
    tch::no_grad(|| -> Result<()> {
        for sl in &slots {
            let w = weights
                .get(&sl.name)
                .with_context(|| format!("{}: model.safetensors lacks {}", path.display(), sl.name))?;
            opt.params
                .narrow(0, sl.offset as i64, sl.numel as i64)
                .copy_(&w.view([-1]));
        }
        opt.master.copy_(&master);
        opt.exp_avg.copy_(&exp_avg);
        opt.exp_avg_sq.copy_(&exp_avg_sq);
        Ok(())
    })?;
    opt.step = m.optimizer_step;
    if let Some(saved) = m.train_tokens.filter(|&n| n != data.train_tokens) {
        if main {
            eprintln!(
                "warning: the training stream holds {} tokens now and held {saved} when {} was saved: \
                 data.path, data.seq_len, data.valid_fraction or data.valid_split changed, so the samples \
                 from here on follow a different order than the saved run's would have",
                data.train_tokens,
                path.display()
            );
        }
    }
    data.train.restore(m.loader)?;
    Ok(Restored {
        step: m.step,
        skipped_bad_steps: m.skipped_bad_steps,
        scaler: m.scaler.clone(),
    })
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
