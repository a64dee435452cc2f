//! The subcommands of `baichuan`, one file each: its arguments (clap) and what it runs.
//! Errors carry context naming the file or flag at fault (anyhow), and end with a HINT where a
//! fix is known. Helpers shared by several subcommands live here.

pub mod bench;
pub mod dedup;
pub mod eval;
pub mod export;
pub mod filter;
pub mod generate;
pub mod info;
pub mod init;
pub mod launch;
pub mod plot;
pub mod prepare;
pub mod quality;
pub mod tokenize;
pub mod train;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use baichuan_curate::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use baichuan_data::Tokenizer;
use baichuan_model::{hf, Baichuan};
use baichuan_trainer::config::DeviceChoice;
use tch::{Device, Kind};

/// Loads a model directory with its tokenizer onto `device` (bf16 on CUDA, fp32 on the CPU),
/// for inference.
pub fn load_for_inference(model: &Path, device: DeviceChoice) -> Result<(Baichuan, Tokenizer)> {
    let tokenizer = Tokenizer::open(&model.join(hf::TOKENIZER_FILE))
        .with_context(|| format!("{}: the model directory needs its tokenizer.model", model.display()))?;
    let mut m = hf::load_pretrained(model, Device::Cpu).with_context(|| format!("loading {}", model.display()))?;
    let device = device.resolve().context("--device")?;
    m.to(device, if device.is_cuda() { Kind::BFloat16 } else { Kind::Float });
    Ok((m, tokenizer))
}

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
