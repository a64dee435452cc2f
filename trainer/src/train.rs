//! The training loop of `baichuan train` (single process): set-up, then one readable loop of
//! micro-batches, forward/backward, clip, update, schedule; diagnostics after it.
//!
//! Follows nanoGPT's `train.py` shape and DESIGN.md's step: the gradient of the mean loss
//! over the global batch accumulates over micro-batches, then global-norm clipping and
//! AdamW on the flat fp32 master. The run directory receives `config.toml`,
//! `metrics.jsonl` and, at the end, the trained model as a Hugging Face directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use baichuan_model::{hf, Baichuan, Layout};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Kind, Tensor};

use crate::config::{Precision, RunConfig};
use crate::metrics::{self, MetricsLog, StepRecord};
use crate::optim::{lr_at, AdamWParams, FlatAdamW};
use crate::{dataset, step};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub losses: Vec<f64>,
    pub model_dir: PathBuf,
    pub tokens: u64,
}

/// The tokenizer a run uses: `data.tokenizer`, else the one inside `model.init_from`.
fn tokenizer_path(config: &RunConfig) -> PathBuf {
    if let Some(dir) = &config.model.init_from {
        let inside = dir.join(hf::TOKENIZER_FILE);
        if inside.exists()
            && config.data.tokenizer == crate::config::DataConfig::default().tokenizer
        {
            return inside;
        }
    }
    config.data.tokenizer.clone()
}

pub fn param_kind(p: Precision) -> Kind {
    match p {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
    }
}

/// Trains as `config` says and saves the model into `<run_dir>/model`.
pub fn train(config: &RunConfig) -> Result<TrainSummary> {
    let resolved = config.validate(1)?;
    let (t, d) = (&config.train, &config.data);
    let mc = &resolved.model;
    let run_dir = &config.job.run_dir;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run_dir {}", run_dir.display()))?;
    std::fs::write(run_dir.join("config.toml"), config.to_toml())?;

    // ---- data ----
    let tok_path = tokenizer_path(config);
    let mut data = dataset::open(config, &tok_path, mc.vocab_size, 0, 1)?;

    // ---- model and optimizer ----
    tch::manual_seed(config.job.seed as i64);
    let mut model = match &config.model.init_from {
        Some(dir) => hf::load_pretrained(dir, tch::Device::Cpu)?,
        None => Baichuan::new(mc, tch::Device::Cpu)?,
    };
    let kind = param_kind(t.precision);
    model.to(resolved.device, kind);
    let params = model.named_parameters();
    let mut opt = FlatAdamW::new(&params);
    let flops_per_token = mc.flops_per_token(d.seq_len);
    let (peak, peak_src) = metrics::peak_flops(resolved.device, kind);
    println!(
        "model: {} parameters ({} layers, hidden {}, heads {}, ffn {}, vocab {}), {:?} on {:?}",
        mc.num_parameters(),
        mc.num_hidden_layers,
        mc.hidden_size,
        mc.num_attention_heads,
        mc.intermediate_size,
        mc.vocab_size,
        t.precision,
        resolved.device
    );
    println!(
        "train: {} steps x {} sequences ({} micro x {} accumulation) x {} tokens; {:.3e} FLOPs/token; peak {:.3e} FLOP/s ({peak_src})",
        t.steps,
        t.global_batch_size,
        t.micro_batch_size,
        resolved.grad_accum,
        d.seq_len,
        flops_per_token,
        peak
    );

    println!(
        "attention: libtorch scaled_dot_product_attention, {} kernel",
        baichuan_model::baichuan::attention_backend(
            mc,
            t.micro_batch_size,
            d.seq_len,
            kind,
            resolved.device
        )
    );

    let mut log = MetricsLog::create(run_dir)?;
    let bar = ProgressBar::new(t.steps).with_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let tokens_per_step = (t.global_batch_size * d.seq_len) as u64;
    let mut losses = Vec::with_capacity(t.steps as usize);
    let row = d.seq_len + 1;

    // ---- the loop ----
    for s in 0..t.steps {
        let t0 = Instant::now();
        let lr = lr_at(s, t.steps, t.warmup_steps, t.lr, t.min_lr);
        let batch = data.train.next_batch();
        let ids: Vec<i64> = batch.tokens.iter().map(|&t| i64::from(t)).collect();
        let all = Tensor::from_slice(&ids).view([batch.samples as i64, row]); // (G, T+1)
        let mut loss = 0.0;
        for micro in 0..resolved.grad_accum {
            let x = all
                .narrow(0, micro * t.micro_batch_size, t.micro_batch_size)
                .to_device(resolved.device);
            loss += step::forward_backward(
                &model,
                &x,
                1.0 / resolved.grad_accum as f64,
                t.loss_chunk_tokens,
            ) / resolved.grad_accum as f64;
        }
        opt.gather_grads(&params);
        let grad_norm = opt.grad_norm();
        opt.clip(grad_norm, t.grad_clip);
        opt.update(AdamWParams {
            lr,
            beta1: t.betas[0],
            beta2: t.betas[1],
            eps: t.eps,
            weight_decay: t.weight_decay,
        });
        opt.write_back(&params);
        if !loss.is_finite() {
            bail!("step {s}: loss is {loss}; HINT: lower train.lr or check the data");
        }

        // ---- diagnostics ----
        let dt = t0.elapsed().as_secs_f64();
        let tps = tokens_per_step as f64 / dt;
        let last = s + 1 == t.steps;
        let valid_loss = if !data.valid.is_empty()
            && config.eval.interval > 0
            && ((s + 1) % config.eval.interval == 0 || last)
        {
            Some(validate(
                &model,
                &data.valid,
                t.micro_batch_size,
                resolved.device,
                t.loss_chunk_tokens,
            ))
        } else {
            None
        };
        let record = StepRecord {
            step: s + 1,
            tokens: (s + 1) * tokens_per_step,
            loss,
            lr,
            grad_norm,
            tokens_per_s: tps,
            mfu: flops_per_token * tps / peak,
            step_time_s: dt,
            peak_memory_mb: metrics::peak_memory_mb(resolved.device),
            valid_loss,
        };
        log.write(&record)?;
        losses.push(loss);
        bar.set_message(format!("loss {loss:.4}"));
        bar.inc(1);
        if (s + 1) % t.log_interval == 0 || s == 0 || last || valid_loss.is_some() {
            let valid = valid_loss.map_or(String::new(), |v| {
                format!(" | valid {v:.4} (ppl {:.1})", v.exp())
            });
            bar.suspend(|| {
                println!(
                    "step {:>6} | loss {:.4}{valid} | lr {:.3e} | grad norm {:.3} | {:.0} tok/s | MFU {:.1}% | {:.0} ms",
                    s + 1,
                    loss,
                    lr,
                    grad_norm,
                    tps,
                    100.0 * record.mfu,
                    1000.0 * dt
                )
            });
        }
    }
    bar.finish_and_clear();

    let model_dir = run_dir.join("model");
    save_model(&model, &opt, &model_dir, &tok_path)?;
    println!("saved the trained model to {}", model_dir.display());
    Ok(TrainSummary {
        losses,
        model_dir,
        tokens: t.steps * tokens_per_step,
    })
}

/// Writes the fp32 master weights as a Hugging Face directory with the tokenizer beside.
fn save_model(model: &Baichuan, opt: &FlatAdamW, dir: &Path, tokenizer: &Path) -> Result<()> {
    let master = Baichuan::new(&model.config, tch::Device::Cpu)?;
    tch::no_grad(|| {
        for (slot, (_, p)) in opt.slots.iter().zip(master.named_parameters()) {
            let src = opt
                .master
                .narrow(0, slot.offset, slot.numel)
                .view(slot.shape.as_slice());
            p.shallow_clone().copy_(&src.to_device(tch::Device::Cpu));
        }
    });
    hf::save_pretrained(&master, dir, Layout::Baichuan, Kind::Float, None)?;
    if tokenizer.exists() {
        hf::copy_tokenizer(tokenizer, dir)?;
    }
    Ok(())
}

/// Mean token loss over the fixed validation batches.
fn validate(
    model: &Baichuan,
    batches: &[baichuan_data::Batch],
    micro: i64,
    device: tch::Device,
    chunk: i64,
) -> f64 {
    let mut total = 0.0;
    let mut n = 0;
    for b in batches {
        let ids: Vec<i64> = b.tokens.iter().map(|&t| i64::from(t)).collect();
        let all = Tensor::from_slice(&ids).view([b.samples as i64, b.seq_len as i64 + 1]); // (G, T+1)
        let mut start = 0;
        while start < b.samples as i64 {
            let rows = micro.min(b.samples as i64 - start);
            total += step::eval_loss(model, &all.narrow(0, start, rows).to_device(device), chunk)
                * rows as f64;
            n += rows;
            start += rows;
        }
    }
    total / n as f64
}
