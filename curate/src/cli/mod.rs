//! The command layer of the corpus commands (feature `cli`): clap arguments and what each runs,
//! with anyhow errors carrying context. `baichuan` (trainer) and the libtorch-free
//! `baichuan-curate` binary both dispatch here.

pub mod dedup;
pub mod filter;
pub mod progress;
pub mod quality;

use std::path::PathBuf;

/// Flags the staged corpus commands (`filter`, `dedup`) share.
#[derive(clap::Args)]
pub struct RunArgs {
    /// JSONL field holding the document.
    #[arg(long, default_value = "text")]
    pub text_key: String,
    /// Threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// MiB of records (signatures, line keys) a task buffers before writing a sorted run.
    #[arg(long, default_value_t = 256)]
    pub memory_mb: usize,
    /// Redo even if the manifest says the output is up to date.
    #[arg(long)]
    pub force: bool,
    /// Task index (0-based) for --stage; default SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) or RANK.
    #[arg(long, requires = "tasks")]
    pub task: Option<usize>,
    /// Task count for --stage; default SLURM_ARRAY_TASK_COUNT or WORLD_SIZE.
    #[arg(long, requires = "task")]
    pub tasks: Option<usize>,
    /// Work directory shared by the stages (default OUT/work).
    #[arg(long)]
    pub work: Option<PathBuf>,
}

impl RunArgs {
    /// This process's task, from the flags or the scheduler's environment.
    pub fn task(&self) -> crate::Result<crate::Task> {
        crate::Task::resolve(self.task, self.tasks, |k| std::env::var(k).ok())
    }
}
