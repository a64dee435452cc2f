//! `baichuan bench comm`: all-reduce bandwidth of a communication backend across message
//! sizes, beside this machine's own ceilings measured in the same run (memory copy and a
//! single loopback TCP stream).
//!
//! Bandwidths follow nccl-tests' conventions: algorithm bandwidth = bytes / time; bus
//! bandwidth = algbw x 2(W-1)/W for all-reduce, which is comparable with link speed.
//! The ranks are threads of this process, each with its own store connection and ring
//! sockets, so the measurement covers the same code path as multi-process training.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::tcp::run_local_ranks;

/// One message size's result.
#[derive(Debug, Clone)]
pub struct CommRow {
    pub bytes: usize,
    pub seconds: f64,
    pub algbw_gbs: f64,
    pub busbw_gbs: f64,
}

/// Bytes per second of copying a 256 MiB buffer (read + write counted).
pub fn memcpy_bandwidth() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault the pages in
    let reps = 4;
    let start = Instant::now();
    for i in 0..reps {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i]);
    }
    2.0 * (n * reps) as f64 / start.elapsed().as_secs_f64()
}

/// Bytes per second through one loopback TCP connection.
pub fn loopback_tcp_bandwidth() -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = 512usize << 20;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 4 << 20];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![7u8; 4 << 20];
    let start = Instant::now();
    for _ in 0..total / chunk.len() {
        s.write_all(&chunk)?;
    }
    drop(s);
    reader.join().expect("reader thread")?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// All-reduce timings for `world` ranks over the tcp backend.
pub fn tcp_all_reduce(world: usize, sizes: &[usize], min_time: Duration) -> Result<Vec<CommRow>> {
    let sizes = sizes.to_vec();
    let per_rank = run_local_ranks(world, move |comm| -> Result<Vec<CommRow>> {
        let mut rows = Vec::new();
        for &bytes in &sizes {
            let buf = Tensor::ones([(bytes / 4) as i64], (Kind::Float, tch::Device::Cpu));
            let warm = Instant::now();
            comm.all_reduce(&buf, ReduceOp::Sum).wait()?;
            // the ranks agree on an iteration count from the mean warm-up time
            let mean = comm.all_reduce_scalar(warm.elapsed().as_secs_f64(), ReduceOp::Avg)?;
            let iters = (min_time.as_secs_f64() / mean.max(1e-6)).clamp(3.0, 1000.0) as u64;
            comm.barrier()?;
            let start = Instant::now();
            for _ in 0..iters {
                comm.all_reduce(&buf, ReduceOp::Sum).wait()?;
            }
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            let algbw = bytes as f64 / seconds / 1e9;
            rows.push(CommRow {
                bytes,
                seconds,
                algbw_gbs: algbw,
                busbw_gbs: algbw * 2.0 * (world - 1) as f64 / world as f64,
            });
        }
        Ok(rows)
    })?;
    per_rank.into_iter().next().context("no ranks")?
}

/// Where one training step's time goes, medians over the timed steps (seconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepBench {
    pub device: String,
    pub precision: String,
    pub parameters: u64,
    pub tokens_per_step: u64,
    pub step_s: f64,
    pub forward_s: f64,
    pub backward_s: f64,
    pub comm_wait_s: f64,
    pub optimizer_s: f64,
    pub tokens_per_s: f64,
    pub mfu: f64,
    pub peak: f64,
    pub peak_source: String,
    pub peak_memory_mb: f64,
    pub attention: String,
    /// Which AdamW update ran (fused kernel or tensor ops, and why).
    pub optimizer: String,
    /// Which rotation the training block ran (kernel or ATen ops).
    pub rotary: String,
    /// Which cross-entropy ran (kernel or ATen ops, and the kernel's check).
    pub loss: String,
    /// Which SwiGLU product ran (kernel, spliced out of autograd, or ATen ops).
    pub swiglu: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak device memory in MiB: CUDA memory in use on the device (the caching allocator's
/// reservation, from nvidia-smi), or the process's peak RSS on CPU.
pub fn device_memory_mb(device: tch::Device) -> f64 {
    if let tch::Device::Cuda(i) = device {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                &format!("--id={i}"),
            ])
            .output();
        if let Some(mb) = out
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        {
            return mb;
        }
    }
    crate::metrics::peak_memory_mb(device)
}

/// Trains `config`'s model on random tokens: `warmup` untimed steps, then `steps` timed ones
/// with the device synchronised between phases (single process, no data loading).
pub fn train_step(config: &crate::config::RunConfig, steps: usize, warmup: usize) -> Result<StepBench> {
    use crate::dist::buckets::GradReducer;
    use crate::dist::comm::Solo;
    use crate::optim::{AdamWParams, FlatAdamW};
    use crate::step;

    let resolved = config.validate(1)?;
    let (t, mc, device) = (&config.train, &resolved.model, resolved.device);
    let kind = crate::train::param_kind(t.precision);
    tch::manual_seed(config.job.seed as i64);
    let mut model = baichuan_model::Baichuan::new(mc, tch::Device::Cpu)?;
    model.to(device, kind);
    model.set_fused_ops(t.fused_ops);
    let rotary_kind = crate::kernels::install_rotary(&mut model);
    let loss_kind = crate::kernels::install_loss(&mut model);
    let swiglu_kind = crate::kernels::install_swiglu(&mut model);
    let params = model.named_parameters();
    let total = params.iter().map(|(_, p)| p.numel()).sum::<usize>();
    let mut opt = FlatAdamW::new(&params, (0, total), &Solo)?;
    let update_kind = opt.choose_update(t.fused_optimizer);
    let mut reducer = GradReducer::new(
        &opt.slots,
        model.layers.len(),
        config.dist.bucket_elems(1),
        0,
        vec![(0, total)],
        0,
        device,
    );
    let recompute = step::recompute_plan(model.layers.len(), t.activation_checkpointing, t.checkpoint_every);
    let seq = config.data.seq_len;
    let accum = resolved.grad_accum;
    let fp32_accum = t.grad_accum_dtype == crate::config::GradAccumDtype::Fp32;
    let sync = || {
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let (mut fwd, mut bwd, mut wait, mut optim, mut whole) = (vec![], vec![], vec![], vec![], vec![]);
    for s in 0..warmup + steps {
        let tokens = Tensor::randint(mc.vocab_size, [t.micro_batch_size, seq + 1], (Kind::Int64, device));
        sync();
        let start = Instant::now();
        let (mut f_s, mut b_s) = (0.0, 0.0);
        for micro in 0..accum {
            let t0 = Instant::now();
            let state = step::forward(&model, &tokens, &recompute);
            sync();
            let t1 = Instant::now();
            let mut to = step::MicroBatchHandOff::new(&mut reducer, &model, &Solo, micro, accum, fp32_accum);
            let active = to.active();
            let mut hand_off = |unit, fresh: &[Tensor]| to.unit(unit, fresh);
            let hook: Option<step::HandOff> = if active { Some(&mut hand_off) } else { None };
            step::backward(&model, state, 1.0 / accum as f64, t.loss_chunk_tokens, hook);
            sync();
            f_s += (t1 - t0).as_secs_f64();
            b_s += t1.elapsed().as_secs_f64();
        }
        let t2 = Instant::now();
        reducer.finish()?;
        sync();
        let w_s = t2.elapsed().as_secs_f64();
        let t3 = Instant::now();
        let grad = reducer.grad_shard();
        let norm = opt.grad_norm(&grad, &Solo, false)?;
        let h = AdamWParams {
            lr: t.lr,
            beta1: t.betas[0],
            beta2: t.betas[1],
            eps: t.eps,
            weight_decay: t.weight_decay,
            grad_scale: FlatAdamW::clip_coef(norm, t.grad_clip),
        };
        opt.update(&grad, h)?;
        opt.write_back(&Solo, None)?;
        sync();
        let o_s = t3.elapsed().as_secs_f64();
        if s >= warmup {
            fwd.push(f_s);
            bwd.push(b_s);
            wait.push(w_s);
            optim.push(o_s);
            whole.push(start.elapsed().as_secs_f64());
        }
    }
    let tokens_per_step = (t.global_batch_size * seq) as u64;
    let step_s = median(whole);
    let tps = tokens_per_step as f64 / step_s;
    let (peak, peak_source) = crate::metrics::peak_flops(device, kind);
    Ok(StepBench {
        device: format!("{device:?}"),
        precision: format!("{:?}", t.precision).to_lowercase(),
        parameters: mc.num_parameters(),
        tokens_per_step,
        step_s,
        forward_s: median(fwd),
        backward_s: median(bwd),
        comm_wait_s: median(wait),
        optimizer_s: median(optim),
        tokens_per_s: tps,
        mfu: mc.flops_per_token(seq) * tps / peak,
        peak,
        peak_source,
        peak_memory_mb: device_memory_mb(device),
        attention: baichuan_model::baichuan::attention_backend(mc, t.micro_batch_size, seq, kind, device).to_string(),
        rotary: rotary_kind,
        loss: loss_kind,
        swiglu: swiglu_kind,
        optimizer: if opt.is_fused() {
            update_kind
        } else {
            update_kind.replace("fused CUDA kernel (NVRTC)", "tensor ops (the fused kernel fell back)")
        },
    })
}
