//! Reliability as an operator and an adversary see it (tiny model, CPU):
//! - the branch rule: a resume from an earlier checkpoint, or `--no-resume`, moves the later
//!   checkpoints aside (never deletes them), pruning keeps what was just written and `latest`,
//!   and the next automatic resume continues the new branch;
//! - checkpoints that all fail to verify stop the run, touching nothing; an edited manifest is
//!   refused like a damaged file;
//! - one `train` per run directory: a second is refused naming the first's PID and host, and a
//!   killed holder leaves no stale lock;
//! - token ids outside the model's vocabulary are refused naming the shard, in `train` and in
//!   `eval ppl`, instead of crashing;
//! - a hostfile of this host plus a "remote" one (through a stand-in for ssh): remote ranks are
//!   told a reachable MASTER_ADDR, the store listens on that interface (loopback for a local
//!   job, never every interface), and the job token is on no command line;
//! - a remote rank ends when its remote-shell client is killed (a stand-in for ssh under which
//!   the remote process survives its client, as with ssh), instead of training on orphaned;
//! - SIGTERM to `launch` saves, and both it and `train` exit with the requeue code 75;
//! - careless inputs (overwriting a model, `--nproc 0`, `eval.batches = 0`) are refused; a warm-up
//!   longer than the run, generation cut by the context and NaN weights are reported.

mod common;

use common::{run, run_ok, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = "--set model.hidden_size=32 --set model.intermediate_size=64 --set model.num_hidden_layers=2 \
    --set data.seq_len=16 --set train.device=cpu --set train.micro_batch_size=4 --set train.global_batch_size=8 \
    --set data.valid_fraction=0.0 --set train.log_interval=100 --set train.warmup_steps=2";

fn args(head: &str, run: &Path, extra: &str) -> Vec<String> {
    common::tiny_args(head, run, TINY, extra)
}

/// Kills a spawned process (and, for `launch`, leaves its ranks to their own link and
/// timeouts) when a test ends early: a failed assertion must not leave a training run behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn abandoned(ckpt: &Path) -> Vec<PathBuf> {
    names(ckpt)
        .into_iter()
        .filter(|n| n.starts_with("abandoned-"))
        .map(|n| ckpt.join(n))
        .collect()
}

fn latest(ckpt: &Path) -> String {
    std::fs::read_to_string(ckpt.join("latest")).unwrap().trim().to_string()
}

#[test]
fn a_resume_from_an_earlier_checkpoint_sets_the_later_ones_aside() {
    let dir = common::temp_dir("rel-branch");
    let run_dir = dir.join("r");
    let ckpt = run_dir.join("checkpoints");
    run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=15 --set checkpoint.interval_steps=5",
    ));
    assert_eq!(
        names(&ckpt),
        ["latest", "step-00000005", "step-00000010", "step-00000015"]
    );

    // the README's advice after bad steps: resume from an earlier checkpoint
    let out = run_ok(&args(
        "train",
        &run_dir,
        &format!(
            "--set train.steps=15 --set checkpoint.interval_steps=1 --set checkpoint.keep_last=2 --resume {} \
             --stop-after 8",
            ckpt.join("step-00000005").display()
        ),
    ));
    assert!(
        out.contains("belong to the branch it leaves") && out.contains("step 10, 15"),
        "{out}"
    );
    let aside = abandoned(&ckpt);
    assert_eq!(aside.len(), 1, "{:?}", names(&ckpt));
    assert_eq!(
        names(&aside[0]),
        ["latest", "metrics.jsonl", "step-00000010", "step-00000015"]
    );
    // the abandoned branch's record is kept whole
    let old_metrics = std::fs::read_to_string(aside[0].join("metrics.jsonl")).unwrap();
    assert_eq!(old_metrics.lines().count(), 15);
    baichuan_trainer::checkpoint::verify(&aside[0].join("step-00000015")).expect("moved untouched");
    // pruning kept the newest two of the new branch, and `latest` names one that exists
    let kept: Vec<String> = names(&ckpt).into_iter().filter(|n| n.starts_with("step-")).collect();
    assert_eq!(kept, ["step-00000007", "step-00000008"]);
    assert_eq!(latest(&ckpt), "step-00000008");

    // the next automatic resume continues the new branch
    let out = run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=10 --set checkpoint.interval_steps=5",
    ));
    assert!(
        out.contains(&format!("resumed from {}", ckpt.join("step-00000008").display())),
        "{out}"
    );
    assert_eq!(common::losses(&run_dir).len(), 10);

    // --no-resume: a fresh start moves every checkpoint aside too
    let out = run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=3 --set checkpoint.interval_steps=5 --no-resume",
    ));
    assert!(out.contains("starts at step 0"), "{out}");
    let aside = abandoned(&ckpt);
    assert_eq!(aside.len(), 2, "{:?}", names(&ckpt));
    let newest = aside
        .iter()
        .find(|a| names(a).contains(&"step-00000008".to_string()))
        .unwrap();
    assert_eq!(
        names(newest),
        [
            "latest",
            "metrics.jsonl",
            "step-00000007",
            "step-00000008",
            "step-00000010"
        ]
    );
    assert_eq!(latest(&ckpt), "step-00000003");
}

#[test]
fn when_no_checkpoint_verifies_the_run_stops_and_touches_nothing() {
    let dir = common::temp_dir("rel-all-damaged");
    let run_dir = dir.join("r");
    let ckpt = run_dir.join("checkpoints");
    run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=10 --set checkpoint.interval_steps=5",
    ));
    for step in ["step-00000005", "step-00000010"] {
        let f = ckpt.join(step).join("model.safetensors");
        let mut bytes = std::fs::read(&f).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        std::fs::write(&f, &bytes).unwrap();
    }
    let metrics = std::fs::read(run_dir.join("metrics.jsonl")).unwrap();
    let damaged = std::fs::read(ckpt.join("step-00000010/model.safetensors")).unwrap();

    let (ok, out) = run(&args(
        "train",
        &run_dir,
        "--set train.steps=12 --set checkpoint.interval_steps=5",
    ));
    assert!(!ok, "a fresh start over damaged checkpoints:\n{out}");
    assert!(
        out.contains("none of the 2 checkpoint(s) there verifies")
            && out.contains("step-00000005")
            && out.contains("step-00000010")
            && out.contains("--no-resume"),
        "{out}"
    );
    assert_eq!(std::fs::read(run_dir.join("metrics.jsonl")).unwrap(), metrics);
    assert_eq!(
        std::fs::read(ckpt.join("step-00000010/model.safetensors")).unwrap(),
        damaged
    );

    // --no-resume starts afresh, keeping the damaged ones aside
    run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=2 --set checkpoint.interval_steps=5 --no-resume",
    ));
    let aside = abandoned(&ckpt);
    assert_eq!(aside.len(), 1);
    assert_eq!(
        std::fs::read(aside[0].join("step-00000010/model.safetensors")).unwrap(),
        damaged
    );
}

#[test]
fn an_edited_manifest_is_refused_like_a_damaged_file() {
    let dir = common::temp_dir("rel-manifest");
    let run_dir = dir.join("r");
    let ckpt = run_dir.join("checkpoints");
    run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=10 --set checkpoint.interval_steps=5",
    ));
    let path = ckpt.join("step-00000010/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"optimizer_step\": 10"), "{text}");
    std::fs::write(&path, text.replace("\"optimizer_step\": 10", "\"optimizer_step\": 9")).unwrap();
    let out = run_ok(&args(
        "train",
        &run_dir,
        "--set train.steps=12 --set checkpoint.interval_steps=5",
    ));
    assert!(out.contains("manifest.json is damaged or was edited"), "{out}");
    assert!(
        out.contains(&format!("resumed from {}", ckpt.join("step-00000005").display())),
        "{out}"
    );
}

fn wait_for_steps(run_dir: &Path, n: usize) {
    let start = Instant::now();
    while std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < n
    {
        assert!(start.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_train_per_run_directory() {
    let dir = common::temp_dir("rel-lock");
    let run_dir = dir.join("r");
    let mut first = common::baichuan()
        .args(args(
            "train",
            &run_dir,
            "--set train.steps=100000 --set checkpoint.interval_steps=0",
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(first.id());
    wait_for_steps(&run_dir, 1);
    let (ok, out) = run(&args("train", &run_dir, "--set train.steps=2 --no-resume"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(!ok, "{out}");
    assert!(
        out.contains("in use by another train process")
            && out.contains(&format!("PID {} on host {}", first.id(), host.trim())),
        "{out}"
    );
    first.kill().unwrap(); // SIGKILL: no clean-up runs
    first.wait().unwrap();
    // the kernel released the lock with the process: no stale lock
    run_ok(&args("train", &run_dir, "--set train.steps=2 --no-resume"));
}

/// A shard of the sample's ids folded into `vocab` tokens.
fn folded_shard(dir: &Path, vocab: u32) -> PathBuf {
    let tok = baichuan_data::Tokenizer::open(&common::tokenizer()).unwrap();
    let text = std::fs::read_to_string(common::root().join("data/sample/kjv.txt")).unwrap();
    let mut ids = Vec::new();
    for line in text.lines().take(300) {
        ids.extend(tok.encode_document(line).unwrap().into_iter().map(|t| t % vocab));
    }
    let path = dir.join("folded.bin");
    let mut w = baichuan_data::shard::ShardWriter::create(&path, vocab as u64).unwrap();
    w.write(&ids, 300).unwrap();
    w.finish().unwrap();
    path
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused_by_file() {
    let dir = common::temp_dir("rel-vocab");
    let shard = folded_shard(&dir, 512);
    // a damaged token: 0xFFFF, far outside the 512-token vocabulary
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[64 + 100] = 0xff;
    bytes[64 + 101] = 0xff;
    std::fs::write(&shard, &bytes).unwrap();
    let data = format!(
        "--set data.format=shards --set model.vocab_size=512 --set data.path=[{:?}] --set train.steps=20 --set data.sources=[]",
        shard.to_str().unwrap()
    );
    let out = common::baichuan()
        .args(args("train", &dir.join("r1"), &data))
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("folded.bin") && t.contains("damaged") && t.contains("prepare"),
        "{t}"
    );
    // without the checksum pass, the batch check still stops it cleanly (no panic, exit 1)
    let out = common::baichuan()
        .args(args(
            "train",
            &dir.join("r2"),
            &format!("{data} --set data.verify_shards=false"),
        ))
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("token id 65535") && t.contains("outside model.vocab_size = 512"),
        "{t}"
    );

    // eval ppl on the damaged shard names it too
    let model = dir.join("model");
    run_ok(&args(
        &format!("init --out {}", model.display()),
        &dir.join("r3"),
        "--set model.vocab_size=512",
    ));
    let out = common::baichuan()
        .args([
            "eval",
            "ppl",
            "--model",
            model.to_str().unwrap(),
            "--data",
            shard.to_str().unwrap(),
        ])
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("folded.bin") && t.contains("damaged"), "{t}");
}

/// The local address of the socket listening on `port` (from /proc/net/tcp), as `a.b.c.d`.
fn listening_on(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (addr, state) = (f.get(1)?, f.get(3)?);
        let (ip, p) = addr.split_once(':')?;
        if *state != "0A" || u16::from_str_radix(p, 16).ok()? != port {
            return None;
        }
        let v = u32::from_str_radix(ip, 16).ok()?;
        let b = v.to_le_bytes();
        Some(format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]))
    })
}

/// A hostfile in `dir` of this host first, then "another" host reached through a stand-in for
/// ssh: its name is this machine's own non-loopback address, so the rank it starts really runs
/// here while the launcher treats it as remote. Returns that address and the hostfile.
fn this_host_and_another(dir: &Path) -> (std::net::IpAddr, PathBuf) {
    let ip = baichuan_trainer::dist::launch::local_ipv4s()
        .first()
        .copied()
        .expect("this machine has no non-loopback IPv4 address to stand for a second node");
    let hostfile = dir.join("hostfile");
    std::fs::write(&hostfile, format!("localhost slots=1\n{ip} slots=1\n")).unwrap();
    (ip, hostfile)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `launch` with `launch_args` in the background and returns its output and the address
/// its store listened on, read while it ran.
fn launch_watching_the_store(launch_args: Vec<String>, port: u16, envs: &[(&str, String)]) -> (bool, String, String) {
    let child = common::baichuan()
        .args(&launch_args)
        .envs(envs.iter().map(|(k, v)| (*k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child.id());
    let start = Instant::now();
    let mut bound = None;
    while bound.is_none() && start.elapsed() < Duration::from_secs(60) {
        bound = listening_on(port);
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        text(&out),
        bound.unwrap_or_else(|| "never seen".into()),
    )
}

#[test]
fn remote_ranks_get_a_reachable_master_and_never_see_the_token_on_a_command_line() {
    let dir = common::temp_dir("rel-multinode");
    let (ip, hostfile) = this_host_and_another(&dir);
    let log = dir.join("ssh.log");
    let port = free_port();
    let shell = format!(
        "bash {}",
        common::root().join("trainer/tests/fixtures/fake_ssh.sh").display()
    );
    let mut a = vec![
        "launch".to_string(),
        "--hostfile".into(),
        hostfile.display().to_string(),
        "--remote-shell".into(),
        shell,
        "--master-port".into(),
        port.to_string(),
    ];
    a.extend(args("", &dir.join("run"), "--set train.steps=3"));
    let (ok, out, bound) = launch_watching_the_store(a, port, &[("FAKE_SSH_LOG", log.display().to_string())]);
    assert!(ok, "{out}");
    let remote = std::fs::read_to_string(&log).unwrap();
    assert!(remote.contains(&format!("MASTER_ADDR={ip} ")), "{remote}");
    assert!(!remote.contains("MASTER_ADDR=127.0.0.1"), "{remote}");
    assert!(
        !remote.contains("BAICHUAN_JOB_TOKEN=") && remote.contains("BAICHUAN_JOB_TOKEN_STDIN=1"),
        "the token is on the remote command line: {remote}"
    );
    assert!(
        out.contains(&format!("ring: rank addresses 0={ip}:")) && out.contains(&format!(" 1={ip}:")),
        "{out}"
    );
    assert_eq!(bound, ip.to_string(), "the store listened on {bound}");

    // every rank local: the store listens on loopback only
    let port = free_port();
    let mut a = vec![
        "launch".to_string(),
        "--nproc".into(),
        "2".into(),
        "--master-port".into(),
        port.to_string(),
    ];
    a.extend(args("", &dir.join("local"), "--set train.steps=3"));
    let (ok, out, bound) = launch_watching_the_store(a, port, &[]);
    assert!(ok, "{out}");
    assert_eq!(bound, "127.0.0.1");
    assert!(out.contains("ring: rank addresses 0=127.0.0.1:"), "{out}");
}

/// PIDs of processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_remote_rank_ends_when_its_remote_shell_client_is_killed() {
    let dir = common::temp_dir("rel-remote-kill");
    let (_, hostfile) = this_host_and_another(&dir);
    let fixture = common::root().join("trainer/tests/fixtures/fake_ssh_detached.sh");
    let run_dir = dir.join("run");
    let mut a = vec![
        "launch".to_string(),
        "--hostfile".into(),
        hostfile.display().to_string(),
        "--remote-shell".into(),
        format!("bash {}", fixture.display()),
        "--master-port".into(),
        free_port().to_string(),
    ];
    // collectives would wait 300 s for a lost peer: only the launcher link ends the rank soon
    a.extend(args(
        "",
        &run_dir,
        "--set train.steps=100000 --set checkpoint.interval_steps=0 --set dist.timeout_s=300",
    ));
    let launcher = common::baichuan()
        .args(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(launcher.id());
    wait_for_steps(&run_dir, 2);
    let needle = format!("job.run_dir={}", run_dir.display());
    // the launcher's own command line names the script too
    let mut clients = processes_with("fake_ssh_detached.sh");
    clients.retain(|&p| p != launcher.id());
    assert_eq!(clients.len(), 1, "the remote-shell client: {clients:?}");
    let ranks = processes_with(&needle);
    assert!(ranks.len() >= 2, "two train processes run: {ranks:?}");
    Command::new("kill")
        .args(["-9", &clients[0].to_string()])
        .status()
        .unwrap();
    let out = launcher.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("rank 1 on"), "{t}");
    // the detached "remote" train process notices its closed link and ends
    let start = Instant::now();
    let mut left = processes_with(&needle);
    while !left.is_empty() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_with(&needle);
    }
    for pid in &left {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(left.is_empty(), "train processes outlived the job: {left:?}\n{t}");
}

#[test]
fn sigterm_saves_and_exits_with_the_requeue_code() {
    let dir = common::temp_dir("rel-sigterm");
    for (name, head) in [("train", "train"), ("launch", "launch --nproc 2 --master-port 0")] {
        let run_dir = dir.join(name);
        let child = common::baichuan()
            .args(args(
                head,
                &run_dir,
                "--set train.steps=100000 --set checkpoint.interval_steps=0",
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _guard = KillOnDrop(child.id());
        wait_for_steps(&run_dir, 2);
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let t = text(&out);
        assert_eq!(out.status.code(), Some(75), "{name}: {t}");
        assert!(t.contains("SIGTERM"), "{name}: {t}");
        let saved = latest(&run_dir.join("checkpoints"));
        baichuan_trainer::checkpoint::verify(&run_dir.join("checkpoints").join(saved)).unwrap();
    }
}

#[test]
fn careless_inputs_are_refused_with_a_hint() {
    let dir = common::temp_dir("rel-careless");
    let model = dir.join("model");
    let init = format!("init --out {}", model.display());
    run_ok(&args(&init, &dir.join("r"), ""));
    let before = std::fs::read(model.join("model.safetensors")).unwrap();
    let (ok, out) = run(&args(&init, &dir.join("r"), ""));
    assert!(
        !ok && out.contains("already holds a model") && out.contains("--force"),
        "{out}"
    );
    let (ok, out) = run(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--force",
    ]);
    assert!(!ok && out.contains("is the --model directory"), "{out}");
    assert_eq!(std::fs::read(model.join("model.safetensors")).unwrap(), before);
    run_ok(&args(&format!("{init} --force"), &dir.join("r"), ""));

    let (ok, out) = run(&args("launch --nproc 0", &dir.join("r"), ""));
    assert!(!ok && out.contains("--nproc"), "{out}");
    let (ok, out) = run(&args(
        "train",
        &dir.join("r"),
        "--set data.valid_fraction=0.1 --set eval.batches=0",
    ));
    assert!(!ok && out.contains("eval.batches = 0") && out.contains("HINT"), "{out}");
    // warmup longer than the run: a warning, the run goes on
    let out = run_ok(&args(
        "train",
        &dir.join("w"),
        "--set train.steps=2 --set train.warmup_steps=20",
    ));
    assert!(out.contains("train.warmup_steps = 20 exceeds train.steps = 2"), "{out}");

    // generation that fills the context says so (the tiny preset's context: 512 tokens)
    let out = run_ok(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "In the beginning",
        "--max-new-tokens",
        "600",
        "--repetition-penalty",
        "1.0",
        "--device",
        "cpu",
    ]);
    assert!(out.contains("filled the model's context"), "{out}");

    // a model whose weights hold NaN says so before it generates
    let m = baichuan_model::hf::load_pretrained(&model, tch::Device::Cpu).unwrap();
    tch::no_grad(|| {
        let _ = m.layers[0].mlp.up_proj.shallow_clone().fill_(f64::NAN);
    });
    let broken = dir.join("broken");
    baichuan_model::hf::save_pretrained(&m, &broken, baichuan_model::Layout::Baichuan, tch::Kind::Float, None).unwrap();
    baichuan_model::hf::copy_tokenizer(&model.join("tokenizer.model"), &broken).unwrap();
    let out = run_ok(&[
        "generate",
        "--model",
        broken.to_str().unwrap(),
        "--prompt",
        "In the beginning",
        "--max-new-tokens",
        "2",
        "--device",
        "cpu",
    ]);
    assert!(
        out.contains("hold NaN or infinite values") && out.contains("up_proj"),
        "{out}"
    );
}
