//! `baichuan info`: parameter count, FLOPs per token and a per-GPU memory plan for a world
//! size, precision, ZeRO stage and activation-checkpointing choice, computed from the shapes
//! alone (nothing is allocated), so a user can size a cluster before asking for one.
//!
//! Activation memory follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in
//! Large Transformer Models"), per layer `s*b*h*34` bytes at 2-byte activations when the
//! attention scores are never materialised (flash attention); full recomputation keeps only
//! each block's input (`2*s*b*h` bytes) plus one block's working set. Optimizer state follows
//! ZeRO (Rajbhandari et al. 2020): fp32 master and both AdamW moments are 12 bytes per
//! parameter, divided over the ranks from stage 1, the fp32 gradient from stage 2.
//!
//! With optimizer offload (ZeRO-Offload, Ren et al. 2021) the master weights and moments
//! leave the GPU for host memory, which also holds the reduced fp32 gradient of the shard: 16
//! host bytes per parameter of the rank's shard, plus, in 16-bit precision, one staging chunk
//! of 2^24 parameters (32 MiB) through which updated chunks go back to the device. The fit table compares the device total, plus 3 GiB for the
//! CUDA context and allocator slack, with each GPU's memory as libtorch reports it.
//!
//! The checkpoint's size follows its layout (see `checkpoint/`): the weights in the parameter
//! dtype, and the fp32 master weights and both moments; its write time is that of the rank
//! that writes most (rank 0: the weights and its optimizer shard) at a given per-rank write
//! rate.

use baichuan_model::ModelConfig;

/// The choices that decide the per-GPU memory.
#[derive(Debug, Clone)]
pub struct PlanInput {
    pub world_size: u64,
    /// Bytes per parameter and activation element: 4 (fp32) or 2 (bf16/fp16).
    pub param_bytes: u64,
    pub zero_stage: u8,
    pub activation_checkpointing: bool,
    /// With activation checkpointing: every this-many-th block is recomputed (blocks 0, n,
    /// 2n, ...); 1 recomputes every block.
    pub checkpoint_every: u64,
    /// Master weights and moments in host memory (`train.optimizer_offload = "cpu"`).
    pub offload: bool,
    pub micro_batch_size: u64,
    pub seq_len: u64,
    /// Tokens per cross-entropy chunk (bounds the fp32 logits).
    pub loss_chunk_tokens: u64,
    /// Bytes per second one rank writes to the checkpoint directory.
    pub write_bytes_per_s: f64,
}

/// Bytes per GPU, by component.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub weights: u64,
    pub grads: u64,
    pub master_and_moments: u64,
    pub fp32_grads: u64,
    pub activations: u64,
    pub logits: u64,
    /// Host memory per rank for the offloaded state (0 without offload).
    pub host: u64,
}

impl MemoryPlan {
    /// Device bytes.
    pub fn total(&self) -> u64 {
        self.weights + self.grads + self.master_and_moments + self.fp32_grads + self.activations + self.logits
    }
}

/// GPUs and their memory as libtorch reports it (`total_memory`), in GiB.
pub const GPUS: [(&str, f64); 5] = [
    ("A100 40GB", 39.4),
    ("A800 / A100 80GB", 79.2),
    ("H100 80GB", 79.1),
    ("H200 141GB", 139.8),
    ("B200 180GB", 178.4),
];

/// Parameters per offloaded chunk (the optimizer's `OFFLOAD_CHUNK`).
pub const OFFLOAD_CHUNK: u64 = 1 << 24;

/// The CUDA context and the caching allocator's slack, GiB, added to the plan for the fit.
pub const SLACK_GIB: f64 = 3.0;

pub fn plan(c: &ModelConfig, p: &PlanInput) -> MemoryPlan {
    let n = c.num_parameters();
    let w = p.world_size.max(1);
    let (s, b, h) = (p.seq_len, p.micro_batch_size, c.hidden_size as u64);
    let layers = c.num_hidden_layers as u64;
    let mixed = p.param_bytes < 4;
    let weights = n * p.param_bytes;
    // gradients in the parameter dtype, as autograd produces them; stage 2 frees each
    // bucket after its reduce-scatter, so roughly two blocks' worth stay alive
    let grads = if p.zero_stage >= 2 {
        2 * c.block_parameters() * p.param_bytes
    } else {
        n * p.param_bytes
    };
    // fp32 master (only in mixed precision; in fp32 the weights are the master) + 2 moments
    let state_per_param = if mixed || p.offload { 12 } else { 8 };
    let shard = if p.zero_stage >= 1 { n.div_ceil(w) } else { n };
    let master_and_moments = if p.offload { 0 } else { shard * state_per_param };
    // offload: the state, the host copy of the reduced gradient, and a 16-bit staging chunk
    let host = if p.offload {
        shard * (state_per_param + 4)
            + if mixed {
                shard.min(OFFLOAD_CHUNK) * p.param_bytes
            } else {
                0
            }
    } else {
        0
    };
    let fp32_grads = if p.zero_stage >= 1 { n * 4 / w } else { n * 4 };
    // activation bytes scale with the element size (34 s b h is for 2-byte activations)
    let act_scale = p.param_bytes as f64 / 2.0;
    let per_layer = (34 * s * b * h) as f64 * act_scale;
    // recomputed blocks keep their input; the others all of their activations
    let recomputed = if p.activation_checkpointing {
        layers.div_ceil(p.checkpoint_every.max(1))
    } else {
        0
    };
    let activations = if recomputed > 0 {
        (recomputed as f64 * (2 * s * b * h) as f64 * act_scale + (layers - recomputed + 1) as f64 * per_layer) as u64
    } else {
        (layers as f64 * per_layer) as u64
    };
    // one chunk of fp32 logits and its gradient
    let logits = p.loss_chunk_tokens.min(s * b) * c.vocab_size as u64 * 4 * 2;
    MemoryPlan {
        weights,
        grads,
        master_and_moments,
        fp32_grads,
        activations,
        logits,
        host,
    }
}

/// Whether the plan fits each GPU of [`GPUS`] (device total plus [`SLACK_GIB`]).
pub fn fits(m: &MemoryPlan) -> Vec<(&'static str, f64, bool)> {
    let need = gib(m.total()) + SLACK_GIB;
    GPUS.iter().map(|&(name, cap)| (name, cap, need <= cap)).collect()
}

/// The checkpoint of a run, in bytes, and how long its slowest writer takes.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPlan {
    /// model.safetensors: every weight in the parameter dtype.
    pub weights: u64,
    /// optim/: fp32 master weights, exp_avg and exp_avg_sq of every parameter, over all shards.
    pub optimizer: u64,
    /// Bytes rank 0 writes (the weights, and its shard: all of optim/ below ZeRO stage 1).
    pub largest_writer: u64,
    /// Seconds rank 0 takes at `write_bytes_per_s`.
    pub write_s: f64,
}

impl CheckpointPlan {
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer
    }
}

pub fn checkpoint_plan(c: &ModelConfig, p: &PlanInput) -> CheckpointPlan {
    let n = c.num_parameters();
    let weights = n * p.param_bytes;
    let optimizer = 12 * n;
    let shard = if p.zero_stage >= 1 {
        optimizer.div_ceil(p.world_size.max(1))
    } else {
        optimizer
    };
    let largest_writer = weights + shard;
    CheckpointPlan {
        weights,
        optimizer,
        largest_writer,
        write_s: largest_writer as f64 / p.write_bytes_per_s.max(1.0),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The text `baichuan info` prints.
pub fn report(c: &ModelConfig, p: &PlanInput) -> String {
    let m = plan(c, p);
    let mut out = String::new();
    out += &format!(
        "parameters: {} ({} in the input embedding, {} per block)\n",
        c.num_parameters(),
        c.embedding_parameters(),
        c.block_parameters()
    );
    out += &format!(
        "FLOPs per token at seq {}: {:.4e} (6 * (N - N_embedding) + 12 * L * d * T)\n",
        p.seq_len,
        c.flops_per_token(p.seq_len as i64)
    );
    out += &format!(
        "memory per GPU: world {}, {}-byte params, ZeRO stage {}, activation checkpointing {}, optimizer {}, \
         micro-batch {} x {}\n",
        p.world_size,
        p.param_bytes,
        p.zero_stage,
        match (p.activation_checkpointing, p.checkpoint_every) {
            (false, _) => "off".to_string(),
            (true, 0 | 1) => "full".to_string(),
            (true, n) => format!("every {n} blocks"),
        },
        if p.offload {
            "offloaded to host memory"
        } else {
            "on the GPU"
        },
        p.micro_batch_size,
        p.seq_len
    );
    for (name, bytes) in [
        ("weights", m.weights),
        ("gradients", m.grads),
        ("master + AdamW moments", m.master_and_moments),
        ("fp32 gradient (reduced)", m.fp32_grads),
        ("activations", m.activations),
        ("logits chunk (fp32, + grad)", m.logits),
    ] {
        out += &format!("  {name:<28} {:>9.2} GiB\n", gib(bytes));
    }
    out += &format!(
        "  {:<28} {:>9.2} GiB (plus allocator slack and the CUDA context, ~1-3 GiB)\n",
        "total",
        gib(m.total())
    );
    if p.offload {
        out +=
            &format!(
            "host memory per rank (offload): {:.2} GiB (fp32 master, moments and reduced gradient of the shard{})\n",
            gib(m.host),
            if p.param_bytes < 4 { ", a 16-bit staging chunk" } else { "" }
        );
    }
    let row: Vec<String> = fits(&m)
        .iter()
        .map(|(name, cap, ok)| format!("{name} ({cap:.0} GiB): {}", if *ok { "fits" } else { "does not fit" }))
        .collect();
    out += &format!("fits (total + {SLACK_GIB:.0} GiB slack): {}\n", row.join("; "));
    let k = checkpoint_plan(c, p);
    out += &format!(
        "checkpoint: {:.2} GiB ({:.2} GiB weights + {:.2} GiB fp32 master and moments); rank 0 writes {:.2} GiB, \
         ~{:.0} s at {:.1} GB/s per rank (--write-gbps)\n",
        gib(k.total()),
        gib(k.weights),
        gib(k.optimizer),
        gib(k.largest_writer),
        k.write_s,
        p.write_bytes_per_s / 1e9
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(world: u64, stage: u8, ckpt: bool) -> PlanInput {
        PlanInput {
            world_size: world,
            param_bytes: 2,
            zero_stage: stage,
            activation_checkpointing: ckpt,
            checkpoint_every: 1,
            offload: false,
            micro_batch_size: 1,
            seq_len: 4096,
            loss_chunk_tokens: 4096,
            write_bytes_per_s: 2e9,
        }
    }

    #[test]
    fn replicated_adamw_for_7b_does_not_fit_80gb_but_zero1_on_8_does() {
        let c = ModelConfig::baichuan_7b();
        let plain = plan(&c, &input(8, 0, true));
        // 2 + 2 + 12 + 4 bytes per parameter = 20 * 7.0e9 = 140 GB before activations
        assert_eq!(
            plain.weights + plain.grads + plain.master_and_moments + plain.fp32_grads,
            20 * 7_000_559_616
        );
        assert!(gib(plain.total()) > 80.0);
        let zero1 = plan(&c, &input(8, 1, true));
        assert!(gib(zero1.total()) < 80.0, "{}", gib(zero1.total()));
        let zero2 = plan(&c, &input(8, 2, true));
        assert!(zero2.total() < zero1.total());
    }

    /// The numbers: 7B on one GPU needs ~134 GiB with the state on the GPU (fits only
    /// the H200), and with offload the device keeps weights, gradients and activations
    /// (fits 80 GB) while the host holds 16 bytes per parameter and a 32 MiB staging chunk.
    #[test]
    fn offload_moves_twelve_bytes_per_parameter_to_the_host() {
        let c = ModelConfig::baichuan_7b();
        let n = c.num_parameters();
        let on_gpu = plan(&c, &input(1, 0, true));
        assert!((130.0..136.0).contains(&gib(on_gpu.total())), "{}", gib(on_gpu.total()));
        let fit = |m: &MemoryPlan| fits(m).iter().filter(|f| f.2).map(|f| f.0).collect::<Vec<_>>();
        assert_eq!(fit(&on_gpu), vec!["H200 141GB", "B200 180GB"]);
        let off = plan(
            &c,
            &PlanInput {
                offload: true,
                ..input(1, 0, true)
            },
        );
        assert_eq!(off.master_and_moments, 0);
        assert_eq!(on_gpu.total() - off.total(), 12 * n);
        assert_eq!(off.host, 16 * n + 2 * (1 << 24));
        assert!(fit(&off).contains(&"H100 80GB") && !fit(&off).contains(&"A100 40GB"));
        // sharded: each of 8 ranks offloads an eighth
        let off8 = plan(
            &c,
            &PlanInput {
                offload: true,
                ..input(8, 2, true)
            },
        );
        assert_eq!(off8.host, 16 * n.div_ceil(8) + 2 * (1 << 24));
    }

    #[test]
    fn partial_checkpointing_keeps_the_other_blocks_activations() {
        let c = ModelConfig::baichuan_7b();
        let every4 = plan(
            &c,
            &PlanInput {
                checkpoint_every: 4,
                ..input(1, 0, true)
            },
        );
        // 8 of 32 blocks recomputed (2 units each), 24 + 1 keep 34 units of s*b*h
        assert_eq!(every4.activations, (8 * 2 + 25 * 34) * 4096 * 4096);
    }

    #[test]
    fn checkpointing_cuts_activation_memory() {
        let c = ModelConfig::baichuan_7b();
        let full = plan(&c, &input(8, 1, false)).activations;
        let ckpt = plan(&c, &input(8, 1, true)).activations;
        // 32 layers * 34 vs 32 * 2 + 34 units of s*b*h
        assert_eq!(full, 32 * 34 * 4096 * 4096);
        assert_eq!(ckpt, (32 * 2 + 34) * 4096 * 4096);
    }

    #[test]
    fn the_7b_checkpoint_is_weights_plus_twelve_bytes_per_parameter() {
        let c = ModelConfig::baichuan_7b();
        let n = c.num_parameters();
        // bf16 weights and fp32 master + two moments: about 98 GB for 7B
        let k = checkpoint_plan(&c, &input(8, 1, false));
        assert_eq!(k.total(), 14 * n);
        assert!((97e9..99e9).contains(&(k.total() as f64)), "{}", k.total());
        // rank 0 writes the weights and one eighth of the optimizer state
        assert_eq!(k.largest_writer, 2 * n + (12 * n).div_ceil(8));
        assert!((k.write_s - k.largest_writer as f64 / 2e9).abs() < 1e-9);
        // below stage 1 rank 0 writes all of it
        assert_eq!(checkpoint_plan(&c, &input(8, 0, false)).largest_writer, 14 * n);
    }
}
