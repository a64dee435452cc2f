//! A training-loop watchdog: a thread that ends the process when the loop has made no progress
//! for too long, so a rank stuck in a collective fails its job instead of hanging it.
//!
//! NCCL collectives have no timeout of their own: when a peer dies or stops, the others wait on
//! the GPU forever while their host threads block in the next synchronisation. The loop reports
//! progress (`beat`) after every step and around long phases (the first step may take three
//! limits; file writes are not watched); past `limit` without a beat the
//! watchdog prints what it knows (rank, last step, phase, how long) and exits, and `baichuan
//! launch` then stops the other ranks and, with `launch.max_restarts`, restarts the job from its
//! latest checkpoint. Follows the idea of PyTorch's NCCL watchdog (TORCH_NCCL_ASYNC_ERROR_HANDLING)
//! at the level of the training loop, where it needs no hooks into NCCL.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct State {
    /// The last beat (or the start).
    last: Instant,
    /// When the watchdog fires without a beat: `limit` after a beat; at the start, the first
    /// step (warm-up, kernel selection, compilation) gets `FIRST_STEP_ALLOWANCE` times that.
    deadline: Instant,
    step: u64,
    phase: &'static str,
    armed: bool,
    stop: bool,
}

/// How many limits the first step may take.
pub const FIRST_STEP_ALLOWANCE: u32 = 3;

/// What the watchdog does when it fires (the process exits; tests record the message instead).
pub type OnFire = Box<dyn Fn(String) + Send>;

pub struct Watchdog {
    limit: Duration,
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Watches with `limit`; `rank` goes into the message. `on_fire` is called once.
    pub fn start(limit: Duration, rank: usize, on_fire: OnFire) -> Self {
        let state = Arc::new((
            Mutex::new(State {
                last: Instant::now(),
                deadline: Instant::now() + limit * FIRST_STEP_ALLOWANCE,
                step: 0,
                phase: "the first step",
                armed: true,
                stop: false,
            }),
            Condvar::new(),
        ));
        let shared = state.clone();
        let tick = (limit / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let (lock, cvar) = &*shared;
                let mut s = lock.lock().expect("watchdog state");
                loop {
                    if s.stop {
                        return;
                    }
                    let idle = s.last.elapsed();
                    if s.armed && Instant::now() > s.deadline {
                        let message = format!(
                            "rank {rank}: no progress for {:.0} s after step {} (then: {}); a collective is most likely \
                             waiting for a rank that died or hung. Stopping this rank (dist.watchdog_s = {}) so that \
                             `baichuan launch` stops the job, and restarts it from the latest checkpoint when \
                             launch.max_restarts allows; the other ranks' output says which one failed first",
                            idle.as_secs_f64(),
                            s.step,
                            s.phase,
                            limit.as_secs()
                        );
                        drop(s);
                        on_fire(message);
                        return;
                    }
                    s = cvar.wait_timeout(s, tick).expect("watchdog state").0;
                }
            })
            .expect("start the watchdog thread");
        Watchdog {
            limit,
            state,
            thread: Some(thread),
        }
    }

    /// Records progress: `step` finished, `phase` is what comes next. (Re-)arms the watchdog.
    pub fn beat(&self, step: u64, phase: &'static str) {
        let mut s = self.state.0.lock().expect("watchdog state");
        s.last = Instant::now();
        s.deadline = s.last + self.limit;
        s.step = step;
        s.phase = phase;
        s.armed = true;
    }

    /// Stops watching (before phases without a bound, such as the final save).
    pub fn disarm(&self) {
        self.state.0.lock().expect("watchdog state").armed = false;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.0.lock().expect("watchdog state").stop = true;
        self.state.1.notify_all();
        if let Some(t) = self.thread.take() {
            t.join().expect("the watchdog thread does not panic");
        }
    }
}

/// The process-ending action: print and leave with status 3 at once. `_exit`, not `exit`: the
/// main thread is blocked inside CUDA or NCCL, and running libtorch's and CUDA's exit handlers
/// under it can hang the very process the watchdog is there to end.
pub fn exit_on_fire() -> OnFire {
    Box::new(|message| {
        eprintln!("watchdog: {message}");
        use std::io::Write;
        // best effort: the process ends next whether or not the streams take the bytes
        std::io::stderr().flush().ok();
        std::io::stdout().flush().ok();
        // SAFETY: _exit ends the process without running handlers; nothing is touched after it.
        unsafe { libc::_exit(3) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn recorder() -> (OnFire, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (
            Box::new(move |m| {
                tx.lock().unwrap().send(m).ok(); // the test may have stopped listening
            }),
            rx,
        )
    }

    #[test]
    fn fires_after_the_limit_without_progress_naming_rank_step_and_phase() {
        let (fire, rx) = recorder();
        let w = Watchdog::start(Duration::from_millis(200), 3, fire);
        w.beat(41, "validation");
        let started = Instant::now();
        let m = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog fired");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(
            m.contains("rank 3") && m.contains("after step 41") && m.contains("validation"),
            "{m}"
        );
    }

    #[test]
    fn the_limit_defaults_to_twice_the_timeout_under_nccl_only() {
        let mut d = crate::config::DistConfig::default();
        assert_eq!(d.watchdog("nccl"), Some(Duration::from_secs(2 * d.timeout_s)));
        assert_eq!(d.watchdog("tcp"), None);
        d.watchdog_s = 7;
        assert_eq!(d.watchdog("tcp"), Some(Duration::from_secs(7)));
    }

    #[test]
    fn the_first_step_gets_a_longer_allowance_but_a_hang_in_it_is_caught() {
        let (fire, rx) = recorder();
        let limit = Duration::from_millis(150);
        let _w = Watchdog::start(limit, 1, fire);
        let started = Instant::now();
        let m = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog fired");
        assert!(
            started.elapsed() >= limit * FIRST_STEP_ALLOWANCE,
            "{:?}",
            started.elapsed()
        );
        assert!(m.contains("rank 1") && m.contains("the first step"), "{m}");
    }

    #[test]
    fn steady_beats_and_a_disarmed_watchdog_do_not_fire() {
        let (fire, rx) = recorder();
        let w = Watchdog::start(Duration::from_millis(150), 0, fire);
        std::thread::sleep(Duration::from_millis(300)); // within the first step's allowance
        for s in 0..8 {
            w.beat(s, "step");
            std::thread::sleep(Duration::from_millis(50));
        }
        w.disarm();
        std::thread::sleep(Duration::from_millis(400));
        assert!(rx.try_recv().is_err(), "fired despite progress");
        drop(w); // stops the thread promptly
    }
}
