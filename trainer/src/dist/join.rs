//! Joining a job: rank 0 serves the rendezvous store, every rank connects to it, and the
//! communicator forms (NCCL for CUDA runs, else the TCP ring; `Solo` for a single process).

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::comm::{Communicator, Solo};
use super::nccl::NcclCommunicator;
use super::store::{StoreClient, StoreServer};
use super::tcp::TcpComm;
use super::DistEnv;
use crate::config::Backend;

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
    let bind = if env.is_distributed() {
        format!("0.0.0.0:{}", env.master_port)
    } else {
        "127.0.0.1:0".into()
    };
    let server = if env.rank == 0 {
        Some(StoreServer::start(&bind, &env.token).context("starting the rendezvous store")?)
    } else {
        None
    };
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
