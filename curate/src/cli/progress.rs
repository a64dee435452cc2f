//! Shared by the corpus commands (`filter`, `dedup`, `quality`): the thread pool size and a
//! progress bar (stage, bytes, documents, MB/s, ETA) over baichuan-curate's `Progress`. Free of
//! libtorch, so the `baichuan-curate` binary can use it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::Progress;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Sizes rayon's global pool (`--jobs`; default all cores).
pub fn thread_pool(jobs: Option<usize>) -> Result<()> {
    if let Some(j) = jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(j.max(1))
            .build_global()
            .context("starting the thread pool")?;
    }
    Ok(())
}

/// Runs `work` while a progress bar shows the stage, bytes, documents, MB/s and ETA.
pub fn with_progress<T>(progress: &Progress, work: impl FnOnce() -> T) -> T {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg:>12} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {prefix}")
            .expect("valid template"),
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                bar.set_message(progress.stage());
                bar.set_length(progress.total_bytes.load(Ordering::Relaxed));
                bar.set_position(progress.bytes.load(Ordering::Relaxed));
                bar.set_prefix(format!("{} docs", progress.docs.load(Ordering::Relaxed)));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let r = work();
        done.store(true, Ordering::Relaxed);
        r
    });
    bar.finish_and_clear();
    result
}
