//! A training-loop watchdog: a thread that ends the process when the loop has made no progress
//! for too long, so a rank stuck in a collective fails its job instead of hanging it.
//!
//! NCCL collectives have no timeout of their own: when a peer dies or stops, the others wait on
//! the GPU forever while their host threads block in the next synchronisation. The loop reports
//! progress (`beat`) after every step and around long phases; past `limit` without a beat the
//! watchdog prints what it knows (rank, last step, phase, how long) and exits, and `baichuan
//! launch` then stops the other ranks and, with `launch.max_restarts`, restarts the job from its
//! latest checkpoint. Follows the idea of PyTorch's NCCL watchdog (TORCH_NCCL_ASYNC_ERROR_HANDLING)
//! at the level of the training loop, where it needs no hooks into NCCL.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct State {
    last: Instant,
    step: u64,
    phase: &'static str,
    /// Not armed until the first beat: the first step (warm-up, compilation) may be slow.
    armed: bool,
    stop: bool,
}

/// What the watchdog does when it fires (the process exits; tests record the message instead).
pub type OnFire = Box<dyn Fn(String) + Send>;

pub struct Watchdog {
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Watches with `limit`; `rank` goes into the message. `on_fire` is called once.
    pub fn start(limit: Duration, rank: usize, on_fire: OnFire) -> Self {
        let state = Arc::new((
            Mutex::new(State {
                last: Instant::now(),
                step: 0,
                phase: "starting",
                armed: false,
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
                    if s.armed && idle > limit {
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
            state,
            thread: Some(thread),
        }
    }

    /// Records progress: `step` finished, `phase` is what comes next. Arms the watchdog.
    pub fn beat(&self, step: u64, phase: &'static str) {
        let mut s = self.state.0.lock().expect("watchdog state");
        s.last = Instant::now();
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
            let _ = t.join();
        }
    }
}

/// The process-ending action: print and exit with status 3.
pub fn exit_on_fire() -> OnFire {
    Box::new(|message| {
        eprintln!("watchdog: {message}");
        std::process::exit(3);
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
                let _ = tx.lock().unwrap().send(m);
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
    fn steady_beats_and_an_unarmed_or_disarmed_watchdog_do_not_fire() {
        let (fire, rx) = recorder();
        let w = Watchdog::start(Duration::from_millis(150), 0, fire);
        std::thread::sleep(Duration::from_millis(400)); // not armed before the first beat
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
