//! `baichuan bench comm`: all-reduce bandwidth of a communication backend across message
//! sizes, beside this machine's own ceilings measured in the same run (memory copy and a
//! single loopback TCP stream).
//!
//! Bandwidths follow nccl-tests' conventions: algorithm bandwidth = bytes / time; bus
//! bandwidth = algbw x 2(W-1)/W for all-reduce, which is comparable with link speed.
//! The ranks are threads of this process, each with its own store connection and ring
//! sockets, so the measurement covers the same code path as multi-process training.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::tcp::run_local_ranks;

/// One message size's result.
#[derive(Debug, Clone)]
pub struct CommRow {
    pub bytes: usize,
    pub seconds: f64,
    pub algbw_gbs: f64,
    pub busbw_gbs: f64,
}

/// Bytes per second of copying a 256 MiB buffer (read + write counted).
pub fn memcpy_bandwidth() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault the pages in
    let reps = 4;
    let start = Instant::now();
    for i in 0..reps {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i]);
    }
    2.0 * (n * reps) as f64 / start.elapsed().as_secs_f64()
}

/// Bytes per second through one loopback TCP connection.
pub fn loopback_tcp_bandwidth() -> Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = 512usize << 20;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 4 << 20];
        let mut got = 0;
        while got < total {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    let chunk = vec![7u8; 4 << 20];
    let start = Instant::now();
    for _ in 0..total / chunk.len() {
        s.write_all(&chunk)?;
    }
    drop(s);
    reader.join().expect("reader thread")?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// All-reduce timings for `world` ranks over the tcp backend.
pub fn tcp_all_reduce(world: usize, sizes: &[usize], min_time: Duration) -> Result<Vec<CommRow>> {
    let sizes = sizes.to_vec();
    let per_rank = run_local_ranks(world, move |comm| -> Result<Vec<CommRow>> {
        let mut rows = Vec::new();
        for &bytes in &sizes {
            let buf = Tensor::ones([(bytes / 4) as i64], (Kind::Float, tch::Device::Cpu));
            let warm = Instant::now();
            comm.all_reduce(&buf, ReduceOp::Sum).wait()?;
            // the ranks agree on an iteration count from the mean warm-up time
            let mean = comm.all_reduce_scalar(warm.elapsed().as_secs_f64(), ReduceOp::Avg)?;
            let iters = (min_time.as_secs_f64() / mean.max(1e-6)).clamp(3.0, 1000.0) as u64;
            comm.barrier()?;
            let start = Instant::now();
            for _ in 0..iters {
                comm.all_reduce(&buf, ReduceOp::Sum).wait()?;
            }
            let seconds = start.elapsed().as_secs_f64() / iters as f64;
            let algbw = bytes as f64 / seconds / 1e9;
            rows.push(CommRow {
                bytes,
                seconds,
                algbw_gbs: algbw,
                busbw_gbs: algbw * 2.0 * (world - 1) as f64 / world as f64,
            });
        }
        Ok(rows)
    })?;
    per_rank.into_iter().next().context("no ranks")?
}
