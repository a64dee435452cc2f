//! The CUDA driver and NVRTC entry points, compiling kernel sources to PTX at run time, and
//! [`Module`]: kernels loaded on one device and launched on the legacy default stream, where
//! libtorch queues its own work (so they are ordered with it).
//!
//! Kernel sources are the `.cu` files of `cuda/kernels/`, embedded with `include_str!`; their
//! shared header `common.cuh` is handed to NVRTC as a named header, so each file compiles as
//! written (with `nvcc` too).

use std::ffi::{c_char, c_int, c_uint, c_void, CString};

use libloading::Library;
use tch::Device;

use crate::loader::{load_once, open_first, symbol};
use crate::CudaError;

pub type CuModule = *mut c_void;
pub type CuFunction = *mut c_void;
pub type CuContext = *mut c_void;
pub type CuStream = *mut c_void;
pub type CuEvent = *mut c_void;
type Program = *mut c_void;

/// The header every kernel source includes.
pub const COMMON_HEADER: (&str, &str) = ("common.cuh", include_str!("../kernels/common.cuh"));

const CUDA_HINT: &str = "a CUDA driver is needed (libcuda.so.1, installed with the NVIDIA driver)";
const NVRTC_HINT: &str =
    "put the directory holding it (e.g. site-packages/nvidia/cu13/lib of the torch install) on LD_LIBRARY_PATH";

#[allow(clippy::type_complexity)]
struct Nvrtc {
    create_program: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    compile_program: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int,
    get_ptx_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    get_ptx: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    get_log_size: unsafe extern "C" fn(Program, *mut usize) -> c_int,
    get_log: unsafe extern "C" fn(Program, *mut c_char) -> c_int,
    destroy_program: unsafe extern "C" fn(*mut Program) -> c_int,
    _lib: Library,
    /// NVRTC opens its builtins library by name at compile time; loaded first from NVRTC's own
    /// folder, so that name resolves where the folder is not on the search path.
    _builtins: Vec<Library>,
}

/// The CUDA driver entry points baichuan uses (kernels and the NCCL communicator's streams and
/// events), loaded once per process.
#[allow(clippy::type_complexity)]
pub struct Driver {
    pub cu_init: unsafe extern "C" fn(c_uint) -> c_int,
    pub cu_device_get: unsafe extern "C" fn(*mut c_int, c_int) -> c_int,
    pub cu_device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int,
    pub cu_primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, c_int) -> c_int,
    pub cu_ctx_set_current: unsafe extern "C" fn(CuContext) -> c_int,
    pub cu_module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> c_int,
    pub cu_module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> c_int,
    pub cu_launch_kernel: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> c_int,
    pub cu_stream_create: unsafe extern "C" fn(*mut CuStream, c_uint) -> c_int,
    pub cu_event_create: unsafe extern "C" fn(*mut CuEvent, c_uint) -> c_int,
    pub cu_event_record: unsafe extern "C" fn(CuEvent, CuStream) -> c_int,
    pub cu_event_destroy: unsafe extern "C" fn(CuEvent) -> c_int,
    pub cu_stream_wait_event: unsafe extern "C" fn(CuStream, CuEvent, c_uint) -> c_int,
    pub cu_event_synchronize: unsafe extern "C" fn(CuEvent) -> c_int,
    /// `cuMemcpyDtoHAsync_v2(dst_host, src_device, bytes, stream)`.
    pub cu_memcpy_dtoh_async: unsafe extern "C" fn(*mut c_void, u64, usize, CuStream) -> c_int,
    _lib: Library,
}

/// The argument array of a driver kernel launch: a pointer to each local, in the kernel's
/// parameter order (the locals must be `mut` and outlive the launch call).
macro_rules! kernel_args {
    ($($arg:ident),+ $(,)?) => {
        [$(&mut $arg as *mut _ as *mut std::ffi::c_void),+]
    };
}
pub(crate) use kernel_args;

impl Nvrtc {
    fn get() -> Result<&'static Nvrtc, CudaError> {
        load_once!(Nvrtc, {
            (|| {
                let (nvrtc, path) = open_first(&["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], NVRTC_HINT)?;
                let mut builtins = Vec::new();
                if let Some(dir) = path.as_ref().and_then(|p| p.parent()) {
                    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with("libnvrtc-builtins.so") {
                            // SAFETY: as above; the builtins library has no initialiser side effects.
                            if let Ok(lib) = unsafe { Library::new(entry.path()) } {
                                builtins.push(lib);
                            }
                        }
                    }
                }
                Ok(Nvrtc {
                    _builtins: builtins,
                    create_program: symbol!(nvrtc, "nvrtcCreateProgram"),
                    compile_program: symbol!(nvrtc, "nvrtcCompileProgram"),
                    get_ptx_size: symbol!(nvrtc, "nvrtcGetPTXSize"),
                    get_ptx: symbol!(nvrtc, "nvrtcGetPTX"),
                    get_log_size: symbol!(nvrtc, "nvrtcGetProgramLogSize"),
                    get_log: symbol!(nvrtc, "nvrtcGetProgramLog"),
                    destroy_program: symbol!(nvrtc, "nvrtcDestroyProgram"),
                    _lib: nvrtc,
                })
            })()
        })
    }

    /// Compiles `source` (named `file` in messages) with the shared header to PTX
    /// (NUL-terminated) for compute capability `major.minor`.
    fn compile(&self, source: &str, file: &str, major: c_int, minor: c_int) -> Result<Vec<u8>, CudaError> {
        let src = CString::new(source).expect("no NUL in the source");
        let name = CString::new(file).expect("no NUL");
        let header = CString::new(COMMON_HEADER.1).expect("no NUL in the header");
        let header_name = CString::new(COMMON_HEADER.0).expect("no NUL");
        let (headers, include_names) = ([header.as_ptr()], [header_name.as_ptr()]);
        let arch = CString::new(format!("--gpu-architecture=compute_{major}{minor}")).expect("no NUL");
        let opts = [arch.as_ptr()];
        let mut prog: Program = std::ptr::null_mut();
        let check = |what: &str, code: c_int| {
            if code == 0 {
                Ok(())
            } else {
                Err(CudaError::Call(format!("NVRTC {what} failed ({code})")))
            }
        };
        // SAFETY: NVRTC calls with valid pointers; the program is destroyed on every path.
        unsafe {
            check(
                "nvrtcCreateProgram",
                (self.create_program)(
                    &mut prog,
                    src.as_ptr(),
                    name.as_ptr(),
                    1,
                    headers.as_ptr(),
                    include_names.as_ptr(),
                ),
            )?;
            let compiled = (self.compile_program)(prog, opts.len() as c_int, opts.as_ptr());
            let result = if compiled != 0 {
                let mut n = 0usize;
                (self.get_log_size)(prog, &mut n);
                let mut log = vec![0u8; n.max(1)];
                (self.get_log)(prog, log.as_mut_ptr() as *mut c_char);
                Err(CudaError::Call(format!(
                    "NVRTC could not compile {file} ({compiled}): {}",
                    String::from_utf8_lossy(&log).trim_end_matches('\0')
                )))
            } else {
                let mut n = 0usize;
                check("nvrtcGetPTXSize", (self.get_ptx_size)(prog, &mut n))?;
                let mut ptx = vec![0u8; n];
                check("nvrtcGetPTX", (self.get_ptx)(prog, ptx.as_mut_ptr() as *mut c_char)).map(|_| ptx)
            };
            (self.destroy_program)(&mut prog);
            result
        }
    }
}

impl Driver {
    /// The driver's entry points (loaded on first use).
    pub fn get() -> Result<&'static Driver, CudaError> {
        load_once!(Driver, {
            (|| {
                let (cuda, _) = open_first(&["libcuda.so.1", "libcuda.so"], CUDA_HINT)?;
                Ok(Driver {
                    cu_init: symbol!(cuda, "cuInit"),
                    cu_device_get: symbol!(cuda, "cuDeviceGet"),
                    cu_device_get_attribute: symbol!(cuda, "cuDeviceGetAttribute"),
                    cu_primary_ctx_retain: symbol!(cuda, "cuDevicePrimaryCtxRetain"),
                    cu_ctx_set_current: symbol!(cuda, "cuCtxSetCurrent"),
                    cu_module_load_data: symbol!(cuda, "cuModuleLoadData"),
                    cu_module_get_function: symbol!(cuda, "cuModuleGetFunction"),
                    cu_launch_kernel: symbol!(cuda, "cuLaunchKernel"),
                    cu_stream_create: symbol!(cuda, "cuStreamCreate"),
                    cu_event_create: symbol!(cuda, "cuEventCreate"),
                    cu_event_record: symbol!(cuda, "cuEventRecord"),
                    cu_event_destroy: symbol!(cuda, "cuEventDestroy_v2"),
                    cu_stream_wait_event: symbol!(cuda, "cuStreamWaitEvent"),
                    cu_event_synchronize: symbol!(cuda, "cuEventSynchronize"),
                    cu_memcpy_dtoh_async: symbol!(cuda, "cuMemcpyDtoHAsync_v2"),
                    _lib: cuda,
                })
            })()
        })
    }

    /// `Ok` for CUDA_SUCCESS, else an error naming the call and its CUresult.
    pub fn check(&self, what: &str, code: c_int) -> Result<(), CudaError> {
        if code == 0 {
            Ok(())
        } else {
            Err(CudaError::Call(format!(
                "CUDA driver {what} failed with CUresult {code}"
            )))
        }
    }
}

/// Compiles `source` to PTX for compute capability `major.minor` with the NVRTC of the torch
/// install (no GPU needed): what the CPU tests use to check that the kernels compile.
pub fn compile_ptx(source: &str, file: &str, major: c_int, minor: c_int) -> Result<Vec<u8>, CudaError> {
    Nvrtc::get()?.compile(source, file, major, minor)
}

/// Kernels compiled by NVRTC and loaded on one CUDA device, launched on the legacy default
/// stream, where libtorch queues its own kernels (so they are ordered with them).
pub struct Module {
    api: &'static Driver,
    functions: Vec<CuFunction>,
    ctx: CuContext,
    /// Blocks of a grid-stride launch: 8 per multiprocessor.
    blocks: c_uint,
}

// SAFETY: the function and context handles are process-wide driver objects, usable from any
// thread once the context is made current (which `launch` does).
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Loads NVRTC and the driver, compiles `source` for `device`'s architecture and looks up
    /// the `extern "C"` kernels `names` (in that order for [`Module::launch`]).
    pub fn load(device: Device, source: &str, file: &str, names: &[&str]) -> Result<Self, CudaError> {
        let Device::Cuda(index) = device else {
            return Err(CudaError::Unavailable(format!("{device:?} is not a CUDA device")));
        };
        let api = Driver::get()?;
        let mut ctx: CuContext = std::ptr::null_mut();
        let mut module: CuModule = std::ptr::null_mut();
        let mut functions = Vec::with_capacity(names.len());
        let (mut major, mut minor, mut sms) = (0, 0, 0);
        // SAFETY: plain driver calls with valid out-pointers; the PTX is NUL-terminated.
        unsafe {
            api.check("cuInit", (api.cu_init)(0))?;
            let mut dev: c_int = 0;
            api.check("cuDeviceGet", (api.cu_device_get)(&mut dev, index as c_int))?;
            // 75/76: compute capability major/minor; 16: multiprocessors
            api.check(
                "cuDeviceGetAttribute",
                (api.cu_device_get_attribute)(&mut major, 75, dev),
            )?;
            api.check(
                "cuDeviceGetAttribute",
                (api.cu_device_get_attribute)(&mut minor, 76, dev),
            )?;
            api.check("cuDeviceGetAttribute", (api.cu_device_get_attribute)(&mut sms, 16, dev))?;
            api.check("cuDevicePrimaryCtxRetain", (api.cu_primary_ctx_retain)(&mut ctx, dev))?;
            api.check("cuCtxSetCurrent", (api.cu_ctx_set_current)(ctx))?;
            let ptx = Nvrtc::get()?.compile(source, file, major, minor)?;
            api.check(
                "cuModuleLoadData",
                (api.cu_module_load_data)(&mut module, ptx.as_ptr() as *const c_void),
            )?;
            for name in names {
                let mut function: CuFunction = std::ptr::null_mut();
                let cname = CString::new(*name).expect("no NUL");
                api.check(
                    &format!("cuModuleGetFunction({name})"),
                    (api.cu_module_get_function)(&mut function, module, cname.as_ptr()),
                )?;
                functions.push(function);
            }
        }
        Ok(Module {
            api,
            functions,
            ctx,
            blocks: (sms.max(1) as c_uint) * 8,
        })
    }

    /// Launches kernel `which` as a grid-stride loop over `items` with 256 threads a block.
    ///
    /// # Safety
    /// `args` must point at values matching the kernel's parameters in order and type, and
    /// every pointer among them must address live memory of this device large enough for
    /// `items`.
    pub unsafe fn launch(&self, which: usize, items: i64, args: &mut [*mut c_void]) -> Result<(), CudaError> {
        let threads: c_uint = 256;
        let blocks = self.blocks.min(((items + 255) / 256).max(1) as c_uint);
        self.api
            .check("cuCtxSetCurrent", (self.api.cu_ctx_set_current)(self.ctx))?;
        self.api.check(
            "cuLaunchKernel",
            (self.api.cu_launch_kernel)(
                self.functions[which],
                blocks,
                1,
                1,
                threads,
                1,
                1,
                0,
                std::ptr::null_mut(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel source compiles with the NVRTC of the torch install for Ampere and Hopper
    /// (no GPU needed, but a CUDA build of torch, whose wheels ship NVRTC): not run where that
    /// library is absent (a CPU torch); scripts/gpu_check.sh runs it with `--ignored`.
    #[test]
    #[ignore = "needs NVRTC from a CUDA torch install (scripts/gpu_check.sh runs it)"]
    fn the_kernels_compile_for_ampere_and_hopper() {
        let sources: [(&str, &str, &[&str]); 4] = [
            (crate::adamw::SOURCE, "adamw.cu", &crate::adamw::NAMES),
            (crate::rotary::SOURCE, "rotary.cu", &crate::rotary::NAMES),
            (crate::loss::SOURCE, "cross_entropy.cu", &crate::loss::NAMES),
            (crate::swiglu::SOURCE, "swiglu.cu", &crate::swiglu::NAMES),
        ];
        for (source, file, names) in sources {
            for (major, minor) in [(8, 0), (9, 0)] {
                match compile_ptx(source, file, major, minor) {
                    Ok(ptx) => {
                        let text = String::from_utf8_lossy(&ptx);
                        for name in names {
                            assert!(text.contains(&format!(".entry {name}(")), "{file}: {name} missing");
                        }
                        assert!(
                            text.contains(&format!(".target sm_{major}{minor}")),
                            "{file}: {}",
                            &text[..400.min(text.len())]
                        );
                    }
                    Err(e) => panic!("{file}: {e}"),
                }
            }
        }
    }

    #[test]
    fn cpu_devices_are_refused_with_a_reason() {
        let e = Module::load(Device::Cpu, crate::adamw::SOURCE, "adamw.cu", &crate::adamw::NAMES)
            .err()
            .expect("no kernels on the CPU");
        assert!(e.to_string().contains("not a CUDA device"), "{e}");
    }
}
