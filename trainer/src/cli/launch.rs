//! `baichuan launch`: one `train` process per slot of a hostfile (or local ranks), restarted
//! from the latest checkpoint when a rank dies, up to `launch.max_restarts` times.

use std::path::PathBuf;

use anyhow::{Context, Result};
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::dist::launch;
use clap::Args;

#[derive(Args)]
pub struct LaunchArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// DeepSpeed-style hostfile: `<host> slots=<n>` per line.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Local ranks when no hostfile is given (default: the GPUs, or 1).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    nproc: Option<u64>,
    /// Only these hosts of the hostfile (comma-separated).
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
    /// Not these hosts of the hostfile (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Address of rank 0's store (default: the first host).
    #[arg(long)]
    master_addr: Option<String>,
    /// Port of rank 0's store; 0 picks a free one (single-host jobs).
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// Overrides launch.remote_shell, e.g. "ssh -p 2222".
    #[arg(long)]
    remote_shell: Option<String>,
    /// Further `train` arguments for every rank, after `--` (e.g. -- --stop-after 100).
    #[arg(last = true)]
    train_extra: Vec<String>,
}

pub fn run(a: LaunchArgs) -> Result<()> {
    let cfg = RunConfig::load(&a.config, &a.overrides)?;
    let hosts = match &a.hostfile {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading hostfile {}", path.display()))?;
            launch::filter_hosts(launch::parse_hostfile(&text, path)?, &a.include, &a.exclude)?
        }
        None => vec![launch::HostSlots {
            host: "localhost".into(),
            slots: a.nproc.map(|n| n as usize).unwrap_or_else(launch::local_gpus).max(1),
        }],
    };
    let world: usize = hosts.iter().map(|h| h.slots).sum();
    cfg.validate(world as i64)
        .with_context(|| format!("config {} for {world} ranks", a.config.display()))?;
    let master_port = if a.master_port == 0 {
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        a.master_port
    };
    let shell = a.remote_shell.unwrap_or(cfg.launch.remote_shell.clone());
    let mut train_args = vec![
        "--config".to_string(),
        std::path::absolute(&a.config)?.to_string_lossy().to_string(),
    ];
    for o in &a.overrides {
        train_args.push("--set".into());
        train_args.push(o.clone());
    }
    train_args.extend(a.train_extra);
    let ckpt_dir = cfg
        .checkpoint
        .dir
        .clone()
        .unwrap_or_else(|| cfg.job.run_dir.join("checkpoints"));
    let mut plan = launch::LaunchPlan {
        hosts,
        master_addr: a.master_addr,
        master_port,
        remote_shell: shell.split_whitespace().map(String::from).collect(),
        train_args,
        exe: std::env::current_exe().context("locating the baichuan executable")?,
        workdir: std::env::current_dir()?,
    };
    let mut restarts = 0;
    loop {
        let code = launch::launch(&plan)?;
        if code == 0 {
            return Ok(());
        }
        if code == baichuan_trainer::trainer::EXIT_PREEMPTED {
            std::process::exit(code); // stopped on request, checkpoint saved: not a failure to retry
        }
        if restarts >= cfg.launch.max_restarts {
            if cfg.launch.max_restarts > 0 {
                eprintln!("launch: giving up after {restarts} restart(s) (launch.max_restarts)");
            }
            std::process::exit(code);
        }
        restarts += 1;
        // a restart resumes from the newest verified checkpoint, whatever the first start said
        let args = launch::restart_args(&plan.train_args, &ckpt_dir);
        if args != plan.train_args {
            eprintln!(
                "launch: the restart drops --no-resume/--resume: it resumes from the run's newest verified checkpoint"
            );
        }
        plan.train_args = args;
        eprintln!(
            "launch: restarting the job from its latest checkpoint (restart {restarts} of {})",
            cfg.launch.max_restarts
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
