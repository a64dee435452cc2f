//! The run configuration: one typed tree read from TOML, defaults in code, unknown keys
//! rejected, `--set section.key=value` overrides type-checked against the same tree, and a
//! single `validate()` at start-up that resolves the derived values (model shape, gradient
//! accumulation, device).
//!
//! Follows nanoGPT/torchtitan practice (config is one typed tree saved with every run) and
//! the section layout of docs/ARCHITECTURE.md. Model keys use the Hugging Face `config.json` names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use baichuan_model::ModelConfig;
use serde::{Deserialize, Serialize};

/// `[job]`: naming, where outputs go, the seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// Name shown in logs.
    pub name: String,
    /// Directory for metrics, logs and the trained model.
    pub run_dir: PathBuf,
    /// Seed of initialisation and data order.
    pub seed: u64,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            name: "baichuan".into(),
            run_dir: "runs/default".into(),
            seed: 1234,
        }
    }
}

/// `[model]`: a preset, optionally reshaped by Hugging Face config names, or weights to start from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// "tiny" | "small" | "baichuan-7b".
    pub preset: String,
    pub vocab_size: Option<i64>,
    pub hidden_size: Option<i64>,
    pub intermediate_size: Option<i64>,
    pub num_hidden_layers: Option<i64>,
    pub num_attention_heads: Option<i64>,
    pub max_position_embeddings: Option<i64>,
    pub rms_norm_eps: Option<f64>,
    pub initializer_range: Option<f64>,
    /// A Hugging Face model directory to start from; its config.json decides the shape.
    pub init_from: Option<PathBuf>,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            preset: "tiny".into(),
            vocab_size: None,
            hidden_size: None,
            intermediate_size: None,
            num_hidden_layers: None,
            num_attention_heads: None,
            max_position_embeddings: None,
            rms_norm_eps: None,
            initializer_range: None,
            init_from: None,
        }
    }
}

impl ModelSection {
    /// The preset with the overrides applied (or the shape of `init_from`).
    pub fn resolve(&self) -> Result<ModelConfig> {
        let mut c = match &self.init_from {
            Some(dir) => {
                baichuan_model::hf::read_config(dir)
                    .with_context(|| format!("model.init_from = {}", dir.display()))?
                    .0
            }
            None => ModelConfig::preset(&self.preset)?,
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            max_position_embeddings,
            rms_norm_eps,
            initializer_range
        );
        c.validate()?;
        Ok(c)
    }
}

/// Where `data.valid_fraction` takes its held-out tokens from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ValidSplit {
    /// Every `round(1 / valid_fraction)`-th block of the stream (blocks of whole samples), so the
    /// held-out text comes from every file and shard of a mixed corpus.
    Spread,
    /// The end of the stream (the last files given).
    End,
}

/// How `data.path` is given.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// UTF-8 `.txt` files, one document per line (the reference's layout), tokenized at start
    /// into a cache beside the run.
    Text,
    /// JSON lines with a text field, tokenized like `text`.
    Jsonl,
    /// Directories written by `baichuan prepare` (or shard files).
    Shards,
}

/// `[data]`: where tokens come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Files or directories of training text.
    pub path: Vec<PathBuf>,
    pub format: DataFormat,
    /// JSONL field holding the document.
    pub text_key: String,
    /// SentencePiece model; defaults to `tokenizer.model` of `model.init_from`.
    pub tokenizer: PathBuf,
    /// Tokens per training sequence.
    pub seq_len: i64,
    /// Held-out validation data (same format as `path`); empty: none, or `valid_fraction`.
    pub valid: Vec<PathBuf>,
    /// Fraction of the token stream held out for validation when `valid` is empty.
    pub valid_fraction: f64,
    /// Where that fraction comes from: spread over the stream (default) or its end.
    pub valid_split: ValidSplit,
    /// Where text/JSONL is tokenized to; default `<run_dir>/token-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Batches prepared ahead by the background loader thread.
    pub prefetch: usize,
    /// Read every token shard once at the start to verify its checksum (ids outside the
    /// model's vocabulary are refused either way, from the shard headers).
    pub verify_shards: bool,
    /// Text lines that were not valid UTF-8 (and were repaired) above this fraction of the
    /// lines stop tokenization: the input is likely not text.
    pub max_invalid_fraction: f64,
    /// Attention restricted to each packed document (block-diagonal causal), positions
    /// restarting at each document.
    pub document_masking: bool,
    /// With `document_masking`: train on the first token of each document (predicted from the
    /// previous document's EOS, which then sees nothing of it).
    pub loss_after_eos: bool,
    /// Weighted sources (`[[data.sources]]`); when given, they replace `data.path`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
    /// Later phases of the sources' weights (`[[data.phases]]`), in increasing `start_step`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseConfig>,
}

/// One `[[data.sources]]` table: a named source of training text or shards and its weight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// Files or directories, as `data.path`.
    pub path: Vec<PathBuf>,
    /// Relative weight (normalised over the sources).
    #[serde(default = "one")]
    pub weight: f64,
    /// Defaults to `data.format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
    /// Defaults to `data.text_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_key: Option<String>,
    /// This source's held-out data; empty: `valid_fraction` of its stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid: Vec<PathBuf>,
    /// Defaults to `data.valid_fraction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_fraction: Option<f64>,
    /// The most epochs (passes, may be fractional) of this source over the run; past it the
    /// run stops with a message. None: it repeats as often as its weight needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<f64>,
    /// The most tokens drawn from this source over the run, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

fn one() -> f64 {
    1.0
}

/// One `[[data.phases]]` table: the sources' weights from `start_step` on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PhaseConfig {
    /// The first step (counted from 1, as the logs count) drawn with these weights.
    pub start_step: u64,
    /// Weight by source name; a source not named gets 0.
    pub weights: std::collections::BTreeMap<String, f64>,
}

impl DataConfig {
    /// The mixture of `[[data.sources]]` and `[[data.phases]]` (without caps, which need the
    /// sources' sizes), or None for a single stream.
    pub fn mixture(&self) -> Result<Option<baichuan_data::Mixture>> {
        if self.sources.is_empty() {
            if !self.phases.is_empty() {
                bail!(
                    "[[data.phases]] given without [[data.sources]]; HINT: phases change the weights of named sources"
                );
            }
            return Ok(None);
        }
        let names: Vec<String> = self.sources.iter().map(|s| s.name.clone()).collect();
        let mut later = Vec::new();
        for p in &self.phases {
            if p.start_step < 2 {
                bail!(
                    "data.phases: start_step = {} must be at least 2 (steps count from 1, and step 1 draws with the \
                     sources' own weights)",
                    p.start_step
                );
            }
            if let Some(bad) = p.weights.keys().find(|k| !names.contains(k)) {
                bail!(
                    "data.phases (start_step {}): weight for {bad:?}, which is not a source; HINT: the sources are {names:?}",
                    p.start_step
                );
            }
            let w = names.iter().map(|n| p.weights.get(n).copied().unwrap_or(0.0)).collect();
            later.push((p.start_step - 1, w)); // the mixture counts global batches from 0
        }
        if let Some(w) = self.phases.windows(2).find(|w| w[1].start_step <= w[0].start_step) {
            bail!(
                "data.phases: start_step {} follows start_step {}; HINT: list phases in increasing start_step",
                w[1].start_step,
                w[0].start_step
            );
        }
        let weights = self.sources.iter().map(|s| s.weight).collect();
        Ok(Some(baichuan_data::Mixture::new(names, weights, later)?))
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: vec!["data/sample".into()],
            format: DataFormat::Text,
            text_key: "text".into(),
            tokenizer: "assets/tokenizer.model".into(),
            seq_len: 128,
            valid: Vec::new(),
            valid_fraction: 0.0,
            valid_split: ValidSplit::Spread,
            cache_dir: None,
            prefetch: 2,
            verify_shards: true,
            max_invalid_fraction: 0.1,
            document_masking: false,
            loss_after_eos: true,
            sources: Vec::new(),
            phases: Vec::new(),
        }
    }
}

/// `[eval]`: validation during training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate on the held-out data every this many steps (0: never; also after the last step).
    pub interval: u64,
    /// Batches (of the global batch size) per evaluation; always the same ones.
    pub batches: u64,
    /// Multiple-choice benchmarks scored at each evaluation (`[[eval.mc]]`), their accuracy
    /// logged beside the validation loss.
    pub mc: Vec<McEvalConfig>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            interval: 100,
            batches: 4,
            mc: Vec::new(),
        }
    }
}

/// One `[[eval.mc]]` table: a benchmark subset scored during training as `eval mc` scores it
/// (Baichuan-7B's prompts, the A/B/C/D logits).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McEvalConfig {
    /// `ceval`, `mmlu`, `gaokao` or `agieval`.
    pub format: crate::eval::McFormat,
    /// The benchmark directory, as `eval mc --data`.
    pub data: PathBuf,
    /// Only these subjects (file keys or stems); empty: all.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Few-shot examples per prompt.
    #[serde(default = "default_mc_shots")]
    pub shots: usize,
    /// C-Eval and MMLU: the split (default val for C-Eval, test for MMLU).
    #[serde(default)]
    pub split: Option<String>,
    /// At most this many questions, spread evenly over the subjects' questions (0: all).
    #[serde(default = "default_mc_questions")]
    pub max_questions: usize,
}

fn default_mc_shots() -> usize {
    5
}

fn default_mc_questions() -> usize {
    200
}

/// Numeric precision of parameters and activations.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere.
    Fp32,
    /// bf16 parameters and activations; fp32 master weights, AdamW state, norm variance and loss.
    Bf16,
    /// fp16 as bf16, with a dynamic loss scaler; steps with inf/NaN gradients are skipped.
    Fp16,
}

/// Activation checkpointing: which blocks recompute their forward during backward.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    None,
    Full,
    /// Every `train.checkpoint_every`-th block (0, n, 2n, ...).
    EveryN,
}

/// Where a step's micro-batch gradients are summed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GradAccumDtype {
    /// In the reducer's fp32 buffer (ZeRO stages 0 and 1; stage 2 keeps none and sums in
    /// the parameters' dtype).
    Fp32,
    /// In the parameters' `.grad`, in their dtype (bf16/fp16 lose bits with each addition).
    Param,
}

/// Where the optimizer's state lives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerOffload {
    /// On the parameters' device.
    None,
    /// In host memory: each bucket's reduced gradient is copied there as its collective
    /// finishes, AdamW runs on the host's cores, and the parameters go back to the device.
    Cpu,
}

/// Where to compute.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    Auto,
    Cpu,
    Cuda,
}

impl Precision {
    /// The libtorch dtype of parameters and activations.
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::Fp16 => tch::Kind::Half,
        }
    }
}

impl DeviceChoice {
    /// The device: `cuda` is the first GPU and an error when libtorch sees none.
    pub fn resolve(self) -> Result<tch::Device> {
        Ok(match self {
            DeviceChoice::Cpu => tch::Device::Cpu,
            DeviceChoice::Cuda if !tch::Cuda::is_available() => {
                bail!("device \"cuda\" was asked for but libtorch sees no CUDA device; HINT: use \"auto\" or \"cpu\"")
            }
            DeviceChoice::Cuda => tch::Device::Cuda(0),
            DeviceChoice::Auto => tch::Device::cuda_if_available(),
        })
    }
}

/// `[train]`: optimisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per forward/backward on one rank.
    pub micro_batch_size: i64,
    /// Sequences per optimizer step over all ranks; a multiple of the micro-batch.
    pub global_batch_size: i64,
    /// Peak learning rate after warm-up.
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// The learning-rate schedule after warm-up: "cosine", "wsd" or "constant".
    pub schedule: crate::schedule::Schedule,
    /// "wsd": steps of the final decay; None: `decay_fraction` of `steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay_steps: Option<u64>,
    /// "wsd": the decay's share of `steps` when `decay_steps` is not set.
    pub decay_fraction: f64,
    /// "wsd": the decay's shape, "linear", "cosine" or "1-sqrt".
    pub decay_shape: crate::schedule::DecayShape,
    /// AdamW decoupled weight decay, applied to matrices only (not norms).
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// Global gradient-norm clipping threshold; 0 disables.
    pub grad_clip: f64,
    pub precision: Precision,
    pub device: DeviceChoice,
    /// Print a line every this many steps.
    pub log_interval: u64,
    /// Tokens per chunk of the cross-entropy (bounds the fp32 logits held at once).
    pub loss_chunk_tokens: i64,
    /// ZeRO stage: 0 replicated, 1 optimizer state sharded, 2 gradients sharded too.
    pub zero_stage: u8,
    /// Recompute block activations during backward: "none", "full" or "every_n".
    pub activation_checkpointing: Checkpointing,
    /// With "every_n": recompute blocks 0, n, 2n, ...
    pub checkpoint_every: usize,
    /// fp16: initial loss scale.
    pub loss_scale: f64,
    /// fp16: good steps before the loss scale doubles.
    pub loss_scale_window: u64,
    /// Skip a step whose loss is this many standard deviations above the recent mean (0: off).
    pub spike_zscore: f64,
    /// Stop with an error after this many bad (NaN/inf/spike) steps in a row.
    pub max_bad_steps: u64,
    /// On CUDA: AdamW as one fused kernel (compiled at start with NVRTC); tensor ops otherwise.
    pub fused_optimizer: bool,
    /// The model's fused element-wise ops (RMSNorm kernel, joint rotary, one-concat QKV split);
    /// false runs the reference ops, which compute the same function.
    pub fused_ops: bool,
    /// Where the micro-batches of a step are summed.
    pub grad_accum_dtype: GradAccumDtype,
    /// Where the fp32 master weights and AdamW moments live: "none" (beside the parameters)
    /// or "cpu" (host memory, updated by the host's cores: ZeRO-Offload).
    pub optimizer_offload: OptimizerOffload,
}

impl TrainConfig {
    /// The learning-rate schedule of these settings.
    pub fn lr_schedule(&self) -> crate::schedule::LrSchedule {
        crate::schedule::LrSchedule {
            kind: self.schedule,
            total: self.steps,
            warmup: self.warmup_steps,
            lr: self.lr,
            min_lr: self.min_lr,
            decay: self
                .decay_steps
                .unwrap_or_else(|| (self.decay_fraction * self.steps as f64).round() as u64),
            shape: self.decay_shape,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 100,
            micro_batch_size: 8,
            global_batch_size: 8,
            lr: 3e-4,
            min_lr: 3e-5,
            warmup_steps: 10,
            schedule: crate::schedule::Schedule::Cosine,
            decay_steps: None,
            decay_fraction: 0.2,
            decay_shape: crate::schedule::DecayShape::Linear,
            weight_decay: 0.1,
            betas: [0.9, 0.95],
            eps: 1e-8,
            grad_clip: 1.0,
            precision: Precision::Fp32,
            device: DeviceChoice::Auto,
            log_interval: 10,
            loss_chunk_tokens: 8192,
            zero_stage: 0,
            activation_checkpointing: Checkpointing::None,
            checkpoint_every: 2,
            loss_scale: 65536.0,
            loss_scale_window: 1000,
            spike_zscore: 0.0,
            max_bad_steps: 20,
            fused_optimizer: true,
            fused_ops: true,
            grad_accum_dtype: GradAccumDtype::Fp32,
            optimizer_offload: OptimizerOffload::None,
        }
    }
}

/// Collective-communication backends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `nccl` for CUDA runs with more than one rank, else `tcp`.
    Auto,
    /// Ring collectives over TCP; CUDA buffers are staged through host memory.
    Tcp,
    /// NCCL on a dedicated CUDA stream (loaded at run time); also used at world size 1.
    Nccl,
}

/// `[dist]`: data-parallel communication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    pub backend: Backend,
    /// Gradient bucket size in MB; 0 adapts it to the world size (25 MB per 8 ranks, at most 200).
    pub bucket_mb: f64,
    /// Rendezvous and collective timeout; a silent rank is named after this long.
    pub timeout_s: u64,
    /// End a rank whose training loop made no progress for this long (a collective stuck on a
    /// dead peer); 0: 2 x timeout_s with NCCL (whose collectives have no timeout), off otherwise.
    pub watchdog_s: u64,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            backend: Backend::Auto,
            bucket_mb: 0.0,
            timeout_s: 300,
            watchdog_s: 0,
        }
    }
}

impl DistConfig {
    /// The watchdog's limit for a run on `backend` (the communicator's name), if any.
    pub fn watchdog(&self, backend: &str) -> Option<std::time::Duration> {
        let s = match self.watchdog_s {
            0 if backend == "nccl" => 2 * self.timeout_s,
            0 => return None,
            s => s,
        };
        Some(std::time::Duration::from_secs(s))
    }

    /// Bucket size in fp32 elements for `world` ranks.
    pub fn bucket_elems(&self, world: usize) -> usize {
        let mb = if self.bucket_mb > 0.0 {
            self.bucket_mb
        } else {
            (25.0 * world.div_ceil(8) as f64).min(200.0)
        };
        ((mb * 1e6) / 4.0).max(1.0) as usize
    }
}

/// `[checkpoint]`: when and where to save, how many to keep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Directory of checkpoints; default `<run_dir>/checkpoints`.
    pub dir: Option<PathBuf>,
    /// Save every this many steps (0: only by time, at the end and on SIGTERM).
    pub interval_steps: u64,
    /// Save when this many minutes passed since the last save (0: off).
    pub interval_minutes: f64,
    /// Keep the newest this many checkpoints (0: all), besides those of `keep_steps`.
    pub keep_last: usize,
    /// Also save after these steps, and never prune those checkpoints (a sweep's decay-branch
    /// points).
    pub keep_steps: Vec<u64>,
    /// Write in a background thread after a copy to host memory.
    pub async_save: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: None,
            interval_steps: 1000,
            interval_minutes: 0.0,
            keep_last: 3,
            keep_steps: Vec::new(),
            async_save: true,
        }
    }
}

/// `[launch]`: how `baichuan launch` reaches other hosts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LaunchConfig {
    /// Command that runs a shell command on a remote host: `<remote_shell> <host> <command>`.
    pub remote_shell: String,
    /// Restart the whole job from its latest checkpoint this many times when a rank fails.
    pub max_restarts: u32,
}

impl Default for LaunchConfig {
    fn default() -> Self {
        LaunchConfig {
            remote_shell: "ssh".into(),
            max_restarts: 0,
        }
    }
}

/// The whole run configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub job: JobConfig,
    pub model: ModelSection,
    pub data: DataConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub dist: DistConfig,
    pub checkpoint: CheckpointConfig,
    pub launch: LaunchConfig,
}

/// Values derived once at start-up from the config and the world.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub model: ModelConfig,
    pub grad_accum: i64,
    pub device: tch::Device,
}

/// Parses `a.b=v`: the value as a TOML value (number, bool, array, quoted string), falling
/// back to a bare string.
fn parse_override(spec: &str) -> Result<(Vec<String>, toml::Value)> {
    let (key, raw) = spec
        .split_once('=')
        .with_context(|| format!("--set {spec:?}: expected section.key=value"))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
        bail!("--set {spec:?}: the key must name a section and a field, e.g. train.lr=1e-3");
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    Ok((path, value))
}

impl RunConfig {
    /// Reads a TOML file and applies `--set` overrides; every error names the file or key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text, overrides).with_context(|| format!("config {}", path.display()))
    }

    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).context("invalid TOML")?;
        for spec in overrides {
            let (path, value) = parse_override(spec)?;
            let mut node = &mut table;
            for part in &path[..path.len() - 1] {
                let entry = node
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                node = entry
                    .as_table_mut()
                    .with_context(|| format!("--set {spec:?}: {part} is not a section"))?;
            }
            node.insert(path[path.len() - 1].clone(), value);
        }
        // re-read as text so the error can name the key path (`train.steps`)
        let merged = toml::to_string(&table).context("re-serialising the merged config")?;
        let de = toml::de::Deserializer::parse(&merged).context("invalid TOML")?;
        let config: RunConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                String::new()
            } else {
                format!("{path}: ")
            };
            anyhow::anyhow!(
                "{at}{}; HINT: README.md's configuration reference lists every key and its type",
                e.into_inner().message().trim()
            )
        })?;
        Ok(config)
    }

    /// Checks the config once and derives what the run needs. `world` is the number of
    /// data-parallel ranks.
    pub fn validate(&self, world: i64) -> Result<Resolved> {
        let model = self.model.resolve().context("[model]")?;
        let t = &self.train;
        let d = &self.data;
        if d.seq_len <= 0 || d.seq_len > model.max_position_embeddings {
            bail!(
                "data.seq_len = {} must be in 1..={} (model.max_position_embeddings)",
                d.seq_len,
                model.max_position_embeddings
            );
        }
        if !(0.0..0.5).contains(&d.valid_fraction) {
            bail!("data.valid_fraction = {} must be in [0, 0.5)", d.valid_fraction);
        }
        if d.prefetch == 0 {
            bail!("data.prefetch must be at least 1");
        }
        if !(0.0..=1.0).contains(&d.max_invalid_fraction) {
            bail!(
                "data.max_invalid_fraction = {} must be in [0, 1]",
                d.max_invalid_fraction
            );
        }
        if self.eval.batches == 0 && self.eval.interval > 0 && (d.valid_fraction > 0.0 || !d.valid.is_empty()) {
            bail!(
                "eval.batches = 0 with eval.interval = {}: validation would average no batch; HINT: set eval.batches \
                 >= 1, or eval.interval = 0 to turn validation off",
                self.eval.interval
            );
        }
        if d.path.is_empty() && d.sources.is_empty() {
            bail!("data.path is empty: name at least one file or directory of training text");
        }
        if !d.sources.is_empty() && d.path != DataConfig::default().path {
            bail!(
                "both data.path and [[data.sources]] are set; HINT: move data.path into a [[data.sources]] table (or \
                 remove the sources)"
            );
        }
        for s in &d.sources {
            if s.path.is_empty() {
                bail!(
                    "data.sources {:?}: path is empty; HINT: name its files or directories",
                    s.name
                );
            }
            if s.valid_fraction.is_some_and(|f| !(0.0..0.5).contains(&f)) {
                bail!("data.sources {:?}: valid_fraction must be in [0, 0.5)", s.name);
            }
            if s.max_epochs.is_some_and(|e| e.is_nan() || e <= 0.0) || s.max_tokens == Some(0) {
                bail!(
                    "data.sources {:?}: max_epochs and max_tokens must be positive; HINT: leave them out for no cap",
                    s.name
                );
            }
            if s.name
                .chars()
                .any(|c| !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'))
            {
                bail!(
                    "data.sources {:?}: a name may hold letters, digits, '-', '_' and '.' (it names the source's cache \
                     directory and its metrics)",
                    s.name
                );
            }
        }
        d.mixture().context("[data]")?;
        if t.micro_batch_size <= 0 || t.global_batch_size <= 0 {
            bail!("train.micro_batch_size and train.global_batch_size must be positive");
        }
        let per_step = t.micro_batch_size * world;
        if t.global_batch_size % per_step != 0 {
            bail!(
                "train.global_batch_size = {} is not a multiple of micro_batch_size x ranks = {} x {world}; \
                 HINT: set it to a multiple of {per_step}",
                t.global_batch_size,
                t.micro_batch_size
            );
        }
        if t.steps == 0 {
            bail!("train.steps must be at least 1");
        }
        if t.lr.is_nan() || t.lr <= 0.0 || t.min_lr < 0.0 || t.min_lr > t.lr {
            bail!("train.lr must be > 0 and 0 <= train.min_lr <= train.lr");
        }
        if t.schedule == crate::schedule::Schedule::Wsd {
            if !(t.decay_fraction > 0.0 && t.decay_fraction <= 1.0) {
                bail!("train.decay_fraction = {} must be in (0, 1]", t.decay_fraction);
            }
            let decay = t.lr_schedule().decay;
            if decay == 0 || decay + t.warmup_steps > t.steps {
                bail!(
                    "train.schedule = \"wsd\": a decay of {decay} steps after {} warm-up steps does not fit in \
                     train.steps = {}; HINT: set train.decay_steps (or train.decay_fraction) so that warm-up + decay <= steps",
                    t.warmup_steps,
                    t.steps
                );
            }
        }
        if t.betas.iter().any(|b| !(0.0..1.0).contains(b)) || t.eps.is_nan() || t.eps <= 0.0 {
            bail!("train.betas must lie in [0, 1) and train.eps must be > 0");
        }
        if t.weight_decay < 0.0 || t.grad_clip < 0.0 {
            bail!("train.weight_decay and train.grad_clip must be >= 0");
        }
        if t.checkpoint_every == 0 || t.loss_scale.is_nan() || t.loss_scale <= 0.0 || t.loss_scale_window == 0 {
            bail!("train.checkpoint_every, train.loss_scale and train.loss_scale_window must be positive");
        }
        if self.checkpoint.interval_minutes < 0.0 || t.spike_zscore < 0.0 || t.max_bad_steps == 0 {
            bail!("checkpoint.interval_minutes and train.spike_zscore must be >= 0, train.max_bad_steps >= 1");
        }
        if t.zero_stage > 2 {
            bail!("train.zero_stage = {} must be 0, 1 or 2", t.zero_stage);
        }
        if self.dist.timeout_s == 0 || self.dist.bucket_mb < 0.0 {
            bail!("dist.timeout_s must be positive and dist.bucket_mb >= 0");
        }
        if t.loss_chunk_tokens <= 0 || t.log_interval == 0 {
            bail!("train.loss_chunk_tokens and train.log_interval must be positive");
        }
        let device = t.device.resolve().context("train.device")?;
        Ok(Resolved {
            model,
            grad_accum: t.global_batch_size / per_step,
            device,
        })
    }

    /// Settings that are valid but probably not what was meant, as sentences for rank 0 to print.
    pub fn warnings(&self) -> Vec<String> {
        let t = &self.train;
        let mut w = Vec::new();
        if t.schedule != crate::schedule::Schedule::Wsd
            && (t.decay_steps.is_some() || t.decay_shape != Default::default())
        {
            w.push(format!(
                "train.decay_steps / train.decay_shape are set but train.schedule = {:?}: they shape the \"wsd\" \
                 schedule only",
                t.schedule
            ));
        }
        if t.warmup_steps > t.steps {
            w.push(format!(
                "train.warmup_steps = {} exceeds train.steps = {}: the learning rate never reaches train.lr = {} \
                 (it ends at {:.3e}); HINT: lower train.warmup_steps",
                t.warmup_steps,
                t.steps,
                t.lr,
                t.lr * t.steps as f64 / t.warmup_steps.max(1) as f64
            ));
        }
        w
    }

    /// The TOML text of the resolved config, saved beside every run.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_from_an_empty_file() {
        let c = RunConfig::from_toml("", &[]).unwrap();
        assert_eq!(c, RunConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = RunConfig::from_toml("[train]\nlearning_rate = 1.0\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("learning_rate"), "{err:#}");
        let err = RunConfig::from_toml("[trian]\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("trian"), "{err:#}");
    }

    #[test]
    fn overrides_are_type_checked() {
        let c = RunConfig::from_toml("", &["train.lr=0.5".into(), "job.name=abc".into()]).unwrap();
        assert_eq!(c.train.lr, 0.5);
        assert_eq!(c.job.name, "abc");
        let c = RunConfig::from_toml("", &["train.betas=[0.8, 0.9]".into(), "train.precision=bf16".into()]).unwrap();
        assert_eq!(c.train.betas, [0.8, 0.9]);
        assert_eq!(c.train.precision, Precision::Bf16);
        let err = RunConfig::from_toml("", &["train.steps=many".into()]).unwrap_err();
        assert!(
            format!("{err:#}").contains("steps") || format!("{err:#}").contains("integer"),
            "{err:#}"
        );
        assert!(RunConfig::from_toml("", &["train.nope=1".into()]).is_err());
        assert!(RunConfig::from_toml("", &["lr=1".into()]).is_err());
    }

    #[test]
    fn validate_derives_accumulation_and_rejects_uneven_batches() {
        let mut c = RunConfig::default();
        c.train.micro_batch_size = 4;
        c.train.global_batch_size = 16;
        c.train.device = DeviceChoice::Cpu;
        assert_eq!(c.validate(1).unwrap().grad_accum, 4);
        assert_eq!(c.validate(2).unwrap().grad_accum, 2);
        let err = c.validate(3).unwrap_err().to_string();
        assert!(err.contains("global_batch_size"), "{err}");
        c.data.seq_len = 100_000;
        assert!(c.validate(1).unwrap_err().to_string().contains("seq_len"));
    }

    #[test]
    fn every_example_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) == Some("toml") {
                let c = RunConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                let mut c = c;
                c.train.device = DeviceChoice::Cpu;
                c.validate(1).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 3, "expected the example configs in {}", dir.display());
    }

    #[test]
    fn readme_documents_every_config_key() {
        // every optional key set, so that serialisation lists them all
        let c = RunConfig {
            model: ModelSection {
                vocab_size: Some(1),
                hidden_size: Some(1),
                intermediate_size: Some(1),
                num_hidden_layers: Some(1),
                num_attention_heads: Some(1),
                max_position_embeddings: Some(1),
                rms_norm_eps: Some(1.0),
                initializer_range: Some(1.0),
                init_from: Some("x".into()),
                ..ModelSection::default()
            },
            train: TrainConfig {
                decay_steps: Some(1),
                ..TrainConfig::default()
            },
            data: DataConfig {
                cache_dir: Some("x".into()),
                sources: vec![SourceConfig {
                    name: "x".into(),
                    path: vec!["x".into()],
                    weight: 1.0,
                    format: None,
                    text_key: None,
                    valid: Vec::new(),
                    valid_fraction: None,
                    max_epochs: None,
                    max_tokens: None,
                }],
                phases: vec![PhaseConfig {
                    start_step: 2,
                    weights: Default::default(),
                }],
                ..DataConfig::default()
            },
            ..RunConfig::default()
        };
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
        let tree = toml::Value::try_from(&c).unwrap();
        let mut missing = Vec::new();
        let mut count = 0;
        for (section, table) in tree.as_table().unwrap() {
            for key in table.as_table().unwrap().keys() {
                count += 1;
                let name = format!("`{section}.{key}`");
                if !readme.contains(&name) {
                    missing.push(name);
                }
            }
        }
        assert!(count > 30, "only {count} keys found");
        assert!(
            missing.is_empty(),
            "README.md's configuration reference lacks {missing:?}"
        );
    }
}
