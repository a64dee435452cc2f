//! The run-directory lock: one `train` process (rank 0 of a job) at a time per `job.run_dir`.
//!
//! `<run_dir>/.lock` holds the holder's PID and host; the lock itself is an advisory `flock`,
//! which the kernel releases when the process ends however it ends, so a crash leaves no stale
//! lock behind (the file may stay; its content is only read to name the holder).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const LOCK_FILE: &str = ".lock";

/// Held for the life of the run; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

impl RunLock {
    /// Takes the lock of `run_dir` (created if missing), or fails naming the process that holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating run_dir {}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !try_lock(&file)? {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            bail!(
                "job.run_dir {} is in use by another train process ({}); two runs would interleave its \
                 metrics and checkpoints. HINT: wait for it or stop it, or set another job.run_dir",
                run_dir.display(),
                if holder.is_empty() {
                    "holder unknown".to_string()
                } else {
                    holder.to_string()
                }
            );
        }
        file.set_len(0).with_context(|| format!("writing {}", path.display()))?;
        file.rewind()?;
        writeln!(file, "PID {} on host {}", std::process::id(), hostname())
            .with_context(|| format!("writing {}", path.display()))?;
        file.flush()?;
        Ok(RunLock { _file: file, path })
    }
}

#[cfg(unix)]
fn try_lock(file: &File) -> Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this process owns; no memory is shared.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(anyhow::Error::new(e).context("locking the run directory"))
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_by_name_and_the_lock_frees_on_drop() {
        let dir = std::env::temp_dir().join(format!("baichuan-runlock-{}", std::process::id()));
        let first = RunLock::acquire(&dir).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly as another process's would
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("PID {} on host {}", std::process::id(), hostname())) && e.contains("in use"),
            "{e}"
        );
        drop(first);
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
