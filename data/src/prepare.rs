//! `baichuan prepare`: UTF-8 text or JSONL into token shards plus a manifest, streaming with
//! bounded memory and parallel over files and within large files.
//!
//! A reader thread cuts each file into newline-aligned chunks; `jobs` workers tokenize chunks
//! (one document per line, EOS after each, no BOS, as the reference); the calling thread
//! writes results in input order into shards of about `shard_tokens` tokens. At most
//! `4 * jobs` chunks are in flight, so memory stays flat whatever the corpus size. The
//! manifest (written last, atomically) records the inputs (path, size, mtime), the tokenizer's
//! checksum and the text key: a re-run on unchanged input finds it up to date and does nothing.

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
            if old.same_source(&manifest) && ShardSet::open(&old.shard_paths(&opts.out)).is_ok() {
                return Ok(PrepareSummary {
                    manifest: old,
                    up_to_date: true,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
    }
    fs::create_dir_all(&opts.out).map_err(|e| io_err(&opts.out, e))?;
    // an interrupted or outdated earlier run leaves nothing that could be mistaken for output
    let stale = |path: &Path| match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path, e)),
        _ => Ok(()),
    };
    stale(&opts.out.join(MANIFEST_FILE))?;
    for entry in fs::read_dir(&opts.out).map_err(|e| io_err(&opts.out, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("shard-") && (name.ends_with(".bin") || name.ends_with(".tmp")) {
            stale(&entry.path())?;
        }
    }

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
            let files = &files;
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
            let (job_rx, res_tx, files) = (Arc::clone(&job_rx), res_tx.clone(), &files);
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
                        writer.insert(ShardWriter::create(&opts.out.join(&name), vocab)?)
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
            path: opts
                .inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            msg: "the input holds no documents (every line is empty); HINT: check the path and format".into(),
        });
    }
    manifest.shards = shards;
    manifest.stats = stats;
    let path = opts.out.join(MANIFEST_FILE);
    let tmp = opts.out.join("manifest.json.tmp");
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    fs::write(&tmp, text + "\n").map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    Ok(PrepareSummary {
        manifest,
        up_to_date: false,
        seconds: started.elapsed().as_secs_f64(),
    })
}
