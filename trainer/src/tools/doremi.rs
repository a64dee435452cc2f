//! Learned domain weights: DoReMi (Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds
//! Up Language Model Pretraining", Algorithm 1).
//!
//! A reference model is trained on a base mixture (an ordinary `baichuan train` of the
//! `[[data.sources]]` config). A proxy model of the same configuration is then trained from
//! scratch with group distributionally robust optimisation over the domains: each step draws
//! a batch with the domains uniformly weighted, computes every domain's excess loss
//! `lambda_i` (the proxy's per-token loss minus the reference's, clipped at 0, averaged over
//! the domain's tokens in the batch), moves the domain weights by an exponentiated-gradient
//! step `alpha_i <- alpha_i exp(eta lambda_i)`, normalises, mixes in `c` of the uniform
//! weights, and updates the proxy on the domain losses weighted by the new `alpha`. The
//! result is the average of `alpha` over the steps, written as a `[[data.sources]]` block.
//!
//! The proxy runs in one process (CPU or one GPU) with libtorch autograd, fp32, and its own
//! AdamW; its global batch is one forward. Proxy models are small (the paper's are 280M). With
//! `data.document_masking` both models see each document alone; every target is scored.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baichuan_model::{hf, Baichuan};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::config::RunConfig;
use crate::dataset;
use crate::schedule::lr_at;

/// The domain weights of Algorithm 1 and their running average.
#[derive(Debug, Clone)]
pub struct DomainWeights {
    /// Step size of the exponentiated-gradient update (the paper's 1).
    pub eta: f64,
    /// Share of the uniform weights mixed in after each update (the paper's 1e-3).
    pub smoothing: f64,
    alpha: Vec<f64>,
    sum: Vec<f64>,
    steps: u64,
}

impl DomainWeights {
    /// Uniform weights over `k` domains.
    pub fn new(k: usize, eta: f64, smoothing: f64) -> Self {
        DomainWeights {
            eta,
            smoothing,
            alpha: vec![1.0 / k as f64; k],
            sum: vec![0.0; k],
            steps: 0,
        }
    }

    pub fn current(&self) -> &[f64] {
        &self.alpha
    }

    /// One step from the domains' excess losses: `alpha' = alpha exp(eta lambda)` (in log
    /// space, so large steps cannot overflow), normalised, then `(1 - c) alpha' + c / k`.
    /// Returns the new weights, which also join the average.
    pub fn update(&mut self, excess: &[f64]) -> &[f64] {
        let k = self.alpha.len();
        let logits: Vec<f64> = self
            .alpha
            .iter()
            .zip(excess)
            .map(|(a, l)| a.ln() + self.eta * l)
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        for ((a, sum), e) in self.alpha.iter_mut().zip(&mut self.sum).zip(&exp) {
            *a = (1.0 - self.smoothing) * e / total + self.smoothing / k as f64;
            *sum += *a;
        }
        self.steps += 1;
        &self.alpha
    }

    /// The average of the weights over the updates so far (uniform before any).
    pub fn average(&self) -> Vec<f64> {
        if self.steps == 0 {
            return self.alpha.clone();
        }
        self.sum.iter().map(|s| s / self.steps as f64).collect()
    }
}

/// Per domain: the mean over its tokens of `max(proxy - reference, 0)`, and its token count.
/// `proxy` and `reference` hold each row's per-token losses, `rows[r]` the domain of row r.
pub fn excess_losses(proxy: &[Vec<f64>], reference: &[Vec<f64>], rows: &[u16], k: usize) -> (Vec<f64>, Vec<u64>) {
    let mut sum = vec![0.0; k];
    let mut count = vec![0u64; k];
    for ((p, r), &d) in proxy.iter().zip(reference).zip(rows) {
        for (a, b) in p.iter().zip(r) {
            sum[d as usize] += (a - b).max(0.0);
        }
        count[d as usize] += p.len() as u64;
    }
    let mean = sum
        .iter()
        .zip(&count)
        .map(|(s, &n)| if n == 0 { 0.0 } else { s / n as f64 })
        .collect();
    (mean, count)
}

/// What `baichuan mixture doremi` is asked to do.
#[derive(Debug, Clone)]
pub struct DoremiOptions {
    pub reference: PathBuf,
    pub steps: u64,
    pub eta: f64,
    pub smoothing: f64,
    pub out_dir: PathBuf,
}

/// One step's line of `<out_dir>/doremi.jsonl`.
#[derive(Debug, Serialize)]
struct StepLine<'a> {
    step: u64,
    loss: f64,
    excess: &'a [f64],
    weights: &'a [f64],
}

/// What the run found.
#[derive(Debug, Clone)]
pub struct DoremiResult {
    pub names: Vec<String>,
    pub average: Vec<f64>,
    pub last: Vec<f64>,
    pub weights_file: PathBuf,
}

/// Trains the proxy against the reference model and writes the averaged weights.
pub fn run(config: &RunConfig, opts: &DoremiOptions) -> Result<DoremiResult> {
    if config.data.sources.len() < 2 {
        bail!("DoReMi learns the weights of [[data.sources]]; the config names fewer than two; HINT: see README's \"Data mixtures\"");
    }
    if !(opts.eta > 0.0 && (0.0..1.0).contains(&opts.smoothing) && opts.steps > 0) {
        bail!("--eta must be > 0, --smoothing in [0, 1) and --steps >= 1");
    }
    let resolved = config.validate(1)?;
    let device = resolved.device;
    let reference_dir = &opts.reference;
    let mut reference = hf::load_pretrained(reference_dir, Device::Cpu).with_context(|| {
        format!(
            "loading the reference model {}; HINT: train it first with `baichuan train` on the base mixture",
            reference_dir.display()
        )
    })?;
    let rc = &reference.config;
    let mc = &resolved.model;
    if (rc.vocab_size, rc.hidden_size, rc.num_hidden_layers) != (mc.vocab_size, mc.hidden_size, mc.num_hidden_layers) {
        bail!(
            "the reference model {} (vocabulary {}, width {}, {} layers) is not the config's model (vocabulary {}, width \
             {}, {} layers); HINT: DoReMi's proxy has the reference's configuration: pass the model trained from this config",
            reference_dir.display(),
            rc.vocab_size,
            rc.hidden_size,
            rc.num_hidden_layers,
            mc.vocab_size,
            mc.hidden_size,
            mc.num_hidden_layers
        );
    }
    reference.to(device, Kind::Float);
    // the proxy's batches weight the domains uniformly (Algorithm 1)
    let mut uniform = config.clone();
    for s in &mut uniform.data.sources {
        s.weight = 1.0;
    }
    uniform.data.phases.clear();
    uniform.train.steps = opts.steps;
    uniform.eval.interval = 0;
    let tok = crate::trainer::tokenizer_path(config);
    let mut data = dataset::open(&uniform, &tok, mc.vocab_size, 0, 1, true)?;
    tch::manual_seed(config.job.seed as i64);
    let mut proxy = Baichuan::new(mc, Device::Cpu)?;
    proxy.to(device, Kind::Float);
    let params: Vec<Tensor> = proxy
        .parameters()
        .into_iter()
        .map(|p| p.set_requires_grad(true))
        .collect();
    let mut adam = AdamW::new(&params, config.train.betas, config.train.eps, config.train.weight_decay);
    let names: Vec<String> = config.data.sources.iter().map(|s| s.name.clone()).collect();
    let k = names.len();
    let mut weights = DomainWeights::new(k, opts.eta, opts.smoothing);
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let log_path = opts.out_dir.join("doremi.jsonl");
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?,
    );
    let t = &config.train;
    println!(
        "doremi: proxy of {} parameters, {} steps of {} sequences, eta {}, smoothing {}, reference {}",
        proxy.parameters().iter().map(|p| p.numel()).sum::<usize>(),
        opts.steps,
        t.global_batch_size,
        opts.eta,
        opts.smoothing,
        reference_dir.display()
    );
    for step in 0..opts.steps {
        let batch = data.train.next_batch();
        let ids: Vec<i64> = batch.tokens.iter().map(|&x| i64::from(x)).collect();
        let all = Tensor::from_slice(&ids)
            .view([batch.samples as i64, batch.seq_len as i64 + 1])
            .to_device(device);
        let len = batch.seq_len as i64;
        let (inputs, targets) = (all.narrow(1, 0, len), all.narrow(1, 1, len));
        let docs = match config.data.document_masking {
            true => Some(proxy.documents(&inputs, mc.eos_token_id)?),
            false => None,
        };
        let token_losses = |m: &Baichuan| -> Tensor {
            let logp = m.forward_documents(&inputs, docs.as_ref()).log_softmax(-1, Kind::Float);
            logp.gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1).neg()
            // (B, T)
        };
        let ref_losses = tch::no_grad(|| token_losses(&reference));
        let losses = token_losses(&proxy);
        let rows = |t: &Tensor| -> Result<Vec<Vec<f64>>> {
            Ok(Vec::<Vec<f64>>::try_from(
                t.detach().to_device(Device::Cpu).to_kind(Kind::Double),
            )?)
        };
        let (excess, count) = excess_losses(&rows(&losses)?, &rows(&ref_losses)?, &batch.sources, k);
        let alpha = weights.update(&excess).to_vec();
        // the objective: sum over domains of alpha_i times the domain's mean token loss
        let row_weight: Vec<f64> = batch
            .sources
            .iter()
            .map(|&d| alpha[d as usize] / count[d as usize].max(1) as f64)
            .collect();
        let row_weight = Tensor::from_slice(&row_weight).to_kind(Kind::Float).to_device(device);
        let loss = (losses.sum_dim_intlist(1, false, Kind::Float) * row_weight).sum(Kind::Float);
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        let lr = lr_at(step, opts.steps, t.warmup_steps.min(opts.steps / 2), t.lr, t.min_lr);
        adam.step(&params, lr, t.grad_clip);
        let loss = loss.double_value(&[]);
        if !loss.is_finite() {
            bail!("the proxy's loss is {loss} at step {}; HINT: lower train.lr", step + 1);
        }
        serde_json::to_writer(
            &mut log,
            &StepLine {
                step: step + 1,
                loss,
                excess: &excess,
                weights: &alpha,
            },
        )?;
        log.write_all(b"\n")?;
        if (step + 1) % t.log_interval == 0 || step + 1 == opts.steps {
            let shown: Vec<String> = names.iter().zip(&alpha).map(|(n, a)| format!("{n} {a:.3}")).collect();
            println!(
                "doremi step {:>5} | loss {loss:.4} | weights {}",
                step + 1,
                shown.join(", ")
            );
        }
    }
    log.flush()?;
    let average = weights.average();
    let weights_file = opts.out_dir.join("weights.toml");
    let header = format!(
        "DoReMi domain weights (Xie et al. 2023): the average over {} proxy steps (eta {}, smoothing {}) against the \
         reference {}",
        opts.steps,
        opts.eta,
        opts.smoothing,
        reference_dir.display()
    );
    std::fs::write(&weights_file, sources_block(config, &average, &header))
        .with_context(|| format!("writing {}", weights_file.display()))?;
    Ok(DoremiResult {
        names,
        average,
        last: weights.current().to_vec(),
        weights_file,
    })
}

/// The config's `[[data.sources]]` tables with `weights` in place of theirs, as TOML, under
/// a comment `header`.
pub fn sources_block(config: &RunConfig, weights: &[f64], header: &str) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        sources: &'a [crate::config::SourceConfig],
    }
    #[derive(Serialize)]
    struct Doc<'a> {
        data: Data<'a>,
    }
    let mut sources = config.data.sources.clone();
    for (s, &w) in sources.iter_mut().zip(weights) {
        s.weight = (w * 1e6).round() / 1e6;
    }
    let body = toml::to_string_pretty(&Doc {
        data: Data { sources: &sources },
    })
    .expect("sources serialise");
    format!("# {header}\n{body}")
}

/// AdamW (Loshchilov and Hutter 2019) over a few tensors with libtorch ops, for the proxy:
/// decoupled weight decay on matrices only, the gradient clipped to `clip` in global norm.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    betas: [f64; 2],
    eps: f64,
    weight_decay: f64,
    t: i32,
}

impl AdamW {
    fn new(params: &[Tensor], betas: [f64; 2], eps: f64, weight_decay: f64) -> Self {
        AdamW {
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            betas,
            eps,
            weight_decay,
            t: 0,
        }
    }

    fn step(&mut self, params: &[Tensor], lr: f64, clip: f64) {
        tch::no_grad(|| {
            self.t += 1;
            let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
            let norm = grads
                .iter()
                .filter(|g| g.defined())
                .map(|g| g.square().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            let scale = if clip > 0.0 && norm > clip {
                clip / (norm + 1e-6)
            } else {
                1.0
            };
            let [b1, b2] = self.betas;
            let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
            for (i, p) in params.iter().enumerate() {
                if !grads[i].defined() {
                    continue;
                }
                let g = &grads[i] * scale;
                let _ = self.m[i].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = self.v[i].g_mul_scalar_(b2).addcmul_(&g, &(&g * (1.0 - b2)));
                if p.dim() >= 2 && self.weight_decay > 0.0 {
                    let mut p = p.shallow_clone();
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let denom = (&self.v[i] / c2).sqrt() + self.eps;
                let mut p = p.shallow_clone();
                let _ = p.addcdiv_(&(&self.m[i] * (-lr / c1)), &denom);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_update_matches_the_hand_computed_step() {
        // alpha = (1/2, 1/2), lambda = (1, 0), eta = 1, c = 1e-3:
        // alpha' = (e/2, 1/2) / (e/2 + 1/2) = (e / (1 + e), 1 / (1 + e)) = (0.7310585786, 0.2689414214);
        // smoothed: 0.999 * alpha' + 0.0005 = (0.7308275200, 0.2691724800)
        let mut w = DomainWeights::new(2, 1.0, 1e-3);
        let a = w.update(&[1.0, 0.0]).to_vec();
        assert!((a[0] - 0.730_827_520_0).abs() < 1e-9, "{a:?}");
        assert!((a[1] - 0.269_172_480_0).abs() < 1e-9, "{a:?}");
        // a second step from there with lambda = (0, 2), eta 0.5: the second weight grows by e:
        // 0.2691724800 * e = 0.7316866611; alpha' = 0.7308275200 / 1.4625141811 = 0.4997062794;
        // smoothed: 0.999 * 0.4997062794 + 0.0005 = 0.4997065731
        w.eta = 0.5;
        let b = w.update(&[0.0, 2.0]).to_vec();
        assert!((b[0] - 0.499_706_573_1).abs() < 1e-9, "{b:?}");
        assert!((b[0] + b[1] - 1.0).abs() < 1e-12);
        // the average of the two steps
        let avg = w.average();
        assert!((avg[0] - (a[0] + b[0]) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn smoothing_keeps_every_weight_above_c_over_k() {
        let mut w = DomainWeights::new(4, 1.0, 1e-3);
        for _ in 0..200 {
            w.update(&[50.0, 0.0, 0.0, 0.0]);
        }
        let a = w.current();
        assert!(a[1] >= 1e-3 / 4.0 - 1e-15 && a[0] < 1.0, "{a:?}");
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn excess_losses_are_clipped_means_per_domain() {
        let proxy = vec![vec![3.0, 1.0], vec![2.0, 2.0], vec![5.0, 5.0]];
        let reference = vec![vec![1.0, 2.0], vec![1.0, 1.0], vec![1.0, 1.0]];
        // domain 0: rows 0 and 1: (2 + 0 + 1 + 1) / 4 = 1; domain 2: (4 + 4) / 2 = 4; domain 1: none
        let (mean, count) = excess_losses(&proxy, &reference, &[0, 0, 2], 3);
        assert_eq!(mean, vec![1.0, 0.0, 4.0]);
        assert_eq!(count, vec![4, 0, 2]);
    }
}
