//! `manifest.json` of a curation output: the command, its settings and the inputs (path, size,
//! mtime). Written last and atomically; a re-run whose manifest matches does nothing, as
//! `baichuan prepare` does.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::corpus::{write_atomic, InputFile};
use crate::{output_err, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const STATS_FILE: &str = "stats.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub format_version: u32,
    pub command: String,
    pub settings: serde_json::Value,
    pub inputs: Vec<InputFile>,
}

impl RunManifest {
    pub fn new(command: &str, settings: serde_json::Value, inputs: &[InputFile]) -> Self {
        RunManifest {
            format_version: FORMAT_VERSION,
            command: command.into(),
            settings,
            inputs: inputs.to_vec(),
        }
    }

    /// True when `out` holds a finished run of the same command, settings and inputs.
    pub fn up_to_date(&self, out: &Path) -> bool {
        let Ok(text) = fs::read_to_string(out.join(MANIFEST_FILE)) else {
            return false;
        };
        let Ok(old) = serde_json::from_str::<RunManifest>(&text) else {
            return false;
        };
        old == *self && out.join(STATS_FILE).exists()
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| output_err(out, e))?;
        write_atomic(&out.join(MANIFEST_FILE), text.as_bytes())
    }

    /// Removes the manifest before a run starts, so an interrupted run is never "up to date".
    pub fn invalidate(out: &Path) -> Result<()> {
        match fs::remove_file(out.join(MANIFEST_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(output_err(out, e)),
            _ => Ok(()),
        }
    }
}

/// Reads `stats.json` of a finished run.
pub fn read_stats(out: &Path) -> Result<crate::Stats> {
    let path = out.join(STATS_FILE);
    let text = fs::read_to_string(&path).map_err(|e| crate::input_err(&path, e))?;
    serde_json::from_str(&text).map_err(|e| crate::input_err(&path, e))
}

/// Writes `stats.json` atomically.
pub fn write_stats(out: &Path, stats: &crate::Stats) -> Result<()> {
    let text = serde_json::to_string_pretty(stats).map_err(|e| output_err(out, e))?;
    write_atomic(&out.join(STATS_FILE), text.as_bytes())
}

/// Records the stats of one task of a run's last stage under `work/stats/`; once every task's
/// are there (whichever task finishes last sees them all), merges them into `out/stats.json`.
pub fn merge_task_stats(
    work: &Path,
    out: &Path,
    task: crate::Task,
    stats: &crate::Stats,
) -> Result<Option<crate::Stats>> {
    let dir = work.join("stats");
    fs::create_dir_all(&dir).map_err(|e| output_err(&dir, e))?;
    let mine = dir.join(format!("t{:05}of{:05}.json", task.index, task.count));
    write_atomic(
        &mine,
        serde_json::to_string(stats)
            .map_err(|e| output_err(&mine, e))?
            .as_bytes(),
    )?;
    let mut total = crate::Stats::default();
    for i in 0..task.count {
        let path = dir.join(format!("t{i:05}of{:05}.json", task.count));
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(None);
        };
        let s: crate::Stats = serde_json::from_str(&text).map_err(|e| crate::input_err(&path, e))?;
        total.merge(&s);
    }
    write_stats(out, &total)?;
    Ok(Some(total))
}
