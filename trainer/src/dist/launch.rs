//! `baichuan launch`: starts one `baichuan train` process per slot of a DeepSpeed-style
//! hostfile (local hosts as child processes, remote hosts through a configurable remote
//! shell such as `ssh`), sets the env contract (RANK, WORLD_SIZE, LOCAL_RANK,
//! LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and the job's secret token), prefixes every
//! output line with its rank, and when one rank fails stops the others and exits non-zero
//! showing the failing rank's last error lines.
//!
//! The master address is one every rank can reach: loopback only when every rank is local;
//! when the first host is this machine and others are not, the address of the interface that
//! routes to them. The job token never appears on a command line: local ranks inherit it in
//! their environment, remote ranks read it from standard input (`BAICHUAN_JOB_TOKEN_STDIN=1`),
//! which then stays open: a remote rank ends itself when it closes (the launcher stopped the job
//! by killing its remote-shell client, or died), since a remote shell does not end it.
//! A SIGTERM to the launcher is passed to every local rank (remote ranks learn it from them, as
//! the ranks agree on it after every step), which saves and exits with
//! [`crate::trainer::EXIT_PREEMPTED`]; the launcher then exits with the same code.
//!
//! Follows DeepSpeed's launcher (`deepspeed --hostfile`) and torchrun's env contract.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One line of a hostfile: a host and how many ranks it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSlots {
    pub host: String,
    pub slots: usize,
}

/// Parses `host slots=N` lines; `#` starts a comment; blank lines are skipped. Anything else
/// is an error naming the file, the line and the expected form.
pub fn parse_hostfile(text: &str, path: &Path) -> Result<Vec<HostSlots>> {
    let mut hosts: Vec<HostSlots> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| {
            anyhow::anyhow!(
                "{}:{}: {why}: {raw:?}; HINT: each line is `<host> slots=<n>`, e.g. `node1 slots=8`",
                path.display(),
                i + 1
            )
        };
        let mut parts = line.split_whitespace();
        let host = parts.next().ok_or_else(|| bad("missing host"))?;
        let slots = parts.next().ok_or_else(|| bad("missing slots=<n>"))?;
        if parts.next().is_some() {
            return Err(bad("unexpected text after slots=<n>"));
        }
        let n = slots
            .strip_prefix("slots=")
            .ok_or_else(|| bad("expected slots=<n>"))?
            .parse::<usize>()
            .map_err(|_| bad("slots must be a positive integer"))?;
        if n == 0 {
            return Err(bad("slots must be a positive integer"));
        }
        if hosts.iter().any(|h| h.host == host) {
            return Err(bad("host listed twice"));
        }
        hosts.push(HostSlots {
            host: host.to_string(),
            slots: n,
        });
    }
    if hosts.is_empty() {
        bail!("{}: no hosts; HINT: add lines like `localhost slots=1`", path.display());
    }
    Ok(hosts)
}

/// Keeps the hosts named by `include` (all when empty) minus those in `exclude`.
pub fn filter_hosts(hosts: Vec<HostSlots>, include: &[String], exclude: &[String]) -> Result<Vec<HostSlots>> {
    for name in include.iter().chain(exclude) {
        if !hosts.iter().any(|h| &h.host == name) {
            bail!("--include/--exclude name {name:?}, which the hostfile does not list");
        }
    }
    let kept: Vec<HostSlots> = hosts
        .into_iter()
        .filter(|h| (include.is_empty() || include.contains(&h.host)) && !exclude.contains(&h.host))
        .collect();
    if kept.is_empty() {
        bail!("--include/--exclude leave no host to run on");
    }
    Ok(kept)
}

/// Whether `host` is this machine.
pub fn is_local(host: &str) -> bool {
    let me = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host == me.trim()
}

/// Quotes a word for a POSIX shell.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn job_token() -> String {
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What to start where.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub hosts: Vec<HostSlots>,
    pub master_addr: Option<String>,
    pub master_port: u16,
    /// The remote shell command, e.g. `["ssh"]` or `["ssh", "-p", "2222"]`.
    pub remote_shell: Vec<String>,
    /// Arguments after `baichuan train`.
    pub train_args: Vec<String>,
    pub exe: PathBuf,
    pub workdir: PathBuf,
}

struct Rank {
    rank: usize,
    host: String,
    child: Child,
    last_err: Arc<Mutex<VecDeque<String>>>,
    /// A remote rank's standard input, open while the launcher lives (see `dist::DistEnv::from_env`).
    _link: Option<std::process::ChildStdin>,
}

fn forward(
    stream: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
    keep: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if to_stderr {
                eprintln!("{prefix}{line}");
            } else {
                println!("{prefix}{line}");
            }
            if let Some(keep) = &keep {
                let mut k = keep.lock().expect("line buffer");
                if k.len() == 20 {
                    k.pop_front();
                }
                k.push_back(line);
            }
        }
    });
}

/// The IPv4 addresses of this machine's interfaces that are up, loopback excluded.
pub fn local_ipv4s() -> Vec<IpAddr> {
    let mut out = Vec::new();
    #[cfg(unix)]
    {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills a list that is read here and freed by freeifaddrs; each
        // entry's address is checked for null and its family before it is read as IPv4.
        unsafe {
            if libc::getifaddrs(&mut head) == 0 {
                let mut p = head;
                while !p.is_null() {
                    let ifa = &*p;
                    let up = ifa.ifa_flags & (libc::IFF_UP as u32) != 0;
                    let lo = ifa.ifa_flags & (libc::IFF_LOOPBACK as u32) != 0;
                    if up && !lo && !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        let ip = IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes());
                        if !out.contains(&ip) {
                            out.push(ip);
                        }
                    }
                    p = ifa.ifa_next;
                }
                libc::freeifaddrs(head);
            }
        }
    }
    out
}

/// This machine's address on the route to `host` (no packet is sent: a UDP socket is
/// connected and its local address read).
pub fn route_to(host: &str) -> Option<IpAddr> {
    let target = (host, 9).to_socket_addrs().ok()?.find(|a| a.is_ipv4())?;
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(target).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The MASTER_ADDR every rank is given: `explicit` (--master-addr) if set; loopback when every
/// host is this machine; the first host's name when it is another machine; and when the first
/// host is this machine but others are not, this machine's address on the route to the first
/// remote host (else its first interface address, with a warning).
pub fn master_address(hosts: &[HostSlots], explicit: Option<&str>) -> Result<String> {
    if let Some(addr) = explicit {
        return Ok(addr.to_string());
    }
    let first = &hosts[0].host;
    if !is_local(first) {
        return Ok(first.clone());
    }
    let Some(remote) = hosts.iter().find(|h| !is_local(&h.host)) else {
        return Ok("127.0.0.1".into());
    };
    if let Some(ip) = route_to(&remote.host).filter(|ip| !ip.is_loopback()) {
        return Ok(ip.to_string());
    }
    match local_ipv4s().first() {
        Some(ip) => {
            eprintln!(
                "launch: warning: no route to {} found from here; remote ranks are told MASTER_ADDR={ip} (this \
                 machine's first interface). HINT: pass --master-addr with the address the other hosts reach \
                 this one at",
                remote.host
            );
            Ok(ip.to_string())
        }
        None => bail!(
            "the hostfile's first host {first} is this machine, which has no network address the other hosts \
             could reach; HINT: pass --master-addr"
        ),
    }
}

/// Variable telling a remote rank to read the job token from its standard input.
pub const TOKEN_STDIN_VAR: &str = "BAICHUAN_JOB_TOKEN_STDIN";

/// Starts every rank, forwards their output, and waits. Returns the job's exit code: 0 when
/// every rank succeeded; [`crate::trainer::EXIT_PREEMPTED`] when ranks stopped on SIGTERM with
/// their checkpoint saved; else 1 after stopping the others.
pub fn launch(plan: &LaunchPlan) -> Result<i32> {
    crate::sigterm::install();
    let world: usize = plan.hosts.iter().map(|h| h.slots).sum();
    let master_addr = master_address(&plan.hosts, plan.master_addr.as_deref())?;
    let token = job_token();
    let mut ranks: Vec<Rank> = Vec::with_capacity(world);
    let mut rank = 0;
    for h in &plan.hosts {
        for local in 0..h.slots {
            let env = [
                ("RANK", rank.to_string()),
                ("WORLD_SIZE", world.to_string()),
                ("LOCAL_RANK", local.to_string()),
                ("LOCAL_WORLD_SIZE", h.slots.to_string()),
                ("MASTER_ADDR", master_addr.clone()),
                ("MASTER_PORT", plan.master_port.to_string()),
            ];
            let remote = !is_local(&h.host);
            let mut cmd = if !remote {
                let mut c = Command::new(&plan.exe);
                c.arg("train")
                    .args(&plan.train_args)
                    .envs(env.iter().map(|(k, v)| (*k, v)))
                    .env(crate::dist::TOKEN_VAR, &token)
                    .env_remove(TOKEN_STDIN_VAR)
                    .current_dir(&plan.workdir)
                    .stdin(Stdio::null());
                #[cfg(target_os = "linux")]
                {
                    use std::os::unix::process::CommandExt;
                    // SAFETY: prctl is async-signal-safe and touches only the child being started.
                    // A local rank whose launcher dies (even by SIGKILL) gets SIGTERM: it saves
                    // at the end of its step and exits, instead of training on orphaned.
                    unsafe {
                        c.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                            Ok(())
                        });
                    }
                }
                c
            } else {
                let mut vars = forwarded_env(
                    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
                );
                vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
                vars.push((TOKEN_STDIN_VAR.to_string(), "1".to_string()));
                let line = remote_line(&plan.workdir, &vars, &plan.exe, &plan.train_args);
                let shell = plan.remote_shell.first().context("launch.remote_shell is empty")?;
                let mut c = Command::new(shell);
                c.args(&plan.remote_shell[1..])
                    .arg(&h.host)
                    .arg(line)
                    .stdin(Stdio::piped());
                c
            };
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting rank {rank} on {}", h.host))?;
            let mut link = child.stdin.take();
            if let Some(stdin) = link.as_mut() {
                // the token travels on the remote shell's standard input, never in a command line;
                // a rank that cannot read it fails to authenticate and says so. The pipe then stays
                // open for the rank's life: its closing tells the remote rank to end
                if let Err(e) = stdin
                    .write_all(format!("{token}\n").as_bytes())
                    .and_then(|_| stdin.flush())
                {
                    eprintln!("launch: could not hand rank {rank} on {} the job token ({e})", h.host);
                }
            }
            let last_err = Arc::new(Mutex::new(VecDeque::new()));
            let prefix = format!("[rank {rank}] ");
            forward(child.stdout.take().expect("piped stdout"), prefix.clone(), false, None);
            forward(
                child.stderr.take().expect("piped stderr"),
                prefix,
                true,
                Some(last_err.clone()),
            );
            ranks.push(Rank {
                rank,
                host: h.host.clone(),
                child,
                last_err,
                _link: link,
            });
            rank += 1;
        }
    }
    eprintln!(
        "launch: {world} ranks on {} host(s), master {master_addr}:{}",
        plan.hosts.len(),
        plan.master_port
    );

    let mut done = vec![false; ranks.len()];
    let (mut preempted, mut passed_term) = (false, false);
    loop {
        if crate::sigterm::received() && !passed_term {
            passed_term = true;
            eprintln!("launch: SIGTERM: asking every rank to save a checkpoint and stop");
            // local ranks get the signal; remote ones learn it from them (the ranks agree on it
            // after every step), as a signal to their remote-shell client would end the client
            for (i, r) in ranks.iter().enumerate() {
                if !done[i] && r._link.is_none() {
                    // SAFETY: kill(2) on the PID of a child this process started and has not reaped.
                    unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
                }
            }
        }
        for (i, r) in ranks.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            let status: Option<ExitStatus> = r
                .child
                .try_wait()
                .with_context(|| format!("waiting for rank {}", r.rank))?;
            let Some(status) = status else { continue };
            done[i] = true;
            if status.code() == Some(crate::trainer::EXIT_PREEMPTED) {
                preempted = true;
                continue;
            }
            if !status.success() {
                std::thread::sleep(Duration::from_millis(200)); // let its last lines arrive
                let lines: Vec<String> = r.last_err.lock().expect("line buffer").iter().cloned().collect();
                let failed = (r.rank, r.host.clone(), status);
                for other in ranks.iter_mut() {
                    // a rank that already exited cannot be killed: that is the state wanted
                    other.child.kill().ok();
                    other.child.wait().ok();
                }
                eprintln!(
                    "launch: rank {} on {} failed ({}); stopped the other ranks. Its last error lines:\n{}",
                    failed.0,
                    failed.1,
                    failed.2,
                    lines.iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
                );
                return Ok(1);
            }
        }
        if done.iter().all(|&d| d) {
            if preempted {
                eprintln!(
                    "launch: the job stopped on SIGTERM before its last step, with its checkpoint saved; exiting with \
                     {} for the scheduler to requeue it (the same command resumes)",
                    crate::trainer::EXIT_PREEMPTED
                );
                return Ok(crate::trainer::EXIT_PREEMPTED);
            }
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `train` arguments of a restart after a failure: it resumes from the newest verified
/// checkpoint of the run, so `--no-resume` goes, and so does `--resume DIR` once `ckpt_dir`
/// holds a checkpoint at or after DIR's step (before that, DIR is still the start point).
pub fn restart_args(args: &[String], ckpt_dir: &Path) -> Vec<String> {
    let newest = crate::checkpoint::list(ckpt_dir)
        .first()
        .and_then(|p| crate::checkpoint::step_of(p));
    let saved_since = |dir: &str| {
        let step = crate::checkpoint::step_of(Path::new(dir))
            .or_else(|| crate::checkpoint::read_manifest(Path::new(dir)).ok().map(|m| m.step));
        matches!((newest, step), (Some(n), Some(s)) if n >= s) || (newest.is_some() && step.is_none())
    };
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--no-resume" {
            i += 1;
            continue;
        }
        if a == "--resume" && i + 1 < args.len() {
            if !saved_since(&args[i + 1]) {
                out.extend([a.clone(), args[i + 1].clone()]);
            }
            i += 2;
            continue;
        }
        if let Some(dir) = a.strip_prefix("--resume=") {
            if !saved_since(dir) {
                out.push(a.clone());
            }
            i += 1;
            continue;
        }
        out.push(a.clone());
        i += 1;
    }
    out
}

/// Number of local GPUs (nvidia-smi), or 1 without any.
pub fn local_gpus() -> usize {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU"))
                .count()
        })
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Prefixes of this environment's variables that remote ranks receive too (local ranks inherit
/// everything): NCCL's and UCX's settings, and baichuan's own, as DeepSpeed's launcher forwards them.
pub const FORWARDED_PREFIXES: [&str; 3] = ["NCCL_", "UCX_", "BAICHUAN_"];

/// The variables of `vars` that remote ranks receive (the job token is set per job, not copied).
fn forwarded_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vars
        .filter(|(k, _)| FORWARDED_PREFIXES.iter().any(|p| k.starts_with(p)) && k != crate::dist::TOKEN_VAR)
        .collect();
    v.sort();
    v
}

/// The shell line a remote host runs for one rank: `cd WORKDIR && env K=V... EXE train ARGS...`.
fn remote_line(workdir: &Path, vars: &[(String, String)], exe: &Path, args: &[String]) -> String {
    let mut line = format!("cd {} && env", sh_quote(&workdir.to_string_lossy()));
    for (k, v) in vars {
        line += &format!(" {k}={}", sh_quote(v));
    }
    line += &format!(" {} train", sh_quote(&exe.to_string_lossy()));
    for a in args {
        line += &format!(" {}", sh_quote(a));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_ranks_get_the_contract_and_nccl_settings() {
        let here = [
            ("NCCL_SOCKET_IFNAME", "eth0"),
            ("NCCL_DEBUG", "INFO"),
            ("HOME", "/home/me"),
            ("PATH", "/usr/bin"),
            (crate::dist::TOKEN_VAR, "secret-of-another-job"),
            ("UCX_TLS", "rc,sm"),
        ];
        let mut vars = forwarded_env(here.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(
            vars,
            [
                ("NCCL_DEBUG", "INFO"),
                ("NCCL_SOCKET_IFNAME", "eth0"),
                ("UCX_TLS", "rc,sm")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        vars.push(("RANK".into(), "3".into()));
        let line = remote_line(
            Path::new("/work/my run"),
            &vars,
            Path::new("/opt/baichuan"),
            &["--config".into(), "c.toml".into()],
        );
        assert_eq!(
            line,
            "cd '/work/my run' && env NCCL_DEBUG=INFO NCCL_SOCKET_IFNAME=eth0 UCX_TLS=rc,sm RANK=3 \
             /opt/baichuan train --config c.toml"
        );
    }

    #[test]
    fn hostfiles_parse_with_comments_and_blank_lines() {
        let text = "# cluster\nnode1 slots=8\n\n  node2   slots=4   # fewer GPUs\n";
        let hosts = parse_hostfile(text, Path::new("hostfile")).unwrap();
        assert_eq!(
            hosts,
            vec![
                HostSlots {
                    host: "node1".into(),
                    slots: 8
                },
                HostSlots {
                    host: "node2".into(),
                    slots: 4
                }
            ]
        );
    }

    #[test]
    fn malformed_hostfiles_name_the_line() {
        for (text, line, why) in [
            ("node1 slots=8\nnode2 gpus=4\n", 2, "expected slots"),
            ("node1\n", 1, "missing slots"),
            ("a slots=1\n\nb slots=0\n", 3, "positive"),
            ("a slots=x\n", 1, "positive"),
            ("a slots=1 extra\n", 1, "unexpected"),
            ("a slots=1\na slots=2\n", 2, "twice"),
        ] {
            let err = parse_hostfile(text, Path::new("hf")).unwrap_err().to_string();
            assert!(
                err.contains(&format!("hf:{line}:")) && err.contains(why),
                "{text:?}: {err}"
            );
        }
        assert!(parse_hostfile("# nothing\n", Path::new("hf"))
            .unwrap_err()
            .to_string()
            .contains("no hosts"));
    }

    #[test]
    fn include_and_exclude_select_hosts() {
        let hosts = parse_hostfile("a slots=1\nb slots=2\nc slots=3\n", Path::new("hf")).unwrap();
        let kept = filter_hosts(hosts.clone(), &["a".into(), "c".into()], &["c".into()]).unwrap();
        assert_eq!(
            kept,
            vec![HostSlots {
                host: "a".into(),
                slots: 1
            }]
        );
        assert!(filter_hosts(hosts.clone(), &["zz".into()], &[]).is_err());
        assert!(filter_hosts(hosts, &[], &["a".into(), "b".into(), "c".into()]).is_err());
    }

    #[test]
    fn restarts_drop_no_resume_and_a_resume_point_the_run_has_passed() {
        let dir = std::env::temp_dir().join(format!("baichuan-restart-args-{}", std::process::id()));
        let ckpt = dir.join("checkpoints");
        std::fs::create_dir_all(&ckpt).unwrap();
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let ext = dir.join("other/step-00000010");
        let resume = format!("--config c.toml --resume {} --stop-after 50", ext.display());
        // nothing saved yet: --no-resume goes (a fresh start either way), --resume DIR stays
        assert_eq!(
            restart_args(&v("--config c.toml --no-resume"), &ckpt),
            v("--config c.toml")
        );
        assert_eq!(restart_args(&v(&resume), &ckpt), v(&resume));
        // a checkpoint before DIR's step: DIR is still the start point
        std::fs::create_dir_all(ckpt.join("step-00000005")).unwrap();
        assert_eq!(restart_args(&v(&resume), &ckpt), v(&resume));
        // the run saved at or after DIR's step: the restart resumes from the newest checkpoint
        std::fs::create_dir_all(ckpt.join("step-00000012")).unwrap();
        assert_eq!(restart_args(&v(&resume), &ckpt), v("--config c.toml --stop-after 50"));
        let eq = format!("--resume={}", ext.display());
        assert!(restart_args(&[eq], &ckpt).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_master_address_is_loopback_only_when_every_rank_is_local() {
        let hosts = |text: &str| parse_hostfile(text, Path::new("hf")).unwrap();
        assert_eq!(
            master_address(&hosts("localhost slots=2\n"), None).unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            master_address(&hosts("node7 slots=1\nlocalhost slots=1\n"), None).unwrap(),
            "node7"
        );
        assert_eq!(
            master_address(&hosts("localhost slots=1\n"), Some("10.1.2.3")).unwrap(),
            "10.1.2.3"
        );
        // this machine first, another host second: an address of this machine that is not loopback
        let Some(ip) = local_ipv4s().first().copied() else {
            panic!("this machine has no non-loopback IPv4 interface to test with");
        };
        let mixed = hosts(&format!("localhost slots=1\n{ip} slots=1\n"));
        let got: IpAddr = master_address(&mixed, None).unwrap().parse().unwrap();
        assert!(!got.is_loopback() && local_ipv4s().contains(&got), "{got}");
    }

    #[test]
    fn shell_quoting_survives_spaces_and_quotes() {
        assert_eq!(sh_quote("plain/path-1.toml"), "plain/path-1.toml");
        assert_eq!(sh_quote("it's here"), "'it'\\''s here'");
        assert_eq!(sh_quote("data.path=[\"x y\"]"), "'data.path=[\"x y\"]'");
    }
}
