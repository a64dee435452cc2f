//! The NCCL entry points baichuan's communicator uses (`trainer/src/dist/nccl.rs` builds the
//! communicator on them, with the driver's streams and events from [`crate::driver::Driver`]).
//!
//! NCCL is loaded at run time, so nothing here needs it to build. (cudarc's loader asks for
//! `libnccl.so` or `libnccl.so.<CUDA major>`, while the NCCL wheels and libtorch ship
//! `libnccl.so.2`; the ten entry points used are declared here instead.)

use std::ffi::{c_char, c_int, c_void, CStr};

use libloading::Library;

use crate::driver::CuStream;
use crate::loader::{load_once, open_first, symbol};
use crate::CudaError;

pub type NcclComm = *mut c_void;

/// `ncclUniqueId`: the job's rendezvous token, created by rank 0.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [c_char; 128],
}

const HINT: &str = "dist.backend = \"nccl\" needs NCCL and a CUDA driver: put the directory holding \
                    libnccl.so.2 (e.g. site-packages/nvidia/nccl/lib) on LD_LIBRARY_PATH";

/// The NCCL entry points, loaded once per process.
#[allow(clippy::type_complexity)]
pub struct Nccl {
    pub get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    pub comm_init_rank: unsafe extern "C" fn(*mut NcclComm, c_int, UniqueId, c_int) -> c_int,
    pub all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, NcclComm, CuStream) -> c_int,
    pub reduce:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, c_int, NcclComm, CuStream) -> c_int,
    pub broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, NcclComm, CuStream) -> c_int,
    pub reduce_scatter:
        unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, NcclComm, CuStream) -> c_int,
    pub all_gather: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, NcclComm, CuStream) -> c_int,
    pub group_start: unsafe extern "C" fn() -> c_int,
    pub group_end: unsafe extern "C" fn() -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    _lib: Library,
}

impl Nccl {
    /// NCCL's entry points (loaded on first use).
    pub fn get() -> Result<&'static Nccl, CudaError> {
        load_once!(Nccl, {
            (|| {
                let (nccl, _) = open_first(&["libnccl.so.2", "libnccl.so"], HINT)?;
                Ok(Nccl {
                    get_unique_id: symbol!(nccl, "ncclGetUniqueId"),
                    comm_init_rank: symbol!(nccl, "ncclCommInitRank"),
                    all_reduce: symbol!(nccl, "ncclAllReduce"),
                    reduce: symbol!(nccl, "ncclReduce"),
                    broadcast: symbol!(nccl, "ncclBroadcast"),
                    reduce_scatter: symbol!(nccl, "ncclReduceScatter"),
                    all_gather: symbol!(nccl, "ncclAllGather"),
                    group_start: symbol!(nccl, "ncclGroupStart"),
                    group_end: symbol!(nccl, "ncclGroupEnd"),
                    error_string: symbol!(nccl, "ncclGetErrorString"),
                    _lib: nccl,
                })
            })()
        })
    }

    /// `Ok` for ncclSuccess, else an error naming the call and NCCL's own description.
    pub fn check(&self, what: &str, code: c_int) -> Result<(), CudaError> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string.
        let text = unsafe { CStr::from_ptr((self.error_string)(code)) }.to_string_lossy();
        Err(CudaError::Call(format!(
            "NCCL {what} failed ({code}): {text}; HINT: rerun with NCCL_DEBUG=INFO"
        )))
    }
}
