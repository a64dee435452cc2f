//! A fused AdamW update for CUDA buffers: one kernel, compiled at run time with NVRTC and
//! launched through the CUDA driver on libtorch's (legacy default) stream, that reads the fp32
//! master weights, the gradient and both moments once and writes the weights, the moments and
//! the bf16/fp16 parameter copy once: 30 bytes per parameter against about 86 for the
//! whole-buffer tensor operations of `optim.rs` (tch exposes neither `_fused_adamw_` nor the
//! `_foreach_` ops). The arithmetic is that path's, in the same order: `torch.lerp`'s formula
//! for the moments, decoupled decay, the bias corrections folded into the step size and eps.
//!
//! NVRTC and the driver are loaded with `dlopen`, like NCCL (dist/nccl.rs), so the crate builds
//! and runs without CUDA; when either is missing, or the buffers are not contiguous CUDA fp32,
//! the optimizer keeps the tensor-op update. Follows the single-kernel multi-tensor updates of
//! apex/PyTorch (`_fused_adamw_`), on one flat buffer instead of a tensor list.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FusedError {
    #[error("fused AdamW unavailable: {0}")]
    Unavailable(String),
    #[error("fused AdamW: {0}")]
    Cuda(String),
}

/// The kernel. `out_kind`: 0 no low-precision copy, 1 bf16, 2 fp16 (round to nearest even).
const SOURCE: &str = r#"
__device__ __forceinline__ unsigned short to_bf16(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ unsigned short to_f16(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}
__device__ __forceinline__ void adamw1(
    float& p, float g, float& m, float& v,
    float gscale, float decay, float w1, float w2, float step_size, float eps_hat)
{
    g = g * gscale;                 // the clip coefficient, as grad.mul_(c)
    m = m + w1 * (g - m);           // torch.lerp(m, g, w1), w1 < 0.5
    v = v + w2 * (g * g - v);       // torch.lerp(v, g*g, w2)
    p = p * decay;
    p = p + (m * step_size) / (sqrtf(v) + eps_hat);
}
__device__ __forceinline__ unsigned short narrow16(float x, int out_kind) {
    return out_kind == 1 ? to_bf16(x) : to_f16(x);
}
// One element per iteration: segments' unaligned heads and tails.
extern "C" __global__ void baichuan_adamw(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
    unsigned short* __restrict__ out, int out_kind, long long n,
    float decay, float w1, float w2, float step_size, float eps_hat, float gscale)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw1(pi, g[i], mi, vi, gscale, decay, w1, w2, step_size, eps_hat);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (out_kind != 0) out[i] = narrow16(pi, out_kind);
    }
}
// Four elements per iteration with 16-byte loads and stores (8-byte for the 16-bit copy):
// the update is memory-bound, and wide accesses keep more bytes in flight per thread.
// Every pointer is aligned to its access width; n4 counts groups of four.
extern "C" __global__ void baichuan_adamw4(
    float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m, float4* __restrict__ v,
    ushort4* __restrict__ out, int out_kind, long long n4,
    float decay, float w1, float w2, float step_size, float eps_hat, float gscale)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 pi = p[i], gi = g[i], mi = m[i], vi = v[i];
        adamw1(pi.x, gi.x, mi.x, vi.x, gscale, decay, w1, w2, step_size, eps_hat);
        adamw1(pi.y, gi.y, mi.y, vi.y, gscale, decay, w1, w2, step_size, eps_hat);
        adamw1(pi.z, gi.z, mi.z, vi.z, gscale, decay, w1, w2, step_size, eps_hat);
        adamw1(pi.w, gi.w, mi.w, vi.w, gscale, decay, w1, w2, step_size, eps_hat);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (out_kind != 0) {
            ushort4 o;
            o.x = narrow16(pi.x, out_kind);
            o.y = narrow16(pi.y, out_kind);
            o.z = narrow16(pi.z, out_kind);
            o.w = narrow16(pi.w, out_kind);
            out[i] = o;
        }
    }
}
"#;

type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuContext = *mut c_void;
type Program = *mut c_void;

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
    _lib: libloading::Library,
    /// NVRTC opens its builtins library by name at compile time; loaded first from NVRTC's own
    /// folder, so that name resolves where the folder is not on the search path.
    _builtins: Vec<libloading::Library>,
}

#[allow(clippy::type_complexity)]
struct Driver {
    cu_init: unsafe extern "C" fn(c_uint) -> c_int,
    cu_device_get: unsafe extern "C" fn(*mut c_int, c_int) -> c_int,
    cu_device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int,
    cu_primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, c_int) -> c_int,
    cu_ctx_set_current: unsafe extern "C" fn(CuContext) -> c_int,
    cu_module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> c_int,
    cu_module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> c_int,
    cu_launch_kernel: unsafe extern "C" fn(
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
    _lib: libloading::Library,
}

/// Directories beside the libtorch this process loaded where pip's CUDA wheels keep their
/// libraries (`site-packages/nvidia/cu13/lib`, or per-library folders for CUDA 12), found
/// through /proc/self/maps; `dlopen` would not look there on its own.
fn wheel_lib_dirs() -> Vec<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let Some(torch_lib) = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libtorch_cuda.so") || p.contains("libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
    else {
        return Vec::new();
    };
    let mut dirs = vec![torch_lib.clone()];
    if let Some(site) = torch_lib.parent().and_then(|t| t.parent()) {
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"] {
            dirs.push(site.join(sub));
        }
    }
    dirs
}

/// The first of `names` that loads, plainly or from the wheels' folders, and the path it was
/// found at (None: by the dynamic linker's own search).
fn open_first(names: &[&str]) -> Result<(libloading::Library, Option<std::path::PathBuf>), FusedError> {
    let mut errors = Vec::new();
    let dirs = wheel_lib_dirs();
    let plain = names.iter().map(|n| (n.to_string(), None));
    let beside_torch = dirs.iter().flat_map(|d| {
        names
            .iter()
            .map(move |n| (d.join(n).display().to_string(), Some(d.join(n))))
    });
    for (name, path) in plain.chain(beside_torch) {
        // SAFETY: loading NVRTC / the CUDA driver runs their initialisers, which are safe to run.
        match unsafe { libloading::Library::new(&name) } {
            Ok(lib) => return Ok((lib, path)),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(FusedError::Unavailable(format!(
        "cannot load {} (put the directory holding it, e.g. site-packages/nvidia/cu13/lib, on LD_LIBRARY_PATH); tried: {}",
        names[0],
        errors.join("; ")
    )))
}

/// The argument array of a driver kernel launch: a pointer to each local, in the kernel's
/// parameter order (the locals must be `mut` and outlive the launch call).
macro_rules! kernel_args {
    ($($arg:ident),+ $(,)?) => {
        [$(&mut $arg as *mut _ as *mut std::ffi::c_void),+]
    };
}
pub(crate) use kernel_args;

macro_rules! sym {
    ($lib:expr, $name:literal) => {
        // SAFETY: the declared signature matches the C prototype of the NVRTC/CUDA entry point.
        *unsafe { $lib.get($name.as_bytes()) }
            .map_err(|e| FusedError::Unavailable(format!("{} lacks {}: {e}", stringify!($lib), $name)))?
    };
}

/// Loads a library's API once per process; later calls return the same result.
macro_rules! once {
    ($ty:ty, $load:expr) => {{
        static CELL: OnceLock<Result<$ty, String>> = OnceLock::new();
        CELL.get_or_init(|| $load.map_err(|e: FusedError| e.to_string()))
            .as_ref()
            .map_err(|e| FusedError::Unavailable(e.clone()))
    }};
}

impl Nvrtc {
    fn get() -> Result<&'static Nvrtc, FusedError> {
        once!(Nvrtc, {
            (|| {
                let (nvrtc, path) = open_first(&["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"])?;
                let mut builtins = Vec::new();
                if let Some(dir) = path.as_ref().and_then(|p| p.parent()) {
                    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with("libnvrtc-builtins.so") {
                            // SAFETY: as above; the builtins library has no initialiser side effects.
                            if let Ok(lib) = unsafe { libloading::Library::new(entry.path()) } {
                                builtins.push(lib);
                            }
                        }
                    }
                }
                Ok(Nvrtc {
                    _builtins: builtins,
                    create_program: sym!(nvrtc, "nvrtcCreateProgram"),
                    compile_program: sym!(nvrtc, "nvrtcCompileProgram"),
                    get_ptx_size: sym!(nvrtc, "nvrtcGetPTXSize"),
                    get_ptx: sym!(nvrtc, "nvrtcGetPTX"),
                    get_log_size: sym!(nvrtc, "nvrtcGetProgramLogSize"),
                    get_log: sym!(nvrtc, "nvrtcGetProgramLog"),
                    destroy_program: sym!(nvrtc, "nvrtcDestroyProgram"),
                    _lib: nvrtc,
                })
            })()
        })
    }

    /// Compiles `source` (named `file` in messages) to PTX (NUL-terminated) for compute
    /// capability `major.minor`.
    fn compile(&self, source: &str, file: &str, major: c_int, minor: c_int) -> Result<Vec<u8>, FusedError> {
        let src = CString::new(source).expect("no NUL in the source");
        let name = CString::new(file).expect("no NUL");
        let arch = CString::new(format!("--gpu-architecture=compute_{major}{minor}")).expect("no NUL");
        let opts = [arch.as_ptr()];
        let mut prog: Program = std::ptr::null_mut();
        let check = |what: &str, code: c_int| {
            if code == 0 {
                Ok(())
            } else {
                Err(FusedError::Cuda(format!("NVRTC {what} failed ({code})")))
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
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                ),
            )?;
            let compiled = (self.compile_program)(prog, opts.len() as c_int, opts.as_ptr());
            let result = if compiled != 0 {
                let mut n = 0usize;
                (self.get_log_size)(prog, &mut n);
                let mut log = vec![0u8; n.max(1)];
                (self.get_log)(prog, log.as_mut_ptr() as *mut c_char);
                Err(FusedError::Cuda(format!(
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
    fn get() -> Result<&'static Driver, FusedError> {
        once!(Driver, {
            (|| {
                let (cuda, _) = open_first(&["libcuda.so.1", "libcuda.so"])?;
                Ok(Driver {
                    cu_init: sym!(cuda, "cuInit"),
                    cu_device_get: sym!(cuda, "cuDeviceGet"),
                    cu_device_get_attribute: sym!(cuda, "cuDeviceGetAttribute"),
                    cu_primary_ctx_retain: sym!(cuda, "cuDevicePrimaryCtxRetain"),
                    cu_ctx_set_current: sym!(cuda, "cuCtxSetCurrent"),
                    cu_module_load_data: sym!(cuda, "cuModuleLoadData"),
                    cu_module_get_function: sym!(cuda, "cuModuleGetFunction"),
                    cu_launch_kernel: sym!(cuda, "cuLaunchKernel"),
                    _lib: cuda,
                })
            })()
        })
    }

    fn check(&self, what: &str, code: c_int) -> Result<(), FusedError> {
        if code == 0 {
            Ok(())
        } else {
            Err(FusedError::Cuda(format!("{what} failed with CUresult {code}")))
        }
    }
}

/// The constants of one step, folded as `optim.rs` folds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepConsts {
    /// 1 - lr * weight_decay (applied on decayed spans only).
    pub decay: f32,
    /// 1 - beta1, 1 - beta2: the lerp weights.
    pub w1: f32,
    pub w2: f32,
    /// -lr * sqrt(1 - beta2^t) / (1 - beta1^t).
    pub step_size: f32,
    /// eps * sqrt(1 - beta2^t).
    pub eps_hat: f32,
    /// Multiplies the gradient as it is read (the clip coefficient): the kernel leaves the
    /// gradient buffer as it was.
    pub grad_scale: f32,
}

impl StepConsts {
    pub fn new(h: &crate::optim::AdamWParams, step: u64) -> Self {
        let crate::optim::AdamWParams {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            grad_scale,
        } = *h;
        let t = step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        StepConsts {
            decay: (1.0 - lr * weight_decay) as f32,
            w1: (1.0 - beta1) as f32,
            w2: (1.0 - beta2) as f32,
            step_size: (-lr * bias2_sqrt / bias1) as f32,
            eps_hat: (eps * bias2_sqrt) as f32,
            grad_scale: grad_scale as f32,
        }
    }
}

/// Splits `[0, len)` into consecutive (offset, len, decayed) segments from the sorted,
/// disjoint decayed spans.
pub fn segments(decay_spans: &[(i64, i64)], len: i64) -> Vec<(i64, i64, bool)> {
    let mut out = Vec::with_capacity(2 * decay_spans.len() + 1);
    let mut at = 0;
    for &(off, n) in decay_spans {
        if off > at {
            out.push((at, off - at, false));
        }
        if n > 0 {
            out.push((off, n, true));
        }
        at = off + n;
    }
    if at < len {
        out.push((at, len - at, false));
    }
    out
}

/// The buffers of one update: `master`, `exp_avg`, `exp_avg_sq` (contiguous fp32 on the
/// kernel's device, equal lengths) are updated in place from `grad`; `out`, when given, receives
/// the new weights as bf16/fp16 (the model's parameters of the same range).
pub struct Buffers<'a> {
    pub master: &'a Tensor,
    pub grad: &'a Tensor,
    pub exp_avg: &'a Tensor,
    pub exp_avg_sq: &'a Tensor,
    pub out: Option<&'a Tensor>,
}

/// (offset, len, decayed) ranges of a shard.
pub type Segments = Vec<(i64, i64, bool)>;

/// Compiles `source` to PTX for compute capability `major.minor` with the NVRTC of the torch
/// install (no GPU needed): what the CPU tests use to check that the kernels compile.
pub fn compile_ptx(source: &str, file: &str, major: c_int, minor: c_int) -> Result<Vec<u8>, FusedError> {
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
    pub fn load(device: Device, source: &str, file: &str, names: &[&str]) -> Result<Self, FusedError> {
        let Device::Cuda(index) = device else {
            return Err(FusedError::Unavailable(format!("{device:?} is not a CUDA device")));
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
    pub unsafe fn launch(&self, which: usize, items: i64, args: &mut [*mut c_void]) -> Result<(), FusedError> {
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

/// The compiled AdamW kernels, for one CUDA device.
pub struct FusedAdamW {
    module: Module,
}

impl FusedAdamW {
    /// Loads NVRTC and the driver, and compiles the kernel for `device`.
    pub fn new(device: Device) -> Result<Self, FusedError> {
        Ok(FusedAdamW {
            module: Module::load(
                device,
                SOURCE,
                "baichuan_adamw.cu",
                &["baichuan_adamw", "baichuan_adamw4"],
            )?,
        })
    }

    /// One update of `b` (see [`Buffers`]); `segments` say which ranges decay. A buffer the
    /// kernel cannot take is `Unavailable` before anything is launched.
    pub fn step(&self, b: &Buffers, segments: &[(i64, i64, bool)], k: StepConsts) -> Result<(), FusedError> {
        let Buffers {
            master,
            grad,
            exp_avg,
            exp_avg_sq,
            out,
        } = *b;
        let n = master.numel() as i64;
        for (what, t) in [
            ("master", master),
            ("grad", grad),
            ("exp_avg", exp_avg),
            ("exp_avg_sq", exp_avg_sq),
        ] {
            if t.kind() != Kind::Float || !t.is_contiguous() || t.numel() as i64 != n || !t.device().is_cuda() {
                return Err(FusedError::Unavailable(format!(
                    "{what} is not a contiguous CUDA fp32 buffer of {n} elements"
                )));
            }
        }
        let out_kind: c_int = match out.map(|o| (o.kind(), o.is_contiguous() && o.numel() as i64 == n)) {
            None => 0,
            Some((Kind::BFloat16, true)) => 1,
            Some((Kind::Half, true)) => 2,
            Some(_) => {
                return Err(FusedError::Unavailable(
                    "the parameter copy is not contiguous bf16/fp16".into(),
                ))
            }
        };
        let base = |t: &Tensor| t.data_ptr() as *mut u8;
        let (p, g, m, v) = (base(master), base(grad), base(exp_avg), base(exp_avg_sq));
        let o = out.map_or(std::ptr::null_mut(), base);
        for &(off, len, decayed) in segments {
            assert!(off >= 0 && off + len <= n, "segment outside the buffer");
            let decay = if decayed { k.decay } else { 1.0 };
            for (start, count, wide) in split_for_vectors([p, g, m, v], o, off, len) {
                let at = |ptr: *mut u8, width: usize| {
                    if ptr.is_null() {
                        ptr
                    } else {
                        ptr.wrapping_add(start as usize * width)
                    }
                };
                let ptrs = [at(p, 4), at(g, 4), at(m, 4), at(v, 4), at(o, 2)];
                let (function, items) = if wide { (1, count / 4) } else { (0, count) };
                self.launch(function, ptrs, out_kind, items, decay, &k)?;
            }
        }
        Ok(())
    }

    /// Launches kernel `which` (0: one element, 1: four) over `items` (elements, or groups of
    /// four) from `ptrs` (master, grad, exp_avg, exp_avg_sq, 16-bit copy or null).
    fn launch(
        &self,
        which: usize,
        ptrs: [*mut u8; 5],
        out_kind: c_int,
        items: i64,
        decay: f32,
        k: &StepConsts,
    ) -> Result<(), FusedError> {
        let [mut pp, mut gp, mut mp, mut vp, mut op] = ptrs;
        let (mut kind, mut count, mut decay) = (out_kind, items, decay);
        let (mut w1, mut w2, mut step_size, mut eps_hat, mut gscale) =
            (k.w1, k.w2, k.step_size, k.eps_hat, k.grad_scale);
        let mut args =
            crate::fused::kernel_args!(pp, gp, mp, vp, op, kind, count, decay, w1, w2, step_size, eps_hat, gscale);
        // SAFETY: the arguments match the kernel's parameters in order and type; the pointers
        // address `items` elements (or aligned groups of four) inside live CUDA buffers of this
        // device.
        unsafe { self.module.launch(which, items, &mut args) }
    }
}

/// Splits the segment `[off, off + len)` into (start, count, wide) launches: a one-element
/// head until the fp32 pointers reach 16-byte alignment, the largest multiple of four that
/// the wide kernel can take, and a one-element tail. The wide part needs every fp32 pointer
/// 16-byte aligned and the 16-bit copy (when not null) 8-byte aligned at its start; where the
/// buffers disagree on alignment the whole segment goes element by element.
pub fn split_for_vectors(fp32: [*mut u8; 4], half: *mut u8, off: i64, len: i64) -> Vec<(i64, i64, bool)> {
    if len <= 0 {
        return Vec::new();
    }
    let addr = |ptr: *mut u8, width: i64, i: i64| ptr as i64 + width * i;
    // elements before the master pointer is 16-byte aligned (fp32 pointers are 4-aligned)
    let head = ((16 - addr(fp32[0], 4, off).rem_euclid(16)) % 16 / 4).min(len);
    let start = off + head;
    let aligned =
        fp32.iter().all(|&ptr| addr(ptr, 4, start) % 16 == 0) && (half.is_null() || addr(half, 2, start) % 8 == 0);
    let body = if aligned { (len - head) / 4 * 4 } else { 0 };
    if body == 0 {
        return vec![(off, len, false)];
    }
    let mut out = Vec::with_capacity(3);
    if head > 0 {
        out.push((off, head, false));
    }
    out.push((start, body, true));
    if start + body < off + len {
        out.push((start + body, off + len - start - body, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_buffer_in_order() {
        assert_eq!(segments(&[], 5), vec![(0, 5, false)]);
        assert_eq!(
            segments(&[(0, 10), (12, 20)], 32),
            vec![(0, 10, true), (10, 2, false), (12, 20, true)]
        );
        assert_eq!(segments(&[(3, 2)], 9), vec![(0, 3, false), (3, 2, true), (5, 4, false)]);
        assert_eq!(segments(&[(0, 0)], 0), vec![]);
    }

    /// The kernel's arithmetic, written out on the CPU in f32 with the folded constants, equals
    /// the tensor-op update of optim.rs (the code the GPU path replaces) to rounding.
    #[test]
    fn folded_constants_reproduce_the_tensor_update() {
        use crate::optim::{AdamWParams, FlatAdamW};
        let n = 1000;
        tch::manual_seed(11);
        let w = Tensor::randn([n], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w2d = w.view([10, 100]);
        let params = vec![("w".to_string(), &w2d)];
        let mut opt = FlatAdamW::new(&params, (0, n as usize), &crate::dist::comm::Solo).unwrap();
        let h = AdamWParams {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_scale: 0.6,
        };
        let mut p: Vec<f32> = Vec::try_from(&opt.master).unwrap();
        let (mut m, mut v) = (vec![0f32; n as usize], vec![0f32; n as usize]);
        for step in 1..=3u64 {
            let grad = Tensor::randn([n], (Kind::Float, Device::Cpu));
            let g: Vec<f32> = Vec::try_from(&grad).unwrap();
            opt.update(&grad, h).unwrap();
            let k = StepConsts::new(&h, step);
            for i in 0..n as usize {
                let g = |i: usize| g[i] * k.grad_scale;
                m[i] += k.w1 * (g(i) - m[i]);
                v[i] += k.w2 * (g(i) * g(i) - v[i]);
                p[i] = p[i] * k.decay + (m[i] * k.step_size) / (v[i].sqrt() + k.eps_hat);
            }
        }
        let want: Vec<f32> = Vec::try_from(&opt.master).unwrap();
        let worst = p
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) / b.abs().max(1e-3)).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "kernel arithmetic differs from the tensor update by {worst}"
        );
    }

    /// The kernel compiles with the NVRTC of the torch install (pip's CUDA wheels carry it, so
    /// this runs without a GPU); skipped, saying so, where that library is absent.
    #[test]
    fn the_kernel_compiles_to_ptx_for_ampere_and_hopper() {
        let nvrtc = match Nvrtc::get() {
            Ok(n) => n,
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        };
        for (major, minor) in [(8, 0), (9, 0)] {
            let ptx = nvrtc.compile(SOURCE, "baichuan_adamw.cu", major, minor).unwrap();
            let text = String::from_utf8_lossy(&ptx);
            assert!(text.contains(".entry baichuan_adamw("), "{text}");
            assert!(text.contains(".entry baichuan_adamw4("), "{text}");
            assert!(
                text.contains(&format!(".target sm_{major}{minor}")),
                "{}",
                &text[..400.min(text.len())]
            );
        }
    }

    #[test]
    fn segments_split_into_aligned_groups_of_four_and_scalar_ends() {
        let at = |a: usize| a as *mut u8;
        let fp32 = [at(0x1000), at(0x2000), at(0x3000), at(0x4000)];
        // aligned start: all wide, a scalar tail of 3
        assert_eq!(
            split_for_vectors(fp32, at(0x5000), 0, 11),
            vec![(0, 8, true), (8, 3, false)]
        );
        // offset 35: a head of 1 reaches offset 36, whose addresses are 16-byte aligned
        assert_eq!(
            split_for_vectors(fp32, at(0x5000), 35, 20),
            vec![(35, 1, false), (36, 16, true), (52, 3, false)]
        );
        // a 16-bit copy misaligned against the fp32 buffers (a shard starting at an odd element)
        assert_eq!(split_for_vectors(fp32, at(0x5002), 0, 64), vec![(0, 64, false)]);
        // one fp32 buffer on another alignment than the master
        let skew = [at(0x1000), at(0x2004), at(0x3000), at(0x4000)];
        assert_eq!(
            split_for_vectors(skew, std::ptr::null_mut(), 0, 64),
            vec![(0, 64, false)]
        );
        // no 16-bit copy; too short for a group
        assert_eq!(split_for_vectors(fp32, std::ptr::null_mut(), 1, 3), vec![(1, 3, false)]);
        assert_eq!(split_for_vectors(fp32, std::ptr::null_mut(), 5, 0), vec![]);
        // every element is covered once, in order
        for off in 0..9 {
            for len in 0..23 {
                let parts = split_for_vectors(fp32, at(0x5000), off, len);
                let mut at_ = off;
                for (s, n, wide) in parts {
                    assert_eq!(s, at_);
                    assert!(!wide || (n % 4 == 0 && (0x1000 + 4 * s) % 16 == 0));
                    at_ += n;
                }
                assert_eq!(at_, off + len);
            }
        }
    }

    #[test]
    fn cpu_devices_are_refused_with_a_reason() {
        let e = FusedAdamW::new(Device::Cpu).err().expect("no fused update on the CPU");
        assert!(e.to_string().contains("not a CUDA device"), "{e}");
    }
}
