//! The trainer's view of its data: resolves `[data]` into a token stream (tokenizing text or
//! JSONL into a cache beside the run, reused while inputs and tokenizer are unchanged, or
//! opening prepared shards), splits off the held-out part, and builds the prefetching loader
//! of this rank and the fixed validation batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use baichuan_data::prepare::{prepare, Manifest, PrepareOptions, PrepareSummary, MANIFEST_FILE};
use baichuan_data::shard::ShardSet;
use baichuan_data::{Batch, Interleaved, Loader, Mixture, Prefetcher, TokenRange, TokenSource, Tokenizer};
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
    /// The same validation batches at every evaluation (this rank's rows): one set for a
    /// single stream (no name), one per source of a mixture that has held-out data.
    pub valid: Vec<(Option<String>, Vec<Batch>)>,
    pub train_tokens: u64,
    pub vocab_size: u64,
    pub samples_per_epoch: u64,
    /// Mixtures only.
    pub mixture: Option<MixtureInfo>,
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

/// Where `data.valid` text is tokenized: beside the training cache and named after it
/// (`<cache>-valid`), so runs whose caches share a parent directory never share it.
pub fn valid_cache(cache: &Path) -> PathBuf {
    let name = cache
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "token-cache".into());
    cache.with_file_name(format!("{name}-valid"))
}

/// Opens the tokens of `paths` in `format`, tokenizing text into `cache` first when needed.
fn open_stream(
    config: &RunConfig,
    input: &Input,
    paths: &[PathBuf],
    cache: &Path,
    tokenizer: &Path,
    verbose: bool,
) -> Result<ShardSet> {
    let d = &config.data;
    match input.format {
        DataFormat::Text | DataFormat::Jsonl => {
            let tok = Tokenizer::open(tokenizer)?;
            let mut opts = PrepareOptions::new(paths.to_vec(), cache.to_path_buf());
            opts.text_key = input.text_key.clone();
            opts.max_invalid_fraction = d.max_invalid_fraction;
            let bar = byte_bar(0, "tokenizing");
            if !verbose {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let summary = prepare(&tok, &opts, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .with_context(|| format!("tokenizing {} into the cache {}", input.label, cache.display()))?;
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
                    bail!(
                        "{} ({}): neither a prepared directory (no {MANIFEST_FILE}) nor a shard file; HINT: run `baichuan prepare`",
                        p.display(),
                        input.label
                    );
                }
            }
            Ok(ShardSet::open(&shards)?)
        }
    }
}

/// One input of the run: `data.path` or one of `[[data.sources]]`.
struct Input {
    /// For messages: `data.path` or `data.sources "name"`.
    label: String,
    format: DataFormat,
    text_key: String,
    paths: Vec<PathBuf>,
    valid: Vec<PathBuf>,
    valid_fraction: f64,
    cache: PathBuf,
}

/// The training side and the held-out side (if any) of one input, and its vocabulary.
struct Opened {
    train: Split,
    valid: Option<Split>,
    vocab: u64,
}

/// Opens `input` and splits off its held-out part as `data.valid`/`valid_fraction` say.
fn open_input(config: &RunConfig, input: &Input, tokenizer: &Path, model_vocab: i64, verbose: bool) -> Result<Opened> {
    let d = &config.data;
    let all = Arc::new(open_stream(
        config,
        input,
        &input.paths,
        &input.cache,
        tokenizer,
        verbose,
    )?);
    if all.vocab_size() > model_vocab as u64 {
        bail!(
            "{}: the data was tokenized with a {}-piece vocabulary but model.vocab_size is {model_vocab}; \
             HINT: use the model's tokenizer, or set model.vocab_size >= {}",
            input.label,
            all.vocab_size(),
            all.vocab_size()
        );
    }
    all.check(model_vocab as u64, d.verify_shards)?;
    let seq = d.seq_len as u64;
    let total = all.num_tokens();
    let label = &input.label;
    let (train, valid) = if !input.valid.is_empty() {
        let valid = Arc::new(open_stream(
            config,
            input,
            &input.valid,
            &valid_cache(&input.cache),
            tokenizer,
            verbose,
        )?);
        valid.check(model_vocab as u64, d.verify_shards)?;
        let n = valid.num_tokens();
        (
            Split::Range(TokenRange::new(all.clone(), 0, total)),
            Some(Split::Range(TokenRange::new(valid, 0, n))),
        )
    } else if input.valid_fraction > 0.0 && d.valid_split == ValidSplit::End {
        let held = ((total as f64 * input.valid_fraction).ceil() as u64).max(seq + 1);
        if held + seq + 1 > total {
            bail!(
                "{label}: data.valid_fraction = {} holds out {held} tokens (at least data.seq_len + 1) and leaves too \
                 little training data in {total} tokens; HINT: lower data.seq_len or data.valid_fraction, or add data",
                input.valid_fraction
            );
        }
        (
            Split::Range(TokenRange::new(all.clone(), 0, total - held)),
            Some(Split::Range(TokenRange::new(all.clone(), total - held, held))),
        )
    } else if input.valid_fraction > 0.0 {
        let (block, period) = spread_blocks(total, seq, input.valid_fraction);
        let held = Interleaved::new(all.clone(), block, period, true);
        if held.num_tokens() < seq + 1 {
            bail!(
                "{label}: data.valid_fraction = {} with data.valid_split = \"spread\" holds out {} tokens of {total} \
                 (every {period}th block of {block}), fewer than data.seq_len + 1; HINT: raise data.valid_fraction, \
                 lower data.seq_len, or add data",
                input.valid_fraction,
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
    Ok(Opened {
        train,
        valid,
        vocab: all.vocab_size(),
    })
}

/// The fixed validation batches of this rank from `range` (`eval.batches`, or as many as it holds).
fn valid_batches(
    config: &RunConfig,
    range: Split,
    label: &str,
    rank: u64,
    world: u64,
    verbose: bool,
) -> Result<Vec<Batch>> {
    let (seq, global) = (config.data.seq_len as u64, config.train.global_batch_size as u64);
    let tokens = range.num_tokens();
    let hint = "HINT: raise data.valid_fraction or add validation data";
    let mut l = Loader::new(range, seq, global, config.job.seed, rank, world)
        .with_context(|| format!("{label}: the validation data is smaller than one global batch; {hint}"))?;
    let available = l.order().num_samples() / global;
    if available == 0 {
        bail!(
            "{label}: validation data holds {tokens} tokens, fewer than one global batch of {global} x {seq}; {hint}"
        );
    }
    let n = config.eval.batches.min(available).max(1);
    if verbose {
        println!("data: {label}: {tokens} validation tokens; {n} fixed batches per evaluation");
    }
    Ok((0..n).map(|_| l.next_batch()).collect())
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
    let seq = d.seq_len as u64;
    let global = config.train.global_batch_size as u64;
    let Some(mut mixture) = d.mixture()? else {
        let input = Input {
            label: "data.path".into(),
            format: d.format,
            text_key: d.text_key.clone(),
            paths: d.path.clone(),
            valid: d.valid.clone(),
            valid_fraction: d.valid_fraction,
            cache,
        };
        let opened = open_input(config, &input, tokenizer, model_vocab, verbose)?;
        let train_tokens = opened.train.num_tokens();
        let loader = Loader::new(opened.train, seq, global, config.job.seed, rank, world)
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
        let valid = match opened.valid {
            None => Vec::new(),
            Some(range) => valid_batches(config, range, "data", rank, world, verbose)?,
        };
        return Ok(Datasets {
            train: Prefetcher::new(loader, d.prefetch),
            valid: if valid.is_empty() {
                Vec::new()
            } else {
                vec![(None, valid)]
            },
            train_tokens,
            vocab_size: opened.vocab,
            samples_per_epoch: order.num_samples(),
            mixture: None,
        });
    };
    let mut trains = Vec::new();
    let mut valid = Vec::new();
    let mut vocab = 0;
    let mut samples = Vec::new();
    for s in &d.sources {
        let label = format!("data.sources {:?}", s.name);
        let input = Input {
            label: label.clone(),
            format: s.format.unwrap_or(d.format),
            text_key: s.text_key.clone().unwrap_or_else(|| d.text_key.clone()),
            paths: s.path.clone(),
            valid: s.valid.clone(),
            valid_fraction: s.valid_fraction.unwrap_or(d.valid_fraction),
            cache: source_cache(&cache, &s.name),
        };
        let opened = open_input(config, &input, tokenizer, model_vocab, verbose)?;
        vocab = vocab.max(opened.vocab);
        let n = baichuan_data::SampleOrder::new(opened.train.num_tokens(), seq, 0)
            .with_context(|| label.clone())?
            .num_samples();
        samples.push(n);
        if let Some(range) = opened.valid {
            valid.push((
                Some(s.name.clone()),
                valid_batches(config, range, &label, rank, world, verbose)?,
            ));
        }
        trains.push(opened.train);
    }
    for (i, s) in d.sources.iter().enumerate() {
        let by_epochs = s.max_epochs.map(|e| (e * samples[i] as f64).floor() as u64);
        let by_tokens = s.max_tokens.map(|t| t / seq);
        let cap = match (by_epochs, by_tokens) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        mixture.set_cap(i, cap);
    }
    let train_tokens = trains.iter().map(TokenSource::num_tokens).sum();
    let loader = Loader::mixed(trains, mixture.clone(), seq, global, config.job.seed, rank, world)
        .context("[[data.sources]] with [train] batch sizes")?;
    if verbose {
        let weights = &mixture.phase_at(0).weights;
        for (i, s) in d.sources.iter().enumerate() {
            println!(
                "data: source {:?}: {} samples of {}+1 per epoch, weight {:.4}{}",
                s.name,
                samples[i],
                seq,
                weights[i],
                mixture.caps()[i].map_or(String::new(), |c| format!(", at most {c} samples"))
            );
        }
        for p in &mixture.phases()[1..] {
            println!("data: from step {} the weights are {:?}", p.start_step + 1, p.weights);
        }
    }
    Ok(Datasets {
        train: Prefetcher::new(loader, d.prefetch),
        valid,
        train_tokens,
        vocab_size: vocab,
        samples_per_epoch: samples.iter().sum(),
        mixture: Some(MixtureInfo {
            mixture,
            samples_per_epoch: samples,
            seed: config.job.seed,
            global,
        }),
    })
}

/// Where source `name` is tokenized: `<cache>-<name>` beside the run's cache.
pub fn source_cache(cache: &Path, name: &str) -> PathBuf {
    let base = cache
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "token-cache".into());
    cache.with_file_name(format!("{base}-{name}"))
}

/// A mixture's schedule and its sources' sizes, for the run's accounting and its stop.
#[derive(Debug, Clone)]
pub struct MixtureInfo {
    pub mixture: Mixture,
    pub samples_per_epoch: Vec<u64>,
    pub seed: u64,
    pub global: u64,
}

impl Datasets {
    /// The first step before `steps` whose batch would draw a source past its cap, counted
    /// from the loader's current state, as a message; None if the run can reach `steps`.
    pub fn exhaustion(&self, steps: u64) -> Option<(u64, String)> {
        let m = self.mixture.as_ref()?;
        let state = self.train.state();
        let drawn: Vec<u64> = state.sources.iter().map(|s| s.drawn).collect();
        let e = m
            .mixture
            .first_exhaustion(m.seed, m.global, state.next_sample / m.global, steps, &drawn)?;
        let name = &m.mixture.names[e.source];
        Some((
            e.step,
            format!(
                "source {name:?} reaches its cap of {} samples ({:.2} epochs; data.sources max_epochs / max_tokens) at \
                 step {} of {steps}",
                e.cap,
                e.cap as f64 / m.samples_per_epoch[e.source] as f64,
                e.step + 1
            ),
        ))
    }
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
