//! Training a SentencePiece model with Google's own trainer (`libsentencepiece_train`, through the
//! C++ shim `csrc/spm_train.cc`), on a seeded reservoir sample of a corpus in the formats the rest
//! of baichuan reads. Defaults are Baichuan-7B's recipe, as its `tokenizer.model` records them:
//! BPE, 64000 pieces, every digit split, byte fallback (nothing is ever `<unk>`), identity
//! normalisation (no NFKC), whitespace kept, pieces of at most 16 characters, and a character
//! coverage of 0.9995 that leaves the rarest characters to byte pieces.
//!
//! The sample streams (Vitter's algorithm R: memory is the sample, whatever the corpus size).
//! Each sampled document is written line by line, since SentencePiece reads one sentence per line.

use std::ffi::{c_char, CString};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::{splitmix64, GOLDEN};
use crate::DataError;

extern "C" {
    fn baichuan_spm_train(
        keys: *const *const c_char,
        values: *const *const c_char,
        n: usize,
        seed: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

/// The trainer's options (`tok.toml`); every field is a `spm_train` flag of the same name except
/// `input_documents`, `seed` and `text_key`. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerOptions {
    /// `bpe` (Baichuan's), `unigram`, `char` or `word`.
    pub model_type: String,
    pub vocab_size: u32,
    /// Share of characters covered by character pieces; the rest fall back to bytes.
    pub character_coverage: f64,
    pub split_digits: bool,
    pub byte_fallback: bool,
    /// `identity` (Baichuan's: text kept as is), `nmt_nfkc`, `nfkc`, ...
    pub normalization_rule_name: String,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub max_sentencepiece_length: u32,
    /// Longer lines (bytes) are skipped by the trainer.
    pub max_sentence_length: u32,
    pub split_by_unicode_script: bool,
    pub split_by_number: bool,
    pub split_by_whitespace: bool,
    pub treat_whitespace_as_suffix: bool,
    pub allow_whitespace_only_pieces: bool,
    /// Pieces reserved whole (chat or tool tokens); they are never split.
    pub user_defined_symbols: Vec<String>,
    /// Control pieces (ids only, never produced by encoding text).
    pub control_symbols: Vec<String>,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_piece: String,
    pub bos_piece: String,
    pub eos_piece: String,
    pub pad_piece: String,
    pub hard_vocab_limit: bool,
    pub use_all_vocab: bool,
    pub seed_sentencepiece_size: u32,
    pub shrinking_factor: f64,
    pub num_sub_iterations: u32,
    pub vocabulary_output_piece_score: bool,
    pub train_extremely_large_corpus: bool,
    /// Trainer threads; 0 means every core.
    pub num_threads: u32,
    /// Documents in the reservoir sample (the reference trained on 20 million). `spm_train`'s own
    /// `input_sentence_size` is accepted as its name: the sample is drawn here, by document, and
    /// the library then reads all of it.
    #[serde(alias = "input_sentence_size")]
    pub input_documents: u64,
    /// Seed of the sample and of the library's generator.
    pub seed: u64,
    /// JSONL field holding the document.
    pub text_key: String,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            model_type: "bpe".into(),
            vocab_size: 64000,
            character_coverage: 0.9995,
            split_digits: true,
            byte_fallback: true,
            normalization_rule_name: "identity".into(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
            max_sentencepiece_length: 16,
            max_sentence_length: 16384,
            split_by_unicode_script: true,
            split_by_number: true,
            split_by_whitespace: true,
            treat_whitespace_as_suffix: false,
            allow_whitespace_only_pieces: true,
            user_defined_symbols: Vec::new(),
            control_symbols: Vec::new(),
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            pad_piece: "<pad>".into(),
            hard_vocab_limit: true,
            use_all_vocab: false,
            seed_sentencepiece_size: 1_000_000,
            shrinking_factor: 0.75,
            num_sub_iterations: 2,
            vocabulary_output_piece_score: true,
            train_extremely_large_corpus: false,
            num_threads: 0,
            input_documents: 20_000_000,
            seed: 1,
            text_key: "text".into(),
        }
    }
}

impl TrainerOptions {
    /// Parses a TOML file; errors name the file and the key.
    pub fn from_toml(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| input(path, e))?;
        toml::from_str(&text).map_err(|e| DataError::Input {
            path: path.display().to_string(),
            msg: format!("{e}; HINT: `baichuan tokenizer train --print-config` lists every option"),
        })
    }

    /// The options as `spm_train` flags (name, value), with the input file and model prefix.
    pub fn flags(&self, input: &Path, model_prefix: &Path) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("options serialise");
        let mut out = vec![
            ("input".to_string(), input.display().to_string()),
            ("model_prefix".to_string(), model_prefix.display().to_string()),
            // The sample is already drawn: the trainer reads all of it, in order.
            ("input_sentence_size".to_string(), "0".to_string()),
            ("shuffle_input_sentence".to_string(), "false".to_string()),
        ];
        let threads = if self.num_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
        } else {
            self.num_threads
        };
        for (k, v) in value.as_object().expect("a table") {
            let v = match (k.as_str(), v) {
                ("input_documents" | "seed" | "text_key", _) => continue,
                ("num_threads", _) => threads.to_string(),
                (_, serde_json::Value::String(s)) => s.clone(),
                (_, serde_json::Value::Array(a)) if a.is_empty() => continue,
                (_, serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","),
                (_, other) => other.to_string(),
            };
            out.push((k.clone(), v));
        }
        out
    }
}

/// The TOML of the defaults, one key per option.
pub fn default_toml() -> String {
    let body = toml::to_string(&TrainerOptions::default()).expect("options serialise");
    format!("# baichuan tokenizer train: SentencePiece trainer options (Baichuan-7B's recipe)\n{body}")
}

fn input(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Input {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// A seeded reservoir of `k` documents (algorithm R): each document is kept with probability
/// `k / n` whatever the stream's length `n`, in memory proportional to `k`.
pub struct Reservoir {
    k: u64,
    seen: u64,
    seed: u64,
    docs: Vec<String>,
}

impl Reservoir {
    pub fn new(k: u64, seed: u64) -> Self {
        Reservoir {
            k,
            seen: 0,
            seed,
            docs: Vec::new(),
        }
    }

    pub fn offer(&mut self, doc: &str) {
        if (self.docs.len() as u64) < self.k {
            self.docs.push(doc.to_string());
        } else {
            let j = splitmix64(self.seed.wrapping_add(self.seen.wrapping_mul(GOLDEN))) % (self.seen + 1);
            if j < self.k {
                self.docs[j as usize] = doc.to_string();
            }
        }
        self.seen += 1;
    }

    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn into_docs(self) -> Vec<String> {
        self.docs
    }
}

/// Streams the documents of `files` (`.txt` lines or `.jsonl` `text_key` fields) into `sink`,
/// calling `progress(bytes_read)` as it goes.
pub fn for_each_document(
    files: &[PathBuf],
    text_key: &str,
    mut sink: impl FnMut(&str),
    mut progress: impl FnMut(u64),
) -> Result<(), DataError> {
    let mut done = 0u64;
    for path in files {
        let jsonl = path.extension().is_some_and(|e| e == "jsonl");
        let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| input(path, e))?);
        let mut buf = Vec::new();
        let mut lineno = 0usize;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).map_err(|e| input(path, e))?;
            if n == 0 {
                break;
            }
            lineno += 1;
            done += n as u64;
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            if jsonl {
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| DataError::Input {
                    path: format!("{}:{lineno}", path.display()),
                    msg: format!("invalid JSON line: {e}"),
                })?;
                match v.get(text_key).and_then(|t| t.as_str()) {
                    Some(t) => sink(t),
                    None => {
                        return Err(DataError::Input {
                            path: format!("{}:{lineno}", path.display()),
                            msg: format!("no string field {text_key:?}; HINT: set text_key"),
                        })
                    }
                }
            } else {
                sink(line);
            }
            progress(done);
        }
    }
    Ok(())
}

/// Writes the sampled documents one line each (documents with line breaks become several lines).
pub fn write_sample(docs: &[String], path: &Path) -> Result<u64, DataError> {
    let mut w = BufWriter::new(File::create(path).map_err(|e| input(path, e))?);
    let mut lines = 0;
    for d in docs {
        for l in d.lines().filter(|l| !l.trim().is_empty()) {
            w.write_all(l.as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| input(path, e))?;
            lines += 1;
        }
    }
    w.flush().map_err(|e| input(path, e))?;
    Ok(lines)
}

/// Runs SentencePiece's trainer on `sample` (one sentence per line), writing
/// `model_prefix.model` and `model_prefix.vocab`.
pub fn train(options: &TrainerOptions, sample: &Path, model_prefix: &Path) -> Result<(), DataError> {
    let flags = options.flags(sample, model_prefix);
    let cstr =
        |s: &str| CString::new(s).map_err(|_| DataError::Config(format!("tokenizer option {s:?} holds a NUL byte")));
    let keys = flags.iter().map(|(k, _)| cstr(k)).collect::<Result<Vec<_>, _>>()?;
    let values = flags.iter().map(|(_, v)| cstr(v)).collect::<Result<Vec<_>, _>>()?;
    let kp: Vec<*const c_char> = keys.iter().map(|c| c.as_ptr()).collect();
    let vp: Vec<*const c_char> = values.iter().map(|c| c.as_ptr()).collect();
    let mut err = vec![0u8; 4096];
    // SAFETY: the arrays hold `flags.len()` valid NUL-terminated strings that outlive the call;
    // `err` is writable for its length and the shim NUL-terminates what it writes.
    let rc = unsafe {
        baichuan_spm_train(
            kp.as_ptr(),
            vp.as_ptr(),
            kp.len(),
            options.seed as u32,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if rc != 0 {
        let msg = String::from_utf8_lossy(&err[..err.iter().position(|&b| b == 0).unwrap_or(err.len())]).into_owned();
        return Err(DataError::Tokenizer(format!(
            "SentencePiece trainer: {msg}; HINT: check the options in the TOML"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservoir_is_uniform() {
        // 10000 draws of 10 from 100: each document is kept with probability 0.1.
        let mut counts = [0u32; 100];
        for seed in 0..10000u64 {
            let mut r = Reservoir::new(10, seed);
            for i in 0..100 {
                r.offer(&i.to_string());
            }
            for d in r.into_docs() {
                counts[d.parse::<usize>().unwrap()] += 1;
            }
        }
        // Binomial(10000, 0.1): mean 1000, sd 30; 5 sd either side.
        assert!(counts.iter().all(|&c| (850..=1150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn flags_are_spm_train_names() {
        let f = TrainerOptions::default().flags(Path::new("in.txt"), Path::new("out/tok"));
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("model_type").as_deref(), Some("bpe"));
        assert_eq!(get("split_digits").as_deref(), Some("true"));
        assert_eq!(get("character_coverage").as_deref(), Some("0.9995"));
        assert_eq!(get("user_defined_symbols"), None, "an empty list is not passed");
        assert!(get("seed").is_none() && get("text_key").is_none());
    }
}
