//! Learning-rate schedules end to end on CPU (tiny model, one stream of the bundled sample):
//! - `wsd` logs the rates of its phases: warm-up, the peak, then the decay to `min_lr` at the
//!   last step;
//! - a decay branch from a `constant` run's checkpoint starts exactly where the parent stands
//!   (its first loss is the parent's at that step, bit for bit), decays to `min_lr`, records
//!   its parent in its manifests, and, stopped and run again with the same command, resumes its
//!   own checkpoint to the same losses as an uninterrupted branch;
//! - branches from a cosine run, from the warm-up, or into the parent's directory are refused.

mod common;

use std::path::Path;

use common::{run, run_ok};

const TINY: &str = "--set model.hidden_size=32 --set model.intermediate_size=64 --set model.num_hidden_layers=1 \
    --set data.seq_len=16 --set train.device=cpu --set train.micro_batch_size=2 --set train.global_batch_size=4 \
    --set data.valid_fraction=0.0 --set data.sources=[] --set train.log_interval=100 --set train.warmup_steps=2 \
    --set train.lr=3e-3 --set train.min_lr=3e-4 --set checkpoint.keep_last=10";

fn args(run_dir: &Path, extra: &str) -> Vec<String> {
    common::tiny_train_args(run_dir, TINY, extra)
}

fn lrs(run: &Path) -> Vec<f64> {
    common::metrics(run).iter().map(|r| r["lr"].as_f64().unwrap()).collect()
}

#[test]
fn wsd_logs_warm_up_stable_and_decay() {
    let dir = common::temp_dir("sched-wsd");
    let run_dir = dir.join("run");
    run_ok(&args(
        &run_dir,
        "--set train.schedule=\"wsd\" --set train.steps=10 --set train.decay_steps=4 --set train.decay_shape=\"1-sqrt\"",
    ));
    let lr = lrs(&run_dir);
    // by hand: warm-up 1.5e-3, 3e-3; stable 3e-3 for steps 3..6; decay x = 1/4 .. 1:
    // 3e-4 + 2.7e-3 * (1 - sqrt(x)) = 1.65e-3, 1.0908117e-3, 6.617314e-4, 3e-4
    let want = [
        1.5e-3,
        3e-3,
        3e-3,
        3e-3,
        3e-3,
        3e-3,
        1.65e-3,
        1.090_811_7e-3,
        6.617_314e-4,
        3e-4,
    ];
    assert_eq!(lr.len(), want.len());
    for (i, (a, b)) in lr.iter().zip(want).enumerate() {
        assert!((a - b).abs() < 1e-9, "step {}: {a} vs {b}", i + 1);
    }
}

#[test]
fn a_decay_branch_continues_its_parent_and_resumes_itself() {
    let dir = common::temp_dir("sched-branch");
    let parent = dir.join("parent");
    run_ok(&args(
        &parent,
        "--set train.schedule=\"constant\" --set train.steps=10 --set checkpoint.interval_steps=4",
    ));
    let parent_losses = common::losses(&parent);
    let from = parent.join("checkpoints/step-00000004");
    let branch = |name: &str, extra: &str| {
        let run_dir = dir.join(name);
        let a = args(
            &run_dir,
            &format!(
                "--set train.schedule=\"constant\" --set train.steps=10 --decay-from {} --decay-steps 4 {extra}",
                from.display()
            ),
        );
        (run_ok(&a), run_dir)
    };
    let (text, straight) = branch("branch", "");
    assert!(text.contains("decay branch: from"), "{text}");
    let losses = common::losses(&straight); // steps 5 to 8
    let rows = common::metrics(&straight);
    assert_eq!(rows.first().unwrap()["step"], 5);
    assert_eq!(rows.last().unwrap()["step"], 8);
    // the branch's first step is the parent's step 5: same weights, same batch
    assert_eq!(losses[0], parent_losses[4], "{losses:?} {parent_losses:?}");
    // then the decay: 3e-4 + 2.7e-3 * (1 - x), x = 1/4 .. 1 (linear, the default shape)
    let lr = lrs(&straight);
    for (i, want) in [2.325e-3, 1.65e-3, 9.75e-4, 3e-4].iter().enumerate() {
        assert!((lr[i] - want).abs() < 1e-9, "{lr:?}");
    }
    assert_ne!(
        losses[2], parent_losses[6],
        "the branch's rate differs from the parent's"
    );
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight.join("checkpoints/step-00000008/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["parent"]["step"], 4, "{}", manifest["parent"]);
    assert!(manifest["parent"]["checkpoint"]
        .as_str()
        .unwrap()
        .ends_with("step-00000004"));
    // stopped after step 6 and started again with the same command: it resumes itself
    let (_, stopped) = branch("stopped", "--stop-after 6");
    let (text, _) = branch("stopped", "");
    assert!(text.contains("resuming the branch's own latest checkpoint"), "{text}");
    assert!(text.contains("step-00000006"), "{text}");
    assert_eq!(common::losses(&stopped), losses);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stopped.join("checkpoints/step-00000008/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["parent"]["step"], 4, "the resumed branch keeps its parent");
}

#[test]
fn decay_branches_that_would_not_continue_their_parent_are_refused() {
    let dir = common::temp_dir("sched-refused");
    let cosine = dir.join("cosine");
    run_ok(&args(&cosine, "--set train.steps=4 --set checkpoint.interval_steps=1"));
    let constant = dir.join("constant");
    run_ok(&args(
        &constant,
        "--set train.schedule=\"constant\" --set train.steps=4 --set checkpoint.interval_steps=1",
    ));
    for (run_dir, from, want) in [
        (dir.join("b1"), cosine.join("checkpoints/step-00000003"), "\"cosine\""),
        (
            dir.join("b2"),
            constant.join("checkpoints/step-00000001"),
            "outside its run's stable phase",
        ),
        (
            constant.clone(),
            constant.join("checkpoints/step-00000003"),
            "its parent's checkpoint directory",
        ),
    ] {
        let a = args(&run_dir, &format!("--decay-from {} --decay-steps 2", from.display()));
        let (ok, text) = run(&a);
        assert!(
            !ok && text.contains(want) && text.contains("HINT"),
            "want {want:?}:\n{text}"
        );
    }
}
