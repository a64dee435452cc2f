//! The `tcp` backend: ring collectives over TCP between ranks, for CPU runs and tests.
//!
//! Each rank listens on an ephemeral port of the address it publishes (loopback when the job
//! is local), publishes it in the store, connects to the next rank and accepts the previous
//! one (both sides present the job token). Connections are authenticated in parallel, each
//! within a short deadline, so a stray connection never delays the ring. Collectives run on
//! a dedicated communication thread, in submission order, so backward computation continues
//! while buckets are on the wire. Algorithms (Patarasuk & Yuan 2009, as NCCL's ring):
//! reduce-scatter and all-gather each take W-1 steps passing one chunk to the next rank while
//! receiving one from the previous; all-reduce is the two in sequence; broadcast pipelines
//! chunks around the ring. Reductions accumulate in fp32 whatever the buffer's dtype (bf16 and
//! f16 buffers are widened, reduced, and rounded once). Buffers on a GPU are staged through
//! host memory. A peer silent for longer than the timeout is reported by rank.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::comm::{Communicator, ReduceOp, Work};
use super::store::{read_auth_frame, read_frame, same_token, write_frame, AuthLimits, PendingSlots, StoreClient};
use super::{even_ranges, io_err, DistEnv, DistError};

enum Op {
    AllReduce(ReduceOp),
    ReduceScatter(Vec<(usize, usize)>, ReduceOp),
    AllGather(Vec<(usize, usize)>),
    Broadcast(usize),
    /// Copy the buffer into this tensor (host memory).
    CopyTo(Tensor),
}

struct Job {
    op: Op,
    buf: Tensor,
    done: Sender<Result<(), DistError>>,
}

/// The ring: a socket to the next rank and one from the previous.
struct Ring {
    rank: usize,
    world: usize,
    next: TcpStream,
    prev: TcpStream,
    /// The receive buffer of reduce-scatter steps, kept between collectives.
    scratch: Vec<u8>,
}

/// The ranges `send` and `recv` of one buffer, which must not overlap: the first to read,
/// the second to write, without copying either.
fn split_pair<T>(buf: &mut [T], send: (usize, usize), recv: (usize, usize)) -> (&[T], &mut [T]) {
    assert!(
        send.0 + send.1 <= recv.0 || recv.0 + recv.1 <= send.0,
        "ring ranges {send:?} and {recv:?} overlap"
    );
    if send.0 + send.1 <= recv.0 {
        let (lo, hi) = buf.split_at_mut(recv.0);
        (&lo[send.0..send.0 + send.1], &mut hi[..recv.1])
    } else {
        let (lo, hi) = buf.split_at_mut(send.0);
        (&hi[..send.1], &mut lo[recv.0..recv.0 + recv.1])
    }
}

fn as_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no invalid bit patterns and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

impl Ring {
    /// Sends `send` to the next rank while receiving `recv` from the previous one.
    fn exchange(&mut self, send: &[u8], recv: &mut [u8]) -> Result<(), DistError> {
        let (rank, world) = (self.rank, self.world);
        let (next, prev) = (&mut self.next, &mut self.prev);
        std::thread::scope(|s| {
            let sender = s.spawn(move || next.write_all(send));
            let got = prev.read_exact(recv);
            let sent = sender.join().expect("ring sender thread");
            sent.map_err(io_err(format!("rank {rank}: sending to rank {}", (rank + 1) % world)))?;
            got.map_err(io_err(format!(
                "rank {rank}: receiving from rank {} (it stopped, or was silent past dist.timeout_s)",
                (rank + world - 1) % world
            )))
        })
    }

    fn reduce_scatter(&mut self, data: &mut [f32], ranges: &[(usize, usize)]) -> Result<(), DistError> {
        let (r, w) = (self.rank, self.world);
        let mut tmp = std::mem::take(&mut self.scratch);
        for s in 0..w - 1 {
            let (so, sl) = ranges[(r + 2 * w - s - 1) % w];
            let (ro, rl) = ranges[(r + 2 * w - s - 2) % w];
            tmp.resize(rl * 4, 0u8);
            // the chunk sent and the one reduced into are different ranks' ranges
            let (send, _) = split_pair(data, (so, sl), (ro, rl));
            let sent = self.exchange(as_bytes(send), &mut tmp);
            if let Err(e) = sent {
                self.scratch = tmp;
                return Err(e);
            }
            for (d, b) in data[ro..ro + rl].iter_mut().zip(tmp.chunks_exact(4)) {
                *d += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        self.scratch = tmp;
        Ok(())
    }

    fn all_gather(&mut self, bytes: &mut [u8], ranges: &[(usize, usize)]) -> Result<(), DistError> {
        let (r, w) = (self.rank, self.world);
        for s in 0..w - 1 {
            let (so, sl) = ranges[(r + w - s) % w];
            let (ro, rl) = ranges[(r + 2 * w - s - 1) % w];
            let (send, recv) = split_pair(bytes, (so, sl), (ro, rl));
            self.exchange(send, recv)?;
        }
        Ok(())
    }

    fn broadcast(&mut self, bytes: &mut [u8], root: usize) -> Result<(), DistError> {
        const CHUNK: usize = 4 << 20;
        let (r, w) = (self.rank, self.world);
        let last = (root + w - 1) % w; // the rank that does not forward
        for chunk in bytes.chunks_mut(CHUNK) {
            if r != root {
                self.prev
                    .read_exact(chunk)
                    .map_err(io_err(format!("rank {r}: broadcast from rank {root}")))?;
            }
            if r != last {
                self.next
                    .write_all(chunk)
                    .map_err(io_err(format!("rank {r}: broadcast to rank {}", (r + 1) % w)))?;
            }
        }
        Ok(())
    }

    fn run(&mut self, op: &Op, buf: &Tensor) -> Result<(), DistError> {
        let _guard = tch::no_grad_guard();
        if let Op::CopyTo(dst) = op {
            dst.shallow_clone().copy_(buf);
            return Ok(());
        }
        let n = buf.numel();
        let reduces = matches!(op, Op::AllReduce(_) | Op::ReduceScatter(..));
        // work on a host copy: fp32 for reductions, the buffer's own dtype otherwise
        let needs_copy = buf.device() != Device::Cpu || (reduces && buf.kind() != Kind::Float) || !buf.is_contiguous();
        let work = if needs_copy {
            let host = buf.to_device(Device::Cpu);
            if reduces { host.to_kind(Kind::Float) } else { host }.contiguous()
        } else {
            buf.shallow_clone()
        };
        let elem = work.kind().elt_size_in_bytes();
        let raw = work.data_ptr() as *mut u8;
        // SAFETY: `work` is a contiguous host tensor of `n` elements that lives for this call;
        // the submitting thread does not touch the buffer until its Work handle is waited for,
        // and each view below is created at its use and not held across another.
        let bytes = || unsafe { std::slice::from_raw_parts_mut(raw, n * elem) };
        let floats = || unsafe { std::slice::from_raw_parts_mut(raw as *mut f32, n) };
        let (rank, world) = (self.rank, self.world);
        // a mean is the sum scaled on the rank that owns the chunk, before it is shared
        let scale = |data: &mut [f32], op: ReduceOp, ranges: &[(usize, usize)]| {
            if op == ReduceOp::Avg {
                let (o, l) = ranges[rank];
                data[o..o + l].iter_mut().for_each(|x| *x /= world as f32);
            }
        };
        match op {
            Op::AllReduce(rop) => {
                let ranges = even_ranges(n, self.world);
                let data = floats();
                self.reduce_scatter(data, &ranges)?;
                scale(data, *rop, &ranges);
                let byte_ranges: Vec<_> = ranges.iter().map(|&(o, l)| (o * 4, l * 4)).collect();
                self.all_gather(bytes(), &byte_ranges)?;
            }
            Op::ReduceScatter(ranges, rop) => {
                let data = floats();
                self.reduce_scatter(data, ranges)?;
                scale(data, *rop, ranges);
            }
            Op::AllGather(ranges) => {
                let byte_ranges: Vec<_> = ranges.iter().map(|&(o, l)| (o * elem, l * elem)).collect();
                self.all_gather(bytes(), &byte_ranges)?;
            }
            Op::Broadcast(root) => self.broadcast(bytes(), *root)?,
            Op::CopyTo(_) => unreachable!("copies return above"),
        }
        if needs_copy {
            buf.shallow_clone().copy_(&work);
        }
        Ok(())
    }
}

/// The address other hosts can reach this one at: loopback when the master is local,
/// else the interface that routes to MASTER_ADDR.
fn reachable_ip(master: &str, port: u16) -> String {
    if master == "localhost" || master.starts_with("127.") {
        return "127.0.0.1".into();
    }
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect((master, port)).map(|_| s))
        .and_then(|s| s.local_addr())
        .map_or_else(|_| "127.0.0.1".into(), |a| a.ip().to_string())
}

/// Accepts the previous rank's connection on `listener`: each connection is authenticated on
/// its own thread (token and rank, within the limits' deadline), so strays neither block nor
/// delay it; at most `limits.max_pending` wait at once. Fails after `timeout` without one.
pub fn accept_peer(
    listener: TcpListener,
    token: &str,
    prev_rank: usize,
    world: usize,
    timeout: Duration,
    limits: AuthLimits,
) -> Result<TcpStream, DistError> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true).map_err(io_err("ring: listener"))?;
    let (tx, rx) = channel::<TcpStream>();
    let pending = PendingSlots::default();
    loop {
        if let Ok(s) = rx.try_recv() {
            return Ok(s);
        }
        match listener.accept() {
            Ok((s, peer)) => {
                let Some(slot) = pending.take(limits.max_pending) else {
                    continue; // too many waiting to authenticate: this one is closed
                };
                let (tx, token) = (tx.clone(), token.to_string());
                std::thread::spawn(move || {
                    let mut s = s;
                    let authentic = s.set_nonblocking(false).is_ok()
                        && read_auth_frame(&mut s, limits.deadline)
                            .map(|frame| {
                                let text = String::from_utf8_lossy(&frame).to_string();
                                let (tok, from) = text.split_once('\n').unwrap_or(("", ""));
                                same_token(tok.as_bytes(), token.as_bytes()) && from == prev_rank.to_string()
                            })
                            .unwrap_or(false);
                    drop(slot);
                    if authentic && write_frame(&mut s, b"ok").is_ok() {
                        tx.send(s).ok(); // the acceptor may have finished: then it is not needed
                    } else {
                        eprintln!("ring: refused a connection from {peer}: wrong job token or rank, or too slow");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(DistError::Timeout(format!(
                        "ring: rank {prev_rank} never connected to rank {}",
                        (prev_rank + 1) % world
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("ring: accept")(e)),
        }
    }
}

/// Ring collectives over TCP.
pub struct TcpComm {
    rank: usize,
    world: usize,
    jobs: Mutex<Sender<Job>>,
    store: Arc<StoreClient>,
}

impl TcpComm {
    /// Forms the ring through the store; errors name the ranks that did not show up.
    pub fn connect(env: &DistEnv, store: Arc<StoreClient>) -> Result<Self, DistError> {
        let (rank, world) = (env.rank, env.world);
        let ip = reachable_ip(&env.master_addr, env.master_port);
        let listener =
            TcpListener::bind((ip.as_str(), 0)).map_err(io_err(format!("ring: binding a listening socket on {ip}")))?;
        let port = listener.local_addr().map_err(io_err("ring: local address"))?.port();
        let me = format!("{ip}:{port}");
        store.set(&format!("ring/{rank}"), me.as_bytes())?;
        store.wait_all("ring/", world, "rendezvous")?;
        if rank == 0 {
            let all: Vec<String> = (0..world)
                .map(|r| {
                    store
                        .get(&format!("ring/{r}"))
                        .map(|a| format!("{r}={}", String::from_utf8_lossy(&a)))
                })
                .collect::<Result<_, _>>()?;
            println!("ring: rank addresses {}", all.join(" "));
        }
        let next_rank = (rank + 1) % world;
        let next_addr = String::from_utf8_lossy(&store.get(&format!("ring/{next_rank}"))?).to_string();
        let hello = format!("{}\n{rank}", env.token);
        let token = env.token.clone();
        let timeout = env.timeout;
        let prev_rank = (rank + world - 1) % world;
        let acceptor =
            std::thread::spawn(move || accept_peer(listener, &token, prev_rank, world, timeout, AuthLimits::default()));
        let deadline = Instant::now() + timeout;
        let mut next = loop {
            match TcpStream::connect(&next_addr) {
                Ok(s) => break s,
                // not listening yet: retry until the deadline
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    return Err(io_err(format!(
                        "ring: connecting rank {rank} to rank {next_rank} at {next_addr}"
                    ))(e))
                }
            }
        };
        write_frame(&mut next, hello.as_bytes()).map_err(io_err("ring: handshake"))?;
        let ack = read_frame(&mut next).map_err(io_err(format!("ring: rank {next_rank} refused the handshake")))?;
        if ack != b"ok" {
            return Err(DistError::Protocol(format!(
                "ring: rank {next_rank} refused the handshake"
            )));
        }
        let prev = acceptor.join().expect("ring acceptor thread")?;
        for s in [&next, &prev] {
            s.set_nodelay(true).map_err(io_err("ring: socket"))?;
            s.set_read_timeout(Some(timeout)).map_err(io_err("ring: socket"))?;
            s.set_write_timeout(Some(timeout)).map_err(io_err("ring: socket"))?;
        }
        let mut ring = Ring {
            rank,
            world,
            next,
            prev,
            scratch: Vec::new(),
        };
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("tcp-comm".into())
            .spawn(move || {
                for job in rx {
                    let r = ring.run(&job.op, &job.buf);
                    // the issuer dropped its Work (it failed already): the result has no reader
                    job.done.send(r).ok();
                }
            })
            .map_err(io_err("starting the communication thread"))?;
        Ok(TcpComm {
            rank,
            world,
            jobs: Mutex::new(tx),
            store,
        })
    }

    fn submit(&self, op: Op, buf: &Tensor) -> Work {
        if self.world == 1 {
            return Work::done();
        }
        let (done, work) = Work::pending();
        let job = Job {
            op,
            buf: buf.shallow_clone(),
            done,
        };
        if let Err(e) = self.jobs.lock().expect("job queue").send(job) {
            let _ =
                e.0.done
                    .send(Err(DistError::Protocol("the communication thread stopped".into())));
        }
        work
    }
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn name(&self) -> &'static str {
        "tcp"
    }
    fn all_reduce(&self, buf: &Tensor, op: ReduceOp) -> Work {
        self.submit(Op::AllReduce(op), buf)
    }
    fn reduce_scatter(&self, buf: &Tensor, ranges: &[(usize, usize)], op: ReduceOp) -> Work {
        self.submit(Op::ReduceScatter(ranges.to_vec(), op), buf)
    }
    fn all_gather(&self, buf: &Tensor, ranges: &[(usize, usize)]) -> Work {
        self.submit(Op::AllGather(ranges.to_vec()), buf)
    }
    fn broadcast(&self, buf: &Tensor, root: usize) -> Work {
        self.submit(Op::Broadcast(root), buf)
    }
    fn copy_to_host(&self, src: &Tensor, dst: &Tensor) -> Work {
        if self.world == 1 {
            tch::no_grad(|| dst.shallow_clone().copy_(src));
            return Work::done();
        }
        // on the communication thread, after the collectives queued before it
        self.submit(Op::CopyTo(dst.shallow_clone()), src)
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.store.next_barrier("comm")
    }
}

/// Runs `f` on `world` ranks that are threads of this process, each with its own store
/// connection and ring sockets over loopback (for benchmarks and tests); returns each rank's
/// result in rank order.
pub fn run_local_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(&TcpComm) -> T + Send + Sync + 'static,
) -> Result<Vec<T>, DistError> {
    let server = super::store::StoreServer::start("127.0.0.1:0", "local-ranks")?;
    let port = server.addr.port();
    let f = Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || -> Result<T, DistError> {
                let env = DistEnv {
                    rank,
                    world,
                    local_rank: rank,
                    local_world: world,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    token: "local-ranks".into(),
                    timeout: Duration::from_secs(60),
                };
                let store = Arc::new(StoreClient::connect(
                    &format!("127.0.0.1:{port}"),
                    &env.token,
                    rank,
                    world,
                    env.timeout,
                )?);
                let comm = TcpComm::connect(&env, store)?;
                Ok(f(&comm))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| DistError::Protocol("a rank thread panicked".into()))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_ranges_split_without_copies() {
        let mut buf = [0u8, 1, 2, 3, 4, 5, 6, 7];
        let (send, recv) = split_pair(&mut buf, (0, 3), (5, 2));
        assert_eq!(send, &[0, 1, 2]);
        recv.copy_from_slice(&[9, 9]);
        let (send, recv) = split_pair(&mut buf, (4, 4), (1, 2));
        assert_eq!(send, &[4, 9, 9, 7]);
        assert_eq!(recv, &mut [1, 2]);
        // empty ranges (more ranks than elements, uneven ZeRO-2 parts) may share an offset
        let (send, recv) = split_pair(&mut buf, (3, 0), (3, 0));
        assert!(send.is_empty() && recv.is_empty());
        let (send, recv) = split_pair(&mut buf, (0, 0), (0, 2));
        assert!(send.is_empty() && recv.len() == 2);
        let (send, recv) = split_pair(&mut buf, (0, 2), (0, 0));
        assert!(send.len() == 2 && recv.is_empty());
        let (send, recv) = split_pair(&mut buf, (2, 0), (0, 2));
        assert!(send.is_empty() && recv.len() == 2);
    }

    /// Three idle connections and a wrong-token one reach the listener before the previous
    /// rank does: it is still accepted at once, not after their read timeouts.
    #[test]
    fn stray_connections_do_not_delay_the_ring() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut wrong = TcpStream::connect(addr).unwrap();
        write_frame(&mut wrong, b"guess\n1").unwrap();
        let limits = AuthLimits {
            deadline: Duration::from_secs(30),
            max_pending: 8,
        };
        let started = Instant::now();
        let acceptor = std::thread::spawn(move || accept_peer(listener, "tok", 1, 2, Duration::from_secs(60), limits));
        std::thread::sleep(Duration::from_millis(200));
        let mut peer = TcpStream::connect(addr).unwrap();
        write_frame(&mut peer, b"tok\n1").unwrap();
        assert_eq!(read_frame(&mut peer).unwrap(), b"ok");
        let accepted = acceptor.join().unwrap().unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), peer.local_addr().unwrap());
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(10),
            "accepted after {waited:?}: the idle connections held it up"
        );
        drop(idle);
    }
}
