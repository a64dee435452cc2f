//! Hugging Face model directories: `config.json` plus `model.safetensors`, or shards listed
//! in `model.safetensors.index.json`, in Baichuan layout (fused `W_pack`) or LLaMA layout
//! (`q_proj`/`k_proj`/`v_proj`, loadable by transformers' `LlamaForCausalLM`).
//!
//! Follows the conventions of `transformers.PreTrainedModel.save_pretrained`: safetensors
//! files carry the metadata `{"format": "pt"}`, shard names are
//! `model-00001-of-00003.safetensors`, and the index maps each weight to its shard.
//! Reading memory-maps each file and copies tensor by tensor.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Device, Kind, Tensor};

use crate::baichuan::Baichuan;
use crate::config::{HfConfig, Layout, ModelConfig};
use crate::ModelError;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.model";

fn io_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Io(format!("{}: {e}", path.display()))
}

fn fmt_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Format {
        file: path.display().to_string(),
        msg: msg.into(),
    }
}

fn kind_to_dtype(kind: Kind) -> Result<Dtype, ModelError> {
    Ok(match kind {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        other => return Err(ModelError::Config(format!("cannot store {other:?} in safetensors"))),
    })
}

fn dtype_to_kind(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Name of a dtype as `config.json`'s `torch_dtype` spells it.
pub fn torch_dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// A contiguous CPU tensor viewed as bytes, without a copy.
struct TensorBytes {
    tensor: Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl TensorBytes {
    fn new(t: &Tensor) -> Result<Self, ModelError> {
        let tensor = t.to_device(Device::Cpu).contiguous();
        let dtype = kind_to_dtype(tensor.kind())?;
        let shape = tensor.size().iter().map(|&s| s as usize).collect();
        Ok(TensorBytes { tensor, dtype, shape })
    }
}

impl View for &TensorBytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let len = self.data_len();
        if len == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: `tensor` is a contiguous CPU tensor owned by self, alive for the borrow,
        // and `len` is exactly its size in bytes.
        let bytes = unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, len) };
        Cow::Borrowed(bytes)
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Removes `path`; a file that is not there is fine, any other failure is an error.
fn remove_if_present(path: &Path) -> Result<(), ModelError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path, e)),
        _ => Ok(()),
    }
}

/// Size and CRC-32 (IEEE, as zlib and `crc32fast` compute it) of a file, computed from the
/// bytes as they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub crc32: u32,
}

/// A writer that counts and checksums the bytes that pass through it.
struct Checksummed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `tensors` (in this order) as one safetensors file with the metadata
/// `{"format": "pt"}`, streaming each tensor's bytes to disk (no serialized copy in memory)
/// and checksumming them on the way. The file is written under a temporary name, fsynced and
/// renamed into place, so `path` is never half-written.
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<Written, ModelError> {
    let owned = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), TensorBytes::new(t)?)))
        .collect::<Result<Vec<_>, ModelError>>()?;
    // the header: each tensor's dtype, shape and byte range of the data section
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in &owned {
        let len = t.data_len();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| io_err(path, e))?;
    // the data section starts 8-byte aligned, padded with spaces as the safetensors library does
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let tmp = path.with_extension("safetensors.tmp");
    let file = fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut out = Checksummed {
        inner: std::io::BufWriter::with_capacity(8 << 20, file),
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let mut write = || -> std::io::Result<()> {
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        for (_, t) in &owned {
            out.write_all(&t.data())?;
        }
        out.flush()
    };
    write().map_err(|e| io_err(&tmp, e))?;
    let written = Written {
        bytes: out.bytes,
        crc32: out.hasher.clone().finalize(),
    };
    let file = out.inner.into_inner().map_err(|e| io_err(&tmp, e.error()))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    Ok(written)
}

/// Reads every tensor of one safetensors file onto the CPU, in the stored dtype.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let file = fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the file is opened read-only and not modified while mapped by this process.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| {
        fmt_err(
            path,
            format!("not a valid safetensors file ({e}); HINT: the file may be truncated, re-export or re-download it"),
        )
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = dtype_to_kind(view.dtype())
            .ok_or_else(|| fmt_err(path, format!("tensor {name} has unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| fmt_err(path, format!("tensor {name}: {e}")))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads the model config of a Hugging Face directory and tells its layout.
pub fn read_config(dir: &Path) -> Result<(ModelConfig, Layout), ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        io_err(&path, format!("{e}; HINT: a model directory holds config.json, model.safetensors and tokenizer.model (`baichuan init` or `baichuan export` writes one)"))
    })?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| fmt_err(&path, format!("invalid config.json: {e}")))?;
    let layout = if hf.model_type.as_deref() == Some("llama") || hf.architectures.iter().any(|a| a.starts_with("Llama"))
    {
        Layout::Llama
    } else {
        Layout::Baichuan
    };
    let config = hf.to_model_config().map_err(|e| fmt_err(&path, e.to_string()))?;
    Ok((config, layout))
}

/// The weight files of a directory: the single file, or the shards of the index.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(INDEX_FILE);
    if !index_path.exists() {
        return Err(ModelError::Io(format!(
            "{}: no {WEIGHTS_FILE} or {INDEX_FILE}; HINT: published Baichuan-7B weights are \
             pytorch_model.bin pickles: convert them with scripts/convert_bin_to_safetensors.py",
            dir.display()
        )));
    }
    let text = fs::read_to_string(&index_path).map_err(|e| io_err(&index_path, e))?;
    let index: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fmt_err(&index_path, format!("invalid JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| fmt_err(&index_path, "no \"weight_map\" object"))?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Splits `W_pack` (3d, d) into q, k, v rows.
fn split_w_pack(w: &Tensor) -> (Tensor, Tensor, Tensor) {
    let d = w.size()[1];
    (w.narrow(0, 0, d), w.narrow(0, d, d), w.narrow(0, 2 * d, d))
}

/// The model's weights under the names of `layout`.
pub fn export_tensors(model: &Baichuan, layout: Layout, kind: Kind) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    tch::no_grad(|| {
        for (name, t) in model.named_parameters() {
            let t = t.detach().to_kind(kind);
            match (layout, name.strip_suffix(".self_attn.W_pack.weight")) {
                (Layout::Llama, Some(prefix)) => {
                    let (q, k, v) = split_w_pack(&t);
                    out.push((format!("{prefix}.self_attn.q_proj.weight"), q));
                    out.push((format!("{prefix}.self_attn.k_proj.weight"), k));
                    out.push((format!("{prefix}.self_attn.v_proj.weight"), v));
                }
                _ => out.push((name, t)),
            }
        }
    });
    out
}

/// Saves a model directory: `config.json` and the weights, as one file or as shards of at
/// most `max_shard_bytes` with an index. A tokenizer can be copied beside with
/// [`copy_tokenizer`].
pub fn save_pretrained(
    model: &Baichuan,
    dir: &Path,
    layout: Layout,
    kind: Kind,
    max_shard_bytes: Option<u64>,
) -> Result<(), ModelError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tensors = export_tensors(model, layout, kind);
    let config = model.config.to_hf_json(layout, torch_dtype_name(kind));
    let config_text = serde_json::to_string_pretty(&config).expect("config serialises");
    let config_path = dir.join(CONFIG_FILE);
    fs::write(&config_path, config_text + "\n").map_err(|e| io_err(&config_path, e))?;

    let bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let total: u64 = tensors.iter().map(|(_, t)| bytes(t)).sum();
    let limit = max_shard_bytes.unwrap_or(u64::MAX);
    // stale files of an earlier export in another form would shadow the new one
    for stale in [WEIGHTS_FILE, INDEX_FILE] {
        remove_if_present(&dir.join(stale))?;
    }
    if total <= limit {
        return write_safetensors(&tensors, &dir.join(WEIGHTS_FILE)).map(|_| ());
    }
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0u64;
    for (name, t) in tensors {
        let b = bytes(&t);
        if current > 0 && current + b > limit {
            shards.push(Vec::new());
            current = 0;
        }
        current += b;
        shards.last_mut().expect("one shard").push((name, t));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
        write_safetensors(shard, &dir.join(&file))?;
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let index_path = dir.join(INDEX_FILE);
    fs::write(
        &index_path,
        serde_json::to_string_pretty(&index).expect("index serialises") + "\n",
    )
    .map_err(|e| io_err(&index_path, e))
}

/// Copies `tokenizer.model` into a model directory (the Hugging Face convention).
pub fn copy_tokenizer(tokenizer: &Path, dir: &Path) -> Result<(), ModelError> {
    let dst = dir.join(TOKENIZER_FILE);
    if tokenizer != dst {
        fs::copy(tokenizer, &dst).map_err(|e| io_err(tokenizer, e))?;
    }
    Ok(())
}

/// Copies loaded weights (Baichuan or LLaMA names) into `model`, checking that every
/// parameter is present exactly once with the right shape and that nothing is left over.
pub fn load_weights(
    model: &Baichuan,
    mut tensors: HashMap<String, (Tensor, PathBuf)>,
    source: &Path,
) -> Result<(), ModelError> {
    let take =
        |tensors: &mut HashMap<String, (Tensor, PathBuf)>, name: &str, want: &[i64]| -> Result<Tensor, ModelError> {
            let (t, file) = tensors.remove(name).ok_or_else(|| {
                fmt_err(
                    source,
                    format!("missing weight {name}; HINT: is this a Baichuan/LLaMA checkpoint of the configured size?"),
                )
            })?;
            if t.size() != want {
                return Err(fmt_err(
                    &file,
                    format!("weight {name} has shape {:?}, config.json implies {want:?}", t.size()),
                ));
            }
            Ok(t)
        };
    tch::no_grad(|| -> Result<(), ModelError> {
        for (name, p) in model.named_parameters() {
            let want = p.size();
            let value = match name.strip_suffix(".self_attn.W_pack.weight") {
                // LLaMA layout: fuse q, k, v rows into W_pack
                Some(prefix) if !tensors.contains_key(&name) => {
                    let d = want[1];
                    let q = take(&mut tensors, &format!("{prefix}.self_attn.q_proj.weight"), &[d, d])?;
                    let k = take(&mut tensors, &format!("{prefix}.self_attn.k_proj.weight"), &[d, d])?;
                    let v = take(&mut tensors, &format!("{prefix}.self_attn.v_proj.weight"), &[d, d])?;
                    Tensor::cat(&[q, k, v], 0)
                }
                _ => take(&mut tensors, &name, &want)?,
            };
            let mut p = p.shallow_clone();
            p.copy_(&value.to_kind(p.kind()).to_device(p.device()));
        }
        Ok(())
    })?;
    if !tensors.is_empty() {
        let mut extra: Vec<&String> = tensors.keys().collect();
        extra.sort();
        return Err(fmt_err(
            source,
            format!("unexpected weights {extra:?} (not part of this architecture)"),
        ));
    }
    Ok(())
}

/// Loads a model directory (either layout, single or sharded) onto `device` in fp32.
pub fn load_pretrained(dir: &Path, device: Device) -> Result<Baichuan, ModelError> {
    let (config, _layout) = read_config(dir)?;
    let model = Baichuan::new(&config, device)?;
    let mut tensors = HashMap::new();
    for file in weight_files(dir)? {
        for (name, t) in read_safetensors(&file)? {
            if tensors.insert(name.clone(), (t, file.clone())).is_some() {
                return Err(fmt_err(&file, format!("weight {name} appears in two files")));
            }
        }
    }
    load_weights(&model, tensors, dir)?;
    Ok(model)
}
