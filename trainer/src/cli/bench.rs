//! `baichuan bench`: a training step of a config's model on random tokens (speed, split, MFU,
//! memory), `bench --breakdown` (each piece of a block alone), and `bench comm` (all-reduce
//! bandwidth of the TCP backend), and `bench adamw` (the host AdamW of CPU runs and offload).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::tools::{bench, breakdown};
use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchCommand>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Time each piece of a block (norms, GEMMs, rotary, attention, SwiGLU, residuals),
    /// the whole block with fused and reference ops, and the head, alone; `--steps` calls each.
    #[arg(long)]
    breakdown: bool,
    /// Time a micro-batch's forward and backward with and without document masking on the
    /// same packed rows (random documents, see --doc-tokens) and print the ratio.
    #[arg(long)]
    document_masking: bool,
    /// Mean document length in tokens for --document-masking (default: a quarter of seq_len).
    #[arg(long, value_name = "TOKENS")]
    doc_tokens: Option<i64>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// All-reduce bus bandwidth across message sizes, beside memory-copy and loopback TCP bandwidth.
    Comm {
        /// Backend to measure (this build has tcp).
        #[arg(long, default_value = "tcp")]
        backend: String,
        /// Ranks (threads of this process).
        #[arg(long, default_value_t = 2)]
        nproc: usize,
        /// Largest message in MiB (sizes double from 4 KiB).
        #[arg(long, default_value_t = 64)]
        max_mb: usize,
        /// Also time all-gather and reduce-scatter, fit the ring's latency and bandwidth to the
        /// all-gather, and print the cluster model's prediction of the other two beside them.
        #[arg(long)]
        model: bool,
        /// With --model: a run directory trained with --nproc ranks on this machine; the model's
        /// exposed communication of each step (its buckets at their recorded issue times)
        /// beside the recorded wait.
        #[arg(long, requires = "model")]
        run: Option<PathBuf>,
    },
    /// The host AdamW (CPU runs and optimizer offload): parameters updated per second.
    Adamw {
        /// Parameters in the buffer, in millions.
        #[arg(long, default_value_t = 64)]
        params_m: usize,
        /// Threads (default: all available).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed updates (after one untimed).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Print one JSON object instead of a line.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        Some(BenchCommand::Comm {
            backend,
            nproc,
            max_mb,
            model,
            run,
        }) => return comm(&backend, nproc, max_mb, model, run),
        Some(BenchCommand::Adamw {
            params_m,
            threads,
            steps,
            json,
        }) => {
            if params_m == 0 {
                bail!("--params-m 0: the buffer needs at least a million parameters");
            }
            let threads = threads.unwrap_or_else(baichuan_trainer::optim::host::threads).max(1);
            let r = bench::host_adamw(params_m * 1_000_000, threads, steps);
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "host AdamW: {} parameters, {} threads{}: {:.1} ms per update, {:.0} M params/s, {:.1} GB/s",
                    r.params,
                    r.threads,
                    if r.avx2 { " (AVX2)" } else { "" },
                    r.seconds * 1e3,
                    r.params_per_s / 1e6,
                    r.gb_per_s
                );
            }
            return Ok(());
        }
        None => {}
    }
    let config = a.config.context("bench needs --config (or the `comm` subcommand)")?;
    let cfg = RunConfig::load(&config, &a.overrides)?;
    if a.breakdown {
        let r = breakdown::breakdown(&cfg, a.steps.max(1))?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print!("{}", breakdown::render(&r));
        }
        return Ok(());
    }
    if a.document_masking {
        let doc = a.doc_tokens.unwrap_or(cfg.data.seq_len / 4).max(1);
        let r = bench::document_masking(&cfg, a.steps.max(1), a.warmup, doc)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
            return Ok(());
        }
        println!(
            "{} parameters, {} on {}, micro-batch {} x {}, {} documents (mean {:.1} tokens), masked attention: {}",
            r.parameters, r.precision, r.device, r.rows, r.seq_len, r.documents, r.mean_document_tokens, r.attention
        );
        println!(
            "forward+backward: plain {:.1} ms, document-masked {:.1} ms, ratio {:.3} (medians of {}, alternating)",
            r.plain_s * 1e3,
            r.masked_s * 1e3,
            r.ratio,
            a.steps.max(1)
        );
        return Ok(());
    }
    let r = bench::train_step(&cfg, a.steps.max(1), a.warmup)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "{} parameters, {} training on {}, {} tokens/step, attention {}, AdamW {}, {}, {}, {}",
        r.parameters, r.precision, r.device, r.tokens_per_step, r.attention, r.optimizer, r.rotary, r.loss, r.swiglu
    );
    println!(
        "step {:.1} ms = forward {:.1} + backward {:.1} + comm wait {:.1} + optimizer {:.1} (medians of {})",
        r.step_s * 1e3,
        r.forward_s * 1e3,
        r.backward_s * 1e3,
        r.comm_wait_s * 1e3,
        r.optimizer_s * 1e3,
        a.steps
    );
    println!(
        "{:.0} tokens/s, MFU {:.1}% of {:.3e} FLOP/s ({}), peak memory {:.0} MiB",
        r.tokens_per_s,
        100.0 * r.mfu,
        r.peak,
        r.peak_source,
        r.peak_memory_mb
    );
    Ok(())
}

/// `bench comm`: the ceilings, then the all-reduce table (with `model`, the calibration of the
/// cluster step model against this machine's collectives).
fn comm(backend: &str, nproc: usize, max_mb: usize, model: bool, run: Option<PathBuf>) -> Result<()> {
    if backend != "tcp" {
        bail!("--backend {backend:?}: this build measures the tcp backend");
    }
    let memcpy = bench::memcpy_bandwidth();
    let tcp = bench::loopback_tcp_bandwidth()?;
    println!(
        "ceilings: memory copy {:.2} GB/s (read + write), one loopback TCP stream {:.2} GB/s",
        memcpy / 1e9,
        tcp / 1e9
    );
    let mut sizes = vec![4096usize];
    while *sizes.last().expect("one size") < max_mb << 20 {
        sizes.push(sizes.last().expect("one size") * 4);
    }
    if model {
        return comm_model(nproc.max(2), &sizes, run);
    }
    let rows = bench::tcp_all_reduce(nproc.max(2), &sizes, Duration::from_millis(300))?;
    println!("all-reduce, tcp backend, {} ranks (fp32, in place)", nproc.max(2));
    println!(
        "{:>12} {:>12} {:>12} {:>12} {:>16}",
        "bytes", "time (us)", "algbw GB/s", "busbw GB/s", "busbw / TCP"
    );
    for r in rows {
        println!(
            "{:>12} {:>12.1} {:>12.3} {:>12.3} {:>15.0}%",
            r.bytes,
            r.seconds * 1e6,
            r.algbw_gbs,
            r.busbw_gbs,
            100.0 * r.busbw_gbs * 1e9 / tcp
        );
    }
    Ok(())
}

/// The cluster model against this machine: the ring's latency and bandwidth fitted to the
/// all-gather times, then the model's all-reduce and reduce-scatter times beside the measured.
fn comm_model(world: usize, sizes: &[usize], run: Option<PathBuf>) -> Result<()> {
    use baichuan_trainer::tools::bench::CommOp;
    use baichuan_trainer::tools::cluster::{fit_ring, reduce_scatter_time, reduction_time, ring_all_reduce_time};
    let min = Duration::from_millis(300);
    let gather = bench::tcp_collective(world, CommOp::AllGather, sizes, min)?;
    let points: Vec<(f64, f64)> = gather.iter().map(|r| (r.bytes as f64, r.seconds)).collect();
    let (alpha, bw) = fit_ring(world as u64, &points).context("the all-gather times give no physical fit")?;
    let reduce = bench::reduction_rate();
    println!(
        "fit to the all-gather ({world} ranks): latency {:.1} us per ring step, bus bandwidth {:.3} GB/s; \
         the ring's reduction loop alone: {:.2} GB/s",
        alpha * 1e6,
        bw / 1e9,
        reduce / 1e9
    );
    println!(
        "{:>15} {:>12} {:>14} {:>14} {:>8}",
        "collective", "bytes", "measured us", "model us", "error"
    );
    let n = world as u64;
    let mut worst: f64 = 0.0;
    for op in [CommOp::AllGather, CommOp::ReduceScatter, CommOp::AllReduce] {
        let rows = if op == CommOp::AllGather {
            gather.clone()
        } else {
            bench::tcp_collective(world, op, sizes, min)?
        };
        for r in rows {
            let s = r.bytes as f64;
            let model = match op {
                CommOp::AllReduce => ring_all_reduce_time(s, n, bw, alpha) + reduction_time(s, n, reduce),
                CommOp::ReduceScatter => reduce_scatter_time(s, n, bw, alpha) + reduction_time(s, n, reduce),
                CommOp::AllGather => reduce_scatter_time(s, n, bw, alpha),
            };
            let err = model / r.seconds - 1.0;
            if op != CommOp::AllGather {
                worst = worst.max(err.abs());
            }
            println!(
                "{:>15} {:>12} {:>14.1} {:>14.1} {:>+7.1}%",
                op.name(),
                r.bytes,
                r.seconds * 1e6,
                model * 1e6,
                100.0 * err
            );
        }
    }
    println!(
        "worst error of the predicted collectives (reduce-scatter, all-reduce): {:.1}%",
        100.0 * worst
    );
    if let Some(dir) = run {
        exposed_in_run(&dir, world, alpha, bw, reduce)?;
    }
    Ok(())
}

/// The model's exposed communication for each recorded step of a run: its buckets (the
/// reducer's layout of the run's model and bucket size) issued at the recorded times, one after
/// another on the ring, against the recorded end of backward; beside the recorded wait.
fn exposed_in_run(dir: &std::path::Path, world: usize, alpha: f64, bw: f64, reduce: f64) -> Result<()> {
    use baichuan_trainer::tools::cluster::{
        bucket_layout, reduce_scatter_time, reduction_time, ring_all_reduce_time, serial_schedule, ModelShape,
    };
    let cfg = RunConfig::load(&dir.join("config.toml"), &[])?;
    let model = cfg.model.resolve()?;
    let shape = ModelShape::from_config(&model, cfg.data.seq_len as u64)?;
    let spans = bucket_layout(&shape.unit_params, cfg.dist.bucket_elems(world) as u64);
    let n = world as u64;
    let durations: Vec<f64> = spans
        .iter()
        .map(|b| {
            let bytes = b.elems as f64 * 4.0;
            let reduce_time = reduction_time(bytes, n, reduce);
            if cfg.train.zero_stage >= 2 {
                reduce_scatter_time(bytes, n, bw, alpha) + reduce_time
            } else {
                ring_all_reduce_time(bytes, n, bw, alpha) + reduce_time
            }
        })
        .collect();
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .with_context(|| format!("{}: no metrics.jsonl", dir.display()))?;
    println!(
        "run {} ({world} ranks, ZeRO {}, {} buckets): exposed communication per step, ms",
        dir.display(),
        cfg.train.zero_stage,
        spans.len()
    );
    println!("{:>6} {:>10} {:>10} {:>10}", "step", "recorded", "model", "comm busy");
    let (mut recorded, mut modelled) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let issued: Vec<f64> = match v["bucket_issue_ms"].as_array() {
            Some(a) => a.iter().filter_map(|x| x.as_f64()).collect(),
            None => continue,
        };
        if issued.len() != spans.len() {
            bail!(
                "{}: step {} issued {} buckets, the model's layout has {}: HINT: pass the run's rank count as --nproc",
                dir.display(),
                v["step"],
                issued.len(),
                spans.len()
            );
        }
        let ready: Vec<f64> = issued.iter().map(|ms| ms / 1e3).collect();
        let end = serial_schedule(&ready, &durations).last().map_or(0.0, |t| t.1);
        let backward_end = v["backward_end_ms"].as_f64().unwrap_or(0.0) / 1e3;
        let model_wait = (end - backward_end).max(0.0);
        let wait = v["comm_wait_s"].as_f64().unwrap_or(0.0);
        println!(
            "{:>6} {:>10.2} {:>10.2} {:>10.2}",
            v["step"],
            wait * 1e3,
            model_wait * 1e3,
            durations.iter().sum::<f64>() * 1e3
        );
        recorded.push(wait);
        modelled.push(model_wait);
    }
    let quantile = |mut v: Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v.get((q * (v.len() as f64 - 1.0)).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    // the recorded wait also holds the time the other rank took to reach the collective
    // (ranks drift apart when they share cores); the model has none of that
    for (name, q) in [("lower quartile", 0.25), ("median", 0.5)] {
        let (r, m) = (quantile(recorded.clone(), q), quantile(modelled.clone(), q));
        println!(
            "{name} of the exposed communication: recorded {:.2} ms, model {:.2} ms ({:+.0}%)",
            r * 1e3,
            m * 1e3,
            100.0 * (m / r - 1.0)
        );
    }
    Ok(())
}
