//! Distribution: who this process is (the launch environment), the rendezvous store, the
//! collective-communication backends, the bucketed gradient reducer and ZeRO sharding.
//!
//! Who launches what (see also README.md): `baichuan launch` (or torchrun, `srun`, `mpirun`)
//! starts one `baichuan train` process per rank with the env contract below; rank 0 serves the
//! rendezvous store at MASTER_ADDR:MASTER_PORT; every rank connects to it, publishes the
//! address of its ring socket, and the ranks then form the communicator.

pub mod buckets;
pub mod comm;
pub mod join;
pub mod launch;
pub mod nccl;
pub mod store;
pub mod tcp;
pub mod watchdog;

use std::time::Duration;

/// Errors of the distributed layer; each names the rank, key or address involved.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{0}")]
    Timeout(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Env(String),
}

/// A library that could not be loaded is an environment problem; a failed call, a protocol one.
impl From<baichuan_cuda::CudaError> for DistError {
    fn from(e: baichuan_cuda::CudaError) -> Self {
        match e {
            baichuan_cuda::CudaError::Unavailable(text) => DistError::Env(text),
            baichuan_cuda::CudaError::Call(text) => DistError::Protocol(text),
        }
    }
}

pub fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DistError {
    let what = what.into();
    move |source| DistError::Io { what, source }
}

/// The process's place in the job, from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Shared secret of the job; peers without it are refused.
    pub token: String,
    pub timeout: Duration,
}

/// Environment variable carrying the job's secret (set by `baichuan launch`).
pub const TOKEN_VAR: &str = "BAICHUAN_JOB_TOKEN";

fn var(get: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| get(n))
}

fn parse<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> Result<Option<T>, DistError> {
    match var(get, names) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| DistError::Env(format!("{} = {v:?} is not a number", names[0]))),
    }
}

/// A remote rank's standard input is its launcher's connection (`launch` keeps it open for
/// the rank's life): when it closes, because the launcher or its remote-shell client died or
/// stopped the job, nothing will ever end this process, so it ends itself. A remote shell does
/// not end the remote command when its client is killed; this does.
fn watch_launcher_connection() {
    let spawned = std::thread::Builder::new().name("launcher-watch".into()).spawn(|| {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        loop {
            match std::io::Read::read(&mut stdin, &mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        eprintln!("launch: the launcher's connection closed (it stopped the job, or died); this rank exits");
        std::process::exit(LAUNCHER_GONE);
    });
    if let Err(e) = spawned {
        eprintln!(
            "warning: cannot watch the launcher's connection ({e}); this rank will not notice the launcher's death"
        );
    }
}

/// Exit code of a remote rank whose launcher connection closed.
pub const LAUNCHER_GONE: i32 = 4;

impl DistEnv {
    /// Reads the torchrun-style contract (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    /// MASTER_ADDR, MASTER_PORT), falling back to SLURM (SLURM_PROCID, SLURM_NTASKS,
    /// SLURM_LOCALID) and Open MPI (OMPI_COMM_WORLD_*). No variables: a single process.
    /// A remote rank started by `baichuan launch` reads the job token from its standard input
    /// (`BAICHUAN_JOB_TOKEN_STDIN=1`), so that it never appears in a command line.
    pub fn from_env(timeout: Duration) -> Result<Self, DistError> {
        let from_stdin =
            std::env::var(launch::TOKEN_STDIN_VAR).is_ok_and(|v| v == "1") && std::env::var(TOKEN_VAR).is_err();
        let token = if from_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(io_err("reading the job token from standard input"))?;
            watch_launcher_connection();
            Some(line.trim().to_string())
        } else {
            None
        };
        Self::from_lookup(
            &|n| match (n, &token) {
                (TOKEN_VAR, Some(t)) => Some(t.clone()),
                _ => std::env::var(n).ok(),
            },
            timeout,
        )
    }

    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>, timeout: Duration) -> Result<Self, DistError> {
        let rank: usize = parse(get, &["RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"])?.unwrap_or(0);
        let world: usize = parse(get, &["WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"])?.unwrap_or(1);
        let local_rank: usize =
            parse(get, &["LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"])?.unwrap_or(rank);
        let local_world: usize = parse(
            get,
            &[
                "LOCAL_WORLD_SIZE",
                "SLURM_NTASKS_PER_NODE",
                "OMPI_COMM_WORLD_LOCAL_SIZE",
            ],
        )?
        .unwrap_or(world);
        if world == 0 || rank >= world {
            return Err(DistError::Env(format!("RANK = {rank} is outside WORLD_SIZE = {world}")));
        }
        let master_addr = var(get, &["MASTER_ADDR"]).unwrap_or_else(|| "127.0.0.1".into());
        if world > 1 && var(get, &["MASTER_ADDR"]).is_none() {
            return Err(DistError::Env(
                "WORLD_SIZE > 1 but MASTER_ADDR is not set; HINT: start the job with `baichuan launch`, or export \
                 MASTER_ADDR and MASTER_PORT (the host and a free port of rank 0)"
                    .into(),
            ));
        }
        let master_port: u16 = parse(get, &["MASTER_PORT"])?.unwrap_or(29500);
        let token = var(get, &[TOKEN_VAR]).unwrap_or_default();
        Ok(DistEnv {
            rank,
            world,
            local_rank,
            local_world,
            master_addr,
            master_port,
            token,
            timeout,
        })
    }

    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }
}

/// Splits `n` elements over `parts` ranks: the first `n % parts` get one more.
pub fn even_ranges(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let (base, extra) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for r in 0..parts {
        let len = base + usize::from(r < extra);
        out.push((start, len));
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<DistEnv, DistError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(&|n| map.get(n).cloned(), Duration::from_secs(1))
    }

    #[test]
    fn reads_torchrun_slurm_and_openmpi_variables() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world, e.local_rank, e.local_world, e.master_port),
            (3, 4, 1, 2, 1234)
        );
        let e = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "n"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world, e.local_rank), (5, 8, 1));
        let e = env(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("MASTER_ADDR", "n"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world, e.local_rank), (2, 3, 0));
        let single = env(&[]).unwrap();
        assert!(!single.is_distributed());
    }

    #[test]
    fn inconsistent_environments_are_explained() {
        assert!(env(&[("RANK", "4"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "x")])
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(env(&[("RANK", "0"), ("WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string()
            .contains("MASTER_ADDR"));
        assert!(env(&[("RANK", "x")]).unwrap_err().to_string().contains("RANK"));
    }

    #[test]
    fn even_ranges_cover_everything_in_order() {
        assert_eq!(even_ranges(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(even_ranges(2, 4), vec![(0, 1), (1, 1), (2, 0), (2, 0)]);
    }
}
