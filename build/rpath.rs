//! Build script shared by the crates that link libtorch: embeds an rpath to the libtorch
//! directory that torch-sys linked against, so `baichuan` and the test binaries find
//! libtorch at run time without LD_LIBRARY_PATH (torch-sys adds none itself).
fn main() {
    // torch-sys declares `links = "tch"` and reports `libtorch_lib` to its dependents.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
