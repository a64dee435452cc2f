//! Saving a checkpoint: the snapshot the loop waits for (a copy to host memory), then the
//! files, written on a background thread: each rank its optimizer shard, rank 0 the model
//! directory and, once every rank has reported its files through the store, the manifest.
//! Everything goes into `step-N.tmp/`, is fsynced, and the directory is renamed into place
//! before `latest` is rewritten (a temporary name and a rename): a crash or `kill -9` at any
//! moment leaves the previous checkpoint and `latest` intact. Each file's size and CRC-32 are
//! computed from the bytes as they are written, not by reading the file back.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baichuan_data::LoaderState;
use baichuan_model::{hf, Layout, ModelConfig};
use tch::{Device, Tensor};

use super::{
    list, pieces, slot_entries, step_dir, step_of, FileEntry, Manifest, ShardEntry, SlotEntry, FORMAT_VERSION, LATEST,
    MANIFEST,
};
use crate::config::{CheckpointConfig, RunConfig};
use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::even_ranges;
use crate::dist::store::StoreClient;
use crate::guard::LossScaler;
use crate::optim::FlatAdamW;

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

/// The run's state that a snapshot records besides the optimizer's.
pub struct RunState<'a> {
    pub config: &'a RunConfig,
    pub loader: LoaderState,
    /// Tokens in the training stream (to notice a resume on other data).
    pub train_tokens: u64,
    pub scaler: &'a LossScaler,
    pub skipped_bad_steps: u64,
    pub step: u64,
    pub tokens: u64,
    pub rank: usize,
    pub world: usize,
    /// A decay branch's parent checkpoint.
    pub parent: Option<super::Parent>,
}

impl Snapshot {
    /// Copies this rank's checkpoint state to host memory (the only part of a save the loop
    /// waits for). Without `checkpoint.async_save` the loop waits for the whole write, so
    /// state already in host memory (an offloaded optimizer's) is written from where it is,
    /// not copied: a 7B state need not fit twice in host memory.
    pub fn take(opt: &FlatAdamW, s: RunState) -> Self {
        let sync = !s.config.checkpoint.async_save;
        let stage = s.config.train.zero_stage;
        // below stage 1 every rank holds the same state: rank 0 writes it as one shard
        let writers = if stage >= 1 { s.world } else { 1 };
        let total = opt.numel() as usize;
        let ranges = if stage >= 1 {
            even_ranges(total, s.world)
        } else {
            vec![(0, total)]
        };
        let mine = if s.rank < writers { opt.shard } else { (0, 0) };
        let host = |t: &Tensor| {
            if sync && t.device() == Device::Cpu {
                t.shallow_clone()
            } else {
                t.to_device(Device::Cpu).copy()
            }
        };
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            step: s.step,
            tokens: s.tokens,
            world_size: s.world,
            zero_stage: stage,
            precision: format!("{:?}", s.config.train.precision).to_lowercase(),
            seed: s.config.job.seed,
            optimizer_step: opt.step,
            loader: s.loader,
            scaler: s.scaler.clone(),
            skipped_bad_steps: s.skipped_bad_steps,
            train_tokens: Some(s.train_tokens),
            slots: slot_entries(&opt.slots),
            shards: ranges
                .iter()
                .enumerate()
                .map(|(r, &(start, len))| ShardEntry {
                    file: format!("optim/shard-{r:05}-of-{writers:05}.safetensors"),
                    start,
                    len,
                })
                .collect(),
            files: Default::default(),
            config: s.config.to_toml(),
            parent: s.parent,
            manifest_crc32: None,
        };
        Snapshot {
            step: s.step,
            tokens: s.tokens,
            rank: s.rank,
            world: writers,
            range: mine,
            master: host(&opt.master),
            exp_avg: host(&opt.exp_avg),
            exp_avg_sq: host(&opt.exp_avg_sq),
            params: (s.rank == 0).then(|| host(&opt.params)),
            manifest,
        }
    }
}

/// Writes a Hugging Face model directory (config.json, model.safetensors in `flat`'s dtype,
/// tokenizer.model) straight from a flat parameter buffer laid out as `slots`; no model is built.
/// Returns the manifest entries of config.json and model.safetensors.
pub fn write_model_dir(
    dir: &Path,
    slots: &[SlotEntry],
    flat: &Tensor,
    config: &ModelConfig,
    tokenizer: Option<&Path>,
) -> Result<HashMap<String, FileEntry>> {
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
    let weights = hf::write_safetensors(&tensors, &dir.join(hf::WEIGHTS_FILE))?;
    let json = config.to_hf_json(Layout::Baichuan, hf::torch_dtype_name(flat.kind()));
    let text = serde_json::to_string_pretty(&json)? + "\n";
    fs::write(dir.join(hf::CONFIG_FILE), &text).with_context(|| format!("writing {}", dir.display()))?;
    if let Some(tok) = tokenizer.filter(|t| t.exists()) {
        hf::copy_tokenizer(tok, dir)?;
    }
    Ok(HashMap::from([
        (
            hf::WEIGHTS_FILE.to_string(),
            FileEntry::crc32(weights.bytes, weights.crc32),
        ),
        (
            hf::CONFIG_FILE.to_string(),
            FileEntry::crc32(text.len() as u64, crc32fast::hash(text.as_bytes())),
        ),
    ]))
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
    keep_steps: &[u64],
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
        let written = hf::write_safetensors(&tensors, &path)?;
        files.insert(name, FileEntry::crc32(written.bytes, written.crc32));
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
        files.extend(write_model_dir(&tmp, &snap.manifest.slots, params, config, tokenizer)?);
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
    fs::write(tmp.join(MANIFEST), manifest.to_json()?).with_context(|| format!("writing {}", tmp.display()))?;
    fs::File::open(tmp.join(MANIFEST))?.sync_all()?;
    fsync_dir(&tmp.join("optim"));
    fsync_dir(&tmp);
    let final_dir = step_dir(dir, manifest.step);
    // a checkpoint of this step already there (a re-save): renamed aside first, deleted last
    let replaced = final_dir
        .exists()
        .then(|| dir.join(format!("step-{:08}.replaced.tmp", manifest.step)));
    if let Some(old) = &replaced {
        fs::rename(&final_dir, old).with_context(|| format!("moving {} aside", final_dir.display()))?;
    }
    fs::rename(&tmp, &final_dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    fsync_dir(dir);
    let latest_tmp = dir.join("latest.tmp");
    fs::write(
        &latest_tmp,
        format!("{}\n", final_dir.file_name().expect("step dir").to_string_lossy()),
    )
    .with_context(|| format!("writing {}", latest_tmp.display()))?;
    fs::File::open(&latest_tmp)?.sync_all()?;
    fs::rename(&latest_tmp, dir.join(LATEST))?;
    fsync_dir(dir);
    if let Some(old) = replaced {
        fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    prune(dir, keep_last, keep_steps, &final_dir)?;
    Ok(final_dir)
}

/// A failed save, explained: a full disk says so (whichever layer saw it: libtorch, the
/// safetensors writer or std), and that the previous checkpoint is intact.
pub fn explain_save_error(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
    }) || {
        let text = format!("{e:?}");
        text.contains("os error 28") || text.contains("code: 28") || text.contains("No space left on device")
    };
    if full {
        e.context(format!(
            "saving a checkpoint into {}: the disk is full. The previous checkpoint and `latest` are intact \
             (the partial save is a .tmp directory, removed at the next start). HINT: free space, or lower \
             checkpoint.keep_last, then resume with the same command",
            dir.display()
        ))
    } else {
        e.context(format!(
            "saving a checkpoint into {} (the previous checkpoint is intact)",
            dir.display()
        ))
    }
}

/// Keeps the newest `keep` checkpoints (0 keeps all) besides those of `keep_steps`, never
/// deleting those, `just_written` or the one `latest` names. Each is renamed to a `.tmp` name before it is deleted, so an interrupted
/// prune leaves no half-deleted directory under a complete-looking name (the next start clears
/// the `.tmp`).
fn prune(dir: &Path, keep: usize, keep_steps: &[u64], just_written: &Path) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let latest = fs::read_to_string(dir.join(LATEST)).ok().map(|n| dir.join(n.trim()));
    let kept = |p: &PathBuf| step_of(p).is_some_and(|s| keep_steps.contains(&s));
    for old in list(dir).into_iter().filter(|p| !kept(p)).skip(keep) {
        if old == just_written || Some(&old) == latest.as_ref() {
            continue;
        }
        let doomed = old.with_file_name(format!(
            "{}.pruned.tmp",
            old.file_name().expect("step dir").to_string_lossy()
        ));
        fs::rename(&old, &doomed).with_context(|| format!("moving {} aside to delete it", old.display()))?;
        fs::remove_dir_all(&doomed).with_context(|| format!("removing {}", doomed.display()))?;
    }
    Ok(())
}

/// Removes temporaries of interrupted saves (call before training starts, from rank 0).
pub fn clean_temporaries(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let p = e.path();
                let removed = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(e) = removed {
                    eprintln!("checkpoint: cannot remove the leftover {} ({e})", p.display());
                }
            }
        }
    }
}

/// Makes a directory's entries durable. Best effort: some filesystems refuse to fsync a
/// directory, and the files themselves were already synced.
fn fsync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        if let Err(e) = d.sync_all() {
            eprintln!("checkpoint: fsync of {} failed ({e}); continuing", dir.display());
        }
    }
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
    pub keep_steps: Vec<u64>,
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
            &self.keep_steps,
        )
    }
}

/// The save policy of a run (`checkpoint.interval_steps`, `interval_minutes`, `async_save`)
/// and its writer: at most one save in flight.
pub struct Checkpointer {
    ctx: SaveContext,
    saver: AsyncSaver,
    last_save: Instant,
    interval_steps: u64,
    interval_minutes: f64,
    keep_steps: Vec<u64>,
    async_save: bool,
    main: bool,
}

impl Checkpointer {
    pub fn new(ctx: SaveContext, c: &CheckpointConfig, main: bool) -> Self {
        Checkpointer {
            ctx,
            saver: AsyncSaver::default(),
            last_save: Instant::now(),
            interval_steps: c.interval_steps,
            interval_minutes: c.interval_minutes,
            keep_steps: c.keep_steps.clone(),
            async_save: c.async_save,
            main,
        }
    }

    /// Whether to save after `step` of `steps`: on `stop` (SIGTERM, --stop-after), at the end,
    /// every `interval_steps`, at each of `keep_steps`, or when any rank's clock says `interval_minutes` have passed
    /// (agreed through `comm`, so every rank saves at the same step).
    pub fn due(&self, step: u64, steps: u64, stop: bool, comm: &dyn Communicator) -> Result<bool> {
        let by_time =
            self.interval_minutes > 0.0 && self.last_save.elapsed().as_secs_f64() >= 60.0 * self.interval_minutes;
        let by_time = comm.all_reduce_scalar(if by_time { 1.0 } else { 0.0 }, ReduceOp::Sum)? > 0.0;
        let every = self.interval_steps;
        Ok(by_time
            || stop
            || step == steps
            || (every > 0 && step.is_multiple_of(every))
            || self.keep_steps.contains(&step))
    }

    /// Writes `snap` (whose copy to host memory took `copied`): on the background thread when
    /// `background` and `checkpoint.async_save` allow, else now, after any save in flight.
    pub fn save(&mut self, snap: Snapshot, copied: Duration, background: bool) -> Result<()> {
        let ctx = self.ctx.clone();
        let main = self.main;
        let write = move || {
            let started = Instant::now();
            let dir = ctx.write(snap).map_err(|e| explain_save_error(e, &ctx.dir))?;
            if main {
                println!(
                    "checkpoint: saved {} (the loop waited {:.0} ms for the copy to host memory; writing took {:.0} ms)",
                    dir.display(),
                    copied.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            Ok(dir)
        };
        if self.async_save && background {
            self.saver.start(write)?; // waits for the previous save, if still writing
        } else {
            self.saver.wait()?;
            write()?;
        }
        self.last_save = Instant::now();
        Ok(())
    }

    /// Waits for the save in flight, if any.
    pub fn wait(&mut self) -> Result<()> {
        self.saver.wait().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning keeps the newest `keep`, and never the one just written or the one `latest`
    /// names, even when they are not the newest; a pruned directory is gone whole.
    #[test]
    fn pruning_spares_the_checkpoint_just_written_and_latest() {
        let dir = std::env::temp_dir().join(format!("baichuan-prune-{}", std::process::id()));
        for s in [1, 2, 3, 4, 9] {
            fs::create_dir_all(step_dir(&dir, s).join("optim")).unwrap();
        }
        fs::write(dir.join(LATEST), "step-00000002\n").unwrap();
        prune(&dir, 1, &[], &step_dir(&dir, 3)).unwrap();
        assert_eq!(
            list(&dir),
            vec![step_dir(&dir, 9), step_dir(&dir, 3), step_dir(&dir, 2)]
        );
        let left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        prune(&dir, 0, &[], &step_dir(&dir, 3)).unwrap(); // 0 keeps all
        assert_eq!(list(&dir).len(), 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Checkpoints at `checkpoint.keep_steps` (a sweep's decay-branch points) are never pruned
    /// and do not count towards `keep_last`.
    #[test]
    fn pruning_spares_the_kept_steps() {
        let dir = std::env::temp_dir().join(format!("baichuan-prune-kept-{}", std::process::id()));
        for s in [2, 4, 6, 8, 10, 12] {
            fs::create_dir_all(step_dir(&dir, s).join("optim")).unwrap();
        }
        fs::write(dir.join(LATEST), "step-00000012\n").unwrap();
        prune(&dir, 2, &[4, 6], &step_dir(&dir, 12)).unwrap();
        assert_eq!(
            list(&dir),
            vec![
                step_dir(&dir, 12),
                step_dir(&dir, 10),
                step_dir(&dir, 6),
                step_dir(&dir, 4)
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_is_named_as_such() {
        let raw = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC)).context("writing x");
        let e = format!("{:#}", explain_save_error(raw, Path::new("/ck")));
        assert!(
            e.contains("the disk is full") && e.contains("previous checkpoint") && e.contains("HINT"),
            "{e}"
        );
        let torch = anyhow::anyhow!("Internal torch error: IoError(Os {{ code: 28, kind: StorageFull }})");
        assert!(format!("{:#}", explain_save_error(torch, Path::new("/ck"))).contains("the disk is full"));
        let other = anyhow::anyhow!("permission denied");
        assert!(!format!("{:#}", explain_save_error(other, Path::new("/ck"))).contains("full"));
    }
}
