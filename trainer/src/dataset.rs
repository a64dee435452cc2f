//! The trainer's view of its data: resolves `[data]` into a token stream (tokenizing text or
//! JSONL into a cache beside the run, reused while inputs and tokenizer are unchanged, or
//! opening prepared shards), splits off the held-out part, and builds the prefetching loader
//! of this rank and the fixed validation batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use baichuan_data::prepare::{prepare, Manifest, PrepareOptions, PrepareSummary, MANIFEST_FILE};
use baichuan_data::shard::ShardSet;
use baichuan_data::{Batch, Interleaved, Loader, Prefetcher, TokenRange, TokenSource, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{DataFormat, RunConfig, ValidSplit};

/// The training or the held-out side of the data: a contiguous range of the stream, or the
/// blocks of a hold-out spread over it (`data.valid_split`).
pub enum Split {
    Range(TokenRange<Arc<ShardSet>>),
    Spread(Interleaved<Arc<ShardSet>>),
}

impl TokenSource for Split {
    fn num_tokens(&self) -> u64 {
        match self {
            Split::Range(r) => r.num_tokens(),
            Split::Spread(s) => s.num_tokens(),
        }
    }
    fn read(&self, start: u64, out: &mut [u32]) {
        match self {
            Split::Range(r) => r.read(start, out),
            Split::Spread(s) => s.read(start, out),
        }
    }
}

pub type Stream = Split;

/// Block size and period of a spread hold-out of `fraction` of `total` tokens in samples of
/// `seq`: every `round(1 / fraction)`-th block is held out; a block is a whole number of samples
/// (1 to 64), as many as leave at least 16 held-out blocks, so the held-out text is drawn from
/// all over the stream while few samples straddle the seams.
pub fn spread_blocks(total: u64, seq: u64, fraction: f64) -> (u64, u64) {
    let period = ((1.0 / fraction).round() as u64).max(2);
    let samples = (total / (16 * period * seq)).clamp(1, 64);
    (samples * seq, period)
}

/// The data of one rank.
pub struct Datasets {
    pub train: Prefetcher<Stream>,
    /// The same validation batches at every evaluation (this rank's rows), if any.
    pub valid: Vec<Batch>,
    pub train_tokens: u64,
    pub vocab_size: u64,
    pub samples_per_epoch: u64,
}

/// A byte progress bar with MB/s and ETA.
pub fn byte_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}}"
        ))
        .expect("valid template"),
    );
    bar
}

/// Prints what `prepare` did, as `baichuan prepare` and `train` report it.
pub fn print_summary(s: &PrepareSummary, out: &Path) {
    let st = &s.manifest.stats;
    if s.up_to_date {
        println!(
            "data: {} is up to date ({} tokens in {} shards); nothing to do",
            out.display(),
            st.tokens,
            s.manifest.shards.len()
        );
        return;
    }
    println!(
        "data: {} files, {:.1} MB -> {} documents, {} tokens ({:.2} bytes/token) in {} shards, {:.1}s ({:.1} MB/s); \
         {} empty lines skipped, {} lines with invalid UTF-8 repaired",
        st.files,
        st.bytes as f64 / 1e6,
        st.documents,
        st.tokens,
        st.bytes as f64 / st.tokens.max(1) as f64,
        s.manifest.shards.len(),
        s.seconds,
        st.bytes as f64 / 1e6 / s.seconds.max(1e-9),
        st.empty_lines,
        st.invalid_utf8_lines
    );
}

/// Opens the tokens of `paths` in `format`, tokenizing text into `cache` first when needed.
fn open_stream(
    config: &RunConfig,
    paths: &[PathBuf],
    cache: &Path,
    tokenizer: &Path,
    verbose: bool,
) -> Result<ShardSet> {
    let d = &config.data;
    match d.format {
        DataFormat::Text | DataFormat::Jsonl => {
            let tok = Tokenizer::open(tokenizer)?;
            let mut opts = PrepareOptions::new(paths.to_vec(), cache.to_path_buf());
            opts.text_key = d.text_key.clone();
            opts.max_invalid_fraction = d.max_invalid_fraction;
            let bar = byte_bar(0, "tokenizing");
            if !verbose {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let summary = prepare(&tok, &opts, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("tokenizing data.path into the cache {}", cache.display()))?;
            bar.finish_and_clear();
            if verbose {
                print_summary(&summary, cache);
            }
            Ok(ShardSet::open(&summary.manifest.shard_paths(cache))?)
        }
        DataFormat::Shards => {
            let mut shards = Vec::new();
            for p in paths {
                if p.join(MANIFEST_FILE).exists() {
                    shards.extend(Manifest::read(p)?.shard_paths(p));
                } else if p.is_file() {
                    shards.push(p.clone());
                } else {
                    bail!("{}: neither a prepared directory (no {MANIFEST_FILE}) nor a shard file; HINT: run `baichuan prepare`", p.display());
                }
            }
            Ok(ShardSet::open(&shards)?)
        }
    }
}

/// Where `data.valid` text is tokenized: beside the training cache and named after it
/// (`<cache>-valid`), so runs whose caches share a parent directory never share it.
pub fn valid_cache(cache: &Path) -> PathBuf {
    let name = cache
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "token-cache".into());
    cache.with_file_name(format!("{name}-valid"))
}

/// Builds the data of rank `rank` of `world`.
pub fn open(
    config: &RunConfig,
    tokenizer: &Path,
    model_vocab: i64,
    rank: u64,
    world: u64,
    verbose: bool,
) -> Result<Datasets> {
    let d = &config.data;
    let cache = d
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.job.run_dir.join("token-cache"));
    let all = Arc::new(open_stream(config, &d.path, &cache, tokenizer, verbose)?);
    if all.vocab_size() > model_vocab as u64 {
        bail!(
            "the data was tokenized with a {}-piece vocabulary but model.vocab_size is {model_vocab}; \
             HINT: use the model's tokenizer, or set model.vocab_size >= {}",
            all.vocab_size(),
            all.vocab_size()
        );
    }
    all.check(model_vocab as u64, d.verify_shards)?;
    let seq = d.seq_len as u64;
    let global = config.train.global_batch_size as u64;
    let total = all.num_tokens();
    let (train_range, valid_range) = if !d.valid.is_empty() {
        let valid = Arc::new(open_stream(config, &d.valid, &valid_cache(&cache), tokenizer, verbose)?);
        valid.check(model_vocab as u64, d.verify_shards)?;
        let n = valid.num_tokens();
        (
            Split::Range(TokenRange::new(all.clone(), 0, total)),
            Some(Split::Range(TokenRange::new(valid, 0, n))),
        )
    } else if d.valid_fraction > 0.0 && d.valid_split == ValidSplit::End {
        let held = ((total as f64 * d.valid_fraction).ceil() as u64).max(seq + 1);
        if held + seq + 1 > total {
            bail!(
                "data.valid_fraction = {} holds out {held} tokens (at least data.seq_len + 1) and leaves too little \
             training data in {total} tokens; HINT: lower data.seq_len or data.valid_fraction, or add data",
                d.valid_fraction
            );
        }
        (
            Split::Range(TokenRange::new(all.clone(), 0, total - held)),
            Some(Split::Range(TokenRange::new(all.clone(), total - held, held))),
        )
    } else if d.valid_fraction > 0.0 {
        let (block, period) = spread_blocks(total, seq, d.valid_fraction);
        let held = Interleaved::new(all.clone(), block, period, true);
        if held.num_tokens() < seq + 1 {
            bail!(
                "data.valid_fraction = {} with data.valid_split = \"spread\" holds out {} tokens of {total} (every \
                 {period}th block of {block}), fewer than data.seq_len + 1; HINT: raise data.valid_fraction, lower \
                 data.seq_len, or add data",
                d.valid_fraction,
                held.num_tokens()
            );
        }
        (
            Split::Spread(Interleaved::new(all.clone(), block, period, false)),
            Some(Split::Spread(held)),
        )
    } else {
        (Split::Range(TokenRange::new(all.clone(), 0, total)), None)
    };
    let train_tokens = train_range.num_tokens();
    let loader = Loader::new(train_range, seq, global, config.job.seed, rank, world)
        .context("[data] with [train] batch sizes")?;
    let order = loader.order().clone();
    if verbose {
        println!(
        "data: {} training tokens = {} samples of {}+1 per epoch ({} global batches); {} tail tokens fall outside this epoch's samples",
        train_tokens,
        order.num_samples(),
        seq,
        order.num_samples() / global,
        order.leftover_tokens(train_tokens)
    );
    }
    let valid = match valid_range {
        None => Vec::new(),
        Some(range) => {
            let tokens = range.num_tokens();
            let mut l = Loader::new(range, seq, global, config.job.seed, rank, world)
                .context("the validation data is smaller than one global batch; HINT: raise data.valid_fraction or add data.valid")?;
            let available = l.order().num_samples() / global;
            if available == 0 {
                bail!("validation data holds {tokens} tokens, fewer than one global batch of {global} x {seq}; HINT: raise data.valid_fraction");
            }
            let n = config.eval.batches.min(available).max(1);
            if verbose {
                println!("data: {tokens} validation tokens; {n} fixed batches per evaluation");
            }
            (0..n).map(|_| l.next_batch()).collect()
        }
    };
    Ok(Datasets {
        train: Prefetcher::new(loader, d.prefetch),
        valid,
        train_tokens,
        vocab_size: all.vocab_size(),
        samples_per_epoch: order.num_samples(),
    })
}

fn is_shard_file(p: &Path) -> bool {
    let mut magic = [0u8; 8];
    p.is_file()
        && std::fs::File::open(p)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
        && &magic == baichuan_data::shard::MAGIC
}

/// A directory removed when dropped (also on errors and panics).
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove the temporary {} ({e})", self.0.display());
        }
    }
}

const EVAL_CACHE_PREFIX: &str = "baichuan-eval-";

/// Removes `baichuan-eval-<PID>` caches in `tmp` whose process is gone (an evaluation that was
/// killed could not remove its own).
pub fn remove_stale_eval_caches(tmp: &Path) {
    if !Path::new("/proc/self").exists() {
        return; // no way to tell a live process from a gone one
    }
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(EVAL_CACHE_PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // another user's, or already gone: either way not ours to report
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
}

/// The tokens of `paths` for evaluation: prepared directories and shard files are opened as
/// they are; anything else (text, JSONL, directories of them) is tokenized with `tok` into a
/// temporary cache that lives as long as the returned guard.
pub fn open_eval_tokens(paths: &[PathBuf], tok: &Tokenizer, text_key: &str) -> Result<(ShardSet, Option<TempDir>)> {
    let prepared = |p: &PathBuf| p.join(MANIFEST_FILE).exists() || is_shard_file(p);
    if paths.iter().all(prepared) {
        let mut shards = Vec::new();
        for p in paths {
            if p.is_dir() {
                shards.extend(Manifest::read(p)?.shard_paths(p));
            } else {
                shards.push(p.clone());
            }
        }
        return Ok((ShardSet::open(&shards)?, None));
    }
    if let Some(p) = paths.iter().find(|p| prepared(p)) {
        bail!(
            "{}: token shards mixed with text inputs; HINT: pass either prepared data or text, not both",
            p.display()
        );
    }
    remove_stale_eval_caches(&std::env::temp_dir());
    let cache = TempDir(std::env::temp_dir().join(format!("{EVAL_CACHE_PREFIX}{}", std::process::id())));
    let mut opts = PrepareOptions::new(paths.to_vec(), cache.0.clone());
    opts.text_key = text_key.to_string();
    opts.force = true;
    let summary = prepare(tok, &opts, &|_, _| {}).context("tokenizing the --data text")?;
    let shards = ShardSet::open(&summary.manifest.shard_paths(&cache.0))?;
    Ok((shards, Some(cache)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_caches_are_named_after_their_run_s_cache() {
        assert_eq!(valid_cache(Path::new("/c/runA")), PathBuf::from("/c/runA-valid"));
        assert_ne!(valid_cache(Path::new("/c/runA")), valid_cache(Path::new("/c/runB")));
        assert_eq!(
            valid_cache(Path::new("runs/r/token-cache")),
            PathBuf::from("runs/r/token-cache-valid")
        );
    }

    #[test]
    fn caches_of_killed_evaluations_are_removed_and_live_ones_kept() {
        let tmp = std::env::temp_dir().join(format!("baichuan-stale-eval-{}", std::process::id()));
        // PIDs above the kernel's maximum (2^22) never exist
        let dead = tmp.join(format!("{EVAL_CACHE_PREFIX}{}", 4_999_999));
        let live = tmp.join(format!("{EVAL_CACHE_PREFIX}{}", std::process::id()));
        let other = tmp.join("baichuan-eval-notapid");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_stale_eval_caches(&tmp);
        if Path::new("/proc/self").exists() {
            assert!(!dead.exists());
        }
        assert!(live.exists() && other.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn spread_blocks_hold_out_about_the_fraction_in_whole_samples() {
        // the bundled sample at seq 128: 2 samples a block, 20 held-out blocks of 100
        assert_eq!(spread_blocks(526_397, 128, 0.01), (256, 100));
        // a large corpus: blocks stop growing at 64 samples
        assert_eq!(spread_blocks(10_000_000_000, 4096, 0.005), (64 * 4096, 200));
        // little data: one sample a block; a fraction near 0.5 still keeps every other block
        assert_eq!(spread_blocks(1000, 128, 0.1), (128, 10));
        assert_eq!(spread_blocks(100_000, 100, 0.49), (3100, 2));
        for (total, seq, f) in [
            (526_397u64, 128u64, 0.01),
            (3_000_000, 512, 0.05),
            (10_000_000, 4096, 0.02),
        ] {
            let (block, period) = spread_blocks(total, seq, f);
            assert_eq!(block % seq, 0);
            let held = total / block / period * block;
            let share = held as f64 / total as f64;
            assert!((share - f).abs() < 0.25 * f, "{total} {seq} {f}: {share}");
            assert!(total / block / period >= 16 || block == seq, "{total} {seq} {f}");
        }
    }
}
