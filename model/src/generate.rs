//! Autoregressive decoding with a KV cache: greedy, temperature, top-k, top-p (nucleus) and
//! repetition penalty, stopping at EOS or after `max_new_tokens`, one callback per token so
//! the caller can stream.
//!
//! The logits pipeline follows Hugging Face `generate()`: repetition penalty (Keskar et al.
//! 2019: divide positive logits, multiply negative ones, for every token already in the
//! sequence, prompt included), then temperature, top-k, top-p, then sampling. Greedy
//! (`temperature == 0`) takes the arg-max after the penalty. Sampling draws from its own
//! seeded generator ([`TokenRng`]), not libtorch's global one, so the seed alone decides it.

use tch::{Kind, Tensor};

use crate::baichuan::{Baichuan, KvCache};
use crate::ModelError;

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: i64,
    /// Keep the smallest set whose probability reaches p; 1.0 disables.
    pub top_p: f64,
    /// > 1 discourages repeats (the reference's example uses 1.1); 1.0 disables.
    pub repetition_penalty: f64,
    pub max_new_tokens: usize,
    /// Stop after emitting the model's EOS id.
    pub stop_at_eos: bool,
    /// Seed of the sampler (libtorch's generator).
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            max_new_tokens: 64,
            stop_at_eos: true,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::Config(m.to_string()));
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return bad("temperature must be >= 0 (0 is greedy)");
        }
        if self.top_k < 0 {
            return bad("top_k must be >= 0 (0 disables it)");
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p must be in (0, 1]");
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty must be > 0 (1.0 disables it)");
        }
        Ok(())
    }
}

/// Applies the repetition penalty to `logits` (V,) fp32 for every id in `seen`.
fn penalise(logits: &Tensor, seen: &[i64], penalty: f64) -> Tensor {
    if penalty == 1.0 || seen.is_empty() {
        return logits.shallow_clone();
    }
    let idx = Tensor::from_slice(seen).to_device(logits.device());
    let picked = logits.index_select(0, &idx);
    let scaled = picked.where_self(&picked.lt(0.0), &(&picked / penalty)); // positive: divide
    let scaled = (&picked * penalty).where_self(&picked.lt(0.0), &scaled); // negative: multiply
    logits.index_copy(0, &idx, &scaled)
}

/// The logits (V,) fp32 that sampling draws from: the repetition penalty over `seen`, then (when
/// sampling, `temperature > 0`) temperature, top-k and top-p, filtered tokens at -inf, in
/// Hugging Face's order. Greedy decoding takes the arg-max of the penalised logits.
pub fn processed_logits(logits: &Tensor, seen: &[i64], s: &Sampling) -> Tensor {
    let logits = penalise(&logits.to_kind(Kind::Float), seen, s.repetition_penalty);
    if s.temperature == 0.0 {
        return logits;
    }
    let mut logits = logits / s.temperature;
    let vocab = logits.size()[0];
    if s.top_k > 0 && s.top_k < vocab {
        let (top, _) = logits.topk(s.top_k, 0, true, true);
        let kth = top.get(s.top_k - 1);
        logits = logits.masked_fill(&logits.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if s.top_p < 1.0 {
        let (sorted, order) = logits.sort(0, true);
        let cumulative = sorted.softmax(0, Kind::Float).cumsum(0, Kind::Float);
        // drop a token when the mass before it already reaches top_p (keeps at least one)
        let before = &cumulative - sorted.softmax(0, Kind::Float);
        let drop_sorted = before.ge(s.top_p);
        let drop = drop_sorted.zeros_like().scatter(0, &order, &drop_sorted);
        logits = logits.masked_fill(&drop, f64::NEG_INFINITY);
    }
    logits
}

/// The generator of sampled tokens: splitmix64 over its own state, so a seed alone decides
/// the draws (libtorch's global generator is shared with everything else in the process,
/// other threads included).
#[derive(Debug, Clone)]
pub struct TokenRng(u64);

impl TokenRng {
    pub fn new(seed: u64) -> Self {
        TokenRng(seed)
    }

    /// A uniform number in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next id from the logits (V,) of the last position: the argmax at temperature 0,
/// else a draw from the processed distribution (inverse CDF of one uniform from `rng`).
pub fn next_token(logits: &Tensor, seen: &[i64], s: &Sampling, rng: &mut TokenRng) -> i64 {
    let logits = processed_logits(logits, seen, s);
    if s.temperature == 0.0 {
        return logits.argmax(0, false).int64_value(&[]);
    }
    let probs = logits.softmax(0, Kind::Double).to_device(tch::Device::Cpu);
    let probs: Vec<f64> = Vec::try_from(&probs).expect("probabilities of a 1-D tensor");
    let u = rng.uniform() * probs.iter().sum::<f64>();
    let mut cum = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p;
            last = i;
            if u < cum {
                return i as i64;
            }
        }
    }
    last as i64 // rounding left u at the very top: the last id with probability
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_token` with each new id as
/// soon as it is chosen (return `false` to stop). Returns the new ids.
pub fn generate(
    model: &Baichuan,
    prompt: &[i64],
    sampling: &Sampling,
    mut on_token: impl FnMut(i64) -> bool,
) -> Result<Vec<i64>, ModelError> {
    sampling.validate()?;
    if prompt.is_empty() {
        return Err(ModelError::Config(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    let max_len = model.config.max_position_embeddings;
    let total = prompt.len() as i64 + sampling.max_new_tokens as i64;
    if prompt.len() as i64 >= max_len {
        return Err(ModelError::Config(format!(
            "the prompt has {} tokens, the model's context is {max_len}",
            prompt.len()
        )));
    }
    let mut rng = TokenRng::new(sampling.seed);
    let device = model.device();
    let mut cache = KvCache::new(&model.config, 1, total.min(max_len), model.kind(), device);
    let mut seen: Vec<i64> = prompt.to_vec();
    let mut new = Vec::new();
    tch::no_grad(|| {
        let ids = Tensor::from_slice(prompt).to_device(device).unsqueeze(0); // (1, T)
        let mut logits = model.forward_cached(&ids, &mut cache)?.get(0); // (V)
        while new.len() < sampling.max_new_tokens {
            let id = next_token(&logits, &seen, sampling, &mut rng);
            new.push(id);
            seen.push(id);
            if !on_token(id) || (sampling.stop_at_eos && id == model.config.eos_token_id) {
                break;
            }
            if new.len() == sampling.max_new_tokens || cache.len() >= cache.capacity() {
                break;
            }
            let step = Tensor::from_slice(&[id]).to_device(device).unsqueeze(0); // (1, 1)
            logits = model.forward_cached(&step, &mut cache)?.get(0);
        }
        Ok::<(), ModelError>(())
    })?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let logits = Tensor::from_slice(&[2.0f32, -2.0, 1.0, 0.5]);
        let out = penalise(&logits, &[0, 1], 2.0);
        let got: Vec<f32> = Vec::try_from(&out).unwrap();
        assert_eq!(got, vec![1.0, -4.0, 1.0, 0.5]);
    }

    #[test]
    fn greedy_takes_the_argmax_and_the_penalty_can_change_it() {
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.5]);
        let greedy = Sampling::default();
        assert_eq!(next_token(&logits, &[], &greedy, &mut TokenRng::new(0)), 1);
        let penalised = Sampling {
            repetition_penalty: 1.5,
            ..Sampling::default()
        };
        assert_eq!(next_token(&logits, &[1], &penalised, &mut TokenRng::new(0)), 2);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = Tensor::from_slice(&[0.1f32, 0.2, 5.0, 0.3, 4.9]);
        for _ in 0..20 {
            let k1 = Sampling {
                temperature: 1.0,
                top_k: 1,
                ..Sampling::default()
            };
            assert_eq!(next_token(&logits, &[], &k1, &mut TokenRng::new(0)), 2);
            let p = Sampling {
                temperature: 1.0,
                top_p: 0.01,
                ..Sampling::default()
            };
            assert_eq!(next_token(&logits, &[], &p, &mut TokenRng::new(0)), 2);
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let mut rng = TokenRng::new(4);
        // probabilities about 0.47, 0.47, 0.06: top_p 0.9 keeps the first two
        let logits = Tensor::from_slice(&[2.0f32, 2.0, 0.0]);
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            ..Sampling::default()
        };
        let mut counts = [0; 3];
        for _ in 0..200 {
            counts[next_token(&logits, &[], &s, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!(counts[0] > 50 && counts[1] > 50, "{counts:?}");
    }
}
