//! `baichuan prepare`: UTF-8 text or JSONL into token shards plus a manifest, streaming with
//! bounded memory and parallel over files and within large files.
//!
//! A reader thread cuts each file into newline-aligned chunks; `jobs` workers tokenize chunks
//! (one document per line, EOS after each, no BOS, as the reference); the calling thread
//! writes results in input order into shards of about `shard_tokens` tokens. At most
//! `4 * jobs` chunks are in flight, so memory stays flat whatever the corpus size. The
//! manifest (written last, atomically) records the inputs (path, size, mtime), the tokenizer's
//! checksum and the text key: a re-run on unchanged input finds it up to date and does nothing.
//!
//! Everything is written into `<out>/.prepare-<pid>.tmp/` first; only when the whole input was
//! tokenized do the new shards and manifest replace the old ones (manifest last). A run that
//! fails (a broken JSONL line, too many invalid lines, a full disk) removes its temporary
//! directory and leaves the previous output as it was.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::hash::fnv1a64;
use crate::shard::{ShardSet, ShardWriter, FORMAT_VERSION};
use crate::text::{list_files, tokenize_lines, TextStats};
use crate::tokenizer::Tokenizer;
use crate::DataError;

pub const MANIFEST_FILE: &str = "manifest.json";

/// What to prepare and how.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    /// JSONL field holding a document.
    pub text_key: String,
    /// Tokenizing threads.
    pub jobs: usize,
    /// Bytes per chunk handed to a worker (cut at a newline).
    pub chunk_bytes: usize,
    /// Start a new shard after this many tokens.
    pub shard_tokens: u64,
    /// Redo even when the manifest says the output is up to date.
    pub force: bool,
    /// Lines that were not valid UTF-8 (repaired) above this fraction of all lines are an
    /// error: the input is likely not text.
    pub max_invalid_fraction: f64,
}

impl PrepareOptions {
    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> Self {
        PrepareOptions {
            inputs,
            out,
            text_key: "text".into(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunk_bytes: 4 << 20,
            shard_tokens: 1 << 28,
            force: false,
            max_invalid_fraction: 0.1,
        }
    }
}

/// One input file as the manifest remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputInfo {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified_ns: u128,
}

/// One output shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub tokens: u64,
    pub documents: u64,
}

/// The tokenizer the shards were made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub path: PathBuf,
    pub vocab_size: u64,
    /// FNV-1a 64 of the model file, hex.
    pub checksum: String,
}

/// `manifest.json` of a prepared directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub tokenizer: TokenizerInfo,
    pub text_key: String,
    pub inputs: Vec<InputInfo>,
    pub shards: Vec<ShardInfo>,
    pub stats: TextStats,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|e| DataError::Input {
            path: path.display().to_string(),
            msg: format!("{e}; HINT: run `baichuan prepare --out {}` first", dir.display()),
        })?;
        serde_json::from_str(&text).map_err(|e| DataError::Input {
            path: path.display().to_string(),
            msg: format!("invalid manifest: {e}"),
        })
    }

    /// Paths of the shards, in stream order.
    pub fn shard_paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.shards.iter().map(|s| dir.join(&s.file)).collect()
    }

    fn same_source(&self, other: &Manifest) -> bool {
        self.format_version == other.format_version
            && self.tokenizer.checksum == other.tokenizer.checksum
            && self.text_key == other.text_key
            && self.inputs == other.inputs
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Input {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

fn describe_inputs(files: &[PathBuf]) -> Result<Vec<InputInfo>, DataError> {
    files
        .iter()
        .map(|p| {
            let meta = fs::metadata(p).map_err(|e| io_err(p, e))?;
            let modified_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Ok(InputInfo {
                path: p.clone(),
                bytes: meta.len(),
                modified_ns,
            })
        })
        .collect()
}

/// A newline-aligned piece of one file.
struct Chunk {
    seq: u64,
    file: usize,
    first_line: usize,
    bytes: Vec<u8>,
}

type ChunkResult = Result<(Vec<u32>, TextStats), DataError>;

/// Reads every file in chunks cut after a newline, waiting for a permit before each.
fn read_chunks(
    files: &[PathBuf],
    chunk_bytes: usize,
    permits: &Receiver<()>,
    send: impl Fn(Chunk) -> bool,
    fail: impl Fn(u64, DataError),
) {
    let mut seq = 0;
    for (fi, path) in files.iter().enumerate() {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return fail(seq, io_err(path, e)),
        };
        let mut carry: Vec<u8> = Vec::new();
        let mut line = 1;
        let mut eof = false;
        while !eof {
            let mut buf = std::mem::take(&mut carry);
            let start = buf.len();
            buf.resize(start + chunk_bytes, 0);
            let mut filled = start;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) => return fail(seq, io_err(path, e)),
                }
            }
            buf.truncate(filled);
            if !eof {
                match buf.iter().rposition(|&b| b == b'\n') {
                    Some(nl) => carry = buf.split_off(nl + 1),
                    None => {
                        carry = buf; // a line longer than the chunk: keep reading
                        continue;
                    }
                }
            }
            if buf.is_empty() {
                continue;
            }
            let lines = buf.iter().filter(|&&b| b == b'\n').count();
            if permits.recv().is_err()
                || !send(Chunk {
                    seq,
                    file: fi,
                    first_line: line,
                    bytes: buf,
                })
            {
                return;
            }
            line += lines;
            seq += 1;
        }
    }
}

/// What `prepare` did.
#[derive(Debug, Clone)]
pub struct PrepareSummary {
    pub manifest: Manifest,
    /// True when the output was already up to date and nothing was done.
    pub up_to_date: bool,
    pub seconds: f64,
}

/// Tokenizes `opts.inputs` into shards under `opts.out`. `progress(done, total)` is called
/// with bytes as chunks complete.
pub fn prepare(
    tok: &Tokenizer,
    opts: &PrepareOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<PrepareSummary, DataError> {
    let started = std::time::Instant::now();
    let files = list_files(&opts.inputs)?;
    let tok_bytes = fs::read(tok.path()).map_err(|e| io_err(tok.path(), e))?;
    let vocab = tok.vocab_size() as u64;
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        tokenizer: TokenizerInfo {
            path: tok.path().to_path_buf(),
            vocab_size: vocab,
            checksum: format!("{:016x}", fnv1a64(&tok_bytes)),
        },
        text_key: opts.text_key.clone(),
        inputs: describe_inputs(&files)?,
        shards: Vec::new(),
        stats: TextStats::default(),
    };
    if !opts.force {
        if let Ok(old) = Manifest::read(&opts.out) {
            let intact = ShardSet::open(&old.shard_paths(&opts.out)).and_then(|set| set.check(vocab, true));
            if old.same_source(&manifest) && intact.is_ok() {
                return Ok(PrepareSummary {
                    manifest: old,
                    up_to_date: true,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
    }
    fs::create_dir_all(&opts.out).map_err(|e| io_err(&opts.out, e))?;
    remove_stale_work_dirs(&opts.out);
    let work = opts.out.join(format!("{WORK_PREFIX}{}.tmp", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(|e| io_err(&work, e))?;
    }
    fs::create_dir_all(&work).map_err(|e| io_err(&work, e))?;
    let outcome = tokenize_into(tok, opts, &files, &work, vocab, progress, &mut manifest)
        .and_then(|()| swap_into_place(&work, &opts.out, &manifest));
    if let Err(e) = outcome {
        // the previous output is untouched; the partial one goes
        fs::remove_dir_all(&work).ok();
        return Err(e);
    }
    fs::remove_dir_all(&work).map_err(|e| io_err(&work, e))?;
    Ok(PrepareSummary {
        manifest,
        up_to_date: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}

const WORK_PREFIX: &str = ".prepare-";

/// The inputs, for an error about all of them.
fn inputs_label(opts: &PrepareOptions) -> String {
    opts.inputs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes `.prepare-<pid>.tmp` directories of runs that are gone (killed before cleaning up).
fn remove_stale_work_dirs(out: &Path) {
    let Ok(entries) = fs::read_dir(out) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix(WORK_PREFIX)
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            let alive = Path::new("/proc/self").exists() && Path::new(&format!("/proc/{pid}")).exists();
            if pid != std::process::id() && !alive {
                fs::remove_dir_all(e.path()).ok();
            }
        }
    }
}

/// Replaces the output in `out` by the complete one in `work`: the old manifest goes first
/// (so a crash in between leaves no manifest naming missing shards, and the next run redoes
/// the work), then the old shards, then the new shards move in, the manifest last.
fn swap_into_place(work: &Path, out: &Path, manifest: &Manifest) -> Result<(), DataError> {
    let stale = |path: &Path| match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path, e)),
        _ => Ok(()),
    };
    stale(&out.join(MANIFEST_FILE))?;
    for entry in fs::read_dir(out).map_err(|e| io_err(out, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("shard-") && (name.ends_with(".bin") || name.ends_with(".tmp")) {
            stale(&entry.path())?;
        }
    }
    for shard in &manifest.shards {
        fs::rename(work.join(&shard.file), out.join(&shard.file)).map_err(|e| io_err(&out.join(&shard.file), e))?;
    }
    let path = out.join(MANIFEST_FILE);
    fs::rename(work.join(MANIFEST_FILE), &path).map_err(|e| io_err(&path, e))?;
    if let Ok(d) = File::open(out) {
        d.sync_all().ok(); // durability of the renames; some filesystems refuse a directory fsync
    }
    Ok(())
}

/// Tokenizes `files` into shards and a manifest in `work`, filling `manifest`'s shards and stats.
fn tokenize_into(
    tok: &Tokenizer,
    opts: &PrepareOptions,
    files: &[PathBuf],
    work: &Path,
    vocab: u64,
    progress: &dyn Fn(u64, u64),
    manifest: &mut Manifest,
) -> Result<(), DataError> {
    let total_bytes: u64 = manifest.inputs.iter().map(|i| i.bytes).sum();
    let jobs = opts.jobs.max(1);
    let in_flight = 4 * jobs;
    let (job_tx, job_rx) = sync_channel::<Chunk>(jobs);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = sync_channel::<(u64, usize, ChunkResult)>(in_flight);
    let (permit_tx, permit_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        permit_tx.send(()).expect("fresh channel has room");
    }

    let mut stats = TextStats {
        files: files.len(),
        ..TextStats::default()
    };
    let mut shards: Vec<ShardInfo> = Vec::new();
    let result = std::thread::scope(|s| -> Result<(), DataError> {
        // owned here so that an early error return drops them and unblocks every thread
        let (permit_tx, job_rx) = (permit_tx, job_rx);
        {
            let res_tx = res_tx.clone();
            s.spawn(move || {
                read_chunks(
                    files,
                    opts.chunk_bytes,
                    &permit_rx,
                    |chunk| job_tx.send(chunk).is_ok(),
                    |seq, e| {
                        // the collector only hangs up once it has failed already
                        res_tx.send((seq, 0, Err(e))).ok();
                    },
                )
            });
        }
        for _ in 0..jobs {
            let (job_rx, res_tx, files) = (Arc::clone(&job_rx), res_tx.clone(), files);
            s.spawn(move || loop {
                let chunk = match job_rx.lock().expect("job queue").recv() {
                    Ok(c) => c,
                    Err(_) => break,
                };
                let path = &files[chunk.file];
                let jsonl = path.extension().and_then(|e| e.to_str()) == Some("jsonl");
                let r = tokenize_lines(tok, &chunk.bytes, jsonl, &opts.text_key, path, chunk.first_line);
                if res_tx.send((chunk.seq, chunk.bytes.len(), r)).is_err() {
                    break;
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        // the writer: results in input order, shards rolled between chunks
        let mut pending: BTreeMap<u64, (usize, ChunkResult)> = BTreeMap::new();
        let mut next = 0u64;
        let mut done_bytes = 0u64;
        let mut writer: Option<ShardWriter> = None;
        for (seq, nbytes, r) in res_rx {
            pending.insert(seq, (nbytes, r));
            while let Some((nbytes, r)) = pending.remove(&next) {
                let (ids, st) = r?;
                let w = match writer.as_mut() {
                    Some(w) => w,
                    None => {
                        let name = format!("shard-{:05}.bin", shards.len());
                        writer.insert(ShardWriter::create(&work.join(&name), vocab)?)
                    }
                };
                w.write(&ids, st.documents)?;
                stats.bytes += nbytes as u64;
                stats.documents += st.documents;
                stats.tokens += st.tokens;
                stats.empty_lines += st.empty_lines;
                stats.invalid_utf8_lines += st.invalid_utf8_lines;
                if w.num_tokens() >= opts.shard_tokens {
                    let h = writer.take().expect("open shard").finish()?;
                    shards.push(ShardInfo {
                        file: format!("shard-{:05}.bin", shards.len()),
                        tokens: h.num_tokens,
                        documents: h.num_documents,
                    });
                }
                done_bytes += nbytes as u64;
                progress(done_bytes, total_bytes);
                // the readers hang up once every input is read: then no permit is needed
                permit_tx.send(()).ok();
                next += 1;
            }
        }
        if let Some(w) = writer.take() {
            let h = w.finish()?;
            shards.push(ShardInfo {
                file: format!("shard-{:05}.bin", shards.len()),
                tokens: h.num_tokens,
                documents: h.num_documents,
            });
        }
        if !pending.is_empty() {
            return Err(DataError::Config("a tokenizer worker stopped early".into()));
        }
        Ok(())
    });
    result?;
    if stats.tokens == 0 {
        return Err(DataError::Input {
            path: inputs_label(opts),
            msg: "the input holds no documents (every line is empty); HINT: check the path and format".into(),
        });
    }
    let lines = stats.documents + stats.empty_lines;
    if stats.invalid_utf8_lines > 0 {
        let fraction = stats.invalid_utf8_lines as f64 / lines.max(1) as f64;
        if fraction > opts.max_invalid_fraction {
            return Err(DataError::Input {
                path: inputs_label(opts),
                msg: format!(
                    "{} of {lines} lines ({:.1}%) are not valid UTF-8: this does not look like text (the limit is \
                     {:.1}%, data.max_invalid_fraction); HINT: check the path and format, or raise the limit",
                    stats.invalid_utf8_lines,
                    100.0 * fraction,
                    100.0 * opts.max_invalid_fraction
                ),
            });
        }
        eprintln!(
            "warning: {} of {lines} lines were not valid UTF-8 and were repaired (U+FFFD)",
            stats.invalid_utf8_lines
        );
    }
    manifest.shards = shards;
    manifest.stats = stats;
    let tmp = work.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    fs::write(&tmp, text + "\n").map_err(|e| io_err(&tmp, e))?;
    Ok(())
}
