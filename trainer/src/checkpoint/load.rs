//! Loading a checkpoint: finding the newest one every rank can verify, checking the files
//! each rank reads (size and checksum), and assembling this rank's range of the flat order
//! from whichever optimizer shards overlap it: the resharding that lets a run saved by one
//! world size or ZeRO stage resume on another.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use baichuan_model::hf;
use tch::{Device, Kind, Tensor};

use super::{crc32_file, fnv1a64_file, list, pieces, slot_entries, Manifest, LATEST, MANIFEST};
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
    Manifest::from_json(&text, path)
}

/// Checks the size and checksum of the files `names` of checkpoint `path` against its manifest
/// (CRC-32 for formats 2 and 3, FNV-1a 64 for format 1). Sizes are checked first, for all of them, so
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

/// Reads `path`'s manifest and verifies the files a rank with optimizer range `range` reads;
/// `report` says how many bytes that was and how long it took.
fn check_mine(path: &Path, range: (usize, usize), report: bool) -> Result<Manifest> {
    let started = Instant::now();
    let m = read_manifest(path)?;
    let names = m.files_for_range(range.0, range.1);
    verify_files(path, &m, &names)?;
    if report {
        let bytes: u64 = names.iter().filter_map(|n| m.files.get(n)).map(|e| e.bytes).sum();
        let s = started.elapsed().as_secs_f64();
        println!(
            "checkpoint: verified {} file(s), {:.2} GB, of {} in {:.0} ms ({:.2} GB/s; each rank checks the files it reads)",
            names.len(),
            bytes as f64 / 1e9,
            path.display(),
            s * 1e3,
            bytes as f64 / 1e9 / s.max(1e-9)
        );
    }
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
            let mine = check_mine(path, range, comm.rank() == 0);
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
            let mut why = Vec::new();
            for c in &candidates {
                let mine = check_mine(c, range, comm.rank() == 0);
                let agreed = all_ranks(mine.is_ok(), comm)?;
                match mine {
                    Ok(m) if agreed => return Ok(Some((c.clone(), m))),
                    Ok(_) => {
                        eprintln!(
                            "checkpoint: skipping {}: another rank found its files damaged",
                            c.display()
                        );
                        why.push(format!("{}: damaged for another rank (see its output)", c.display()));
                    }
                    Err(e) => {
                        eprintln!("checkpoint: skipping {}: {e:#}", c.display());
                        why.push(format!("{e:#}"));
                    }
                }
            }
            if why.is_empty() {
                return Ok(None);
            }
            // checkpoints exist and none verifies: starting afresh would train over them
            bail!(
                "{}: none of the {} checkpoint(s) there verifies:\n  {}\nHINT: restore them, resume from one \
                 explicitly with --resume <dir>, or start afresh with --no-resume (which moves them aside, \
                 untouched, into an abandoned-* folder)",
                dir.display(),
                why.len(),
                why.join("\n  ")
            )
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
    data.train.restore(m.loader.clone())?;
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

#[cfg(test)]
mod tests {
    use super::super::{FileEntry, FORMAT_VERSION};
    use super::*;
    use crate::dist::tcp::run_local_ranks;

    /// A checkpoint directory of `files` (name, content) with a manifest of `format`, whose
    /// optimizer shards are `shards` (file, start, len) of a flat order of `total` values.
    fn fake(dir: &Path, format: u32, files: &[(&str, &[u8])], shards: &[(&str, usize, usize)]) {
        fs::create_dir_all(dir.join("optim")).unwrap();
        let mut entries = HashMap::new();
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
            let entry = if format == 1 {
                FileEntry {
                    bytes: bytes.len() as u64,
                    crc32: None,
                    fnv64: Some(format!("{:016x}", baichuan_data::hash::fnv1a64(bytes))),
                }
            } else {
                FileEntry::crc32(bytes.len() as u64, crc32fast::hash(bytes))
            };
            entries.insert(name.to_string(), entry);
        }
        let m = super::super::test_manifest(format, shards, entries);
        fs::write(dir.join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("baichuan-load-{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        dir
    }

    #[test]
    fn format_1_checkpoints_verify_with_fnv_and_damage_is_found() {
        let dir = temp("v1");
        let files: [(&str, &[u8]); 2] = [("model.safetensors", b"weights"), ("optim/a", b"state")];
        fake(&dir, 1, &files, &[("optim/a", 0, 4)]);
        assert_eq!(verify(&dir).unwrap().format_version, 1);
        fs::write(dir.join("optim/a"), b"stat!").unwrap(); // same size, other bytes
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("optim/a is damaged") && e.contains("checksum"), "{e}");
        fs::write(dir.join("optim/a"), b"st").unwrap(); // truncated
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("optim/a is damaged (2 bytes; the manifest says 5)"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_newer_format_is_refused_with_a_hint() {
        let dir = temp("v9");
        fake(&dir, FORMAT_VERSION + 1, &[("model.safetensors", b"w")], &[]);
        let e = read_manifest(&dir).unwrap_err().to_string();
        assert!(
            e.contains("newer than this baichuan reads") && e.contains("HINT"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Each rank verifies only the files it reads, and the ranks agree: a shard damaged in the
    /// newest checkpoint, read by rank 1 only, makes both ranks resume from the one before.
    #[test]
    fn ranks_agree_on_the_newest_checkpoint_every_rank_can_read() {
        let dir = temp("agree");
        let files: [(&str, &[u8]); 3] = [
            ("model.safetensors", b"weights"),
            ("optim/r0", b"rank zero"),
            ("optim/r1", b"rank one"),
        ];
        let shards = [("optim/r0", 0, 4), ("optim/r1", 4, 4)];
        for step in ["step-00000001", "step-00000002"] {
            fake(&dir.join(step), 2, &files, &shards);
        }
        fs::write(dir.join(LATEST), "step-00000002\n").unwrap();
        fs::write(dir.join("step-00000002/optim/r1"), b"rank ONE").unwrap();
        // rank 0 alone would take the newest: its files are intact
        let alone = resume_point(&Resume::Latest, &dir, (0, 4), &crate::dist::comm::Solo).unwrap();
        assert!(alone.unwrap().0.ends_with("step-00000002"));
        let d = dir.clone();
        let picked = run_local_ranks(2, move |comm| {
            let range = if comm.rank() == 0 { (0, 4) } else { (4, 4) };
            resume_point(&Resume::Latest, &d, range, comm)
                .map(|found| found.map(|(path, _)| path))
                .map_err(|e| e.to_string())
        })
        .unwrap();
        for (rank, p) in picked.into_iter().enumerate() {
            let p = p.unwrap().expect("a checkpoint");
            assert!(p.ends_with("step-00000001"), "rank {rank} picked {}", p.display());
        }
        // asked for the damaged one explicitly, every rank fails
        let d = dir.clone();
        let from = run_local_ranks(2, move |comm| {
            let range = if comm.rank() == 0 { (0, 4) } else { (4, 4) };
            resume_point(&Resume::From(d.join("step-00000002")), &d, range, comm).is_err()
        })
        .unwrap();
        assert_eq!(from, vec![true, true]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
