//! Checkpoints end to end on CPU (fp32, tiny model):
//! - exact continuation: 20 steps straight against 10, stop, resume, 10 more: identical
//!   per-step losses and bitwise-identical final weights, for 1 rank and for 2 ranks at ZeRO 1
//!   (on config/tiny.toml's two-source mixture), and for 1 rank on a single stream;
//! - resharding: saved by 4 ranks at ZeRO 1, resumed by 2 and by 1: the same losses (1e-5);
//! - crash safety: `kill -9` during saves leaves a complete previous checkpoint; a corrupted
//!   file is detected and the previous checkpoint used;
//! - recovery: `kill -9` of one rank of a 2-rank `launch` run started with `--no-resume`: the
//!   launcher restarts the job, which resumes (the restart drops `--no-resume`) and ends with
//!   the weights of an uninterrupted run; a stopped (SIGSTOP) rank
//!   is detected within the configured timeout, by rank.

mod common;

use common::run_ok as ok;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = "--set model.hidden_size=32 --set model.intermediate_size=64 --set model.num_hidden_layers=2 \
    --set data.seq_len=16 --set train.device=cpu --set train.micro_batch_size=1 --set train.global_batch_size=4 \
    --set data.valid_fraction=0.0 --set train.steps=20 --set checkpoint.interval_steps=5 --set train.log_interval=100";

fn args(head: &str, run: &Path, extra: &str) -> Vec<String> {
    common::tiny_args(head, run, TINY, extra)
}

fn baichuan(a: &[String]) -> Command {
    let mut c = common::baichuan();
    c.args(a);
    c
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("model/model.safetensors")).unwrap()
}

fn launch_head(n: usize) -> String {
    format!("launch --nproc {n} --master-port 0")
}

#[test]
fn resuming_continues_exactly_for_1_and_2_ranks() {
    let dir = common::temp_dir("ckpt-exact");
    for (name, head, extra, stop) in [
        ("1", "train".to_string(), "", "--stop-after 10"),
        (
            "1-single-stream",
            "train".to_string(),
            "--set data.sources=[]",
            "--stop-after 10",
        ),
        ("2z1", launch_head(2), "--set train.zero_stage=1", "-- --stop-after 10"),
    ] {
        let straight = dir.join(format!("straight-{name}"));
        ok(&args(&head, &straight, extra));
        let resumed = dir.join(format!("resumed-{name}"));
        ok(&args(&head, &resumed, &format!("{extra} {stop}")));
        assert_eq!(common::losses(&resumed).len(), 10);
        let text = ok(&args(&head, &resumed, extra));
        assert!(
            text.contains("resumed from") && text.contains("step-00000010"),
            "{text}"
        );
        assert!(!text.contains("training stream holds"), "the same data: {text}");
        assert_eq!(
            common::losses(&resumed),
            common::losses(&straight),
            "{name}: per-step losses"
        );
        assert!(weights(&resumed) == weights(&straight), "{name}: final weights differ");
    }
}

#[test]
fn resuming_on_other_data_says_so() {
    let dir = common::temp_dir("ckpt-other-data");
    let run = dir.join("run");
    ok(&args("train", &run, "--stop-after 5"));
    // a validation hold-out now takes tokens from the training stream
    let text = ok(&args(
        "train",
        &run,
        "--set data.valid_fraction=0.02 --set train.steps=7",
    ));
    assert!(text.contains("resumed from"), "{text}");
    assert!(
        text.contains("warning: the training stream holds") && text.contains("data.valid_split"),
        "{text}"
    );
}

#[test]
fn a_checkpoint_of_4_ranks_resumes_at_2_and_at_1() {
    let dir = common::temp_dir("ckpt-reshard");
    let straight = dir.join("straight");
    ok(&args(&launch_head(4), &straight, "--set train.zero_stage=1"));
    let want = common::losses(&straight);
    let saved = dir.join("saved");
    ok(&args(
        &launch_head(4),
        &saved,
        "--set train.zero_stage=1 -- --stop-after 10",
    ));
    let checkpoint = saved.join("checkpoints/step-00000010");
    for (n, stage) in [(2usize, 1u8), (1, 0)] {
        let run = dir.join(format!("at-{n}"));
        let (head, tail) = if n == 1 {
            (format!("train --resume {}", checkpoint.display()), String::new())
        } else {
            (launch_head(n), format!("-- --resume {}", checkpoint.display()))
        };
        let text = ok(&args(&head, &run, &format!("--set train.zero_stage={stage} {tail}")));
        assert!(text.contains("saved by 4 rank(s)"), "{text}");
        let got = common::losses(&run);
        assert_eq!(want.len(), 20);
        let tail = &got[got.len() - 10..];
        for (s, (a, b)) in tail.iter().zip(&want[10..]).enumerate() {
            assert!(((a - b) / b).abs() <= 1e-5, "{n} ranks, step {}: {a} vs {b}", s + 11);
        }
    }
}

fn ckpt_dirs(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn kill_during_saves_and_corruption_fall_back_to_a_complete_checkpoint() {
    let dir = common::temp_dir("ckpt-crash");
    let run = dir.join("run");
    // a checkpoint every step, so a kill lands in or near a save
    let mut child = baichuan(&args(
        "train",
        &run,
        "--set checkpoint.interval_steps=1 --set checkpoint.keep_last=0 --set train.steps=200",
    ))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let start = Instant::now();
    while ckpt_dirs(&run)
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with(".tmp"))
        .count()
        < 3
    {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoints appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    let latest = run.join("checkpoints").join(latest.trim());
    baichuan_trainer::checkpoint::verify(&latest).expect("the checkpoint `latest` names is complete");

    // damage the latest checkpoint's weights: resume reports it and uses the newest other one
    // that verifies (the kill may land after a newer directory was renamed into place but
    // before `latest` was rewritten, so that one can be newer than `latest`)
    let previous = ckpt_dirs(&run)
        .into_iter()
        .rfind(|p| {
            p != &latest && !p.to_string_lossy().ends_with(".tmp") && baichuan_trainer::checkpoint::verify(p).is_ok()
        })
        .unwrap();
    let f = latest.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    let prev_step: u64 = previous.file_name().unwrap().to_string_lossy()["step-".len()..]
        .parse()
        .unwrap();
    let text = ok(&args(
        "train",
        &run,
        &format!("--set train.steps=200 --stop-after {}", prev_step + 1),
    ));
    assert!(text.contains("model.safetensors is damaged"), "{text}");
    assert!(text.contains(&format!("resumed from {}", previous.display())), "{text}");
}

fn children_with_rank(parent: u32, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|kv| kv == format!("RANK={rank}").as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn the_launcher_recovers_from_a_killed_rank_and_names_a_stopped_one() {
    let dir = common::temp_dir("ckpt-recover");
    let straight = dir.join("straight");
    ok(&args(&launch_head(2), &straight, "--set train.steps=60"));

    let run = dir.join("run");
    let launcher = baichuan(&args(
        &launch_head(2),
        &run,
        "--set train.steps=60 --set launch.max_restarts=2 --set dist.timeout_s=20 -- --no-resume",
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let start = Instant::now();
    while !run.join("checkpoints/latest").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no complete checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = children_with_rank(launcher.id(), 1).expect("rank 1 is a child of the launcher");
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let out = launcher.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("restarting the job") && text.contains("resumed from"),
        "{text}"
    );
    assert!(
        weights(&run) == weights(&straight),
        "the recovered run ends with the uninterrupted run's weights"
    );

    // a stopped rank: its peers time out naming it, the launcher stops the job
    let (ok, text, waited) = stop_rank_1(&dir.join("stopped"), "--set dist.timeout_s=8");
    assert!(!ok);
    let named = text.contains("receiving from rank 1") || text.contains("sending to rank 1");
    assert!(named, "the error names the silent rank:\n{text}");
    assert!(
        waited < Duration::from_secs(40),
        "detected after {waited:?} with an 8 s timeout"
    );
}

/// Starts a 2-rank launch in `run` with `extra` settings, SIGSTOPs rank 1 once two steps are
/// logged, and returns the launcher's success, output and how long it ran after the stop.
fn stop_rank_1(run: &Path, extra: &str) -> (bool, String, Duration) {
    let launcher = baichuan(&args(
        &launch_head(2),
        run,
        &format!("--set train.steps=100000 --set checkpoint.interval_steps=0 {extra}"),
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let start = Instant::now();
    while !run.join("metrics.jsonl").exists()
        || std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
            < 2
    {
        assert!(start.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = children_with_rank(launcher.id(), 1).expect("rank 1");
    Command::new("kill")
        .args(["-STOP", &victim.to_string()])
        .status()
        .unwrap();
    let stopped_at = Instant::now();
    let out = launcher.wait_with_output().unwrap();
    let waited = stopped_at.elapsed();
    let _ = Command::new("kill")
        .args(["-9", &victim.to_string()])
        .stderr(Stdio::null())
        .status();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text, waited)
}

/// NCCL collectives cannot time out; the loop's watchdog ends a rank that stops making progress.
/// Shown with TCP, whose own timeout is set far above the watchdog's limit.
#[test]
fn the_watchdog_ends_a_rank_stuck_waiting_for_a_stopped_peer() {
    let dir = common::temp_dir("ckpt-watchdog");
    let (ok, text, waited) = stop_rank_1(&dir.join("run"), "--set dist.timeout_s=300 --set dist.watchdog_s=6");
    assert!(!ok);
    assert!(
        text.contains("watchdog: rank 0: no progress for") && text.contains("dist.watchdog_s = 6"),
        "the watchdog names the rank and its limit:\n{text}"
    );
    assert!(
        waited < Duration::from_secs(60),
        "stopped after {waited:?} with a 6 s watchdog"
    );
}
