//! Optimizer offload (`train.optimizer_offload = "cpu"`) end to end on CPU ranks, fp32, tiny
//! model: the state lives in its own host buffers, each bucket's reduced gradient is copied
//! there after its collective (through the communicator's queue), and the parameters are
//! written back in chunks. On the CPU the update is the same host code with and without
//! offload, so the two must agree bit for bit:
//! - per-step losses and final weights equal with and without offload at world sizes 1 and 2,
//!   ZeRO stages 0, 1 and 2, with accumulated micro-batches;
//! - a checkpoint saved with offload resumes without it, and the other way round (2 ranks,
//!   ZeRO 2), ending with the weights of an uninterrupted run; the offloaded save is the
//!   synchronous one, written from the live host buffers without a copy.
//!
//! bf16 and fp16 (the loss scaler's unscaling folded into the host update) are in
//! `precision.rs`.

mod common;

use std::path::Path;

const TINY: &str = "--set model.hidden_size=32 --set model.intermediate_size=64 --set model.num_hidden_layers=2 \
    --set data.seq_len=16 --set train.device=cpu --set train.micro_batch_size=1 --set train.global_batch_size=4 \
    --set data.valid_fraction=0.0 --set train.steps=8 --set checkpoint.interval_steps=4 --set train.log_interval=100 \
    --set dist.bucket_mb=1";

fn args(world: usize, run: &Path, extra: &str) -> Vec<String> {
    let head = if world == 1 {
        "train".to_string()
    } else {
        format!("launch --nproc {world} --master-port 0")
    };
    common::tiny_args(&head, run, TINY, extra)
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("model/model.safetensors")).unwrap()
}

const OFFLOAD: &str = "--set train.optimizer_offload=cpu";

#[test]
fn offload_gives_the_same_bits_at_every_zero_stage() {
    let dir = common::temp_dir("offload-bits");
    for (world, stage) in [(1, 0), (2, 0), (2, 1), (2, 2)] {
        let name = format!("w{world}z{stage}");
        let stage_set = format!("--set train.zero_stage={stage}");
        let plain = dir.join(format!("plain-{name}"));
        common::run_ok(&args(world, &plain, &stage_set));
        let off = dir.join(format!("offload-{name}"));
        let text = common::run_ok(&args(world, &off, &format!("{stage_set} {OFFLOAD}")));
        assert!(text.contains("offloaded: state in host memory"), "{name}: {text}");
        assert_eq!(common::losses(&off).len(), 8, "{name}");
        assert_eq!(common::losses(&off), common::losses(&plain), "{name}: per-step losses");
        assert!(weights(&off) == weights(&plain), "{name}: final weights differ");
    }
}

#[test]
fn checkpoints_resume_across_the_switch() {
    let dir = common::temp_dir("offload-resume");
    let z2 = "--set train.zero_stage=2";
    let straight = dir.join("straight");
    common::run_ok(&args(2, &straight, z2));
    // saved synchronously from the live offloaded buffers (no copy), then asynchronously
    let sync = format!("{OFFLOAD} --set checkpoint.async_save=false");
    for (name, first, second) in [("on-then-off", sync.as_str(), ""), ("off-then-on", "", OFFLOAD)] {
        let run = dir.join(name);
        common::run_ok(&args(2, &run, &format!("{z2} {first} -- --stop-after 4")));
        assert_eq!(common::losses(&run).len(), 4, "{name}");
        let text = common::run_ok(&args(2, &run, &format!("{z2} {second}")));
        assert!(
            text.contains("resumed from") && text.contains("step-00000004"),
            "{name}: {text}"
        );
        assert_eq!(
            common::losses(&run),
            common::losses(&straight),
            "{name}: per-step losses"
        );
        assert!(weights(&run) == weights(&straight), "{name}: final weights differ");
    }
}
