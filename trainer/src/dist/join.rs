//! Joining a job: rank 0 serves the rendezvous store (on loopback when the job is local, on
//! MASTER_ADDR's interface otherwise), every rank connects to it, and the communicator forms (NCCL for CUDA runs, else the TCP ring; `Solo` for a single process).

use std::net::ToSocketAddrs;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::comm::{Communicator, Solo};
use super::nccl::NcclCommunicator;
use super::store::{StoreClient, StoreServer};
use super::tcp::TcpComm;
use super::{DistEnv, DistError};
use crate::config::Backend;

/// Where rank 0's store listens: loopback for a single process or a job whose MASTER_ADDR is
/// loopback (every rank local), else MASTER_ADDR's own address (the interface the other hosts
/// were told to reach), never every interface unless that address is not this machine's.
pub fn store_bind_addr(env: &DistEnv) -> String {
    let m = env.master_addr.as_str();
    if !env.is_distributed() {
        "127.0.0.1:0".into()
    } else if m == "localhost" || m == "::1" || m.starts_with("127.") {
        format!("127.0.0.1:{}", env.master_port)
    } else {
        match (m, env.master_port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(|a| a.is_ipv4()))
        {
            Some(a) => a.to_string(),
            None => format!("{m}:{}", env.master_port),
        }
    }
}

/// Starts rank 0's store on [`store_bind_addr`]; when MASTER_ADDR names no interface of this
/// machine (a NAT address, a name resolving elsewhere), on every interface, saying so.
fn start_store(env: &DistEnv) -> Result<StoreServer> {
    let bind = store_bind_addr(env);
    match StoreServer::start(&bind, &env.token) {
        Ok(s) => Ok(s),
        Err(DistError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AddrNotAvailable => {
            let any = format!("0.0.0.0:{}", env.master_port);
            eprintln!(
                "warning: MASTER_ADDR {} is not an address of this machine; the store listens on every interface \
                 ({any}); only holders of the job token are served",
                env.master_addr
            );
            StoreServer::start(&any, &env.token).context("starting the rendezvous store")
        }
        Err(e) => Err(anyhow::Error::new(e).context("starting the rendezvous store")),
    }
}

/// The communicator, the store server rank 0 runs (kept alive for the run), and the store's
/// address (for the checkpoint writer's own connection).
pub type Joined = (Box<dyn Communicator>, Option<StoreServer>, Option<String>);

/// Joins the job described by the environment: rank 0 serves the store, every rank
/// connects and the communicator forms (NCCL for CUDA runs, else the TCP ring). A single
/// process gets the `Solo` communicator, unless NCCL is asked for explicitly (then a world of
/// one runs the real NCCL path, through a private store).
pub fn join_job(env: &DistEnv, backend: Backend, device: tch::Device) -> Result<Joined> {
    let nccl = backend == Backend::Nccl || (backend == Backend::Auto && device.is_cuda() && env.is_distributed());
    if nccl && !device.is_cuda() {
        bail!("dist.backend = \"nccl\" needs train.device on CUDA; HINT: use dist.backend = \"tcp\" on CPU");
    }
    if !env.is_distributed() && !nccl {
        return Ok((Box::new(Solo), None, None));
    }
    if env.token.is_empty() && env.rank == 0 && env.is_distributed() {
        eprintln!(
            "warning: {} is not set: the store and ring accept any peer (baichuan launch sets it)",
            super::TOKEN_VAR
        );
    }
    let server = if env.rank == 0 { Some(start_store(env)?) } else { None };
    let addr = match &server {
        Some(s) if !env.is_distributed() => s.addr.to_string(),
        _ => format!("{}:{}", env.master_addr, env.master_port),
    };
    let store = Arc::new(StoreClient::connect(
        &addr,
        &env.token,
        env.rank,
        env.world,
        env.timeout,
    )?);
    let comm: Box<dyn Communicator> = if nccl {
        Box::new(NcclCommunicator::connect(env, store).context("creating the NCCL communicator")?)
    } else {
        Box::new(TcpComm::connect(env, store).context("forming the TCP ring")?)
    };
    Ok((comm, server, Some(addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(master: &str, world: usize) -> DistEnv {
        DistEnv {
            rank: 0,
            world,
            local_rank: 0,
            local_world: world,
            master_addr: master.into(),
            master_port: 29555,
            token: "t".into(),
            timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn the_store_binds_loopback_for_local_jobs_and_the_master_interface_otherwise() {
        assert_eq!(store_bind_addr(&env("127.0.0.1", 1)), "127.0.0.1:0");
        assert_eq!(store_bind_addr(&env("127.0.0.1", 4)), "127.0.0.1:29555");
        assert_eq!(store_bind_addr(&env("localhost", 4)), "127.0.0.1:29555");
        assert_eq!(store_bind_addr(&env("10.2.3.4", 4)), "10.2.3.4:29555");
        assert!(!store_bind_addr(&env("10.2.3.4", 4)).starts_with("0.0.0.0"));
    }
}
