//! fastText supervised text classifier: inference, training and the `.bin` model format.
//!
//! Implements the classifier of Joulin, Grave, Bojanowski and Mikolov, "Bag of Tricks for Efficient
//! Text Classification" (EACL 2017): a document is the set of its words, character n-grams of its
//! words and hashed word n-grams; the hidden vector is the mean of their input-matrix rows and a
//! linear layer followed by a softmax (or one sigmoid per label) gives the label probabilities.
//!
//! It follows the C++ code of fastText 0.9.2 (github.com/facebookresearch/fastText, tag `v0.9.2`,
//! the version packaged as `fasttext-wheel 0.9.2`) operation for operation:
//!
//! * `FastText::loadModel` / `saveModel`: magic 793712314, version 12, `Args`, `Dictionary`,
//!   `quant_input` flag, input `DenseMatrix`, `qout` flag, output `DenseMatrix` (all little endian).
//!   Quantized (`.ftz`) models, unsupervised models and the `hs` loss are refused; `softmax`, `ova`
//!   and `ns` (which predicts like `ova`, one sigmoid per label) are supported.
//! * `Dictionary::getLine` for supervised models: `readWord` whitespace (space `\n` `\r` `\t` `\v`
//!   `\f` `\0`, the newline giving the end-of-sentence token `</s>`), FNV-1a 32 over sign-extended
//!   bytes, subword n-grams of `<word>` counted in UTF-8 characters, `pushHash` with the
//!   `pruneidx` semantics, word n-grams hashed with `h * 116049371 + hash` in 64 bits, `% bucket`.
//! * `Model::predict` + `Loss::findKBest` + `FastText::predictLine`: the probabilities returned are
//!   exactly what the Python binding reports, `exp(log(p + 1e-5))` in `f32` (so about `p + 1e-5`).
//! * `FastText::train` with `thread = 1`: the learning rate decays linearly to zero over
//!   `epoch * ntokens` tokens (updated every `lrUpdateRate = 100` tokens), softmax / one-vs-all
//!   updates of `Loss::forward`, gradient divided by the number of input features and added to every
//!   input row (`Model::update`). Differences (deterministic by design): the input matrix is drawn
//!   from a splitmix64 generator over the whole matrix (fastText draws with `minstd_rand` and, with
//!   one thread, only fills the first tenth of it), ties in word counts keep first-occurrence order
//!   (fastText's `std::sort` is not stable) and labels keep the caller's order.
//!
//! Documents given to [`FastText::predict`] / [`FastText::prob`] may contain newlines: they are
//! read as spaces (as datatrove's fastText filter does with `text.replace("\n", " ")`) and the
//! document ends with the implicit `"\n"` that fastText's Python binding requires.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// `FASTTEXT_FILEFORMAT_MAGIC_INT32` of fastText.
pub const FASTTEXT_MAGIC: i32 = 793_712_314;
/// `FASTTEXT_VERSION` of fastText 0.9.x (the only one supported).
pub const FASTTEXT_VERSION: i32 = 12;
/// End-of-sentence token that every line ends with.
pub const EOS: &str = "</s>";
/// fastText's default label prefix. The `.bin` format does not store the prefix: fastText always
/// assumes this one when it loads a model, and so does [`FastText::load`].
pub const DEFAULT_LABEL_PREFIX: &str = "__label__";

const MODEL_SUP: i32 = 3;
const LOSS_HS: i32 = 1;
const LOSS_NS: i32 = 2;
const LOSS_SOFTMAX: i32 = 3;
const LOSS_OVA: i32 = 4;
const ENTRY_WORD: i8 = 0;
const ENTRY_LABEL: i8 = 1;
const SIGMOID_TABLE_SIZE: i64 = 512;
const MAX_SIGMOID: i64 = 8;
const LR_UPDATE_RATE: i64 = 100;

/// Errors of loading, saving and training fastText models.
#[derive(Debug, thiserror::Error)]
pub enum FastTextError {
    #[error("fastText model {path}: cannot {action}: {source}. HINT: check that the path exists and that it is readable (or its directory writable when saving)")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("fastText model {path}: the file ends while reading {what}. HINT: the file is truncated or is not a fastText .bin model; copy or re-train it")]
    Truncated { path: PathBuf, what: String },
    #[error("fastText model {path}: not a fastText .bin model (magic number {found}, expected 793712314). HINT: pass the binary model written by fastText's save_model, not a .vec/.txt file")]
    BadMagic { path: PathBuf, found: i32 },
    #[error("fastText model {path}: format version {found} is not supported, only version 12 (fastText 0.9.x). HINT: re-save it with fastText 0.9.2: python -c \"import fasttext; fasttext.load_model('in.bin').save_model('out.bin')\"")]
    UnsupportedVersion { path: PathBuf, found: i32 },
    #[error("fastText model {path}: quantized models (.ftz) are not supported. HINT: use the unquantized .bin model (the file before `fasttext quantize`)")]
    Quantized { path: PathBuf },
    #[error("fastText model {path}: model type {found} ({name}) is not a supervised classifier. HINT: train the model with `fasttext supervised` or fasttext.train_supervised")]
    NotSupervised {
        path: PathBuf,
        found: i32,
        name: &'static str,
    },
    #[error("fastText model {path}: loss {found} ({name}) is not supported, only softmax, ova and ns. HINT: re-train with loss='softmax' (or 'ova')")]
    UnsupportedLoss {
        path: PathBuf,
        found: i32,
        name: &'static str,
    },
    #[error("fastText model {path}: corrupt or inconsistent model: {detail}. HINT: the file was not written by fastText 0.9.x or is damaged; re-train or copy it again")]
    Corrupt { path: PathBuf, detail: String },
    #[error("fastText training: {0}")]
    InvalidTraining(String),
    #[error("fastText training diverged (NaN in a dot product) at learning rate {lr}. HINT: lower TrainArgs::lr (for example halve it)")]
    Diverged { lr: f32 },
}

/// Loss function of a supervised model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Softmax over the labels (fastText's default for supervised models).
    Softmax,
    /// One independent sigmoid per label (`-loss ova`), for multi-label problems.
    OneVsAll,
    /// Negative sampling (`-loss ns`); predicts like [`Loss::OneVsAll`]. Loading only.
    NegativeSampling,
}

impl Loss {
    fn code(self) -> i32 {
        match self {
            Loss::Softmax => LOSS_SOFTMAX,
            Loss::OneVsAll => LOSS_OVA,
            Loss::NegativeSampling => LOSS_NS,
        }
    }
}

/// Hyper-parameters of [`FastText::train`].
///
/// Examples are visited in the order given, cycling until `epoch * ntokens` tokens have been seen,
/// exactly like fastText reads its training file: shuffle them first (with your own seeded RNG)
/// when they are grouped by label.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainArgs {
    /// Size of the hidden vector (`-dim`). Default 32: quality classifiers need little capacity and
    /// the model size is `(nwords + bucket) * dim * 4` bytes (about 26 MB with the defaults).
    pub dim: usize,
    /// Initial learning rate (`-lr`), decaying linearly to 0. Default 0.5: fastText's tutorial uses
    /// 0.5 to 1.0 for classifiers; with 5 epochs its 0.1 default under-fits (3-class en/zh/noise toy
    /// set, 1400 lines: accuracy 0.67 at lr 0.1, 0.985 at 0.25, 0.99 at 0.5 to 2.0), and a smaller
    /// step than 1.0 leaves margin against divergence on larger, noisier corpora.
    pub lr: f64,
    /// Number of passes (`-epoch`). Default 5.
    pub epoch: usize,
    /// Longest word n-gram (`-wordNgrams`). Default 2 (bigrams).
    pub word_ngrams: usize,
    /// Shortest character n-gram (`-minn`). Default 2.
    pub minn: usize,
    /// Longest character n-gram (`-maxn`, 0 disables subwords). Default 4; character n-grams are
    /// what makes the classifier work on unsegmented Chinese text.
    pub maxn: usize,
    /// Number of hash buckets for character and word n-grams (`-bucket`). Default 200 000 (fastText
    /// uses 2 000 000, ten times the memory). Set to 0 when `maxn == 0 && word_ngrams <= 1`.
    pub bucket: usize,
    /// Words seen fewer times are dropped from the vocabulary (`-minCount`). Default 1.
    pub min_count: u64,
    /// Seed of the input-matrix initialisation. Same seed and data give the same model.
    pub seed: u64,
    /// Label prefix (`-label`). Document tokens starting with it are not features. Keep the default:
    /// the `.bin` file does not store it and fastText assumes `__label__` when loading.
    pub label_prefix: String,
    /// [`Loss::Softmax`] (default) or [`Loss::OneVsAll`].
    pub loss: Loss,
}

impl Default for TrainArgs {
    fn default() -> Self {
        TrainArgs {
            dim: 32,
            lr: 0.5,
            epoch: 5,
            word_ngrams: 2,
            minn: 2,
            maxn: 4,
            bucket: 200_000,
            min_count: 1,
            seed: 0,
            label_prefix: DEFAULT_LABEL_PREFIX.to_string(),
            loss: Loss::Softmax,
        }
    }
}

/// The `Args` block of the `.bin` file, in file order.
#[derive(Clone, Debug, PartialEq)]
struct Args {
    dim: i32,
    ws: i32,
    epoch: i32,
    min_count: i32,
    neg: i32,
    word_ngrams: i32,
    loss: i32,
    model: i32,
    bucket: i32,
    minn: i32,
    maxn: i32,
    lr_update_rate: i32,
    t: f64,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    word: Vec<u8>,
    count: i64,
    kind: i8,
}

/// A supervised fastText model (dense, not quantized).
#[derive(Clone)]
pub struct FastText {
    args: Args,
    loss: Loss,
    /// Dictionary entries: `nwords` words, then the labels.
    entries: Vec<Entry>,
    nwords: i32,
    word2int: HashMap<Vec<u8>, i32>,
    labels: Vec<String>,
    ntokens: i64,
    /// -1: not pruned; otherwise the number of kept n-gram buckets (`pruneidx_`).
    pruneidx_size: i64,
    pruneidx: HashMap<i32, i32>,
    /// `pruneidx` pairs in file order, written back unchanged by [`FastText::save`].
    pruneidx_pairs: Vec<(i32, i32)>,
    label_prefix: Vec<u8>,
    dim: usize,
    /// `(nwords + bucket) x dim`, row major.
    input: Vec<f32>,
    /// `nlabels x dim`, row major.
    output: Vec<f32>,
}

impl std::fmt::Debug for FastText {
    /// A summary: the matrices are far too large to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastText")
            .field("dim", &self.dim)
            .field("loss", &self.loss)
            .field("nwords", &self.nwords)
            .field("labels", &self.labels)
            .field("bucket", &self.args.bucket)
            .field("minn", &self.args.minn)
            .field("maxn", &self.args.maxn)
            .field("word_ngrams", &self.args.word_ngrams)
            .finish_non_exhaustive()
    }
}

/// fastText's `Dictionary::hash`: FNV-1a 32 where each byte is sign-extended (`int8_t`) first.
pub fn fnv1a_hash(bytes: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in bytes {
        h ^= (b as i8) as u32;
        h = h.wrapping_mul(16_777_619);
    }
    h
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c | 0)
}

/// The tokens `Dictionary::readWord` yields for `text` with newlines read as spaces and one
/// `"\n"` appended: the whitespace-separated words, then `</s>`.
fn tokens(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&c| is_space(c))
        .filter(|w| !w.is_empty())
        .chain(std::iter::once(EOS.as_bytes()))
}

/// fastText's `Loss::sigmoid` lookup table (`t_sigmoid_`).
fn sigmoid_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=SIGMOID_TABLE_SIZE)
            .map(|i| {
                let x = (i * 2 * MAX_SIGMOID) as f32 / SIGMOID_TABLE_SIZE as f32 - MAX_SIGMOID as f32;
                (1.0f64 / (1.0f64 + (-x).exp() as f64)) as f32
            })
            .collect()
    })
}

/// fastText's `Loss::sigmoid` (table lookup, not the exact function).
fn sigmoid(x: f32) -> f32 {
    if x < -(MAX_SIGMOID as f32) {
        0.0
    } else if x > MAX_SIGMOID as f32 {
        1.0
    } else {
        let i = ((x + MAX_SIGMOID as f32) * SIGMOID_TABLE_SIZE as f32 / MAX_SIGMOID as f32 / 2.0) as usize;
        sigmoid_table()[i]
    }
}

/// What the Python binding reports for an output probability `p`: `findKBest` stores
/// `std_log(p) = (float) log(p + 1e-5)` and `predictLine` returns `std::exp` of it in `f32`.
fn binding_prob(p: f32) -> f32 {
    ((p as f64 + 1e-5).ln() as f32).exp()
}

fn dot(row: &[f32], v: &[f32]) -> f32 {
    let mut d = 0.0f32;
    for (a, b) in row.iter().zip(v) {
        d += a * b;
    }
    d
}

fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// splitmix64 (Steele, Lea and Flood 2014), for the deterministic initialisation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Little-endian reader that turns short reads into [`FastTextError::Truncated`].
struct Reader<'p> {
    r: BufReader<File>,
    path: &'p Path,
    remaining: u64,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FastTextError> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| self.err(e, what))?;
        self.remaining = self.remaining.saturating_sub(N as u64);
        Ok(b)
    }

    fn err(&self, e: std::io::Error, what: &str) -> FastTextError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FastTextError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
            }
        } else {
            FastTextError::Io {
                path: self.path.to_path_buf(),
                action: "read the model",
                source: e,
            }
        }
    }

    fn i32(&mut self, what: &str) -> Result<i32, FastTextError> {
        Ok(i32::from_le_bytes(self.bytes(what)?))
    }

    fn i64(&mut self, what: &str) -> Result<i64, FastTextError> {
        Ok(i64::from_le_bytes(self.bytes(what)?))
    }

    fn f64(&mut self, what: &str) -> Result<f64, FastTextError> {
        Ok(f64::from_le_bytes(self.bytes(what)?))
    }

    fn u8(&mut self, what: &str) -> Result<u8, FastTextError> {
        Ok(self.bytes::<1>(what)?[0])
    }

    fn corrupt(&self, detail: String) -> FastTextError {
        FastTextError::Corrupt {
            path: self.path.to_path_buf(),
            detail,
        }
    }

    /// A `DenseMatrix`: `m` and `n` as i64, then `m * n` f32.
    fn matrix(&mut self, what: &str, rows: usize, cols: usize) -> Result<Vec<f32>, FastTextError> {
        let m = self.i64(what)?;
        let n = self.i64(what)?;
        if m != rows as i64 || n != cols as i64 {
            return Err(self.corrupt(format!(
                "{what} is {m} x {n}, the dictionary and dim need {rows} x {cols}"
            )));
        }
        let len = rows
            .checked_mul(cols)
            .filter(|l| (*l as u64).saturating_mul(4) <= self.remaining)
            .ok_or_else(|| FastTextError::Truncated {
                path: self.path.to_path_buf(),
                what: format!("{what} ({rows} x {cols} floats)"),
            })?;
        let mut data = Vec::with_capacity(len);
        let mut buf = vec![0u8; 1 << 16];
        while data.len() < len {
            let take = ((len - data.len()) * 4).min(buf.len());
            self.r.read_exact(&mut buf[..take]).map_err(|e| self.err(e, what))?;
            data.extend(
                buf[..take]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        self.remaining -= len as u64 * 4;
        Ok(data)
    }
}

fn model_name(code: i32) -> &'static str {
    match code {
        1 => "cbow",
        2 => "skipgram",
        3 => "supervised",
        _ => "unknown",
    }
}

fn loss_name(code: i32) -> &'static str {
    match code {
        LOSS_HS => "hs",
        LOSS_NS => "ns",
        LOSS_SOFTMAX => "softmax",
        LOSS_OVA => "ova",
        _ => "unknown",
    }
}

impl FastText {
    /// Loads a supervised, unquantized model written by fastText 0.9.x (`save_model`) or by
    /// [`FastText::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, FastTextError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| FastTextError::Io {
            path: path.to_path_buf(),
            action: "open the model for reading",
            source,
        })?;
        let remaining = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let mut r = Reader {
            r: BufReader::new(file),
            path,
            remaining,
        };

        let magic = r.i32("the magic number")?;
        if magic != FASTTEXT_MAGIC {
            return Err(FastTextError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = r.i32("the format version")?;
        if version != FASTTEXT_VERSION {
            return Err(FastTextError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let args = Args {
            dim: r.i32("args.dim")?,
            ws: r.i32("args.ws")?,
            epoch: r.i32("args.epoch")?,
            min_count: r.i32("args.minCount")?,
            neg: r.i32("args.neg")?,
            word_ngrams: r.i32("args.wordNgrams")?,
            loss: r.i32("args.loss")?,
            model: r.i32("args.model")?,
            bucket: r.i32("args.bucket")?,
            minn: r.i32("args.minn")?,
            maxn: r.i32("args.maxn")?,
            lr_update_rate: r.i32("args.lrUpdateRate")?,
            t: r.f64("args.t")?,
        };
        if args.model != MODEL_SUP {
            return Err(FastTextError::NotSupervised {
                path: path.to_path_buf(),
                found: args.model,
                name: model_name(args.model),
            });
        }
        let loss = match args.loss {
            LOSS_SOFTMAX => Loss::Softmax,
            LOSS_OVA => Loss::OneVsAll,
            LOSS_NS => Loss::NegativeSampling,
            other => {
                return Err(FastTextError::UnsupportedLoss {
                    path: path.to_path_buf(),
                    found: other,
                    name: loss_name(other),
                })
            }
        };
        if args.dim <= 0 || args.bucket < 0 {
            return Err(r.corrupt(format!("dim {} and bucket {} must be positive", args.dim, args.bucket)));
        }

        let size = r.i32("dictionary.size")?;
        let nwords = r.i32("dictionary.nwords")?;
        let nlabels = r.i32("dictionary.nlabels")?;
        let ntokens = r.i64("dictionary.ntokens")?;
        let pruneidx_size = r.i64("dictionary.pruneidx_size")?;
        if size < 0 || nwords < 0 || nlabels <= 0 || nwords.checked_add(nlabels) != Some(size) {
            return Err(r.corrupt(format!(
                "dictionary has size {size}, {nwords} words and {nlabels} labels (a classifier needs labels and size = words + labels)"
            )));
        }
        let mut entries = Vec::with_capacity(size as usize);
        for i in 0..size {
            let mut word = Vec::new();
            loop {
                let c = r.u8("a dictionary word")?;
                if c == 0 {
                    break;
                }
                word.push(c);
            }
            let count = r.i64("a dictionary count")?;
            let kind = r.u8("a dictionary entry type")? as i8;
            let expected = if i < nwords { ENTRY_WORD } else { ENTRY_LABEL };
            if kind != expected {
                return Err(r.corrupt(format!(
                    "dictionary entry {i} ({:?}) has type {kind}, expected {expected} (words first, then labels)",
                    String::from_utf8_lossy(&word)
                )));
            }
            entries.push(Entry { word, count, kind });
        }
        let mut pruneidx_pairs = Vec::new();
        for _ in 0..pruneidx_size.max(0) {
            let a = r.i32("the pruned n-gram index")?;
            let b = r.i32("the pruned n-gram index")?;
            pruneidx_pairs.push((a, b));
        }
        let quant_input = r.u8("the quant_input flag")?;
        if quant_input != 0 {
            return Err(FastTextError::Quantized {
                path: path.to_path_buf(),
            });
        }
        if pruneidx_size >= 0 {
            // fastText 0.9.2 refuses this too ("Invalid model file", issue #332).
            return Err(r.corrupt("the dictionary is pruned but the input matrix is not quantized".to_string()));
        }
        let dim = args.dim as usize;
        let rows = nwords as usize + args.bucket as usize;
        let input = r.matrix("the input matrix", rows, dim)?;
        // `qout` only matters for quantized models; the output matrix is dense here.
        let _qout = r.u8("the qout flag")?;
        let output = r.matrix("the output matrix", nlabels as usize, dim)?;
        Ok(Self::assemble(
            args,
            loss,
            entries,
            nwords,
            ntokens,
            pruneidx_size,
            pruneidx_pairs,
            DEFAULT_LABEL_PREFIX.as_bytes().to_vec(),
            input,
            output,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        args: Args,
        loss: Loss,
        entries: Vec<Entry>,
        nwords: i32,
        ntokens: i64,
        pruneidx_size: i64,
        pruneidx_pairs: Vec<(i32, i32)>,
        label_prefix: Vec<u8>,
        input: Vec<f32>,
        output: Vec<f32>,
    ) -> Self {
        let mut word2int = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            // Later duplicates win, as in Dictionary::load.
            word2int.insert(e.word.clone(), i as i32);
        }
        let labels = entries[nwords as usize..]
            .iter()
            .map(|e| String::from_utf8_lossy(&e.word).into_owned())
            .collect();
        let pruneidx = pruneidx_pairs.iter().copied().collect();
        FastText {
            dim: args.dim as usize,
            args,
            loss,
            entries,
            nwords,
            word2int,
            labels,
            ntokens,
            pruneidx_size,
            pruneidx,
            pruneidx_pairs,
            label_prefix,
            input,
            output,
        }
    }

    /// Writes the model in fastText 0.9.2's `.bin` format (`fasttext.load_model` reads it).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), FastTextError> {
        let path = path.as_ref();
        let io = |source| FastTextError::Io {
            path: path.to_path_buf(),
            action: "write the model",
            source,
        };
        let file = File::create(path).map_err(|source| FastTextError::Io {
            path: path.to_path_buf(),
            action: "create the model file",
            source,
        })?;
        let mut w = BufWriter::new(file);
        self.write_to(&mut w).map_err(io)?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }

    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let a = &self.args;
        for v in [FASTTEXT_MAGIC, FASTTEXT_VERSION] {
            w.write_all(&v.to_le_bytes())?;
        }
        for v in [
            a.dim,
            a.ws,
            a.epoch,
            a.min_count,
            a.neg,
            a.word_ngrams,
            a.loss,
            a.model,
            a.bucket,
            a.minn,
            a.maxn,
            a.lr_update_rate,
        ] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&a.t.to_le_bytes())?;
        let nlabels = self.entries.len() as i32 - self.nwords;
        for v in [self.entries.len() as i32, self.nwords, nlabels] {
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&self.ntokens.to_le_bytes())?;
        w.write_all(&self.pruneidx_size.to_le_bytes())?;
        for e in &self.entries {
            w.write_all(&e.word)?;
            w.write_all(&[0u8])?;
            w.write_all(&e.count.to_le_bytes())?;
            w.write_all(&[e.kind as u8])?;
        }
        for (k, v) in &self.pruneidx_pairs {
            w.write_all(&k.to_le_bytes())?;
            w.write_all(&v.to_le_bytes())?;
        }
        w.write_all(&[0u8])?; // quant_input = false
        self.write_matrix(w, &self.input)?;
        w.write_all(&[0u8])?; // qout = false
        self.write_matrix(w, &self.output)?;
        w.flush()
    }

    fn write_matrix(&self, w: &mut impl Write, data: &[f32]) -> std::io::Result<()> {
        w.write_all(&((data.len() / self.dim) as i64).to_le_bytes())?;
        w.write_all(&(self.dim as i64).to_le_bytes())?;
        let mut buf = Vec::with_capacity(1 << 16);
        for chunk in data.chunks(1 << 14) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf)?;
        }
        Ok(())
    }

    /// Label names in output-matrix order (for example `__label__hq`).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Dimension of the hidden vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Loss the model was trained with (decides softmax vs. one sigmoid per label).
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Number of words in the vocabulary (`</s>` included).
    pub fn nwords(&self) -> usize {
        self.nwords as usize
    }

    /// The `k` most probable labels of one document with their probabilities, best first, as
    /// fastText's Python binding reports them (`model.predict(text, k)`, i.e. `exp(log(p + 1e-5))`),
    /// ties included: the order comes from the same heap operations as `Loss::findKBest`.
    /// `k` larger than the number of labels returns all of them (fastText's `k = -1`). Empty when
    /// `k == 0` or when the document has no known feature (fastText then predicts nothing either).
    pub fn predict(&self, text: &str, k: usize) -> Vec<(String, f32)> {
        let Some(probs) = self.output_probs(&self.line(text.as_bytes()).0) else {
            return Vec::new();
        };
        find_k_best(&probs, k)
            .into_iter()
            .map(|(_, i)| (self.labels[i].clone(), binding_prob(probs[i])))
            .collect()
    }

    /// Probability of one label (for example `"__label__hq"`) for one document, as
    /// [`FastText::predict`] reports it. `None` if the label is unknown or the document has no
    /// known feature.
    pub fn prob(&self, text: &str, label: &str) -> Option<f32> {
        let i = self.labels.iter().position(|l| l == label)?;
        let out = self.output_probs(&self.line(text.as_bytes()).0)?;
        Some(binding_prob(out[i]))
    }

    /// Probabilities of all labels in [`FastText::labels`] order, as [`FastText::predict`] reports
    /// them; empty when the document has no known feature.
    pub fn probs(&self, text: &str) -> Vec<f32> {
        match self.output_probs(&self.line(text.as_bytes()).0) {
            Some(out) => out.into_iter().map(binding_prob).collect(),
            None => Vec::new(),
        }
    }

    /// `Model::predict` up to `Loss::computeOutput`: softmax or sigmoids of `output * hidden`.
    fn output_probs(&self, features: &[i32]) -> Option<Vec<f32>> {
        if features.is_empty() {
            return None;
        }
        let hidden = self.hidden(features);
        let mut out: Vec<f32> = self
            .output
            .chunks_exact(self.dim)
            .map(|row| dot(row, &hidden))
            .collect();
        match self.loss {
            Loss::Softmax => softmax(&mut out),
            Loss::OneVsAll | Loss::NegativeSampling => out.iter_mut().for_each(|o| *o = sigmoid(*o)),
        }
        Some(out)
    }

    /// `Model::computeHidden`: the sum of the input rows times `(float)(1.0 / n)`.
    fn hidden(&self, features: &[i32]) -> Vec<f32> {
        let mut hidden = vec![0.0f32; self.dim];
        for &f in features {
            let row = &self.input[f as usize * self.dim..(f as usize + 1) * self.dim];
            for (h, r) in hidden.iter_mut().zip(row) {
                *h += r;
            }
        }
        let scale = (1.0f64 / features.len() as f64) as f32;
        hidden.iter_mut().for_each(|h| *h *= scale);
        hidden
    }

    fn word_id(&self, w: &[u8]) -> i32 {
        self.word2int.get(w).copied().unwrap_or(-1)
    }

    /// `Dictionary::getLine` (supervised variant) on `text` + `"\n"`, newlines read as spaces:
    /// returns the input-row ids, the label ids found in the text and the number of tokens read.
    fn line(&self, text: &[u8]) -> (Vec<i32>, Vec<i32>, i64) {
        let mut words = Vec::new();
        let mut labels = Vec::new();
        let mut word_hashes: Vec<i32> = Vec::new();
        let mut ntokens = 0i64;
        for token in tokens(text) {
            let h = fnv1a_hash(token);
            let wid = self.word_id(token);
            let kind = if wid < 0 {
                if token.starts_with(&self.label_prefix) {
                    ENTRY_LABEL
                } else {
                    ENTRY_WORD
                }
            } else {
                self.entries[wid as usize].kind
            };
            ntokens += 1;
            if kind == ENTRY_WORD {
                self.add_subwords(&mut words, token, wid);
                word_hashes.push(h as i32);
            } else if wid >= 0 {
                labels.push(wid - self.nwords);
            }
            if token == EOS.as_bytes() {
                break;
            }
        }
        self.add_word_ngrams(&mut words, &word_hashes);
        (words, labels, ntokens)
    }

    /// `Dictionary::addSubwords`.
    fn add_subwords(&self, line: &mut Vec<i32>, token: &[u8], wid: i32) {
        if wid < 0 {
            if token != EOS.as_bytes() {
                self.compute_subwords(token, line);
            }
        } else {
            line.push(wid);
            if self.args.maxn > 0 && token != EOS.as_bytes() {
                self.compute_subwords(token, line);
            }
        }
    }

    /// `Dictionary::computeSubwords` on `"<" + word + ">"`: n-grams of `minn..=maxn` UTF-8
    /// characters (a byte `10xxxxxx` continues a character), without the 1-grams `<` and `>`.
    fn compute_subwords(&self, word: &[u8], out: &mut Vec<i32>) {
        if self.args.bucket <= 0 {
            return;
        }
        let mut w = Vec::with_capacity(word.len() + 2);
        w.push(b'<');
        w.extend_from_slice(word);
        w.push(b'>');
        // size_t comparisons in C++: negative minn/maxn wrap to huge values.
        let minn = self.args.minn as i64 as u64;
        let maxn = self.args.maxn as i64 as u64;
        let bucket = self.args.bucket as u32;
        for i in 0..w.len() {
            if w[i] & 0xC0 == 0x80 {
                continue;
            }
            let mut j = i;
            let mut n: u64 = 1;
            while j < w.len() && n <= maxn {
                j += 1;
                while j < w.len() && w[j] & 0xC0 == 0x80 {
                    j += 1;
                }
                if n >= minn && !(n == 1 && (i == 0 || j == w.len())) {
                    self.push_hash(out, (fnv1a_hash(&w[i..j]) % bucket) as i32);
                }
                n += 1;
            }
        }
    }

    /// `Dictionary::addWordNgrams`: hashes are the i32 word hashes, sign-extended to 64 bits.
    fn add_word_ngrams(&self, line: &mut Vec<i32>, hashes: &[i32]) {
        if self.args.bucket <= 0 {
            return;
        }
        let n = self.args.word_ngrams as i64;
        let bucket = self.args.bucket as u64;
        for i in 0..hashes.len() {
            let mut h = hashes[i] as i64 as u64;
            let mut j = i + 1;
            while j < hashes.len() && (j as i64) < i as i64 + n {
                h = h.wrapping_mul(116_049_371).wrapping_add(hashes[j] as i64 as u64);
                self.push_hash(line, (h % bucket) as i32);
                j += 1;
            }
        }
    }

    /// `Dictionary::pushHash`.
    fn push_hash(&self, out: &mut Vec<i32>, id: i32) {
        if self.pruneidx_size == 0 || id < 0 {
            return;
        }
        let id = if self.pruneidx_size > 0 {
            match self.pruneidx.get(&id) {
                Some(&mapped) => mapped,
                None => return,
            }
        } else {
            id
        };
        out.push(self.nwords + id);
    }

    /// Trains a supervised model like `fasttext supervised -thread 1` (see the module header for
    /// the differences). `examples` are `(index into labels, document)`, visited in the given order;
    /// every label must be `args.label_prefix` followed by a name without whitespace.
    pub fn train(examples: &[(usize, &str)], labels: &[String], args: &TrainArgs) -> Result<FastText, FastTextError> {
        let bucket = validate_train_args(examples, labels, args)?;
        let prefix = args.label_prefix.as_bytes();
        let (mut entries, ntokens) = count_words(examples, prefix, args.min_count);
        let nwords = entries.len();
        if nwords == 0 {
            let hint = "HINT: lower min_count";
            return Err(FastTextError::InvalidTraining(format!(
                "empty vocabulary with min_count {}. {hint}",
                args.min_count
            )));
        }
        if i32::try_from(nwords + labels.len()).is_err() || i32::try_from(nwords + bucket).is_err() {
            return Err(FastTextError::InvalidTraining(format!(
                "{nwords} words + {bucket} buckets do not fit fastText's 32-bit ids. HINT: raise min_count or lower bucket"
            )));
        }
        let mut label_counts = vec![0i64; labels.len()];
        examples.iter().for_each(|&(l, _)| label_counts[l] += 1);
        entries.extend(labels.iter().zip(label_counts).map(|(l, count)| Entry {
            word: l.as_bytes().to_vec(),
            count,
            kind: ENTRY_LABEL,
        }));
        // The casts below are checked by validate_train_args.
        let fargs = Args {
            dim: args.dim as i32,
            ws: 5,
            epoch: args.epoch as i32,
            min_count: args.min_count.min(i32::MAX as u64) as i32,
            neg: 5,
            word_ngrams: args.word_ngrams as i32,
            loss: args.loss.code(),
            model: MODEL_SUP,
            bucket: bucket as i32,
            minn: args.minn as i32,
            maxn: args.maxn as i32,
            lr_update_rate: LR_UPDATE_RATE as i32,
            t: 1e-4,
        };
        // DenseMatrix::uniform(1.0 / dim): uniform in [-a, a) with a = (float)(1.0 / dim).
        let a = (1.0f64 / args.dim as f64) as f32 as f64;
        let mut rng = SplitMix64(args.seed);
        let input: Vec<f32> = (0..(nwords + bucket) * args.dim)
            .map(|_| (-a + 2.0 * a * rng.next_f64()) as f32)
            .collect();
        let output = vec![0.0f32; labels.len() * args.dim];
        let mut model = FastText::assemble(
            fargs,
            args.loss,
            entries,
            nwords as i32,
            ntokens,
            -1,
            Vec::new(),
            prefix.to_vec(),
            input,
            output,
        );
        model.sgd(examples, args.lr)?;
        Ok(model)
    }

    /// `FastText::trainThread` with one thread.
    fn sgd(&mut self, examples: &[(usize, &str)], lr0: f64) -> Result<(), FastTextError> {
        let total = (self.args.epoch as i64).saturating_mul(self.ntokens);
        let mut token_count = 0i64;
        let mut local = 0i64;
        let mut next = 0usize;
        let mut grad = vec![0.0f32; self.dim];
        let mut out = vec![0.0f32; self.labels.len()];
        while token_count < total {
            let progress = token_count as f32 / total as f32;
            let lr = (lr0 * (1.0 - progress as f64)) as f32;
            let (label, text) = examples[next];
            next = (next + 1) % examples.len();
            let (features, _, n) = self.line(text.as_bytes());
            local += n + 1; // + the label token
            if !features.is_empty() {
                self.update(&features, label, lr, &mut grad, &mut out)?;
            }
            if local > LR_UPDATE_RATE {
                token_count += local;
                local = 0;
            }
        }
        Ok(())
    }

    /// `Model::update` with `SoftmaxLoss::forward` or `OneVsAllLoss::forward`.
    fn update(
        &mut self,
        features: &[i32],
        target: usize,
        lr: f32,
        grad: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), FastTextError> {
        let dim = self.dim;
        let hidden = self.hidden(features);
        grad.iter_mut().for_each(|g| *g = 0.0);
        let diverged = || FastTextError::Diverged { lr };
        match self.loss {
            Loss::Softmax => {
                for (o, row) in out.iter_mut().zip(self.output.chunks_exact(dim)) {
                    *o = dot(row, &hidden);
                    if o.is_nan() {
                        return Err(diverged());
                    }
                }
                softmax(out);
                for (i, row) in self.output.chunks_exact_mut(dim).enumerate() {
                    let label = if i == target { 1.0f32 } else { 0.0 };
                    let alpha = lr * (label - out[i]);
                    axpy(grad, alpha, row);
                    axpy(row, alpha, &hidden);
                }
            }
            Loss::OneVsAll | Loss::NegativeSampling => {
                for (i, row) in self.output.chunks_exact_mut(dim).enumerate() {
                    let d = dot(row, &hidden);
                    if d.is_nan() {
                        return Err(diverged());
                    }
                    let label = if i == target { 1.0f32 } else { 0.0 };
                    let alpha = lr * (label - sigmoid(d));
                    axpy(grad, alpha, row);
                    axpy(row, alpha, &hidden);
                }
            }
        }
        let scale = (1.0f64 / features.len() as f64) as f32;
        grad.iter_mut().for_each(|g| *g *= scale);
        for &f in features {
            let f = f as usize;
            axpy(&mut self.input[f * dim..(f + 1) * dim], 1.0, grad);
        }
        Ok(())
    }
}

/// Checks [`FastText::train`]'s inputs; returns the bucket count to use (0 without n-grams, as the
/// fastText CLI does).
fn validate_train_args(
    examples: &[(usize, &str)],
    labels: &[String],
    args: &TrainArgs,
) -> Result<usize, FastTextError> {
    let bad = |msg: String| Err(FastTextError::InvalidTraining(msg));
    if examples.is_empty() {
        return bad("no training examples. HINT: pass at least one (label index, text) pair per label".into());
    }
    if labels.is_empty() {
        return bad("no labels. HINT: pass the label names, e.g. [\"__label__hq\", \"__label__lq\"]".into());
    }
    let prefix = &args.label_prefix;
    if prefix.is_empty() || prefix.bytes().any(is_space) {
        return bad(format!(
            "label prefix {prefix:?} is empty or contains whitespace. HINT: use \"__label__\""
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if !l.starts_with(prefix) || l.len() == prefix.len() || l.bytes().any(is_space) {
            return bad(format!(
                "label {l:?} must be the prefix {prefix:?} followed by a name without whitespace. HINT: name labels like \"{prefix}hq\""
            ));
        }
        if labels[..i].contains(l) {
            return bad(format!("label {l:?} is listed twice. HINT: pass each label name once"));
        }
    }
    if let Some((i, (l, _))) = examples.iter().enumerate().find(|(_, (l, _))| *l >= labels.len()) {
        return bad(format!(
            "example {i} has label index {l} but there are only {} labels. HINT: the first element of an example indexes `labels`",
            labels.len()
        ));
    }
    let fits = |v: usize| i32::try_from(v).is_ok();
    if args.dim == 0 || !fits(args.dim) || args.epoch == 0 || !fits(args.epoch) {
        return bad(format!(
            "dim {} and epoch {} must be positive. HINT: start from TrainArgs::default()",
            args.dim, args.epoch
        ));
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return bad(format!(
            "learning rate {} must be positive. HINT: try 0.1 to 1.0",
            args.lr
        ));
    }
    if args.word_ngrams == 0 || !fits(args.word_ngrams) || args.maxn > 64 || (args.maxn > 0 && args.minn > args.maxn) {
        return bad(format!(
            "word_ngrams {} / minn {} / maxn {} are out of range. HINT: use word_ngrams >= 1 and minn <= maxn <= 6 (maxn 0 disables subwords)",
            args.word_ngrams, args.minn, args.maxn
        ));
    }
    if args.loss == Loss::NegativeSampling {
        return bad(
            "training with negative sampling is not implemented. HINT: use Loss::Softmax or Loss::OneVsAll".into(),
        );
    }
    let hashed = args.maxn > 0 || args.word_ngrams > 1;
    if hashed && (args.bucket == 0 || !fits(args.bucket)) {
        return bad(format!(
            "bucket {} must be in 1..2^31 when subwords or word n-grams are used. HINT: use 200000 to 2000000",
            args.bucket
        ));
    }
    Ok(if hashed { args.bucket } else { 0 })
}

/// `Dictionary::readFromFile` + `threshold` for the words: counts the tokens of every document
/// (tokens starting with the label prefix are not words), keeps the words seen `min_count` times,
/// most frequent first (ties in first-occurrence order). Returns them and the total number of
/// tokens fastText would count for the training file (one label token per example included).
fn count_words(examples: &[(usize, &str)], prefix: &[u8], min_count: u64) -> (Vec<Entry>, i64) {
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut counted: Vec<(&[u8], i64)> = Vec::new();
    let mut ntokens = 0i64;
    for &(_, text) in examples {
        ntokens += 1; // the label token of the fastText training line
        for token in tokens(text.as_bytes()) {
            ntokens += 1;
            if !token.starts_with(prefix) {
                let slot = *index.entry(token).or_insert_with(|| {
                    counted.push((token, 0));
                    counted.len() - 1
                });
                counted[slot].1 += 1;
            }
            if token == EOS.as_bytes() {
                break;
            }
        }
    }
    let mut entries: Vec<Entry> = counted
        .into_iter()
        .filter(|&(_, c)| c as u64 >= min_count)
        .map(|(w, count)| Entry {
            word: w.to_vec(),
            count,
            kind: ENTRY_WORD,
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.count)); // stable
    (entries, ntokens)
}

/// `Loss::findKBest` followed by `std::sort_heap`, with libstdc++'s heap algorithms so that equal
/// scores come out in fastText's order. Returns `(log score, label index)`, best first.
fn find_k_best(output: &[f32], k: usize) -> Vec<(f32, usize)> {
    let k = k.min(output.len());
    let mut heap: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return heap;
    }
    for (i, &o) in output.iter().enumerate() {
        if o < 0.0 {
            continue; // threshold 0.0
        }
        let score = (o as f64 + 1e-5).ln() as f32;
        if heap.len() == k && score < heap[0].0 {
            continue;
        }
        heap.push((score, i));
        let last = heap.len() - 1;
        let value = heap[last];
        push_heap(&mut heap, last, 0, value);
        if heap.len() > k {
            let last = heap.len() - 1;
            pop_heap(&mut heap, last);
            heap.pop();
        }
    }
    // std::sort_heap
    let mut last = heap.len();
    while last > 1 {
        last -= 1;
        pop_heap(&mut heap, last);
    }
    heap
}

/// fastText's comparator `comparePairs`: `l.first > r.first` (a min-heap on the score).
fn heap_less(a: &(f32, usize), b: &(f32, usize)) -> bool {
    a.0 > b.0
}

/// libstdc++ `std::__push_heap`.
fn push_heap(h: &mut [(f32, usize)], mut hole: usize, top: usize, value: (f32, usize)) {
    while hole > top {
        let parent = (hole - 1) / 2;
        if !heap_less(&h[parent], &value) {
            break;
        }
        h[hole] = h[parent];
        hole = parent;
    }
    h[hole] = value;
}

/// libstdc++ `std::__pop_heap(first, last, last)`: moves the top to `last`, re-heaps `[0, last)`.
fn pop_heap(h: &mut [(f32, usize)], last: usize) {
    let value = h[last];
    h[last] = h[0];
    // std::__adjust_heap(first, 0, last, value)
    let len = last;
    let mut hole = 0usize;
    let mut child = 0usize;
    while len > 0 && child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if heap_less(&h[child], &h[child - 1]) {
            child -= 1;
        }
        h[hole] = h[child];
        hole = child;
    }
    if len >= 2 && len & 1 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        h[hole] = h[child - 1];
        hole = child - 1;
    }
    push_heap(h, hole, 0, value);
}

/// `SoftmaxLoss::computeOutput` (the exponential is the C `exp` on doubles, as in fastText).
fn softmax(out: &mut [f32]) {
    let Some(&first) = out.first() else { return };
    let max = out.iter().fold(first, |m, &o| if m < o { o } else { m });
    let mut z = 0.0f32;
    for o in out.iter_mut() {
        *o = ((*o - max) as f64).exp() as f32;
        z += *o;
    }
    out.iter_mut().for_each(|o| *o /= z);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("fasttext_test_{}_{name}", std::process::id()))
    }

    /// Values from the Python package (fasttext-wheel 0.9.2): the hash is recovered from
    /// `get_subword_id(s) - nwords = hash(s) % bucket` for two coprime buckets (CRT):
    /// ```python
    /// import fasttext, tempfile, os
    /// d = tempfile.mkdtemp(); p = os.path.join(d, "t.txt")
    /// open(p, "w").write("__label__a x\n__label__b y\n")
    /// ms = {b: fasttext.train_supervised(input=p, dim=1, bucket=b, minn=1, maxn=1, epoch=1,
    ///                                    thread=1, verbose=0) for b in (65537, 65539)}
    /// def h(s):
    ///     r = {b: m.get_subword_id(s) - len(m.words) for b, m in ms.items()}
    ///     for x in range(r[65537], 65537 * 65539, 65537):
    ///         if x % 65539 == r[65539] and x < 2**32:
    ///             return x
    /// for s in ["", "a", "</s>", "hello", "<he", "naïve", "中文", "<中", "__label__hq", "\u00ff\u0080"]:
    ///     print(repr(s), h(s))
    /// ```
    #[test]
    fn hash_matches_fasttext() {
        let expected: [(&str, u32); 10] = [
            ("", 2166136261),
            ("a", 3826002220),
            ("</s>", 3617362777),
            ("hello", 1335831723),
            ("<he", 1133188580),
            ("naïve", 3440832043),
            ("中文", 1907909189),
            ("<中", 3006752166),
            ("__label__hq", 2988445462),
            ("\u{ff}\u{80}", 3038241661),
        ];
        for (s, h) in expected {
            assert_eq!(fnv1a_hash(s.as_bytes()), h, "{s:?}");
        }
    }

    #[test]
    fn read_word_rules() {
        let t: Vec<&[u8]> = tokens(b" a\tb\r\x0bc\x0c d\0e\nf  ").collect();
        let want: Vec<&[u8]> = vec![b"a", b"b", b"c", b"d", b"e", b"f", b"</s>"];
        assert_eq!(t, want);
        assert_eq!(tokens(b"").collect::<Vec<_>>(), vec![b"</s>" as &[u8]]);
    }

    fn toy() -> FastText {
        let labels = vec!["__label__pos".to_string(), "__label__neg".to_string()];
        let ex = [(0, "good good good fun"), (0, "good good fun"), (1, "bad")];
        let args = TrainArgs {
            dim: 4,
            minn: 2,
            maxn: 3,
            bucket: 1000,
            epoch: 1,
            ..TrainArgs::default()
        };
        let m = FastText::train(&ex, &labels, &args);
        assert!(m.is_ok(), "{m:?}");
        m.unwrap_or_else(|_| unreachable!())
    }

    /// Feature ids checked against fastText reading the same data (counts are distinct, so the
    /// dictionary order is unambiguous). Words: good 0, </s> 1, fun 2, bad 3.
    /// ```python
    /// import fasttext, numpy as np
    /// open("toy.txt", "w").write("__label__pos good good good fun\n__label__pos good good fun\n__label__neg bad\n")
    /// m = fasttext.train_supervised(input="toy.txt", dim=4, minn=2, maxn=3, bucket=1000,
    ///                               wordNgrams=2, epoch=1, thread=1, verbose=0)
    /// print(m.words)  # ['good', '</s>', 'fun', 'bad']
    /// for w in ["good", "</s>", "xyz", "中文"]:
    ///     print(w, m.get_subwords(w)[1].tolist())
    /// # Line features: one-hot input rows, so the sentence vector is the feature histogram / count.
    /// n = len(m.words) + 1000
    /// m.set_matrices(np.eye(n, dtype=np.float32), np.zeros((2, n), np.float32))
    /// for t in ["good fun", "fun xyz __label__pos __label__zz"]:
    ///     v = np.array(m.get_sentence_vector(t), dtype=np.float64)
    ///     nf = next(k for k in range(1, 200)
    ///               if np.allclose(v * k, np.round(v * k), atol=1e-4) and round((v * k).sum()) == k)
    ///     c = np.round(v * nf).astype(int)
    ///     print(t, sorted(i for i in np.nonzero(c)[0] for _ in range(c[i])))
    /// ```
    #[test]
    fn features_match_fasttext() {
        let m = toy();
        let words: Vec<&[u8]> = m.entries[..m.nwords()].iter().map(|e| e.word.as_slice()).collect();
        assert_eq!(words, vec![b"good" as &[u8], b"</s>", b"fun", b"bad"]);
        let sub = |w: &str| {
            let mut v = Vec::new();
            m.add_subwords(&mut v, w.as_bytes(), m.word_id(w.as_bytes()));
            v
        };
        assert_eq!(sub("good"), PY_GOOD.to_vec());
        assert_eq!(sub("</s>"), vec![1]);
        assert_eq!(sub("xyz"), PY_XYZ.to_vec());
        assert_eq!(sub("中文"), PY_ZHONGWEN.to_vec());
        let mut f = m.line(b"good fun").0;
        f.sort();
        assert_eq!(f, PY_LINE1.to_vec());
        let (mut f, labels, n) = m.line(b"fun xyz __label__pos __label__zz");
        f.sort();
        assert_eq!(f, PY_LINE2.to_vec());
        assert_eq!(labels, vec![0]);
        assert_eq!(n, 5);
    }

    const PY_GOOD: [i32; 10] = [0, 992, 869, 951, 920, 687, 105, 258, 60, 827];
    const PY_XYZ: [i32; 7] = [517, 204, 806, 252, 686, 696, 285];
    const PY_ZHONGWEN: [i32; 5] = [170, 171, 193, 517, 28];
    const PY_LINE1: [i32; 21] = [
        0, 1, 2, 60, 105, 130, 258, 346, 490, 552, 591, 611, 664, 687, 806, 827, 869, 881, 920, 951, 992,
    ];
    const PY_LINE2: [i32; 18] = [
        1, 2, 62, 204, 252, 285, 293, 346, 490, 517, 552, 611, 664, 686, 696, 806, 806, 881,
    ];

    #[test]
    fn word_ngram_and_prune_semantics() {
        let mut m = toy();
        // Word bigram of "fun" (OOV here: use a hash pair directly) follows fastText's formula.
        let (ha, hb) = (fnv1a_hash(b"good") as i32, fnv1a_hash(b"fun") as i32);
        let mut v = Vec::new();
        m.add_word_ngrams(&mut v, &[ha, hb]);
        let h = (ha as i64 as u64)
            .wrapping_mul(116_049_371)
            .wrapping_add(hb as i64 as u64);
        assert_eq!(v, vec![4 + (h % 1000) as i32]);
        // pushHash: pruned dictionaries map kept buckets and drop the others.
        m.pruneidx_size = 1;
        m.pruneidx = [(7, 0)].into_iter().collect();
        let mut v = Vec::new();
        m.push_hash(&mut v, 7);
        m.push_hash(&mut v, 8);
        assert_eq!(v, vec![4]);
        m.pruneidx_size = 0;
        m.push_hash(&mut v, 7);
        assert_eq!(v, vec![4]);
    }

    /// Tie order of `findKBest` + `std::sort_heap` from fastText's code compiled with g++/libstdc++:
    /// ```c++
    /// bool comparePairs(const std::pair<real, int>& l, const std::pair<real, int>& r) { return l.first > r.first; }
    /// for (int i = 0; i < output.size(); i++) {  // Loss::findKBest, threshold 0
    ///   if (output[i] < 0.0f) continue;
    ///   if (heap.size() == k && std_log(output[i]) < heap.front().first) continue;
    ///   heap.push_back(std::make_pair(std_log(output[i]), i));
    ///   std::push_heap(heap.begin(), heap.end(), comparePairs);
    ///   if (heap.size() > k) { std::pop_heap(heap.begin(), heap.end(), comparePairs); heap.pop_back(); }
    /// }
    /// std::sort_heap(heap.begin(), heap.end(), comparePairs);  // then print the indices
    /// ```
    #[test]
    fn k_best_order_matches_libstdcxx() {
        let a = [0.5f32; 7];
        let b = [0.1f32, 0.7, 0.1, 0.7, 0.1, 0.0, 1.0, 0.1];
        let order = |o: &[f32], k| find_k_best(o, k).into_iter().map(|(_, i)| i).collect::<Vec<_>>();
        assert_eq!(order(&a, 1), vec![6]);
        assert_eq!(order(&a, 2), vec![6, 5]);
        assert_eq!(order(&a, 3), vec![6, 1, 5]);
        assert_eq!(order(&a, 8), vec![3, 1, 4, 6, 5, 2, 0]);
        assert_eq!(order(&b, 1), vec![6]);
        assert_eq!(order(&b, 2), vec![6, 3]);
        assert_eq!(order(&b, 3), vec![6, 1, 3]);
        assert_eq!(order(&b, 8), vec![6, 1, 3, 7, 4, 2, 0, 5]);
        assert!(order(&b, 0).is_empty());
    }

    #[test]
    fn save_load_round_trip() {
        let m = toy();
        let p = tmp("roundtrip.bin");
        assert!(m.save(&p).is_ok());
        let l = FastText::load(&p);
        assert!(l.is_ok(), "{l:?}");
        let l = l.unwrap_or_else(|_| unreachable!());
        assert_eq!(l.args, m.args);
        assert_eq!(l.entries, m.entries);
        assert_eq!(l.input, m.input);
        assert_eq!(l.output, m.output);
        assert_eq!(l.labels(), m.labels());
        assert_eq!(l.predict("good fun", 2), m.predict("good fun", 2));
        let p2 = tmp("roundtrip2.bin");
        assert!(l.save(&p2).is_ok());
        assert_eq!(std::fs::read(&p).ok(), std::fs::read(&p2).ok());
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&p2);
    }

    #[test]
    fn load_errors_are_explained() {
        let p = tmp("bad.bin");
        assert!(std::fs::write(&p, b"hello world, not a model").is_ok());
        let e = FastText::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.contains("magic") && e.contains("HINT") && e.contains("bad.bin"),
            "{e}"
        );
        let m = toy();
        assert!(m.save(&p).is_ok());
        let bytes = std::fs::read(&p).unwrap_or_default();
        assert!(std::fs::write(&p, &bytes[..bytes.len() - 3]).is_ok());
        let e = FastText::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("ends while reading the output matrix"), "{e}");
        let mut v = bytes.clone();
        v[4] = 11;
        assert!(std::fs::write(&p, &v).is_ok());
        let e = FastText::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("version 11"), "{e}");
        let mut v = bytes.clone();
        v[8 + 6 * 4..8 + 7 * 4].copy_from_slice(&1i32.to_le_bytes()); // loss = hs
        assert!(std::fs::write(&p, &v).is_ok());
        let e = FastText::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("(hs)"), "{e}");
        let mut v = bytes;
        v[8 + 7 * 4..8 + 8 * 4].copy_from_slice(&2i32.to_le_bytes()); // model = skipgram
        assert!(std::fs::write(&p, &v).is_ok());
        let e = FastText::load(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("skipgram"), "{e}");
        let e = FastText::load(tmp("missing.bin"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("missing.bin") && e.contains("HINT"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn training_separates_toy_classes() {
        let labels = vec!["__label__en".to_string(), "__label__zh".to_string()];
        let en = [
            "the quick brown fox jumps over the lazy dog",
            "in the beginning god created the heaven and the earth",
            "and the earth was without form and void",
            "let there be light and there was light",
            "a man went to the market to buy some bread",
        ];
        let zh = [
            "床前明月光疑是地上霜",
            "举头望明月低头思故乡",
            "白日依山尽黄河入海流",
            "欲穷千里目更上一层楼",
            "春眠不觉晓处处闻啼鸟",
        ];
        let mut ex = Vec::new();
        for i in 0..5 {
            ex.push((0, en[i]));
            ex.push((1, zh[i]));
        }
        let args = TrainArgs {
            epoch: 100,
            ..TrainArgs::default()
        };
        let m = FastText::train(&ex, &labels, &args);
        assert!(m.is_ok(), "{m:?}");
        let m = m.unwrap_or_else(|_| unreachable!());
        // The training set is separated with confidence ...
        for (l, t) in &ex {
            let p = m.prob(t, &labels[*l]).unwrap_or(0.0);
            assert!(p > 0.9, "{t}: {p}");
        }
        // ... and unseen documents (newlines inside read as spaces) go to the right class.
        assert_eq!(
            m.predict("the fox and the dog went to the market", 1)[0].0,
            "__label__en"
        );
        assert_eq!(m.predict("明月几时有\n把酒问青天", 1)[0].0, "__label__zh");
        assert_eq!(m.predict("明月几时有\n把酒问青天", 2).len(), 2);
        let p = m.probs("light");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        // Deterministic for a seed.
        let again = FastText::train(&ex, &labels, &args).map(|m2| m2.input == m.input && m2.output == m.output);
        assert_eq!(again.ok(), Some(true));
        let bad = FastText::train(&[(2, "x")], &labels, &args)
            .err()
            .map(|e| e.to_string());
        assert!(bad.unwrap_or_default().contains("HINT"));
    }
}
