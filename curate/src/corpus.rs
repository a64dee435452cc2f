//! Corpus files in and out: the `.txt` (one document per line) and `.jsonl` (a text key) formats
//! `baichuan prepare` reads, streamed in batches so memory stays flat, written back under the
//! same relative names with the surviving documents in order, plus JSONL side outputs that
//! record every removal and its reason.
//!
//! Outputs are written to `NAME.tmp` and renamed when complete, so an interrupted run never
//! leaves a truncated file under a final name. Side-output directories carry a marker file that
//! `baichuan_data::text::list_files` skips, so `filter | dedup | prepare` chain on directories.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::{input_err, output_err, CurateError, Result};

/// One input file: where it is, the name its output gets, and its format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    /// Relative output name (`/`-separated): the path under the input directory, or the file name.
    pub name: String,
    pub jsonl: bool,
    pub bytes: u64,
    pub modified_ns: u128,
}

impl InputFile {
    #[doc(hidden)]
    pub fn for_test(name: &str, bytes: u64) -> Self {
        InputFile {
            path: PathBuf::from(name),
            name: name.into(),
            jsonl: false,
            bytes,
            modified_ns: 0,
        }
    }
}

/// Expands files and directories into input files with distinct output names, in corpus order
/// (inputs in the order given, each directory's files sorted).
pub fn list_inputs(inputs: &[PathBuf]) -> Result<Vec<InputFile>> {
    let mut out: Vec<InputFile> = Vec::new();
    for input in inputs {
        let files = baichuan_data::text::list_files(std::slice::from_ref(input))?;
        for path in files {
            let name = if input.is_dir() {
                path.strip_prefix(input).unwrap_or(&path).to_path_buf()
            } else {
                PathBuf::from(path.file_name().unwrap_or(path.as_os_str()))
            };
            let name = name
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let meta = fs::metadata(&path).map_err(|e| input_err(&path, e))?;
            let modified_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            if let Some(other) = out.iter().find(|f| f.name == name) {
                return Err(input_err(
                    &path,
                    format!(
                        "has the same output name {name:?} as {}; HINT: pass the parent directories instead of the files",
                        other.path.display()
                    ),
                ));
            }
            let jsonl = path.extension().is_some_and(|e| e == "jsonl");
            out.push(InputFile {
                path,
                name,
                jsonl,
                bytes: meta.len(),
                modified_ns,
            });
        }
    }
    Ok(out)
}

/// The input files of a staged run: the first stage (`first_stage`, when `is_first`) records them in
/// `work/inputs.json` and later stages check theirs against it, so every stage sees the same corpus.
/// A later stage with no record is an error when `required`.
pub fn stage_inputs(
    work: &Path,
    inputs: &[PathBuf],
    is_first: bool,
    first_stage: &str,
    required: bool,
) -> Result<Vec<InputFile>> {
    let files = list_inputs(inputs)?;
    let path = work.join("inputs.json");
    if is_first {
        fs::create_dir_all(work).map_err(|e| output_err(work, e))?;
        let text = serde_json::to_string_pretty(&files).map_err(|e| output_err(&path, e))?;
        write_atomic(&path, text.as_bytes())?;
    } else if required || path.exists() {
        let text = fs::read_to_string(&path)
            .map_err(|e| input_err(&path, format!("{e}; HINT: run the {first_stage} stage first")))?;
        let recorded: Vec<InputFile> = serde_json::from_str(&text).map_err(|e| input_err(&path, e))?;
        if recorded != files {
            return Err(input_err(
                &path,
                format!(
                    "the inputs changed since the {first_stage} stage; HINT: rerun every stage on the same --input"
                ),
            ));
        }
    }
    Ok(files)
}

/// Bytes of input read per batch of documents handed to the thread pool.
pub const BATCH_BYTES: usize = 4 << 20;

/// One document: its 0-based line in the file, the line as read, and its text.
#[derive(Debug, Clone)]
pub struct Doc {
    pub line: u32,
    pub raw: String,
    pub text: String,
}

/// Reads documents of one file in batches.
pub struct DocReader {
    reader: BufReader<File>,
    path: PathBuf,
    jsonl: bool,
    text_key: String,
    line: u64,
    buf: Vec<u8>,
    /// Blank lines skipped (not documents).
    pub empty_lines: u64,
    /// Lines that were not valid UTF-8 (repaired with U+FFFD).
    pub invalid_utf8_lines: u64,
}

impl DocReader {
    pub fn open(file: &InputFile, text_key: &str) -> Result<Self> {
        let f = File::open(&file.path).map_err(|e| input_err(&file.path, e))?;
        Ok(DocReader {
            reader: BufReader::with_capacity(1 << 20, f),
            path: file.path.clone(),
            jsonl: file.jsonl,
            text_key: text_key.to_string(),
            line: 0,
            buf: Vec::new(),
            empty_lines: 0,
            invalid_utf8_lines: 0,
        })
    }

    /// Up to `max_bytes` of documents (at least one unless the file is done); adds the bytes
    /// read to `progress`.
    pub fn next_batch(&mut self, max_bytes: usize, progress: &Progress) -> Result<Vec<Doc>> {
        let mut docs = Vec::new();
        let mut taken = 0usize;
        while taken < max_bytes {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| input_err(&self.path, e))?;
            if n == 0 {
                break;
            }
            taken += n;
            progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
            let line = self.line;
            self.line += 1;
            let line = u32::try_from(line).map_err(|_| {
                input_err(
                    &self.path,
                    "more than 4294967295 lines; HINT: split the file into smaller files",
                )
            })?;
            let mut raw: &[u8] = &self.buf;
            raw = raw.strip_suffix(b"\n").unwrap_or(raw);
            raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let raw = match std::str::from_utf8(raw) {
                Ok(s) => s.to_string(),
                Err(_) => {
                    self.invalid_utf8_lines += 1;
                    String::from_utf8_lossy(raw).into_owned()
                }
            };
            if raw.trim().is_empty() {
                self.empty_lines += 1;
                continue;
            }
            let text = if self.jsonl {
                self.text_of(&raw, line)?
            } else {
                raw.clone()
            };
            docs.push(Doc { line, raw, text });
        }
        progress.docs.fetch_add(docs.len() as u64, Ordering::Relaxed);
        Ok(docs)
    }

    fn text_of(&self, raw: &str, line: u32) -> Result<String> {
        let at = || format!("{}:{}", self.path.display(), line + 1);
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| CurateError::Input {
            path: at(),
            msg: format!("invalid JSON line: {e}"),
        })?;
        match value.get(&self.text_key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(CurateError::Input {
                path: at(),
                msg: format!(
                    "no string field {:?}; HINT: pass the right key (--text-key)",
                    self.text_key
                ),
            }),
        }
    }
}

/// A file written under a temporary name and renamed into place by `finish`.
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    out: BufWriter<File>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(|e| output_err(dir, e))?;
        }
        let tmp = PathBuf::from(format!("{}.tmp", dest.display()));
        let f = File::create(&tmp).map_err(|e| output_err(&tmp, e))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, f),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| output_err(&self.tmp, e))
    }

    pub fn finish(self) -> Result<()> {
        let f = self.out.into_inner().map_err(|e| output_err(&self.tmp, e.error()))?;
        f.sync_all().map_err(|e| output_err(&self.tmp, e))?;
        fs::rename(&self.tmp, &self.dest).map_err(|e| output_err(&self.dest, e))
    }
}

/// Writes `bytes` to `dest` atomically (temporary file, then rename).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)?;
    f.finish()
}

/// The surviving documents of one input file, in the input's format.
pub struct DocWriter {
    file: AtomicFile,
    jsonl: bool,
    text_key: String,
}

impl DocWriter {
    pub fn create(out_dir: &Path, input: &InputFile, text_key: &str) -> Result<Self> {
        Ok(DocWriter {
            file: AtomicFile::create(&out_dir.join(&input.name))?,
            jsonl: input.jsonl,
            text_key: text_key.to_string(),
        })
    }

    /// Writes `doc` unchanged, or with its text replaced by `text` (JSONL keeps the other fields;
    /// a `.txt` document stays one line, so newlines become spaces).
    pub fn write(&mut self, doc: &Doc, text: Option<&str>) -> Result<()> {
        let line = match text {
            None => doc.raw.clone(),
            Some(t) if self.jsonl => {
                let mut value: serde_json::Value =
                    serde_json::from_str(&doc.raw).map_err(|e| output_err(&self.file.dest, e))?;
                value[&self.text_key] = serde_json::Value::String(t.to_string());
                value.to_string()
            }
            Some(t) => t.replace(['\n', '\r'], " "),
        };
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")
    }

    pub fn finish(self) -> Result<()> {
        self.file.finish()
    }
}

/// Name of the marker file that makes `list_files` skip a side-output directory.
pub use baichuan_data::text::SIDE_OUTPUT_MARKER;

/// JSONL records of removed documents, lines or sentences for one input file.
pub struct SideWriter {
    file: Option<AtomicFile>,
    dest: PathBuf,
}

impl SideWriter {
    /// `OUT/removed/<name>.jsonl`, created on the first record; marks `removed_dir`.
    pub fn new(removed_dir: &Path, input: &InputFile) -> Result<Self> {
        fs::create_dir_all(removed_dir).map_err(|e| output_err(removed_dir, e))?;
        let marker = removed_dir.join(SIDE_OUTPUT_MARKER);
        if !marker.exists() {
            fs::write(
                &marker,
                "side outputs of baichuan filter/dedup: removed text and reasons\n",
            )
            .map_err(|e| output_err(&marker, e))?;
        }
        let name = input
            .name
            .strip_suffix(".txt")
            .or(input.name.strip_suffix(".jsonl"))
            .unwrap_or(&input.name);
        Ok(SideWriter {
            file: None,
            dest: removed_dir.join(format!("{name}.jsonl")),
        })
    }

    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        if self.file.is_none() {
            self.file = Some(AtomicFile::create(&self.dest)?);
        }
        let mut line = serde_json::to_vec(record).map_err(|e| output_err(&self.dest, e))?;
        line.push(b'\n');
        self.file.as_mut().expect("created above").write_all(&line)
    }

    /// Renames the records into place; with none, removes a stale file from an earlier run.
    pub fn finish(self) -> Result<()> {
        match self.file {
            Some(f) => f.finish(),
            None => match fs::remove_file(&self.dest) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(output_err(&self.dest, e)),
                _ => Ok(()),
            },
        }
    }
}

/// Rewrites one input file: its documents in batches go to `batch`, which writes survivors to the
/// `DocWriter` (under the input's name in `out`), removals to the `SideWriter` (`removed/`), and
/// counts into the file's `Stats`; the outputs are renamed into place when the file is done.
pub fn rewrite_file(
    input: &InputFile,
    out: &Path,
    removed: &Path,
    text_key: &str,
    progress: &Progress,
    mut batch: impl FnMut(&[Doc], &mut DocWriter, &mut SideWriter, &mut crate::Stats) -> Result<()>,
) -> Result<crate::Stats> {
    let mut stats = crate::Stats {
        files: 1,
        ..crate::Stats::default()
    };
    let mut reader = DocReader::open(input, text_key)?;
    let mut writer = DocWriter::create(out, input, text_key)?;
    let mut side = SideWriter::new(removed, input)?;
    loop {
        let docs = reader.next_batch(BATCH_BYTES, progress)?;
        if docs.is_empty() {
            break;
        }
        batch(&docs, &mut writer, &mut side, &mut stats)?;
    }
    stats.empty_lines = reader.empty_lines;
    stats.invalid_utf8_lines = reader.invalid_utf8_lines;
    writer.finish()?;
    side.finish()?;
    Ok(stats)
}

/// Progress counters shared with whoever draws a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub total_bytes: AtomicU64,
    pub bytes: AtomicU64,
    pub docs: AtomicU64,
    pub stage: Mutex<String>,
}

impl Progress {
    /// Starts a new stage over `total_bytes` of input.
    pub fn start(&self, stage: &str, total_bytes: u64) {
        if let Ok(mut s) = self.stage.lock() {
            *s = stage.to_string();
        }
        self.total_bytes.store(total_bytes, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.docs.store(0, Ordering::Relaxed);
    }

    pub fn stage(&self) -> String {
        self.stage.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("curate-corpus-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_lines_and_jsonl_and_writes_them_back() {
        let dir = temp_dir("rw");
        fs::create_dir_all(dir.join("in/sub")).unwrap();
        fs::write(dir.join("in/a.txt"), "one\n\n  \ntwo\r\nthree").unwrap();
        fs::write(
            dir.join("in/sub/b.jsonl"),
            "{\"id\":1,\"text\":\"x y\"}\n{\"text\":\"z\",\"id\":2}\n",
        )
        .unwrap();
        let inputs = list_inputs(&[dir.join("in")]).unwrap();
        let names: Vec<&str> = inputs.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "sub/b.jsonl"]);
        let progress = Progress::default();
        let mut r = DocReader::open(&inputs[0], "text").unwrap();
        let docs = r.next_batch(1 << 20, &progress).unwrap();
        let lines: Vec<(u32, &str)> = docs.iter().map(|d| (d.line, d.text.as_str())).collect();
        assert_eq!(lines, [(0, "one"), (3, "two"), (4, "three")]);
        assert_eq!(r.empty_lines, 2);
        let mut r = DocReader::open(&inputs[1], "text").unwrap();
        let docs = r.next_batch(1 << 20, &progress).unwrap();
        assert_eq!(docs[1].text, "z");
        let mut w = DocWriter::create(&dir.join("out"), &inputs[1], "text").unwrap();
        w.write(&docs[0], None).unwrap();
        w.write(&docs[1], Some("new")).unwrap();
        w.finish().unwrap();
        let written = fs::read_to_string(dir.join("out/sub/b.jsonl")).unwrap();
        assert_eq!(written, "{\"id\":1,\"text\":\"x y\"}\n{\"id\":2,\"text\":\"new\"}\n");
        let mut r = DocReader::open(&inputs[1], "body").unwrap();
        let err = r.next_batch(1 << 20, &progress).unwrap_err().to_string();
        assert!(err.contains("b.jsonl:1") && err.contains("--text-key"), "{err}");
    }

    #[test]
    fn side_outputs_are_skipped_as_inputs() {
        let dir = temp_dir("side");
        fs::write(dir.join("a.txt"), "doc\n").unwrap();
        let inputs = list_inputs(std::slice::from_ref(&dir)).unwrap();
        let mut side = SideWriter::new(&dir.join("removed"), &inputs[0]).unwrap();
        side.write(&serde_json::json!({"text": "gone"})).unwrap();
        side.finish().unwrap();
        assert!(dir.join("removed/a.jsonl").exists());
        let again = list_inputs(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(again.len(), 1, "the side output is not an input: {again:?}");
    }
}
