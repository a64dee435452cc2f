//! `baichuan bench`: a training step's tokens/s, MFU, memory and its split into forward,
//! backward, gradient wait and optimizer ([`train_step`]).
//!
//! `baichuan bench --document-masking`: a training micro-batch's forward and backward with and
//! without document masking on the same packed rows, and the ratio ([`document_masking`]).
//!
//! `baichuan bench comm`: all-reduce bandwidth of a communication backend across message
//! sizes, beside this machine's own ceilings measured in the same run (memory copy and a
//! single loopback TCP stream).
//!
//! `baichuan bench adamw`: the host AdamW of CPU runs and optimizer offload (`optim::host`),
//! parameters updated per second over a flat buffer, for comparison with `torch.optim.AdamW`
//! on the same threads (`scripts/bench_adamw.sh`).
//!
//! Bandwidths follow nccl-tests' conventions: algorithm bandwidth = bytes / time; bus
//! bandwidth = algbw x 2(W-1)/W for all-reduce, which is comparable with link speed.
//! The ranks are threads of this process, each with its own store connection and ring
//! sockets, so the measurement covers the same code path as multi-process training.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::config::RunConfig;
use crate::dist::comm::{Communicator, ReduceOp, Solo};
use crate::dist::tcp::run_local_ranks;
use crate::metrics::mfu::{device_memory_mb, peak_flops};
use crate::trainer::Trainer;

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

/// Bytes per second of the TCP ring's reduction step on this CPU: a received fp32 buffer
/// (little-endian bytes) added into the local one, as `dist/tcp.rs` does after each exchange
/// (64 MiB, best of three).
pub fn reduction_rate() -> f64 {
    let n = 16 << 20;
    let mut data = vec![1f32; n];
    let recv: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        for (d, b) in data.iter_mut().zip(recv.chunks_exact(4)) {
            *d += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&data);
    (n * 4) as f64 / best
}

/// The collectives `bench comm` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommOp {
    AllReduce,
    ReduceScatter,
    AllGather,
}

impl CommOp {
    pub fn name(self) -> &'static str {
        match self {
            CommOp::AllReduce => "all-reduce",
            CommOp::ReduceScatter => "reduce-scatter",
            CommOp::AllGather => "all-gather",
        }
    }

    /// nccl-tests' bus-bandwidth factor: 2(W-1)/W for all-reduce, (W-1)/W for the others.
    pub fn bus_factor(self, world: usize) -> f64 {
        let f = (world - 1) as f64 / world as f64;
        if self == CommOp::AllReduce {
            2.0 * f
        } else {
            f
        }
    }
}

/// All-reduce timings for `world` ranks over the tcp backend.
pub fn tcp_all_reduce(world: usize, sizes: &[usize], min_time: Duration) -> Result<Vec<CommRow>> {
    tcp_collective(world, CommOp::AllReduce, sizes, min_time)
}

/// Timings of `op` for `world` ranks over the tcp backend, on fp32 buffers of `sizes` bytes
/// (the whole buffer: reduce-scatter and all-gather move even parts of it).
pub fn tcp_collective(world: usize, op: CommOp, sizes: &[usize], min_time: Duration) -> Result<Vec<CommRow>> {
    let sizes = sizes.to_vec();
    let per_rank = run_local_ranks(world, move |comm| -> Result<Vec<CommRow>> {
        let mut rows = Vec::new();
        for &bytes in &sizes {
            let n = bytes / 4;
            let buf = Tensor::ones([n as i64], (Kind::Float, tch::Device::Cpu));
            let ranges = crate::dist::even_ranges(n, world);
            let once = || match op {
                CommOp::AllReduce => comm.all_reduce(&buf, ReduceOp::Sum).wait(),
                CommOp::ReduceScatter => comm.reduce_scatter(&buf, &ranges, ReduceOp::Sum).wait(),
                CommOp::AllGather => comm.all_gather(&buf, &ranges).wait(),
            };
            let warm = Instant::now();
            once()?;
            // the ranks agree on an iteration count from the mean warm-up time
            let mean = comm.all_reduce_scalar(warm.elapsed().as_secs_f64(), ReduceOp::Avg)?;
            let iters = (min_time.as_secs_f64() / mean.max(1e-6)).clamp(3.0, 1000.0) as u64;
            comm.barrier()?;
            let start = Instant::now();
            for _ in 0..iters {
                once()?;
            }
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            let algbw = bytes as f64 / seconds / 1e9;
            rows.push(CommRow {
                bytes,
                seconds,
                algbw_gbs: algbw,
                busbw_gbs: algbw * op.bus_factor(world),
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

/// The host AdamW's speed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdamWBench {
    pub params: usize,
    pub threads: usize,
    pub avx2: bool,
    /// Median seconds per update.
    pub seconds: f64,
    pub params_per_s: f64,
    /// Bytes moved per second: 16 read (weight, gradient, two moments) + 12 written per parameter.
    pub gb_per_s: f64,
}

/// Times `steps` updates (after one untimed) of `params` fp32 parameters on `threads` threads,
/// all decayed, as the matrices of a model are.
pub fn host_adamw(params: usize, threads: usize, steps: usize) -> AdamWBench {
    use crate::optim::host::{update, uses_avx2, HostBuffers};
    let k = baichuan_cuda::adamw::StepConsts::new(3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0, 1);
    let (mut p, mut m, mut v) = (vec![0.5f32; params], vec![0f32; params], vec![0f32; params]);
    let g: Vec<f32> = (0..params).map(|i| ((i % 1999) as f32 - 999.0) * 1e-3).collect();
    let segments = [(0i64, params as i64, true)];
    let mut times = Vec::new();
    for i in 0..=steps.max(1) {
        let start = Instant::now();
        let b = HostBuffers {
            p: &mut p,
            g: &g,
            m: &mut m,
            v: &mut v,
        };
        update(b, 0, &segments, &k, threads);
        if i > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let seconds = median(times);
    AdamWBench {
        params,
        threads,
        avx2: uses_avx2(),
        seconds,
        params_per_s: params as f64 / seconds,
        gb_per_s: 28.0 * params as f64 / seconds / 1e9,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Trains `config`'s model on random tokens: `warmup` untimed steps, then `steps` timed ones
/// with the device synchronised between phases (single process, no data loading). The model,
/// optimizer, reducer and kernels are built as `train` builds them ([`Trainer::new`]).
pub fn train_step(config: &RunConfig, steps: usize, warmup: usize) -> Result<StepBench> {
    let resolved = config.validate(1)?;
    let (t, mc, device) = (&config.train, &resolved.model, resolved.device);
    tch::manual_seed(config.job.seed as i64);
    let model = baichuan_model::Baichuan::new(mc, Device::Cpu)?;
    let mut tr = Trainer::new(config, &resolved, model, device, &Solo)?;
    let seq = config.data.seq_len;
    let rows = t.micro_batch_size * resolved.grad_accum;
    let (mut fwd, mut bwd, mut wait, mut optim, mut whole) = (vec![], vec![], vec![], vec![], vec![]);
    for s in 0..warmup + steps {
        let tokens = Tensor::randint(mc.vocab_size, [rows, seq + 1], (Kind::Int64, device));
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let start = Instant::now();
        let out = tr.step(&tokens, t.lr, s as u64 + 1, &Solo, true)?;
        if s >= warmup {
            fwd.push(out.times.forward_s);
            bwd.push(out.times.backward_s);
            wait.push(out.times.comm_wait_s);
            optim.push(out.times.optimizer_s);
            whole.push(start.elapsed().as_secs_f64());
        }
    }
    let tokens_per_step = (t.global_batch_size * seq) as u64;
    let step_s = median(whole);
    let tps = tokens_per_step as f64 / step_s;
    let (peak, peak_source) = peak_flops(device, tr.kind);
    let k = &tr.kernels;
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
        attention: baichuan_model::baichuan::attention_backend(mc, t.micro_batch_size, seq, tr.kind, device)
            .to_string(),
        rotary: k.rotary.clone(),
        loss: k.loss.clone(),
        swiglu: k.swiglu.clone(),
        optimizer: if tr.opt.is_fused() {
            k.optimizer.clone()
        } else {
            k.optimizer
                .replace("fused CUDA kernel (NVRTC)", "tensor ops (the fused kernel fell back)")
        },
    })
}

/// A micro-batch's forward and backward with and without document masking (medians, seconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocMaskBench {
    pub device: String,
    pub precision: String,
    pub parameters: u64,
    /// Rows x sequence length of the micro-batch.
    pub rows: i64,
    pub seq_len: i64,
    /// Documents in the micro-batch, and their mean length in tokens.
    pub documents: usize,
    pub mean_document_tokens: f64,
    /// The masked attention's form (dense mask or varlen FlashAttention).
    pub attention: String,
    pub plain_s: f64,
    pub masked_s: f64,
    /// masked_s / plain_s.
    pub ratio: f64,
}

/// Times `step::forward_backward` of one micro-batch of `config` on random packed rows, with
/// documents of `doc_tokens` tokens on average (uniform in [doc_tokens/2, 3 doc_tokens/2],
/// each ended by EOS, cut by the rows' ends): without masking and with it (attention and
/// positions per document, no loss after EOS), alternating, after `warmup` untimed pairs.
/// The model and kernels are built as `train` builds them; no optimizer step.
pub fn document_masking(config: &RunConfig, steps: usize, warmup: usize, doc_tokens: i64) -> Result<DocMaskBench> {
    use crate::step;
    let resolved = config.validate(1)?;
    let (t, mc, device) = (&config.train, &resolved.model, resolved.device);
    tch::manual_seed(config.job.seed as i64);
    let model = baichuan_model::Baichuan::new(mc, Device::Cpu)?;
    let tr = Trainer::new(config, &resolved, model, device, &Solo)?;
    let (rows, seq) = (t.micro_batch_size, config.data.seq_len);
    let eos = mc.eos_token_id;
    // documents of random lengths laid end to end over the rows' T+1 tokens
    let tokens = Tensor::randint_low(3, mc.vocab_size, [rows * (seq + 1)], (Kind::Int64, Device::Cpu));
    let lens = Tensor::randint_low(
        (doc_tokens / 2).max(1),
        (3 * doc_tokens / 2).max(2) + 1,
        [rows * (seq + 1)],
        (Kind::Int64, Device::Cpu),
    );
    let mut at = 0;
    for len in Vec::<i64>::try_from(&lens)? {
        at += len;
        if at > rows * (seq + 1) {
            break;
        }
        let _ = tokens.get(at - 1).fill_(eos);
    }
    let tokens = tokens.view([rows, seq + 1]).to_device(device);
    let masking = step::DocMasking {
        eos,
        loss_after_eos: false,
    };
    let inputs = tokens.narrow(1, 0, seq);
    let docs = tr.model.documents(&inputs, eos)?;
    let starts = inputs.narrow(1, 0, seq - 1).eq(eos).sum(Kind::Int64).int64_value(&[]) + rows;
    let recompute = step::recompute_plan(tr.model.layers.len(), t.activation_checkpointing, t.checkpoint_every);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let time = |m: Option<&step::DocMasking>| {
        sync();
        let start = Instant::now();
        step::forward_backward(&tr.model, &tokens, 1.0, t.loss_chunk_tokens, &recompute, m, None);
        sync();
        start.elapsed().as_secs_f64()
    };
    let (mut plain, mut masked) = (vec![], vec![]);
    for s in 0..warmup + steps {
        let (a, b) = (time(None), time(Some(&masking)));
        if s >= warmup {
            plain.push(a);
            masked.push(b);
        }
    }
    let (plain_s, masked_s) = (median(plain), median(masked));
    Ok(DocMaskBench {
        device: format!("{device:?}"),
        precision: format!("{:?}", t.precision).to_lowercase(),
        parameters: mc.num_parameters(),
        rows,
        seq_len: seq,
        documents: starts as usize,
        mean_document_tokens: (rows * seq) as f64 / starts as f64,
        attention: match docs.attention() {
            baichuan_model::DocAttention::Dense => "dense mask through SDPA".into(),
            baichuan_model::DocAttention::Varlen => "variable-length FlashAttention".into(),
        },
        plain_s,
        masked_s,
        ratio: masked_s / plain_s,
    })
}
