//! The one library search for libcuda, NVRTC and NCCL, and the macros that read their entry
//! points.
//!
//! A name is tried first through the dynamic linker (`LD_LIBRARY_PATH`, the cache), then in the
//! folders where pip's CUDA wheels keep their libraries beside the libtorch this process
//! loaded (found through /proc/self/maps; the dynamic linker would not look there).

use std::path::{Path, PathBuf};

use libloading::Library;

use crate::CudaError;

/// Folders beside the loaded libtorch where pip's CUDA wheels keep libraries: libtorch's own
/// folder, `site-packages/nvidia/cu13/lib` (CUDA 13 wheels), and the per-library folders of
/// CUDA 12 wheels.
pub fn wheel_lib_dirs() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let Some(torch_lib) = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libtorch_cuda.so") || p.contains("libtorch_cpu.so"))
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    let mut dirs = vec![torch_lib.clone()];
    if let Some(site) = torch_lib.parent().and_then(Path::parent) {
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/nccl/lib"] {
            dirs.push(site.join(sub));
        }
    }
    dirs
}

/// Opens the first of `names` that loads, through the dynamic linker or from the wheels'
/// folders, and says where it was found (None: by the dynamic linker's own search). `hint`
/// ends the error when none loads.
pub fn open_first(names: &[&str], hint: &str) -> Result<(Library, Option<PathBuf>), CudaError> {
    let mut errors = Vec::new();
    let dirs = wheel_lib_dirs();
    let plain = names.iter().map(|n| (n.to_string(), None));
    let beside_torch = dirs.iter().flat_map(|d| {
        names
            .iter()
            .map(move |n| (d.join(n).display().to_string(), Some(d.join(n))))
    });
    for (name, path) in plain.chain(beside_torch) {
        // SAFETY: loading the CUDA driver, NVRTC or NCCL runs their initialisers, which are safe
        // to run.
        match unsafe { Library::new(&name) } {
            Ok(lib) => return Ok((lib, path)),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(CudaError::Unavailable(format!(
        "cannot load {}; HINT: {hint}. Tried: {}",
        names[0],
        errors.join("; ")
    )))
}

/// Reads entry point `$name` of library `$lib` as the function-pointer type of the field it is
/// assigned to; a missing symbol returns `CudaError::Unavailable` from the enclosing function.
macro_rules! symbol {
    ($lib:expr, $name:literal) => {
        // SAFETY: the declared field type matches the C prototype of the entry point.
        *unsafe { $lib.get($name.as_bytes()) }
            .map_err(|e| crate::CudaError::Unavailable(format!("{} lacks {}: {e}", stringify!($lib), $name)))?
    };
}
pub(crate) use symbol;

/// Loads an API table once per process (`$load` returns `Result<$ty, CudaError>`); later calls
/// return the same table, or the same error.
macro_rules! load_once {
    ($ty:ty, $load:expr) => {{
        static CELL: std::sync::OnceLock<Result<$ty, crate::CudaError>> = std::sync::OnceLock::new();
        CELL.get_or_init(|| $load).as_ref().map_err(Clone::clone)
    }};
}
pub(crate) use load_once;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_naming_what_was_searched_and_the_fix() {
        let text = open_first(
            &["libbaichuan-missing.so.2", "libbaichuan-missing.so"],
            "put its directory on LD_LIBRARY_PATH",
        )
        .expect_err("no such library")
        .to_string();
        assert!(
            text.contains("libbaichuan-missing.so.2") && text.contains("LD_LIBRARY_PATH"),
            "{text}"
        );
    }
}
