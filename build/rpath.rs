//! Build script shared by the crates that link libtorch (model, trainer).
//!
//! 1. Embeds an rpath to the libtorch directory torch-sys linked against, so `baichuan` and
//!    the test binaries find libtorch at run time without LD_LIBRARY_PATH (torch-sys adds none).
//! 2. Keeps `libtorch_cuda.so` as a dependency: nothing references its symbols directly (its
//!    kernels register themselves when it loads), so the linker's default `--as-needed` would
//!    drop it and libtorch would then see no CUDA device.
//! 3. For the model crate, compiles `model/csrc/autograd.cpp` (back-propagation with explicit
//!    output gradients) and `model/csrc/varlen.cpp` (variable-length FlashAttention for document
//!    masking) and `model/csrc/pinned.cpp` (pinned host tensors for optimizer offload) against
//!    the same libtorch's headers, as torch-sys compiles its own
//!    wrapper: C++17, the C++11 ABI of the pip wheels (`LIBTORCH_CXX11_ABI` overrides).
fn main() {
    // torch-sys declares `links = "tch"` and reports `libtorch_lib` to its dependents.
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::env::var("CARGO_PKG_NAME").as_deref() == Ok("baichuan-model") {
        compile_shims(&dir);
    }
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{dir}");
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}

fn compile_shims(lib_dir: &str) {
    let sources = ["csrc/autograd.cpp", "csrc/varlen.cpp", "csrc/pinned.cpp"];
    for source in sources {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = std::path::Path::new(lib_dir).join("../include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .files(sources)
        .compile("baichuan_autograd");
}
