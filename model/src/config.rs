//! Model hyper-parameters: the resolved `ModelConfig`, the named presets (`baichuan-7b`,
//! `small`, `tiny`), parameter and FLOP counts, and the Hugging Face `config.json` mapping.
//!
//! Field names are the Hugging Face `config.json` keys of Baichuan-7B (and of LLaMA, which
//! shares them), so a user's `[model]` overrides and an imported `config.json` read the same.
//! FLOPs follow torchtitan's convention: `6 * (N - N_embedding) + 12 * L * d * T` per token.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// The resolved hyper-parameters of a Baichuan-7B-architecture decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Tokens in the vocabulary (64000 for the Baichuan SentencePiece model).
    pub vocab_size: i64,
    /// Width of the residual stream `d`.
    pub hidden_size: i64,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: i64,
    /// Number of decoder blocks `L`.
    pub num_hidden_layers: i64,
    /// Attention heads (no grouped-query attention: keys and values have as many).
    pub num_attention_heads: i64,
    /// Longest sequence the rotary tables cover.
    pub max_position_embeddings: i64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Standard deviation of the normal initialisation of every matrix.
    pub initializer_range: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Padding id: its embedding row starts at zero and receives no gradient (as
    /// `nn.Embedding(padding_idx=...)` in the reference). `None` disables that.
    pub pad_token_id: Option<i64>,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
}

/// Names of the built-in presets, for error messages and `--help`.
pub const PRESETS: &[&str] = &["baichuan-7b", "small", "tiny"];

impl ModelConfig {
    /// Baichuan-7B exactly as released: 7,000,559,616 parameters.
    pub fn baichuan_7b() -> Self {
        ModelConfig {
            vocab_size: 64000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-6,
            initializer_range: 0.02,
            rope_theta: 10000.0,
            pad_token_id: Some(0),
            bos_token_id: 1,
            eos_token_id: 2,
        }
    }

    /// About 104M parameters (two thirds of them the untied 64000-token embeddings).
    pub fn small() -> Self {
        ModelConfig {
            hidden_size: 512,
            intermediate_size: 1408,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 2048,
            ..Self::baichuan_7b()
        }
    }

    /// A few million parameters around the full vocabulary, for CPU runs and tests.
    pub fn tiny() -> Self {
        ModelConfig {
            hidden_size: 128,
            intermediate_size: 352,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            max_position_embeddings: 512,
            ..Self::baichuan_7b()
        }
    }

    /// Looks a preset up by name.
    pub fn preset(name: &str) -> Result<Self, ModelError> {
        match name {
            "baichuan-7b" | "baichuan_7b" | "7b" => Ok(Self::baichuan_7b()),
            "small" => Ok(Self::small()),
            "tiny" => Ok(Self::tiny()),
            other => Err(ModelError::Config(format!(
                "unknown model preset {other:?}; choose one of {}",
                PRESETS.join(", ")
            ))),
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the shape constraints; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), ModelError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(ModelError::Config(format!("model.{name} = {value} must be positive")));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(ModelError::Config(format!(
                "model.hidden_size = {} is not divisible by model.num_attention_heads = {}; \
                 pick a head count that divides it",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.head_dim() % 2 != 0 {
            return Err(ModelError::Config(format!(
                "head dimension {} (hidden_size / num_attention_heads) must be even for rotary embeddings",
                self.head_dim()
            )));
        }
        if [self.rms_norm_eps, self.initializer_range, self.rope_theta - 1.0]
            .iter()
            .any(|v| v.is_nan() || *v <= 0.0)
        {
            return Err(ModelError::Config(
                "model.rms_norm_eps and model.initializer_range must be > 0 and model.rope_theta > 1".into(),
            ));
        }
        for (name, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id)] {
            if id < 0 || id >= self.vocab_size {
                return Err(ModelError::Config(format!(
                    "model.{name} = {id} is outside the vocabulary (0..{})",
                    self.vocab_size
                )));
            }
        }
        if let Some(pad) = self.pad_token_id {
            if pad < 0 || pad >= self.vocab_size {
                return Err(ModelError::Config(format!(
                    "model.pad_token_id = {pad} is outside the vocabulary (0..{})",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Parameters of one decoder block: W_pack, o_proj, gate/up/down and two norms.
    pub fn block_parameters(&self) -> u64 {
        let d = self.hidden_size as u64;
        let f = self.intermediate_size as u64;
        4 * d * d + 3 * d * f + 2 * d
    }

    /// Parameters of the input embedding table.
    pub fn embedding_parameters(&self) -> u64 {
        (self.vocab_size * self.hidden_size) as u64
    }

    /// Total parameter count, computed from the shapes without allocating anything.
    pub fn num_parameters(&self) -> u64 {
        let d = self.hidden_size as u64;
        2 * self.embedding_parameters() + self.num_hidden_layers as u64 * self.block_parameters() + d
    }

    /// Training FLOPs per token at sequence length `seq_len` (forward + backward).
    pub fn flops_per_token(&self, seq_len: i64) -> f64 {
        let dense = (self.num_parameters() - self.embedding_parameters()) as f64;
        let attention = 12.0 * self.num_hidden_layers as f64 * self.hidden_size as f64 * seq_len as f64;
        6.0 * dense + attention
    }
}

/// The subset of a Hugging Face `config.json` that describes a Baichuan or LLaMA decoder.
/// Unknown keys are ignored (Hugging Face configs carry many); what is read is checked.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub initializer_range: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn first_id(value: &Option<serde_json::Value>, default: i64) -> i64 {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(serde_json::Value::Array(items)) => items.first().and_then(|v| v.as_i64()).unwrap_or(default),
        _ => default,
    }
}

impl HfConfig {
    /// Resolves a Hugging Face config into a `ModelConfig`, rejecting what this
    /// architecture cannot represent (GQA, tied embeddings, other activations, RoPE scaling).
    pub fn to_model_config(&self) -> Result<ModelConfig, ModelError> {
        if let Some(kv) = self.num_key_value_heads {
            if kv != self.num_attention_heads {
                return Err(ModelError::Config(format!(
                    "num_key_value_heads = {kv} differs from num_attention_heads = {}: grouped-query \
                     attention is not part of the Baichuan-7B architecture",
                    self.num_attention_heads
                )));
            }
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "hidden_act = {act:?}; the Baichuan-7B architecture uses \"silu\" (SwiGLU)"
                )));
            }
        }
        if self.tie_word_embeddings == Some(true) {
            return Err(ModelError::Config(
                "tie_word_embeddings = true; Baichuan-7B has an untied lm_head".into(),
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ModelError::Config("rope_scaling is not supported".into()));
        }
        let base = ModelConfig::baichuan_7b();
        let config = ModelConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(base.max_position_embeddings),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(base.rms_norm_eps),
            initializer_range: self.initializer_range.unwrap_or(base.initializer_range),
            rope_theta: self.rope_theta.unwrap_or(base.rope_theta),
            pad_token_id: self.pad_token_id,
            bos_token_id: first_id(&self.bos_token_id, base.bos_token_id),
            eos_token_id: first_id(&self.eos_token_id, base.eos_token_id),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Which weight layout a Hugging Face directory uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Baichuan's own: fused `self_attn.W_pack` with rows Q, K, V.
    Baichuan,
    /// LLaMA's: separate `q_proj`, `k_proj`, `v_proj`; loads in `LlamaForCausalLM`.
    Llama,
}

impl ModelConfig {
    /// The `config.json` written beside exported weights.
    pub fn to_hf_json(&self, layout: Layout, torch_dtype: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "initializer_range": self.initializer_range,
            "hidden_act": "silu",
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        });
        let map = v.as_object_mut().expect("json object");
        match layout {
            Layout::Baichuan => {
                map.insert("architectures".into(), serde_json::json!(["BaiChuanForCausalLM"]));
                map.insert("model_type".into(), "baichuan".into());
            }
            Layout::Llama => {
                map.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
                map.insert("model_type".into(), "llama".into());
                map.insert("num_key_value_heads".into(), self.num_attention_heads.into());
                map.insert("head_dim".into(), self.head_dim().into());
                map.insert("rope_theta".into(), self.rope_theta.into());
                map.insert("attention_bias".into(), false.into());
                map.insert("mlp_bias".into(), false.into());
                map.insert("attention_dropout".into(), 0.0.into());
                map.insert("pretraining_tp".into(), 1.into());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baichuan_7b_has_the_published_parameter_count() {
        assert_eq!(ModelConfig::baichuan_7b().num_parameters(), 7_000_559_616);
    }

    #[test]
    fn presets_are_valid_and_sized_as_documented() {
        for name in PRESETS {
            ModelConfig::preset(name).unwrap().validate().unwrap();
        }
        let small = ModelConfig::small().num_parameters();
        assert!((90_000_000..120_000_000).contains(&small), "small has {small}");
        let tiny = ModelConfig::tiny().num_parameters();
        assert!(tiny < 20_000_000, "tiny has {tiny}");
        assert!(ModelConfig::preset("huge").is_err());
    }

    #[test]
    fn flops_per_token_follows_the_torchtitan_formula() {
        let c = ModelConfig::baichuan_7b();
        // 6 * (7,000,559,616 - 262,144,000) + 12 * 32 * 4096 * 4096
        let expected = 6.0 * 6_738_415_616.0 + 12.0 * 32.0 * 4096.0 * 4096.0;
        assert_eq!(c.flops_per_token(4096), expected);
    }

    #[test]
    fn hf_config_round_trips_and_rejects_what_we_cannot_represent() {
        let c = ModelConfig::small();
        for layout in [Layout::Baichuan, Layout::Llama] {
            let json = c.to_hf_json(layout, "float32");
            let hf: HfConfig = serde_json::from_value(json).unwrap();
            assert_eq!(hf.to_model_config().unwrap(), c);
        }
        let mut json = c.to_hf_json(Layout::Llama, "float32");
        json["num_key_value_heads"] = 2.into();
        let hf: HfConfig = serde_json::from_value(json).unwrap();
        assert!(hf.to_model_config().unwrap_err().to_string().contains("grouped-query"));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut c = ModelConfig::tiny();
        c.num_attention_heads = 5;
        assert!(c.validate().unwrap_err().to_string().contains("num_attention_heads"));
    }
}
