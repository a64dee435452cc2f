//! The rendezvous store: a small TCP key-value service that rank 0 runs at
//! MASTER_ADDR:MASTER_PORT (as torch.distributed's TCPStore). Ranks exchange their ring
//! addresses, the NCCL unique id and barriers through it.
//!
//! Every wait has a timeout, and a timed-out wait names the ranks that never arrived. Each
//! connection must first present the job's secret token; a stranger is refused and logged.
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
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame over 64 MiB",
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
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
        let listener =
            TcpListener::bind(addr).map_err(io_err(format!("store: binding {addr} (is MASTER_PORT free?)")))?;
        let local = listener.local_addr().map_err(io_err("store: local address"))?;
        let table: Table = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let token = token.as_bytes().to_vec();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (table, token) = (table.clone(), token.clone());
                    std::thread::spawn(move || serve(stream, &table, &token));
                }
            })
            .map_err(io_err("store: starting the server thread"))?;
        Ok(StoreServer { addr: local })
    }
}

fn serve(mut stream: TcpStream, table: &Table, token: &[u8]) {
    let peer = stream.peer_addr().map_or("?".to_string(), |a| a.to_string());
    // latency only: a socket that refuses it still works
    stream.set_nodelay(true).ok();
    match read_frame(&mut stream).ok().as_deref().and_then(decode) {
        Some((HELLO, f)) if f.len() == 2 && same_token(&f[0], token) => {
            if write_frame(&mut stream, &[OK]).is_err() {
                return;
            }
        }
        _ => {
            eprintln!("store: refused a connection from {peer}: it did not present this job's token");
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
    /// Connects (retrying until `timeout`, since rank 0 may start later) and authenticates.
    pub fn connect(addr: &str, token: &str, rank: usize, world: usize, timeout: Duration) -> Result<Self, DistError> {
        let deadline = Instant::now() + timeout;
        let mut last_err: Option<String>;
        let stream = loop {
            let target = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
            if let Some(target) = target {
                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(s) => break s,
                    Err(e) => last_err = Some(e.to_string()),
                }
            } else {
                last_err = Some("cannot resolve the address".into());
            }
            if Instant::now() >= deadline {
                return Err(DistError::Timeout(format!(
                    "rank {rank}: could not reach the rendezvous store at {addr} within {}s ({}); HINT: is rank 0 \
                     running, and are MASTER_ADDR/MASTER_PORT reachable from this host?",
                    timeout.as_secs(),
                    last_err.unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        stream.set_nodelay(true).ok(); // latency only
        let mut s = stream;
        write_frame(&mut s, &encode(HELLO, &[token.as_bytes(), rank.to_string().as_bytes()]))
            .map_err(io_err("store: hello"))?;
        match read_frame(&mut s).map_err(io_err("store: hello reply"))?.first() {
            Some(&OK) => {}
            _ => {
                return Err(DistError::Protocol(format!(
                    "rank {rank}: the store at {addr} refused this process's job token; HINT: every rank must share {}",
                    super::TOKEN_VAR
                )))
            }
        }
        Ok(StoreClient {
            stream: Mutex::new(s),
            barriers: Mutex::new(0),
            rank,
            world,
            timeout,
        })
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
