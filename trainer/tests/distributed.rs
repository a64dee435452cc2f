//! Multi-process data parallelism through `baichuan launch`, on CPU with the tcp backend:
//! - the same global batch as 1 rank x 8 micro-batches, 2 x 4 and 4 x 2 gives the same
//!   per-step losses (1e-5 relative) and final weights for ZeRO stages 0, 1 and 2;
//! - a hostfile of 2 hosts x 2 slots runs through a remote shell (a stand-in for ssh that
//!   runs the command here);
//! - a rank that fails stops the job with that rank's message;
//! - a rank that never arrives makes the rendezvous time out naming it.

mod common;

use common::text;
use std::path::Path;
use std::process::Output;

const TINY: [&str; 20] = [
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.intermediate_size=64",
    "--set",
    "model.num_hidden_layers=2",
    "--set",
    "data.seq_len=16",
    "--set",
    "train.device=cpu",
    "--set",
    "train.micro_batch_size=1",
    "--set",
    "train.global_batch_size=8",
    "--set",
    "data.valid_fraction=0.0",
    "--set",
    "dist.bucket_mb=0.5",
    "--set",
    "train.log_interval=100",
];

fn baichuan(args: &[&str]) -> Output {
    common::baichuan().args(args).output().expect("run baichuan")
}

fn launch_run(dir: &Path, name: &str, nproc: usize, stage: u8, steps: u64) -> std::path::PathBuf {
    let run = dir.join(name);
    let (rd, zs, st) = (
        format!("job.run_dir={}", run.display()),
        format!("train.zero_stage={stage}"),
        format!("train.steps={steps}"),
    );
    let mut args = vec![
        "launch",
        "--nproc",
        &*Box::leak(nproc.to_string().into_boxed_str()),
        "--master-port",
        "0",
        "--config",
        "config/tiny.toml",
    ];
    args.extend(["--set", &rd, "--set", &zs, "--set", &st]);
    args.extend(TINY);
    let out = baichuan(&args);
    assert!(out.status.success(), "{name} failed:\n{}", text(&out));
    run
}

#[test]
fn ranks_and_zero_stages_give_the_same_losses_and_weights() {
    let dir = common::temp_dir("equivalence");
    let steps = 20;
    let reference = launch_run(&dir, "w1", 1, 0, steps);
    let want = common::losses(&reference);
    assert_eq!(want.len(), steps as usize);
    assert!(
        want[steps as usize - 1] < want[0] - 0.5,
        "the reference run learns: {want:?}"
    );
    let ref_model = baichuan_model::hf::load_pretrained(&reference.join("model"), tch::Device::Cpu).unwrap();
    for (nproc, stage) in [(2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2)] {
        let name = format!("w{nproc}-z{stage}");
        let run = launch_run(&dir, &name, nproc, stage, steps);
        let got = common::losses(&run);
        assert_eq!(got.len(), want.len(), "{name}: steps logged");
        for (s, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(((a - b) / b).abs() <= 1e-5, "{name} step {}: loss {a} vs {b}", s + 1);
        }
        let model = baichuan_model::hf::load_pretrained(&run.join("model"), tch::Device::Cpu).unwrap();
        assert_eq!(model.named_parameters().len(), ref_model.named_parameters().len());
        for ((n, a), (_, b)) in model.named_parameters().iter().zip(ref_model.named_parameters()) {
            let rel = (*a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-12);
            assert!(rel <= 1e-5, "{name}: weight {n} differs by {rel:e} (relative)");
        }
    }
}

#[test]
fn two_hosts_of_two_slots_run_through_the_remote_shell() {
    let dir = common::temp_dir("hostfile");
    let hostfile = dir.join("hostfile");
    std::fs::write(&hostfile, "# two fake nodes\nnodeA slots=2\nnodeB slots=2\n").unwrap();
    let shell = format!(
        "bash {}",
        common::root().join("trainer/tests/fixtures/fake_ssh.sh").display()
    );
    let rd = format!("job.run_dir={}", dir.join("run").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut args = vec![
        "launch",
        "--hostfile",
        hostfile.to_str().unwrap(),
        "--remote-shell",
        &shell,
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        &port,
        "--config",
        "config/tiny.toml",
        "--set",
        &rd,
        "--set",
        "train.steps=3",
        "--set",
        "train.zero_stage=1",
    ];
    args.extend(TINY);
    let out = baichuan(&args);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for needle in [
        "fake-ssh: running on nodeA",
        "fake-ssh: running on nodeB",
        "[rank 0] model:",
        "4 ranks",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
    }
    assert_eq!(common::losses(&dir.join("run")).len(), 3);

    // --exclude drops a host: 2 ranks remain
    let mut args = vec![
        "launch",
        "--hostfile",
        hostfile.to_str().unwrap(),
        "--exclude",
        "nodeB",
        "--remote-shell",
        &shell,
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        &port,
        "--config",
        "config/tiny.toml",
        "--set",
        &rd,
        "--set",
        "train.steps=1",
    ];
    args.extend(TINY);
    let t = text(&baichuan(&args));
    assert!(t.contains("2 ranks") && !t.contains("nodeB"), "{t}");
}

#[test]
fn a_failing_rank_stops_the_job_with_its_message() {
    let dir = common::temp_dir("failing-rank");
    let hostfile = dir.join("hostfile");
    std::fs::write(&hostfile, "localhost slots=1\nbadnode slots=1\n").unwrap();
    let shell = format!(
        "bash {}",
        common::root().join("trainer/tests/fixtures/fake_ssh.sh").display()
    );
    let rd = format!("job.run_dir={}", dir.join("run").display());
    let started = std::time::Instant::now();
    let mut args = vec![
        "launch",
        "--hostfile",
        hostfile.to_str().unwrap(),
        "--remote-shell",
        &shell,
        "--master-port",
        "0",
        "--config",
        "config/tiny.toml",
        "--set",
        &rd,
    ];
    args.extend(TINY);
    let out = baichuan(&args);
    let t = text(&out);
    assert!(!out.status.success());
    assert!(
        t.contains("rank 1 on badnode failed") && t.contains("Connection refused (simulated)"),
        "{t}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "rank 0 was stopped instead of waiting for its timeout"
    );

    let bad = dir.join("bad-hostfile");
    std::fs::write(&bad, "localhost slots=1\nnode2 gpus=4\n").unwrap();
    let t = text(&baichuan(&[
        "launch",
        "--hostfile",
        bad.to_str().unwrap(),
        "--config",
        "config/tiny.toml",
    ]));
    assert!(t.contains("bad-hostfile:2:") && t.contains("slots=<n>"), "{t}");
}

#[test]
fn a_missing_rank_makes_the_rendezvous_time_out_naming_it() {
    let dir = common::temp_dir("missing-rank");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let rd = format!("job.run_dir={}", dir.join("run").display());
    let mut args = vec![
        "train",
        "--config",
        "config/tiny.toml",
        "--set",
        &rd,
        "--set",
        "dist.timeout_s=3",
    ];
    args.extend(TINY);
    let out = common::baichuan()
        .args(&args)
        .envs([
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", &port),
            ("BAICHUAN_JOB_TOKEN", "t"),
        ])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success());
    assert!(
        t.contains("rendezvous timed out after 3s") && t.contains("rank(s) 1 did not arrive"),
        "{t}"
    );
}
