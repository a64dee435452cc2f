//! Sweeps for scaling experiments: a plan of runs from a base config and compute budgets
//! (IsoFLOP profiles, as Hoffmann et al. 2022's Approach 2 and Marin's sweeps) or an explicit
//! N x D grid, with the model family, learning rate, batch size and warm-up set by stated
//! rules; the plan file (`plan.toml`) and one run config per run.
//!
//! Rules (each run's config can be edited before `sweep run`):
//! - **Model family.** Non-embedding parameters N = layers x (4 d^2 + 3 d f) + d (decoder
//!   blocks and final norm; the embedding table and output head are vocabulary matrices, left
//!   out as Kaplan et al. 2020 do). Depth grows with N at a fixed aspect ratio d / layers
//!   (`--aspect`, default 64): layers = round((N / (12 aspect^2))^(1/3)), at least 1; then the
//!   width d = sqrt(N / (12 layers)) rounded to a multiple of the head dimension (`--head-dim`),
//!   f = 8d/3 rounded to a multiple of 8 (SwiGLU's usual ratio).
//! - **Tokens.** D = C / flops_per_token (the project's FLOP count, `ModelConfig::flops_per_token`:
//!   6 x the non-embedding and head parameters plus the attention term), not C / (6N): at the
//!   sizes a CPU runs, the 64000-word head is most of the compute.
//! - **Learning rate and batch.** DeepSeek-AI (2024, "DeepSeek LLM", section 3.1) fitted the
//!   optimal peak rate and batch in tokens against compute: lr = 0.3118 C^-0.125, batch =
//!   0.2920 C^0.3271 tokens, taken to the nearest power-of-two count of sequences (at least 4).
//! - **Schedule.** "wsd", the last 20% decaying linearly to lr / 10; warm-up 5% of the steps.
//!   Checkpoints every 20% of the steps, so decay branches from 40% and 60% (each decaying over
//!   a quarter of its start, the same 20% share) give two more token counts per run.

use serde::{Deserialize, Serialize};

use baichuan_model::ModelConfig;

/// The shape of a model of about `target` non-embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub layers: i64,
    pub hidden: i64,
    pub ffn: i64,
    pub heads: i64,
}

impl Shape {
    /// The family's shape nearest `target`.
    pub fn for_params(target: f64, aspect: f64, head_dim: i64) -> Shape {
        let layers = ((target / (12.0 * aspect * aspect)).cbrt().round() as i64).max(1);
        let d = (target / (12.0 * layers as f64)).sqrt();
        let hidden = ((d / head_dim as f64).round() as i64).max(1) * head_dim;
        let ffn = (((8.0 * hidden as f64 / 3.0) / 8.0).round() as i64).max(1) * 8;
        Shape {
            layers,
            hidden,
            ffn,
            heads: hidden / head_dim,
        }
    }

    /// Non-embedding parameters of this shape on `base` (its vocabulary and norms).
    pub fn params(&self, base: &ModelConfig) -> u64 {
        let c = self.apply(base);
        c.num_parameters() - 2 * c.embedding_parameters()
    }

    pub fn apply(&self, base: &ModelConfig) -> ModelConfig {
        ModelConfig {
            hidden_size: self.hidden,
            intermediate_size: self.ffn,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            ..base.clone()
        }
    }
}

/// DeepSeek LLM's optimal peak learning rate at compute `c` FLOPs.
pub fn lr_rule(c: f64) -> f64 {
    0.3118 * c.powf(-0.125)
}

/// DeepSeek LLM's optimal batch at compute `c`, in sequences of `seq`: the power of two
/// nearest (in log) to 0.2920 C^0.3271 / seq tokens, at least 4.
pub fn batch_rule(c: f64, seq: i64) -> i64 {
    let seqs = 0.2920 * c.powf(0.3271) / seq as f64;
    let p = seqs.max(1.0).log2().round() as u32;
    (1i64 << p).max(4)
}

/// One run of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRun {
    pub name: String,
    /// The compute budget the run belongs to (FLOPs), or the grid's N x D cost.
    pub budget: f64,
    pub params: u64,
    #[serde(flatten)]
    pub shape: Shape,
    pub tokens: u64,
    pub steps: u64,
    pub batch: i64,
    pub lr: f64,
    pub warmup: u64,
    /// FLOPs of the run by the project's formula (tokens x flops_per_token).
    pub flops: f64,
    /// The run's config, relative to the plan file's directory.
    pub config: String,
    pub run_dir: String,
    /// Decay branches: the steps they start from.
    pub branches: Vec<u64>,
}

impl PlannedRun {
    /// A decay branch's run directory and length.
    pub fn branch(&self, from: u64) -> (String, u64) {
        (
            format!("{}-decay-{from}", self.run_dir),
            (from as f64 * 0.25).round().max(1.0) as u64,
        )
    }
}

/// `plan.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub base: String,
    pub formula: String,
    pub seq_len: i64,
    pub runs: Vec<PlannedRun>,
}

/// How a run is chosen: a budget and a target size, or a size and a token count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Budget C and target non-embedding parameters N (D follows from C).
    IsoFlop { budget: f64, params: f64 },
    /// N and D (the budget follows).
    Grid { params: f64, tokens: f64 },
}

/// Plans one run of `target` on `base` (sequence `seq`), with the rules' batch and rate unless
/// given; `None` when the budget buys fewer than 10 steps of the batch.
pub fn plan_run(
    target: Target,
    base: &ModelConfig,
    seq: i64,
    aspect: f64,
    head_dim: i64,
    batch: Option<i64>,
    lr: Option<f64>,
) -> Option<PlannedRun> {
    let want = match target {
        Target::IsoFlop { params, .. } | Target::Grid { params, .. } => params,
    };
    let shape = Shape::for_params(want, aspect, head_dim);
    let model = shape.apply(base);
    let per_token = model.flops_per_token(seq);
    let (budget, tokens) = match target {
        Target::IsoFlop { budget, .. } => (budget, budget / per_token),
        Target::Grid { tokens, .. } => (tokens * per_token, tokens),
    };
    let batch = batch.unwrap_or_else(|| batch_rule(budget, seq));
    let steps = (tokens / (batch * seq) as f64).round() as u64;
    if steps < 10 {
        return None;
    }
    let params = shape.params(base);
    let name = format!("c{budget:.1e}-n{params:.2e}").replace('+', "");
    let every = (steps as f64 * 0.2).round().max(1.0) as u64;
    Some(PlannedRun {
        name: name.clone(),
        budget,
        params,
        shape,
        tokens: steps * (batch * seq) as u64,
        steps,
        batch,
        lr: lr.unwrap_or_else(|| lr_rule(budget)),
        warmup: ((steps as f64 * 0.05).round() as u64).max(1),
        flops: per_token * (steps * (batch * seq) as u64) as f64,
        config: format!("configs/{name}.toml"),
        run_dir: format!("runs/{name}"),
        branches: [2, 3].iter().map(|k| k * every).filter(|&s| s < steps).collect(),
    })
}

/// The `--set` overrides that turn the base config (micro-batch `micro`) into `run`'s; the
/// micro-batch becomes the greatest common divisor of `micro` and the run's batch.
pub fn overrides(run: &PlannedRun, run_dir: &str, micro: i64) -> Vec<String> {
    let s = &run.shape;
    let gcd = |mut a: i64, mut b: i64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let every = (run.steps as f64 * 0.2).round().max(1.0) as u64;
    vec![
        format!("job.run_dir={run_dir:?}"),
        format!("job.name={:?}", run.name),
        format!("model.hidden_size={}", s.hidden),
        format!("model.intermediate_size={}", s.ffn),
        format!("model.num_hidden_layers={}", s.layers),
        format!("model.num_attention_heads={}", s.heads),
        format!("train.steps={}", run.steps),
        format!("train.global_batch_size={}", run.batch),
        format!("train.micro_batch_size={}", gcd(run.batch, micro.max(1))),
        format!("train.lr={:e}", run.lr),
        format!("train.min_lr={:e}", run.lr / 10.0),
        format!("train.warmup_steps={}", run.warmup),
        "train.schedule=\"wsd\"".into(),
        "train.decay_fraction=0.2".into(),
        format!("checkpoint.interval_steps={every}"),
        // the branch points are kept; of the rest, only the newest (for a resume)
        format!("checkpoint.keep_steps={:?}", run.branches),
        "checkpoint.keep_last=1".into(),
    ]
}

/// Target sizes of an IsoFLOP profile at `budget`: `sizes` sizes spaced by `step` around the
/// size whose tokens are 20 per parameter by 6ND (Hoffmann et al.'s rule of thumb, C = 120
/// N^2), which the profile's parabola then corrects.
pub fn profile_sizes(budget: f64, sizes: usize, step: f64) -> Vec<f64> {
    let center = (budget / 120.0).sqrt();
    let half = (sizes as f64 - 1.0) / 2.0;
    (0..sizes).map(|i| center * step.powf(i as f64 - half)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_family_rule_hits_the_target_size_at_its_aspect() {
        let base = ModelConfig::tiny();
        // head dimension 8, so that the width's rounding stays small (a fifth of the width at
        // most) even at 2e4 parameters, where the width is about 40
        for target in [2e4, 1e5, 1e6, 1e7, 1e8, 1e9] {
            let s = Shape::for_params(target, 64.0, 8);
            assert_eq!(s.hidden % 8, 0);
            assert_eq!(s.ffn % 8, 0);
            assert_eq!(s.heads * 8, s.hidden);
            let got = s.params(&base) as f64;
            assert!((got / target - 1.0).abs() < 0.25, "{target:e}: {s:?} has {got:e}");
        }
        // by hand: N = 1e9 at aspect 64: layers = round((1e9 / 49152)^(1/3)) = round(27.3) = 27;
        // d = sqrt(1e9 / 324) = 1756.8 -> 1760 (head dim 16); f = 8 * round(4693.3 / 8) = 4696
        assert_eq!(
            Shape::for_params(1e9, 64.0, 16),
            Shape {
                layers: 27,
                hidden: 1760,
                ffn: 4696,
                heads: 110
            }
        );
    }

    #[test]
    fn the_rate_and_batch_rules_are_deepseek_s() {
        // 0.3118 * (1e20)^-0.125 = 0.3118 / 10^2.5 = 0.000985998
        assert!((lr_rule(1e20) - 0.000_985_998).abs() < 1e-9);
        // 0.2920 * (1e20)^0.3271 = 0.2920 * 10^6.542 = 1.0171e6 tokens = 248.3 sequences of 4096
        // -> 256; at 1e12: 0.2920 * 10^3.9252 = 2458 tokens = 38.4 of 64 -> 32
        assert_eq!(batch_rule(1e20, 4096), 256);
        assert_eq!(batch_rule(1e12, 64), 32);
        assert_eq!(batch_rule(1e6, 64), 4, "at least 4");
    }

    #[test]
    fn an_isoflop_run_spends_its_budget() {
        let base = ModelConfig::tiny();
        let run = plan_run(
            Target::IsoFlop {
                budget: 3e13,
                params: 1e5,
            },
            &base,
            64,
            64.0,
            16,
            None,
            None,
        )
        .unwrap();
        let per_token = run.shape.apply(&base).flops_per_token(64);
        // whole steps: within one step's tokens of the budget
        assert!(
            (run.flops - 3e13).abs() <= per_token * (run.batch * 64) as f64,
            "{run:?}"
        );
        assert_eq!(run.tokens, run.steps * (run.batch * 64) as u64);
        assert_eq!(
            run.branches,
            vec![
                2 * (run.steps as f64 * 0.2).round() as u64,
                3 * (run.steps as f64 * 0.2).round() as u64
            ]
        );
        assert!(plan_run(
            Target::IsoFlop {
                budget: 1e9,
                params: 1e5
            },
            &base,
            64,
            64.0,
            16,
            None,
            None
        )
        .is_none());
        // the profile's centre: C = 120 N^2 -> N = sqrt(1.2e13 / 120) = sqrt(1e11) = 316227.766
        let sizes = profile_sizes(1.2e13, 3, 2.0);
        assert!((sizes[1] - 316_227.766).abs() < 1e-3, "{sizes:?}");
        assert!((sizes[2] / sizes[1] - 2.0).abs() < 1e-12 && (sizes[1] / sizes[0] - 2.0).abs() < 1e-12);
    }
}
