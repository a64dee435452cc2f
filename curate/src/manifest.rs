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
        RunManifest { format_version: FORMAT_VERSION, command: command.into(), settings, inputs: inputs.to_vec() }
    }

    /// True when `out` holds a finished run of the same command, settings and inputs.
    pub fn up_to_date(&self, out: &Path) -> bool {
        let Ok(text) = fs::read_to_string(out.join(MANIFEST_FILE)) else { return false };
        let Ok(old) = serde_json::from_str::<RunManifest>(&text) else { return false };
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
