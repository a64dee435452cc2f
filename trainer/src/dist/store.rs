//! The rendezvous store: a small TCP key-value service that rank 0 runs at
//! MASTER_ADDR:MASTER_PORT (as torch.distributed's TCPStore). Ranks exchange their ring
//! addresses, the NCCL unique id and barriers through it.
//!
//! Every wait has a timeout, and a timed-out wait names the ranks that never arrived. Each
//! connection must first present the job's secret token, in a frame of at most
//! [`AUTH_FRAME_MAX`] bytes within [`AuthLimits::deadline`]; a stranger is refused and logged,
//! costs at most that frame and a short-lived thread, and no more than
//! [`AuthLimits::max_pending`] connections wait to authenticate at once (more are closed).
//!
//! Wire format: frames of `u32` little-endian length + payload; a request is one op byte
//! followed by length-prefixed fields; a reply is a status byte and fields.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{io_err, DistError};

const HELLO: u8 = 1;
const SET: u8 = 2;
const GET: u8 = 3;
const WAIT_ALL: u8 = 4;
const OK: u8 = 0;
const TIMED_OUT: u8 = 1;
const REFUSED: u8 = 2;

pub fn write_frame(s: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(&(payload.len() as u32).to_le_bytes())?;
    s.write_all(payload)?;
    s.flush()
}

pub fn read_frame(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    read_frame_max(s, 64 << 20)
}

/// Reads a frame of at most `max` bytes; a longer one is refused before anything is allocated.
pub fn read_frame_max(s: &mut impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, over the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// The largest frame a peer may send before it has authenticated (a token and a rank).
pub const AUTH_FRAME_MAX: usize = 4096;

/// What an unauthenticated connection may cost the store and the ring listeners.
#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Time a new connection has to present the token, all reads together.
    pub deadline: Duration,
    /// Connections waiting to authenticate at once; more are closed at once.
    pub max_pending: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            deadline: Duration::from_secs(10),
            max_pending: 64,
        }
    }
}

/// Reads the first frame of a new connection: at most [`AUTH_FRAME_MAX`] bytes, all of it
/// before `deadline` (a peer that trickles bytes is cut off too). Leaves the socket without a
/// read timeout.
pub fn read_auth_frame(s: &mut TcpStream, deadline: Duration) -> std::io::Result<Vec<u8>> {
    struct Deadlined<'a>(&'a mut TcpStream, Instant);
    impl Read for Deadlined<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.1.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "did not authenticate in time",
                ));
            }
            self.0.set_read_timeout(Some(left))?;
            self.0.read(buf)
        }
    }
    let frame = read_frame_max(&mut Deadlined(s, Instant::now() + deadline), AUTH_FRAME_MAX);
    s.set_read_timeout(None)?;
    frame
}

/// Counts connections waiting to authenticate; a slot is freed when its guard drops.
#[derive(Clone, Default)]
pub struct PendingSlots(Arc<std::sync::atomic::AtomicUsize>);

pub struct PendingGuard(Arc<std::sync::atomic::AtomicUsize>);

impl PendingSlots {
    /// A slot, or None when `max` connections are already waiting.
    pub fn take(&self, max: usize) -> Option<PendingGuard> {
        use std::sync::atomic::Ordering;
        let mut n = self.0.load(Ordering::SeqCst);
        loop {
            if n >= max {
                return None;
            }
            match self.0.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(PendingGuard(self.0.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn encode(op: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![op];
    for f in fields {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn decode(buf: &[u8]) -> Option<(u8, Vec<Vec<u8>>)> {
    let (&op, mut rest) = buf.split_first()?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        fields.push(rest.get(4..4 + len)?.to_vec());
        rest = &rest[4 + len..];
    }
    Some((op, fields))
}

/// Compares secrets without an early exit.
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Table = Arc<(Mutex<HashMap<String, Vec<u8>>>, Condvar)>;

/// The server half, run by rank 0 on a background thread.
pub struct StoreServer {
    pub addr: SocketAddr,
}

impl StoreServer {
    /// Binds `addr` (port 0 picks a free one) and serves until the process exits.
    pub fn start(addr: &str, token: &str) -> Result<Self, DistError> {
        Self::start_with(addr, token, AuthLimits::default())
    }

    /// [`StoreServer::start`] with explicit limits on unauthenticated connections.
    pub fn start_with(addr: &str, token: &str, limits: AuthLimits) -> Result<Self, DistError> {
        let listener =
            TcpListener::bind(addr).map_err(io_err(format!("store: binding {addr} (is MASTER_PORT free?)")))?;
        let local = listener.local_addr().map_err(io_err("store: local address"))?;
        let table: Table = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let token = token.as_bytes().to_vec();
        let pending = PendingSlots::default();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                let mut warned = false;
                for stream in listener.incoming().flatten() {
                    let Some(slot) = pending.take(limits.max_pending) else {
                        if !warned {
                            eprintln!(
                                "store: {} connections are waiting to authenticate; closing further ones until they \
                                 finish",
                                limits.max_pending
                            );
                            warned = true;
                        }
                        continue; // dropping the stream closes it
                    };
                    let (table, token) = (table.clone(), token.clone());
                    std::thread::spawn(move || serve(stream, &table, &token, limits.deadline, slot));
                }
            })
            .map_err(io_err("store: starting the server thread"))?;
        Ok(StoreServer { addr: local })
    }
}

fn serve(mut stream: TcpStream, table: &Table, token: &[u8], deadline: Duration, slot: PendingGuard) {
    let peer = stream.peer_addr().map_or("?".to_string(), |a| a.to_string());
    // latency only: a socket that refuses it still works
    stream.set_nodelay(true).ok();
    match read_auth_frame(&mut stream, deadline).ok().as_deref().and_then(decode) {
        Some((HELLO, f)) if f.len() == 2 && same_token(&f[0], token) => {
            drop(slot);
            if write_frame(&mut stream, &[OK]).is_err() {
                return;
            }
        }
        _ => {
            eprintln!("store: refused a connection from {peer}: it did not present this job's token in time");
            // a courtesy to the refused peer; it may be gone already
            write_frame(&mut stream, &[REFUSED]).ok();
            return;
        }
    }
    let (lock, cvar) = &**table;
    while let Ok(frame) = read_frame(&mut stream) {
        let Some((op, f)) = decode(&frame) else {
            return;
        };
        let reply = match (op, f.as_slice()) {
            (SET, [key, value]) => {
                lock.lock()
                    .expect("store lock")
                    .insert(String::from_utf8_lossy(key).into(), value.clone());
                cvar.notify_all();
                vec![OK]
            }
            (GET, [key, ms]) => {
                let key = String::from_utf8_lossy(key).to_string();
                let deadline = Instant::now() + Duration::from_millis(parse_ms(ms));
                let mut map = lock.lock().expect("store lock");
                loop {
                    if let Some(v) = map.get(&key) {
                        break encode(OK, &[v]);
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break vec![TIMED_OUT];
                    }
                    map = cvar.wait_timeout(map, deadline - now).expect("store lock").0;
                }
            }
            (WAIT_ALL, [prefix, count, ms]) => {
                let prefix = String::from_utf8_lossy(prefix).to_string();
                let count = parse_ms(count) as usize;
                let deadline = Instant::now() + Duration::from_millis(parse_ms(ms));
                let mut map = lock.lock().expect("store lock");
                loop {
                    let missing: Vec<String> = (0..count)
                        .filter(|i| !map.contains_key(&format!("{prefix}{i}")))
                        .map(|i| i.to_string())
                        .collect();
                    if missing.is_empty() {
                        break vec![OK];
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break encode(TIMED_OUT, &[missing.join(",").as_bytes()]);
                    }
                    map = cvar.wait_timeout(map, deadline - now).expect("store lock").0;
                }
            }
            _ => return,
        };
        if write_frame(&mut stream, &reply).is_err() {
            return;
        }
    }
}

fn parse_ms(bytes: &[u8]) -> u64 {
    String::from_utf8_lossy(bytes).parse().unwrap_or(0)
}

/// A rank's connection to the store.
pub struct StoreClient {
    stream: Mutex<TcpStream>,
    barriers: Mutex<u64>,
    pub rank: usize,
    pub world: usize,
    pub timeout: Duration,
}

impl StoreClient {
    /// Connects (retrying until `timeout`, since rank 0 may start later, or may have closed a
    /// connection while strangers filled its pending slots) and authenticates.
    pub fn connect(addr: &str, token: &str, rank: usize, world: usize, timeout: Duration) -> Result<Self, DistError> {
        let deadline = Instant::now() + timeout;
        let hello = encode(HELLO, &[token.as_bytes(), rank.to_string().as_bytes()]);
        let mut last_err: String;
        loop {
            match addr.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                None => last_err = "cannot resolve the address".into(),
                Some(target) => match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Err(e) => last_err = e.to_string(),
                    Ok(mut s) => {
                        s.set_nodelay(true).ok(); // latency only
                        let reply = write_frame(&mut s, &hello).and_then(|_| read_frame(&mut s));
                        match reply.as_ref().map(|r| r.first().copied()) {
                            Ok(Some(OK)) => {
                                return Ok(StoreClient {
                                    stream: Mutex::new(s),
                                    barriers: Mutex::new(0),
                                    rank,
                                    world,
                                    timeout,
                                })
                            }
                            Ok(_) => {
                                return Err(DistError::Protocol(format!(
                                    "rank {rank}: the store at {addr} refused this process's job token; HINT: every \
                                     rank must share {}",
                                    super::TOKEN_VAR
                                )))
                            }
                            Err(e) => last_err = format!("the store closed the connection ({e})"),
                        }
                    }
                },
            }
            if Instant::now() >= deadline {
                return Err(DistError::Timeout(format!(
                    "rank {rank}: could not reach the rendezvous store at {addr} within {}s ({last_err}); HINT: is \
                     rank 0 running, and are MASTER_ADDR/MASTER_PORT reachable from this host?",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(&self, op: u8, fields: &[&[u8]]) -> Result<(u8, Vec<Vec<u8>>), DistError> {
        let mut s = self.stream.lock().expect("store client lock");
        write_frame(&mut *s, &encode(op, fields)).map_err(io_err("store request"))?;
        let reply = read_frame(&mut *s).map_err(io_err("store reply (did rank 0 exit?)"))?;
        decode(&reply).ok_or_else(|| DistError::Protocol("malformed store reply".into()))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), DistError> {
        self.call(SET, &[key.as_bytes(), value]).map(|_| ())
    }

    /// Waits for `key` up to the store timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, DistError> {
        let ms = self.timeout.as_millis().to_string();
        match self.call(GET, &[key.as_bytes(), ms.as_bytes()])? {
            (OK, mut f) if f.len() == 1 => Ok(f.remove(0)),
            _ => Err(DistError::Timeout(format!(
                "rank {}: key {key:?} did not appear in the store within {}s",
                self.rank,
                self.timeout.as_secs()
            ))),
        }
    }

    /// Waits until `{prefix}0` .. `{prefix}{count-1}` exist; the error lists the missing indices.
    pub fn wait_all(&self, prefix: &str, count: usize, what: &str) -> Result<(), DistError> {
        let ms = self.timeout.as_millis().to_string();
        match self.call(
            WAIT_ALL,
            &[prefix.as_bytes(), count.to_string().as_bytes(), ms.as_bytes()],
        )? {
            (OK, _) => Ok(()),
            (_, f) => Err(DistError::Timeout(format!(
                "{what} timed out after {}s: rank(s) {} did not arrive; HINT: see those ranks' output for an \
                 error, or raise dist.timeout_s if they are just slow",
                self.timeout.as_secs(),
                f.first()
                    .map(|m| String::from_utf8_lossy(m).to_string())
                    .unwrap_or_default()
            ))),
        }
    }

    /// The next of a sequence of barriers that every rank passes in the same order (the
    /// communicators' `barrier`): named by `family` and a per-connection count.
    pub fn next_barrier(&self, family: &str) -> Result<(), DistError> {
        let n = {
            let mut b = self.barriers.lock().expect("barrier counter");
            *b += 1;
            *b
        };
        self.barrier(&format!("{family}-{n}"))
    }

    /// All ranks wait here until every rank has arrived at barrier `name`.
    pub fn barrier(&self, name: &str) -> Result<(), DistError> {
        let prefix = format!("barrier/{name}/");
        self.set(&format!("{prefix}{}", self.rank), b"")?;
        self.wait_all(&prefix, self.world, &format!("barrier {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_barrier_and_timeouts_name_the_missing_ranks() {
        let server = StoreServer::start("127.0.0.1:0", "secret").unwrap();
        let addr = server.addr.to_string();
        let t = Duration::from_millis(300);
        let a = StoreClient::connect(&addr, "secret", 0, 3, t).unwrap();
        let b = StoreClient::connect(&addr, "secret", 1, 3, t).unwrap();
        a.set("k", b"v").unwrap();
        assert_eq!(b.get("k").unwrap(), b"v");
        // only ranks 0 and 1 arrive: the error names rank 2
        let waiter = std::thread::spawn(move || b.barrier("start"));
        let err = a.barrier("start").unwrap_err().to_string();
        assert!(err.contains("rank(s) 2 did not arrive"), "{err}");
        assert!(waiter.join().unwrap().is_err());
        assert!(a.get("never").unwrap_err().to_string().contains("never"));
    }

    /// A stranger's frame header announcing 64 MiB is refused before anything is read or
    /// allocated, an idle stranger is cut off at the deadline, and strangers beyond the pending
    /// limit are closed at once; a rank with the token still joins.
    #[test]
    fn strangers_cost_neither_memory_nor_lasting_threads() {
        let limits = AuthLimits {
            deadline: Duration::from_millis(400),
            max_pending: 2,
        };
        let server = StoreServer::start_with("127.0.0.1:0", "secret", limits).unwrap();
        let closed_within = |s: &mut TcpStream, limit: Duration| {
            s.set_read_timeout(Some(limit)).unwrap();
            let mut buf = [0u8; 64];
            // the refusal courtesy may arrive first; then EOF (or a reset)
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        return false
                    }
                    Err(_) => return true,
                }
            }
        };
        let mut big = TcpStream::connect(server.addr).unwrap();
        big.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
        assert!(
            closed_within(&mut big, Duration::from_secs(5)),
            "a 64 MiB hello was waited for"
        );
        let mut idle = TcpStream::connect(server.addr).unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut idle, Duration::from_secs(5)),
            "an idle stranger was kept"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "closed before its deadline"
        );
        // two idle strangers fill the pending slots: a third is closed at once
        let _a = TcpStream::connect(server.addr).unwrap();
        let _b = TcpStream::connect(server.addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut third = TcpStream::connect(server.addr).unwrap();
        assert!(
            closed_within(&mut third, Duration::from_millis(300)),
            "the pending limit was not applied"
        );
        // once they time out, a rank with the token joins
        std::thread::sleep(Duration::from_millis(600));
        let rank = StoreClient::connect(&server.addr.to_string(), "secret", 0, 1, Duration::from_secs(2)).unwrap();
        rank.set("k", b"v").unwrap();
        assert_eq!(rank.get("k").unwrap(), b"v");
    }

    #[test]
    fn a_stranger_without_the_token_is_refused() {
        let server = StoreServer::start("127.0.0.1:0", "secret").unwrap();
        let err = StoreClient::connect(&server.addr.to_string(), "guess", 0, 1, Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("refused"), "{err}");
    }
}
