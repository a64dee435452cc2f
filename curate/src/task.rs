//! Which slice of the work this process does: task `index` of `count`, from flags, from a
//! SLURM job array (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`, `SLURM_ARRAY_TASK_MIN`)
//! or from the env contract `baichuan launch` sets (`RANK`, `WORLD_SIZE`).
//!
//! Files are the unit of work between tasks, as in datatrove: each task takes whole files,
//! assigned longest-first to the least-loaded task (by bytes), so one task per machine shares a
//! corpus through a shared file system with no coordination. Inside a task, threads share
//! the documents of each file.

use crate::{CurateError, InputFile, Result};

/// Task `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub index: usize,
    pub count: usize,
}

impl Task {
    /// The only task of a one-machine run.
    pub const ALL: Task = Task { index: 0, count: 1 };

    /// Flags first, then a SLURM array, then RANK/WORLD_SIZE, else the single task.
    pub fn resolve(index: Option<usize>, count: Option<usize>, env: impl Fn(&str) -> Option<String>) -> Result<Task> {
        let parse = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    CurateError::Options(format!(
                        "environment variable {name}={v:?} is not a non-negative integer"
                    ))
                }),
            }
        };
        let (index, count, source) = match (index, count) {
            (Some(i), Some(n)) => (i, n, "--task/--tasks"),
            (None, None) => {
                if let (Some(id), Some(n)) = (parse("SLURM_ARRAY_TASK_ID")?, parse("SLURM_ARRAY_TASK_COUNT")?) {
                    let min = parse("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                    (id.saturating_sub(min), n, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
                } else if let (Some(r), Some(n)) = (parse("RANK")?, parse("WORLD_SIZE")?) {
                    (r, n, "RANK/WORLD_SIZE")
                } else {
                    (0, 1, "default")
                }
            }
            _ => {
                return Err(CurateError::Options(
                    "--task and --tasks go together; HINT: pass both, or neither to read SLURM_ARRAY_TASK_ID/COUNT"
                        .into(),
                ))
            }
        };
        if count == 0 || index >= count {
            return Err(CurateError::Options(format!(
                "task {index} of {count} (from {source}) is out of range; HINT: the index is 0-based and below the count"
            )));
        }
        Ok(Task { index, count })
    }

    /// Indices (into `files`) of the files this task owns, in corpus order.
    pub fn files(&self, files: &[InputFile]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(files[i].bytes), i));
        let mut load = vec![0u64; self.count];
        let mut mine = Vec::new();
        for i in order {
            let (t, _) = load
                .iter()
                .enumerate()
                .min_by_key(|&(t, l)| (*l, t))
                .expect("count > 0");
            load[t] += files[i].bytes.max(1);
            if t == self.index {
                mine.push(i);
            }
        }
        mine.sort_unstable();
        mine
    }

    /// The marker file saying this task finished a stage (`DIR/tIIIIIofNNNNN.done`).
    pub fn done_marker(&self, dir: &std::path::Path) -> std::path::PathBuf {
        dir.join(format!("t{:05}of{:05}.done", self.index, self.count))
    }

    /// Whether this task owns item `i` of a list dealt round-robin (bands, for instance).
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

/// The task count of a finished stage whose tasks leave `done_marker`s in `dir`: exactly one
/// count, and every task of it present, or an error saying which are missing.
pub fn finished_tasks(dir: &std::path::Path, stage: &str) -> Result<usize> {
    use crate::input_err;
    let mut done: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    let entries =
        std::fs::read_dir(dir).map_err(|e| input_err(dir, format!("{e}; HINT: run the {stage} stage first")))?;
    for e in entries {
        let name = e
            .map_err(|e| input_err(dir, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(stem) = name.strip_suffix(".done") {
            let parts: Vec<usize> = stem
                .trim_start_matches('t')
                .split("of")
                .filter_map(|p| p.parse().ok())
                .collect();
            if let [i, n] = parts[..] {
                done.entry(n).or_default().push(i);
            }
        }
    }
    if done.len() != 1 {
        return Err(input_err(
            dir,
            format!(
                "{stage} stage finished by {} different task counts; HINT: clear the work directory and rerun the {stage} stage with one --tasks",
                done.len()
            ),
        ));
    }
    let (n, tasks) = done.into_iter().next().expect("one count");
    let missing: Vec<usize> = (0..n).filter(|i| !tasks.contains(i)).collect();
    if !missing.is_empty() {
        return Err(input_err(
            dir,
            format!("{stage} tasks {missing:?} of {n} have not finished; HINT: rerun them"),
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn flags_then_slurm_then_rank() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
        ]);
        assert_eq!(
            Task::resolve(Some(1), Some(3), &slurm).unwrap(),
            Task { index: 1, count: 3 }
        );
        assert_eq!(Task::resolve(None, None, &slurm).unwrap(), Task { index: 2, count: 4 });
        let rank = env(&[("RANK", "1"), ("WORLD_SIZE", "2")]);
        assert_eq!(Task::resolve(None, None, rank).unwrap(), Task { index: 1, count: 2 });
        assert_eq!(Task::resolve(None, None, env(&[])).unwrap(), Task::ALL);
        assert!(Task::resolve(Some(3), Some(3), env(&[])).is_err());
        assert!(Task::resolve(Some(0), None, env(&[])).is_err());
        assert!(Task::resolve(None, None, env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).is_err());
    }

    #[test]
    fn every_file_has_exactly_one_task() {
        let files: Vec<InputFile> = [50u64, 10, 10, 30, 5, 0]
            .iter()
            .enumerate()
            .map(|(i, &b)| InputFile::for_test(&format!("f{i}.txt"), b))
            .collect();
        let mut seen = vec![0; files.len()];
        for index in 0..3 {
            for f in (Task { index, count: 3 }).files(&files) {
                seen[f] += 1;
            }
        }
        assert_eq!(seen, vec![1; files.len()]);
        assert_eq!(Task::ALL.files(&files), (0..files.len()).collect::<Vec<_>>());
    }
}
