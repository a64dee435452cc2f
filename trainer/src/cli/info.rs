//! `baichuan info`: parameter count, FLOPs per token, the per-GPU memory plan and the
//! checkpoint's size and write time of a config, from its shapes alone; with `--gpu`, the
//! step-time model of a cluster run (`tools/cluster.rs`): compute, bucketed communication and
//! its overlap with backward, the optimizer and the parameter all-gather, per step; with
//! `--sweep-nodes`, the same over node counts (a table and a PNG); with `--published`, the
//! model beside published end-to-end MFU figures.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baichuan_model::ModelConfig;
use baichuan_trainer::config::{Precision, RunConfig};
use baichuan_trainer::tools::cluster::{self, Inputs, ModelShape, StepTime};
use baichuan_trainer::tools::memory_plan::{report, PlanInput};
use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    #[arg(long, required_unless_present = "published")]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Ranks (with --gpu: --gpus-per-node x --nodes instead).
    #[arg(long, default_value_t = 8)]
    world_size: u64,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: Precision,
    #[arg(long, default_value_t = 1)]
    zero_stage: u8,
    #[arg(long)]
    activation_checkpointing: bool,
    /// With --activation-checkpointing: recompute every N-th block only (1: every block).
    #[arg(long, default_value_t = 1)]
    checkpoint_every: u64,
    /// Plan the optimizer state in host memory (`train.optimizer_offload = "cpu"`).
    #[arg(long)]
    offload: bool,
    /// GB/s one rank writes to the checkpoint directory, for the checkpoint's write time
    /// (`scripts/bench_checkpoint.sh` measures this machine's).
    #[arg(long, default_value_t = 1.0)]
    write_gbps: f64,
    /// Model a step on a cluster of this GPU: A800, A100, H100 or H200 (8-GPU SXM nodes).
    #[arg(long)]
    gpu: Option<String>,
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u64,
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    /// NVLink bus bandwidth inside a node, GB/s (nccl-tests' busbw; default: the GPU's).
    #[arg(long)]
    intra_node_gbps: Option<f64>,
    /// Network bandwidth of one node (all its NICs), GB/s (default: the GPU's usual fabric).
    #[arg(long)]
    inter_node_gbps: Option<f64>,
    /// Forward+backward MFU of one GPU without recomputation, 0..1 (default 0.55, measured on an
    /// H100 for a 1.47B model; see README).
    #[arg(long, conflicts_with = "bench")]
    single_gpu_mfu: Option<f64>,
    /// Take the single-GPU MFU from `baichuan bench --json` output (its forward+backward part).
    #[arg(long)]
    bench: Option<PathBuf>,
    /// Also model 1, 2, 4, ... up to this many nodes, and suggest a bucket size for each.
    #[arg(long, value_name = "MAX_NODES")]
    sweep_nodes: Option<u64>,
    /// With --sweep-nodes: draw MFU against the number of GPUs into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// With --gpu: each gradient bucket of the last micro-batch (size, when its last unit's
    /// backward is done, when its collective runs).
    #[arg(long)]
    buckets: bool,
    /// With --gpu --offload: the host memory bandwidth one rank's offloaded update gets, GB/s
    /// (default 25: a two-socket server's ~200 GB/s shared by 8 ranks; `baichuan bench adamw`
    /// measures a machine's).
    #[arg(long, default_value_t = 25.0)]
    host_gbps: f64,
    /// Print the model beside the published MFU figures it is validated against.
    #[arg(long)]
    published: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    if a.published {
        print!("{}", published_table()?);
        return Ok(());
    }
    let config = a.config.as_ref().context("info needs --config")?;
    let cfg = RunConfig::load(config, &a.overrides)?;
    let model = cfg.model.resolve()?;
    if a.zero_stage > 2 {
        bail!("--zero-stage {}: stages 0, 1 and 2 are supported", a.zero_stage);
    }
    if a.checkpoint_every == 0 {
        bail!("--checkpoint-every 0: must be at least 1 (1 recomputes every block)");
    }
    if a.write_gbps <= 0.0 {
        bail!("--write-gbps {}: must be positive", a.write_gbps);
    }
    let gpu = a.gpu.as_deref().map(lookup_gpu).transpose()?;
    let world = if gpu.is_some() {
        a.gpus_per_node * a.nodes
    } else {
        a.world_size
    };
    let input = PlanInput {
        world_size: world,
        param_bytes: a.dtype.kind().elt_size_in_bytes() as u64,
        zero_stage: a.zero_stage,
        activation_checkpointing: a.activation_checkpointing,
        checkpoint_every: a.checkpoint_every,
        offload: a.offload,
        micro_batch_size: cfg.train.micro_batch_size as u64,
        seq_len: cfg.data.seq_len as u64,
        loss_chunk_tokens: cfg.train.loss_chunk_tokens as u64,
        write_bytes_per_s: a.write_gbps * 1e9,
    };
    print!("{}", report(&model, &input));
    if let Some(gpu) = gpu {
        cluster_report(&a, gpu, &cfg, &model)?;
    } else if a.sweep_nodes.is_some() || a.plot.is_some() {
        bail!("--sweep-nodes and --plot model a cluster: add --gpu A800|A100|H100|H200");
    }
    Ok(())
}

/// The forward+backward MFU of a `baichuan bench --json` result.
fn bench_mfu(path: &PathBuf) -> Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --bench {}", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| {
            format!(
                "{}: no JSON line; HINT: save `baichuan bench --json` output",
                path.display()
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", path.display()))?;
    let num = |k: &str| {
        v[k].as_f64().with_context(|| {
            format!(
                "{}: field `{k}` missing; HINT: the output of `baichuan bench --json`",
                path.display()
            )
        })
    };
    let compute = num("forward_s")? + num("backward_s")?;
    if compute <= 0.0 {
        bail!("{}: forward_s + backward_s is not positive", path.display());
    }
    Ok(num("mfu")? * num("step_s")? / compute)
}

fn lookup_gpu(name: &str) -> Result<cluster::Gpu> {
    cluster::gpu_by_name(name).with_context(|| {
        format!(
            "--gpu {name}: not in the table; HINT: one of {}",
            cluster::GPUS.map(|g| g.name).join(", ")
        )
    })
}

fn cluster_report(a: &InfoArgs, gpu: cluster::Gpu, cfg: &RunConfig, model: &ModelConfig) -> Result<()> {
    let seq = cfg.data.seq_len as u64;
    let mut inp = Inputs::new(ModelShape::from_config(model, seq)?, gpu, a.gpus_per_node, a.nodes);
    let world = inp.world();
    let micro = cfg.train.micro_batch_size as u64;
    let global = cfg.train.global_batch_size as u64;
    if !global.is_multiple_of(micro * world) {
        bail!(
            "train.global_batch_size {global} is not a multiple of micro_batch_size {micro} x {world} GPUs; HINT: \
             --set train.global_batch_size={}",
            micro * world * (global / (micro * world)).max(1)
        );
    }
    inp.micro_batch = micro;
    inp.grad_accum = global / (micro * world);
    inp.zero_stage = a.zero_stage;
    inp.param_bytes = a.dtype.kind().elt_size_in_bytes() as f64;
    inp.bucket_bytes = cfg.dist.bucket_elems(world as usize) as f64 * 4.0;
    let layers = model.num_hidden_layers as u64;
    inp.recompute = if a.activation_checkpointing {
        layers.div_ceil(a.checkpoint_every) as f64 / layers as f64
    } else {
        0.0
    };
    inp.intra_bus_bytes_per_s = a.intra_node_gbps.map(|g| g * 1e9);
    inp.inter_node_bytes_per_s = a.inter_node_gbps.map(|g| g * 1e9);
    let mfu_source = match (a.single_gpu_mfu, &a.bench) {
        (Some(m), _) => {
            inp.single_gpu_mfu = m;
            "given".to_string()
        }
        (None, Some(path)) => {
            // the bench ran with this config's recomputation: its forward+backward rate in
            // model FLOPs is the rate without it times (1 + r/3)
            inp.single_gpu_mfu = bench_mfu(path)? * (1.0 + inp.recompute / 3.0);
            format!("from {}", path.display())
        }
        (None, None) => "assumed; set it with --single-gpu-mfu or --bench".to_string(),
    };
    if a.offload {
        if a.host_gbps <= 0.0 {
            bail!("--host-gbps {}: must be positive", a.host_gbps);
        }
        inp.offload_host_bytes_per_s = Some(a.host_gbps * 1e9);
    }
    let step = cluster::step_time(&inp)?;
    let fabric = inp.fabric();
    println!(
        "step-time model: {world} x {} ({} node(s) of {}), ZeRO {}, {} x {} x {seq} tokens per GPU per step, \
         buckets of {:.0} MB (fp32)",
        gpu.name,
        a.nodes,
        a.gpus_per_node,
        a.zero_stage,
        inp.grad_accum,
        micro,
        inp.bucket_bytes / 1e6
    );
    println!(
        "  links: NVLink bus {:.0} GB/s, network {:.0} GB/s per node, latency {:.1} / {:.1} us per hop; \
         single-GPU MFU {:.1}% ({mfu_source}); recomputed share {:.2}",
        fabric.intra_bus_bytes_per_s / 1e9,
        fabric.node_net_bytes_per_s / 1e9,
        inp.alpha_intra_s * 1e6,
        inp.alpha_inter_s * 1e6,
        100.0 * inp.single_gpu_mfu,
        inp.recompute
    );
    if a.offload {
        println!(
            "  optimizer offloaded: the update at {:.0} GB/s of host memory per rank (--host-gbps), PCIe {:.0} GB/s",
            a.host_gbps,
            gpu.pcie_bytes_per_s / 1e9
        );
    }
    print!("{}", step_lines(&step));
    if a.buckets {
        println!(
            "  buckets of the last micro-batch (ms from the start of its backward, which takes {:.1} ms):",
            step.backward_s / inp.grad_accum as f64 * 1e3
        );
        println!(
            "  {:>6} {:>12} {:>6} {:>10} {:>10} {:>10}",
            "bucket", "elements", "units", "ready", "start", "end"
        );
        for (i, b) in step.buckets.iter().enumerate() {
            println!(
                "  {:>6} {:>12} {:>6} {:>10.2} {:>10.2} {:>10.2}",
                i,
                b.elems,
                b.units,
                b.ready_s * 1e3,
                b.start_s * 1e3,
                b.end_s * 1e3
            );
        }
    }
    let (bytes, best) = cluster::suggest_bucket_bytes(&inp, &cluster::default_bucket_candidates())?;
    println!(
        "  suggested bucket: {:.0} MB (step {:.1} ms, MFU {:.1}%; dist.bucket_mb = {:.0})",
        bytes / 1e6,
        best.step_s * 1e3,
        100.0 * best.mfu,
        bytes / 1e6
    );
    if let Some(max) = a.sweep_nodes {
        sweep(&inp, max, a.plot.as_ref(), gpu.name)?;
    } else if a.plot.is_some() {
        bail!("--plot draws the node sweep: add --sweep-nodes MAX_NODES");
    }
    Ok(())
}

/// The per-term lines of one modelled step.
fn step_lines(s: &StepTime) -> String {
    let mut out = String::new();
    for (name, share) in s.shares() {
        out += &format!(
            "  {name:<24} {:>10.1} ms  {:>5.1}%\n",
            share * s.step_s * 1e3,
            100.0 * share
        );
    }
    out += &format!(
        "  step {:.1} ms, {:.0} tokens/s per GPU, MFU {:.1}% (HFU {:.1}%), limited by {}; {} buckets, \
         communication busy {:.1} ms, exposed {:.1} ms, all-gather {:.1} ms\n",
        s.step_s * 1e3,
        s.tokens_per_s_per_gpu,
        100.0 * s.mfu,
        100.0 * s.hfu,
        s.limiting_term(),
        s.buckets.len(),
        s.comm_busy_s * 1e3,
        s.exposed_comm_s * 1e3,
        s.all_gather_total_s * 1e3
    );
    out
}

fn sweep(inp: &Inputs, max: u64, plot: Option<&PathBuf>, gpu: &str) -> Result<()> {
    let rows = cluster::node_sweep(inp, max)?;
    println!("node sweep (same per-GPU batch, bucket size as above, and the suggested one):");
    println!(
        "{:>6} {:>6} {:>10} {:>14} {:>7} {:>12} {:>12} {:>9}",
        "nodes", "GPUs", "step ms", "tok/s per GPU", "MFU %", "exposed ms", "best bucket", "MFU % at"
    );
    let mut best_points = Vec::new();
    for r in &rows {
        let mut at = inp.clone();
        at.nodes = r.nodes;
        let (bytes, best) = cluster::suggest_bucket_bytes(&at, &cluster::default_bucket_candidates())?;
        println!(
            "{:>6} {:>6} {:>10.1} {:>14.0} {:>7.1} {:>12.2} {:>9.0} MB {:>9.1}",
            r.nodes,
            r.gpus,
            r.step_s * 1e3,
            inp.tokens_per_gpu() / r.step_s,
            100.0 * r.mfu,
            r.exposed_comm_s * 1e3,
            bytes / 1e6,
            100.0 * best.mfu
        );
        best_points.push((r.gpus as f64, 100.0 * best.mfu));
    }
    if let Some(path) = plot {
        // model FLOPs over the peak when only forward and backward take time
        let ideal = inp.single_gpu_mfu / (1.0 + inp.recompute / 3.0);
        use baichuan_plot::{render_png, write_file, Mark, Paint, Panel, Series};
        let panel = Panel {
            title: format!("modelled MFU on {gpu} nodes"),
            x_label: "GPUs".into(),
            y_label: "MFU (%)".into(),
            log_x: true,
            log_y: false,
            series: vec![
                Series {
                    label: format!("bucket {:.0} MB", inp.bucket_bytes / 1e6),
                    points: rows.iter().map(|r| (r.gpus as f64, 100.0 * r.mfu)).collect(),
                    paint: Paint::Palette(0),
                    mark: Mark::Line,
                },
                Series {
                    label: "suggested bucket".into(),
                    points: best_points,
                    paint: Paint::Palette(1),
                    mark: Mark::Dashed,
                },
                Series {
                    label: "compute only (no communication, no optimizer)".into(),
                    points: rows.iter().map(|r| (r.gpus as f64, 100.0 * ideal)).collect(),
                    paint: Paint::Ink,
                    mark: Mark::Dashed,
                },
                // one point of a line draws nothing: it keeps 0% on the axis
                Series {
                    label: String::new(),
                    points: vec![(rows[0].gpus as f64, 0.0)],
                    paint: Paint::Ink,
                    mark: Mark::Line,
                },
            ],
            scale: None,
        };
        let png = render_png(&[panel], 1, 900, 560)?;
        write_file(path, &png)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The validation table: each published case's figure, the prediction at the assumed single-GPU
/// MFU, the miss, and the single-GPU MFU that would reproduce the figure.
fn published_table() -> Result<String> {
    let mut out = String::from(
        "| case | GPUs | published MFU | predicted | miss | single-GPU MFU assumed | implied | limited by | exposed comm + all-gather |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cluster::published_cases() {
        let s = cluster::step_time(&c.inputs)?;
        let implied = cluster::implied_single_gpu_mfu(&c.inputs, c.published_mfu)?;
        out += &format!(
            "| {} | {} | {:.1}% | {:.1}% | {:+.1}% | {:.0}% | {} | {} | {:.1}% of the step |\n",
            c.name,
            c.inputs.world(),
            100.0 * c.published_mfu,
            100.0 * s.mfu,
            100.0 * (s.mfu / c.published_mfu - 1.0),
            100.0 * c.inputs.single_gpu_mfu,
            implied.map_or("above 100%".to_string(), |m| format!("{:.1}%", 100.0 * m)),
            s.limiting_term(),
            100.0 * (s.exposed_comm_s + s.all_gather_s) / s.step_s
        );
    }
    out += "\nsources:\n";
    let mut seen = Vec::new();
    for c in cluster::published_cases() {
        if !seen.contains(&c.source) {
            out += &format!("- {}\n", c.source);
            seen.push(c.source);
        }
    }
    Ok(out)
}
