//! Build script shared by the crates that link libtorch (model, trainer).
//!
//! 1. Embeds an rpath to the libtorch directory torch-sys linked against, so `baichuan` and
//!    the test binaries find libtorch at run time without LD_LIBRARY_PATH (torch-sys adds none).
//! 2. Keeps `libtorch_cuda.so` as a dependency: nothing references its symbols directly (its
//!    kernels register themselves when it loads), so the linker's default `--as-needed` would
//!    drop it and libtorch would then see no CUDA device.
fn main() {
    // torch-sys declares `links = "tch"` and reports `libtorch_lib` to its dependents.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{dir}");
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}
