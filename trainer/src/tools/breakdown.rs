//! `baichuan bench --breakdown`: where a training step's time goes, op by op. Each piece of a
//! decoder block (norms, the four GEMM groups, rotary, attention, the SwiGLU product, the
//! residual adds), the whole block with the fused and with the reference element-wise ops,
//! and the head with its chunked loss are timed alone, forward and forward + backward, at the
//! run's micro-batch, sequence length, precision and device, on a one-block copy of the model.
//!
//! Backward goes through autograd's `grad` with explicit output gradients
//! (`baichuan_model::autograd`, as training runs it), which returns gradients instead of
//! accumulating them. Each timing is the mean of `reps` calls after two warm-up
//! calls, between device synchronisations; `host` is the time the CPU took to queue those calls,
//! so a host time close to the device time means the op is launch-bound, not GPU-bound. The
//! per-micro-batch sum leaves out, with activation checkpointing, the recomputed forwards. This
//! is how Megatron-LM and llm.c papers account a step: per-op times scaled by their count.

use std::time::Instant;

use anyhow::Result;
use baichuan_model::Baichuan;
use tch::{Device, Kind, Tensor};

use crate::config::RunConfig;
use crate::trainer::place_model;

/// One timed piece of the step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpRow {
    pub name: String,
    /// Calls per micro-batch.
    pub count: f64,
    /// Milliseconds per call: forward (recording the graph, as training does) and forward +
    /// backward.
    pub forward_ms: f64,
    pub train_ms: f64,
    /// Milliseconds the CPU took to queue one forward + backward.
    pub host_ms: f64,
    /// Matrix FLOPs of one forward + backward (0 for memory-bound ops).
    pub flops: f64,
}

/// The whole table and what it adds up to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Breakdown {
    pub device: String,
    pub precision: String,
    pub tokens: i64,
    pub attention: String,
    /// Which cross-entropy the head row ran (kernel or ATen ops, and the kernel's check).
    pub loss: String,
    /// Which SwiGLU product the block rows ran.
    pub swiglu: String,
    pub rows: Vec<OpRow>,
    /// Blocks (fused ops) x layers + head and loss + embedding, per micro-batch (ms).
    pub modelled_ms: f64,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Mean device and host milliseconds of `f` over `reps` calls after two warm-up calls.
fn time(device: Device, reps: usize, f: &mut dyn FnMut()) -> (f64, f64) {
    f();
    f();
    sync(device);
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    let host = start.elapsed().as_secs_f64();
    sync(device);
    let total = start.elapsed().as_secs_f64();
    (1e3 * total / reps as f64, 1e3 * host / reps as f64)
}

/// Gradients of `inputs` from `gs` at `ys`, not accumulated anywhere.
fn backward(ys: &[Tensor], gs: &[Tensor], inputs: &[&Tensor]) {
    let ys: Vec<&Tensor> = ys.iter().collect();
    let gs: Vec<&Tensor> = gs.iter().collect();
    baichuan_model::autograd::grad(&ys, &gs, inputs).unwrap_or_else(|e| panic!("breakdown backward: {e}"));
}

/// Times `op` (one output) on `inputs` (leaves that require grad); see [`measure_many`].
fn measure(name: &str, count: f64, flops: f64, reps: usize, inputs: &[&Tensor], op: &dyn Fn() -> Tensor) -> OpRow {
    measure_many(name, count, flops, reps, inputs, &|| vec![op()])
}

/// Times `op` on `inputs` (leaves that require grad): forward, forward + backward, and the
/// host's queueing time of forward + backward.
fn measure_many(
    name: &str,
    count: f64,
    flops: f64,
    reps: usize,
    inputs: &[&Tensor],
    op: &dyn Fn() -> Vec<Tensor>,
) -> OpRow {
    let device = inputs[0].device();
    let y0 = op();
    let gs: Vec<Tensor> = y0.iter().map(|y| y.randn_like()).collect();
    let (forward_ms, _) = time(device, reps, &mut || {
        let _ = op();
    });
    let (train_ms, host_ms) = time(device, reps, &mut || backward(&op(), &gs, inputs));
    OpRow {
        name: name.to_string(),
        count,
        forward_ms,
        train_ms,
        host_ms,
        flops,
    }
}

/// The row of an op run outside autograd, as training runs its splices: `forward` alone, and
/// `train` (forward and the hand-written backward), `count` times per micro-batch with `flops`
/// per call, timed on `device` over `reps` calls.
fn spliced(
    name: String,
    (count, flops): (f64, f64),
    (device, reps): (Device, usize),
    forward: &mut dyn FnMut(),
    train: &mut dyn FnMut(),
) -> OpRow {
    let (forward_ms, _) = time(device, reps, forward);
    let (train_ms, host_ms) = time(device, reps, train);
    OpRow {
        name,
        count,
        forward_ms,
        train_ms,
        host_ms,
        flops,
    }
}

/// The breakdown for `config`'s model shapes (one block is built; its time is multiplied by
/// the configured layer count).
pub fn breakdown(config: &RunConfig, reps: usize) -> Result<Breakdown> {
    let resolved = config.validate(1)?;
    let (t, device) = (&config.train, resolved.device);
    let mut mc = resolved.model.clone();
    let layers = mc.num_hidden_layers as f64;
    mc.num_hidden_layers = 1;
    let kind = t.precision.kind();
    tch::manual_seed(config.job.seed as i64);
    let mut model = Baichuan::new(&mc, Device::Cpu)?;
    // the kernels are installed as training installs them; the rows below switch the ops
    let kernels = place_model(&mut model, device, kind, true);
    let (rotary_kind, loss_kind, swiglu_kind) = (kernels.rotary, kernels.loss, kernels.swiglu);
    let (b, s) = (t.micro_batch_size, config.data.seq_len);
    let (d, f, v) = (mc.hidden_size, mc.intermediate_size, mc.vocab_size);
    let (nh, hd) = (mc.num_attention_heads, mc.head_dim());
    let m = (b * s) as f64; // rows of every GEMM
    let gemm = |k: i64, n: i64| 6.0 * m * k as f64 * n as f64; // forward 2mkn, backward 4mkn
    let leaf = |shape: &[i64]| Tensor::randn(shape, (kind, device)).set_requires_grad(true);
    let x = leaf(&[b, s, d]);
    // handles on the block's weights (the same tensors), so the model can switch its ops
    let weights: Vec<Tensor> = model.layers[0]
        .named_parameters()
        .into_iter()
        .map(|(_, p)| p.shallow_clone())
        .collect();
    let [norm_w, blk_w, o, _, gate, up, down] = &weights[..] else {
        unreachable!("a block has seven parameters")
    };
    let mut rows = Vec::new();

    for fused in [true, false] {
        model.set_fused_ops(fused);
        let norm = &model.layers[0].input_layernorm;
        let label = if fused { "fused" } else { "reference" };
        rows.push(measure(
            &format!("RMSNorm ({label})"),
            2.0 * layers + 1.0,
            0.0,
            reps,
            &[&x, norm_w],
            &|| norm.forward(&x),
        ));
    }
    rows.push(measure(
        "W_pack GEMM (QKV)",
        layers,
        gemm(d, 3 * d),
        reps,
        &[&x, blk_w],
        &|| x.linear(blk_w, None::<Tensor>),
    ));
    let qkv = leaf(&[b, s, 3, nh, hd]);
    // the training block's rotation: outside autograd, forward and the transposed rotation
    model.set_fused_ops(true);
    // gradients laid out as attention's backward returns them: (B, nh, T, hd) seen as (B, T, nh, hd)
    let grads: Vec<Tensor> = (0..3)
        .map(|_| Tensor::randn([b, nh, s, hd], (kind, device)).transpose(1, 2))
        .collect();
    let rotary = &model.rotary;
    rows.push(spliced(
        // the splice's extra engine run shows in the whole-block rows, not here
        format!(
            "rotary on Q, K (spliced, {} only)",
            rotary_kind.trim_start_matches("rotary: ")
        ),
        (layers, 0.0),
        (device, reps),
        &mut || drop(rotary.rotate_qk(&qkv)),
        &mut || drop((rotary.rotate_qk(&qkv), rotary.unrotate(&grads[0], &grads[1], &grads[2]))),
    ));
    model.set_fused_ops(false);
    let rotary = &model.rotary;
    rows.push(measure_many(
        "rotary on Q, K (reference)",
        layers,
        0.0,
        reps,
        &[&qkv],
        &|| {
            let p = qkv.permute([2, 0, 3, 1, 4]);
            vec![rotary.apply(&p.get(0), 0), rotary.apply(&p.get(1), 0)]
        },
    ));
    model.set_fused_ops(t.fused_ops);
    let (q, k, vv) = (leaf(&[b, nh, s, hd]), leaf(&[b, nh, s, hd]), leaf(&[b, nh, s, hd]));
    let attention = baichuan_model::baichuan::attention_backend(&mc, b, s, kind, device).to_string();
    // causal: half of the 4*T^2*hd forward products; backward 2.5x forward
    let attn_flops = 3.5 * 2.0 * (b * nh) as f64 * (s as f64).powi(2) * hd as f64;
    rows.push(measure(
        &format!("attention (sdpa, {attention})"),
        layers,
        attn_flops,
        reps,
        &[&q, &k, &vv],
        &|| Tensor::scaled_dot_product_attention(&q, &k, &vv, None::<Tensor>, 0.0, true, None, false),
    ));
    rows.push(measure("o_proj GEMM", layers, gemm(d, d), reps, &[&x, o], &|| {
        x.linear(o, None::<Tensor>)
    }));
    rows.push(measure_many(
        "gate, up GEMMs",
        layers,
        2.0 * gemm(d, f),
        reps,
        &[&x, gate, up],
        &|| vec![x.linear(gate, None::<Tensor>), x.linear(up, None::<Tensor>)],
    ));
    let gate_up = Tensor::cat(&[gate, up], 0).detach().set_requires_grad(true);
    rows.push(measure(
        "gate+up as one GEMM (weights stored concatenated)",
        0.0,
        2.0 * gemm(d, f),
        reps,
        &[&x, &gate_up],
        &|| x.linear(&gate_up, None::<Tensor>),
    ));
    let (a, c) = (leaf(&[b, s, f]), leaf(&[b, s, f]));
    let swiglu = model.rotary.swiglu.clone();
    rows.push(measure(
        "silu(gate) * up (autograd)",
        if swiglu.is_some() { 0.0 } else { layers },
        0.0,
        reps,
        &[&a, &c],
        &|| a.silu() * &c,
    ));
    if let Some(k) = &swiglu {
        // spliced out of autograd, as training runs it with the kernel
        let da = a.randn_like();
        rows.push(spliced(
            format!("silu(gate) * up ({})", k.describe()),
            (layers, 0.0),
            (device, reps),
            &mut || drop(k.forward(&a, &c)),
            &mut || drop((k.forward(&a, &c), k.backward(&a, &c, &da))),
        ));
    }
    let h = leaf(&[b, s, f]);
    rows.push(measure("down GEMM", layers, gemm(f, d), reps, &[&h, down], &|| {
        h.linear(down, None::<Tensor>)
    }));
    let y = leaf(&[b, s, d]);
    rows.push(measure("residual add", 2.0 * layers, 0.0, reps, &[&x, &y], &|| &x + &y));
    let block_flops = gemm(d, 3 * d) + gemm(d, d) + 2.0 * gemm(d, f) + gemm(f, d) + attn_flops;
    // the whole block as training runs it: train_forward, then train_backward returning the
    // gradients of the input and the parameters
    let g = x.randn_like();
    for fused in [true, false] {
        model.set_fused_ops(fused);
        let label = if fused { "fused" } else { "reference" };
        let blk = &model.layers[0];
        rows.push(spliced(
            format!("whole block ({label} ops)"),
            (if fused == t.fused_ops { layers } else { 0.0 }, block_flops),
            (device, reps),
            &mut || drop(blk.train_forward(&x, &model.rotary, None)),
            &mut || {
                let tape = blk.train_forward(&x, &model.rotary, None);
                drop(blk.train_backward(tape, &x, &g, &model.rotary, None, true));
            },
        ));
    }
    model.set_fused_ops(t.fused_ops);
    // the head: final norm, the V-wide GEMMs and the chunked fp32 loss, as training runs it;
    // with a loss kernel installed, also with the ATen operator (not counted in the model)
    let targets = Tensor::randint(v, [b, s], (Kind::Int64, device));
    let top = leaf(&[b, s, d]);
    let head_params = [&top, &model.norm.weight, &model.lm_head];
    let chunk = t.loss_chunk_tokens;
    let kernel = model.loss_kernel.clone();
    for with_kernel in [true, false] {
        if !with_kernel && kernel.is_none() {
            break;
        }
        model.loss_kernel = if with_kernel { kernel.clone() } else { None };
        let name = format!(
            "head GEMMs + chunked loss ({})",
            model.loss_kernel.as_ref().map_or("ATen ops".into(), |k| k.describe())
        );
        rows.push(spliced(
            name,
            (if with_kernel { 1.0 } else { 0.0 }, gemm(d, v)),
            (device, reps),
            &mut || drop(crate::step::chunked_cross_entropy(&model, &top, &targets, chunk, None)),
            &mut || {
                drop(crate::step::chunked_cross_entropy(
                    &model,
                    &top,
                    &targets,
                    chunk,
                    Some(1.0 / m),
                ))
            },
        ));
        for p in head_params {
            p.shallow_clone().zero_grad();
        }
    }
    model.loss_kernel = kernel;
    let ids = Tensor::randint(v, [b, s], (Kind::Int64, device));
    let emb = &model.embed_tokens;
    rows.push(measure("embedding", 1.0, 0.0, reps, &[emb], &|| model.embed(&ids)));
    let modelled_ms = rows
        .iter()
        .filter(|r| r.name.starts_with("whole block") || r.name.starts_with("head") || r.name == "embedding")
        .map(|r| r.count * r.train_ms)
        .sum();
    Ok(Breakdown {
        device: format!("{device:?}"),
        precision: format!("{:?}", t.precision).to_lowercase(),
        tokens: b * s,
        attention,
        loss: loss_kind,
        swiglu: swiglu_kind,
        rows,
        modelled_ms,
    })
}

/// The table `baichuan bench --breakdown` prints.
pub fn render(r: &Breakdown) -> String {
    let mut out = format!(
        "{} {} on {}, {} tokens per micro-batch; ms per call, then per micro-batch (x calls)\n",
        r.precision, "forward + backward", r.device, r.tokens
    );
    out += &format!("{}; {}\n", r.loss, r.swiglu);
    out += &format!(
        "{:<34} {:>9} {:>10} {:>9} {:>7} {:>11} {:>9}\n",
        "piece", "fwd ms", "fwd+bwd ms", "host ms", "calls", "ms/micro", "TFLOP/s"
    );
    for row in &r.rows {
        let tflops = if row.flops > 0.0 && row.train_ms > 0.0 {
            format!("{:.1}", row.flops / row.train_ms / 1e9)
        } else {
            "-".into()
        };
        out += &format!(
            "{:<34} {:>9.3} {:>10.3} {:>9.3} {:>7} {:>11.2} {:>9}\n",
            row.name,
            row.forward_ms,
            row.train_ms,
            row.host_ms,
            row.count,
            row.count * row.train_ms,
            tflops
        );
    }
    out += &format!(
        "blocks x layers + head + embedding: {:.1} ms per micro-batch (forward + backward, without the optimizer)\n",
        r.modelled_ms
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakdown_times_every_piece_and_adds_up_the_block() {
        let text = r#"
            [model]
            preset = "tiny"
            hidden_size = 64
            intermediate_size = 128
            num_attention_heads = 4
            num_hidden_layers = 3
            vocab_size = 500
            [data]
            seq_len = 32
            [train]
            micro_batch_size = 2
            global_batch_size = 2
            device = "cpu"
        "#;
        let cfg = RunConfig::from_toml(text, &[]).unwrap();
        let r = breakdown(&cfg, 2).unwrap();
        let names: Vec<&str> = r.rows.iter().map(|r| r.name.as_str()).collect();
        for want in [
            "RMSNorm (fused)",
            "W_pack GEMM (QKV)",
            "whole block (fused ops)",
            "head GEMMs + chunked loss (ATen ops)",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let block = r.rows.iter().find(|r| r.name == "whole block (fused ops)").unwrap();
        assert_eq!(block.count, 3.0, "one block's time counts once per layer");
        assert!(block.train_ms > 0.0 && block.forward_ms > 0.0);
        let rmsnorm = r.rows.iter().find(|r| r.name == "RMSNorm (fused)").unwrap();
        assert_eq!(rmsnorm.count, 7.0, "two norms per block and the final one");
        assert_eq!(r.tokens, 64);
        // the modelled time is the blocks, the head and the embedding, nothing else
        let sum: f64 = r
            .rows
            .iter()
            .filter(|x| x.name == "whole block (fused ops)" || x.name.starts_with("head") || x.name == "embedding")
            .map(|x| x.count * x.train_ms)
            .sum();
        assert!((sum - r.modelled_ms).abs() < 1e-9);
        let table = render(&r);
        assert!(table.contains("whole block (reference ops)"), "{table}");
        assert!(table.contains("\nloss: ATen ops; swiglu: ATen ops\n"), "{table}");
        // GEMM rows carry their FLOPs: W_pack is 6 * tokens * d * 3d
        let w = r.rows.iter().find(|r| r.name == "W_pack GEMM (QKV)").unwrap();
        assert_eq!(w.flops, 6.0 * 64.0 * 64.0 * 192.0);
    }
}
