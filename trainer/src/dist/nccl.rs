//! The `nccl` backend: NCCL collectives on a dedicated CUDA stream, ordered against
//! libtorch's compute stream with CUDA events.
//!
//! NCCL and the CUDA driver are loaded at run time by the `baichuan-cuda` crate, so the
//! trainer builds and its tests run on machines without CUDA; a missing library is an error
//! that names what was searched.
//!
//! Ordering (libtorch computes on the legacy default stream): before each collective an event
//! recorded on the default stream is waited for by the NCCL stream (the gradients are
//! written); after it, an event on the NCCL stream is what `Work::wait` makes the default
//! stream wait for (GPU-side: the host does not block). Collectives are therefore issued
//! while backward kernels are still queued. Uneven reduce-scatter and all-gather (ZeRO-2
//! bucket/shard intersections) are grouped `ncclReduce`/`ncclBroadcast` calls, one per root;
//! even ones use `ncclReduceScatter`/`ncclAllGather` in place.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use baichuan_cuda::driver::{CuContext, CuEvent, CuStream, Driver};
use baichuan_cuda::nccl::{Nccl, NcclComm, UniqueId};

use tch::{Kind, Tensor};

use super::comm::{Communicator, ReduceOp, Work};
use super::store::StoreClient;
use super::{DistEnv, DistError};

/// The loaded libraries: NCCL, and the driver for streams and events (cuda crate).
#[derive(Clone, Copy)]
struct Api {
    nccl: &'static Nccl,
    cu: &'static Driver,
}

impl Api {
    fn get() -> Result<Api, DistError> {
        Ok(Api {
            nccl: Nccl::get()?,
            cu: Driver::get()?,
        })
    }

    fn nccl_ok(&self, what: &str, code: c_int) -> Result<(), DistError> {
        self.nccl
            .check(what, code)
            .map_err(|e| DistError::Protocol(e.to_string()))
    }

    fn cuda_ok(&self, what: &str, code: c_int) -> Result<(), DistError> {
        self.cu
            .check(what, code)
            .map_err(|e| DistError::Protocol(e.to_string()))
    }
}

fn nccl_dtype(kind: Kind) -> Result<c_int, DistError> {
    match kind {
        Kind::Float => Ok(7),
        Kind::Half => Ok(6),
        Kind::BFloat16 => Ok(9),
        Kind::Double => Ok(8),
        other => Err(DistError::Protocol(format!(
            "NCCL collectives on {other:?} buffers are not supported"
        ))),
    }
}

fn nccl_op(op: ReduceOp) -> c_int {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Avg => 4,
    }
}

struct Handles {
    comm: NcclComm,
    stream: CuStream,
    ctx: CuContext,
}

// SAFETY: the handles are only used under the Mutex, from one thread at a time, and NCCL
// communicators may be used from any thread that has their device's context current.
unsafe impl Send for Handles {}

/// NCCL over the GPUs of the job, one per rank.
pub struct NcclCommunicator {
    rank: usize,
    device: tch::Device,
    world: usize,
    api: Api,
    handles: Mutex<Handles>,
    store: Arc<StoreClient>,
}

struct Event(CuEvent, Api);
// SAFETY: a CUDA event handle may be waited for from any thread of the process.
unsafe impl Send for Event {}

impl NcclCommunicator {
    /// Creates the communicator on `cuda:LOCAL_RANK`; the unique id travels through the store.
    pub fn connect(env: &DistEnv, store: Arc<StoreClient>) -> Result<Self, DistError> {
        let api = Api::get()?;
        let mut ctx: CuContext = std::ptr::null_mut();
        let mut stream: CuStream = std::ptr::null_mut();
        // SAFETY: plain CUDA driver calls with valid out-pointers.
        unsafe {
            api.cuda_ok("cuInit", (api.cu.cu_init)(0))?;
            let mut dev: c_int = 0;
            api.cuda_ok("cuDeviceGet", (api.cu.cu_device_get)(&mut dev, env.local_rank as c_int))?;
            api.cuda_ok(
                "cuDevicePrimaryCtxRetain",
                (api.cu.cu_primary_ctx_retain)(&mut ctx, dev),
            )?;
            api.cuda_ok("cuCtxSetCurrent", (api.cu.cu_ctx_set_current)(ctx))?;
            // non-blocking: no implicit synchronisation with the legacy default stream
            api.cuda_ok("cuStreamCreate", (api.cu.cu_stream_create)(&mut stream, 1))?;
        }
        let mut id = UniqueId { internal: [0; 128] };
        if env.rank == 0 {
            // SAFETY: `id` is a valid out-pointer.
            api.nccl_ok("ncclGetUniqueId", unsafe { (api.nccl.get_unique_id)(&mut id) })?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            store.set("nccl/id", &bytes)?;
        } else {
            let bytes = store.get("nccl/id")?;
            if bytes.len() != 128 {
                return Err(DistError::Protocol("malformed NCCL unique id in the store".into()));
            }
            for (d, s) in id.internal.iter_mut().zip(bytes) {
                *d = s as c_char;
            }
        }
        // every rank must be here before the (blocking, timeout-less) NCCL initialisation
        store.barrier("nccl-init")?;
        let mut comm: NcclComm = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the id is the job's; rank < world.
        api.nccl_ok("ncclCommInitRank", unsafe {
            (api.nccl.comm_init_rank)(&mut comm, env.world as c_int, id, env.rank as c_int)
        })?;
        Ok(NcclCommunicator {
            rank: env.rank,
            device: tch::Device::Cuda(env.local_rank),
            world: env.world,
            api,
            handles: Mutex::new(Handles { comm, stream, ctx }),
            store,
        })
    }

    fn event(&self) -> Result<Event, DistError> {
        let mut ev: CuEvent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; 2 = CU_EVENT_DISABLE_TIMING.
        self.api
            .cuda_ok("cuEventCreate", unsafe { (self.api.cu.cu_event_create)(&mut ev, 2) })?;
        Ok(Event(ev, self.api))
    }

    /// Runs `launch` on the NCCL stream after the default stream's pending work, and returns
    /// a handle that makes the default stream wait for it.
    fn enqueue(
        &self,
        buf: &Tensor,
        launch: impl FnOnce(Api, NcclComm, CuStream, *mut c_void, c_int) -> Result<(), DistError>,
    ) -> Work {
        if !buf.device().is_cuda() || !buf.is_contiguous() {
            return Work::failed(DistError::Protocol(
                "NCCL collectives need contiguous CUDA buffers".into(),
            ));
        }
        let dtype = match nccl_dtype(buf.kind()) {
            Ok(d) => d,
            Err(e) => return Work::failed(e),
        };
        // SAFETY (of what `launch` does with the pointer): the buffer is a live CUDA tensor
        // kept alive by the caller until the returned Work is waited for.
        self.on_stream(false, |api, h| launch(api, h.comm, h.stream, buf.data_ptr(), dtype))
    }

    /// Runs `launch` on the NCCL stream, ordered after the work queued so far on libtorch's
    /// stream, and returns a handle whose `wait` makes libtorch's stream wait for it or, with
    /// `host`, blocks the calling thread until it is done.
    fn on_stream(&self, host: bool, launch: impl FnOnce(Api, &Handles) -> Result<(), DistError>) -> Work {
        let run = || -> Result<Event, DistError> {
            let h = self.handles.lock().expect("nccl handles");
            let api = self.api;
            // SAFETY: driver calls on the context and stream created by this communicator.
            unsafe {
                api.cuda_ok("cuCtxSetCurrent", (api.cu.cu_ctx_set_current)(h.ctx))?;
                let ready = self.event()?;
                api.cuda_ok("cuEventRecord", (api.cu.cu_event_record)(ready.0, std::ptr::null_mut()))?;
                api.cuda_ok("cuStreamWaitEvent", (api.cu.cu_stream_wait_event)(h.stream, ready.0, 0))?;
                launch(api, &h)?;
                let done = self.event()?;
                api.cuda_ok("cuEventRecord", (api.cu.cu_event_record)(done.0, h.stream))?;
                Ok(done)
            }
        };
        match run() {
            Err(e) => Work::failed(e),
            Ok(done) => {
                let ctx = self.handles.lock().expect("nccl handles").ctx as usize;
                Work::deferred(move || {
                    let done = done; // the whole Event (Send), not its raw fields
                    let api = done.1;
                    // SAFETY: the event was recorded on the NCCL stream of context `ctx`.
                    unsafe {
                        api.cuda_ok("cuCtxSetCurrent", (api.cu.cu_ctx_set_current)(ctx as CuContext))?;
                        if host {
                            api.cuda_ok("cuEventSynchronize", (api.cu.cu_event_synchronize)(done.0))
                        } else {
                            api.cuda_ok(
                                "cuStreamWaitEvent",
                                (api.cu.cu_stream_wait_event)(std::ptr::null_mut(), done.0, 0),
                            )
                        }
                    }
                })
            }
        }
    }

    fn grouped(&self, api: Api, calls: impl FnOnce() -> Result<(), DistError>) -> Result<(), DistError> {
        // SAFETY: group calls bracket the collectives issued by `calls`.
        api.nccl_ok("ncclGroupStart", unsafe { (api.nccl.group_start)() })?;
        let r = calls();
        api.nccl_ok("ncclGroupEnd", unsafe { (api.nccl.group_end)() })?;
        r
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: destroying an event whose record may still be pending is allowed.
        unsafe { (self.1.cu.cu_event_destroy)(self.0) };
    }
}

fn is_even(ranges: &[(usize, usize)], n: usize) -> bool {
    let len = ranges[0].1;
    ranges.iter().enumerate().all(|(i, &(o, l))| l == len && o == i * len) && len * ranges.len() == n
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce(&self, buf: &Tensor, op: ReduceOp) -> Work {
        let n = buf.numel();
        self.enqueue(buf, |api, comm, stream, ptr, dtype| {
            // SAFETY: in-place all-reduce of n elements of a live device buffer.
            api.nccl_ok("ncclAllReduce", unsafe {
                (api.nccl.all_reduce)(ptr, ptr, n, dtype, nccl_op(op), comm, stream)
            })
        })
    }
    fn reduce_scatter(&self, buf: &Tensor, ranges: &[(usize, usize)], op: ReduceOp) -> Work {
        let (n, rank, elem) = (buf.numel(), self.rank, buf.kind().elt_size_in_bytes());
        let ranges = ranges.to_vec();
        self.enqueue(buf, |api, comm, stream, ptr, dtype| {
            let at = |o: usize| (ptr as *mut u8).wrapping_add(o * elem) as *mut c_void;
            if is_even(&ranges, n) {
                let len = ranges[0].1;
                // SAFETY: in-place reduce-scatter: the receive buffer is the rank's own chunk.
                return api.nccl_ok("ncclReduceScatter", unsafe {
                    (api.nccl.reduce_scatter)(ptr, at(rank * len), len, dtype, nccl_op(op), comm, stream)
                });
            }
            self.grouped(api, || {
                for (root, &(o, l)) in ranges.iter().enumerate() {
                    // SAFETY: each root receives the reduction of its own range, in place.
                    api.nccl_ok("ncclReduce", unsafe {
                        (api.nccl.reduce)(at(o), at(o), l, dtype, nccl_op(op), root as c_int, comm, stream)
                    })?;
                }
                Ok(())
            })
        })
    }
    fn all_gather(&self, buf: &Tensor, ranges: &[(usize, usize)]) -> Work {
        let (n, rank, elem) = (buf.numel(), self.rank, buf.kind().elt_size_in_bytes());
        let ranges = ranges.to_vec();
        self.enqueue(buf, |api, comm, stream, ptr, dtype| {
            let at = |o: usize| (ptr as *mut u8).wrapping_add(o * elem) as *mut c_void;
            if is_even(&ranges, n) {
                let len = ranges[0].1;
                // SAFETY: in-place all-gather: the send buffer is the rank's own chunk.
                return api.nccl_ok("ncclAllGather", unsafe {
                    (api.nccl.all_gather)(at(rank * len), ptr, len, dtype, comm, stream)
                });
            }
            self.grouped(api, || {
                for (root, &(o, l)) in ranges.iter().enumerate() {
                    // SAFETY: each root broadcasts its own range in place.
                    api.nccl_ok("ncclBroadcast", unsafe {
                        (api.nccl.broadcast)(at(o), at(o), l, dtype, root as c_int, comm, stream)
                    })?;
                }
                Ok(())
            })
        })
    }
    fn broadcast(&self, buf: &Tensor, root: usize) -> Work {
        let n = buf.numel();
        self.enqueue(buf, |api, comm, stream, ptr, dtype| {
            // SAFETY: in-place broadcast of n elements.
            api.nccl_ok("ncclBroadcast", unsafe {
                (api.nccl.broadcast)(ptr, ptr, n, dtype, root as c_int, comm, stream)
            })
        })
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.store.next_barrier("nccl")
    }
    /// An asynchronous device-to-host copy on the NCCL stream, so it follows the bucket's
    /// collective without holding up the compute stream; `wait` blocks the host on its event.
    fn copy_to_host(&self, src: &Tensor, dst: &Tensor) -> Work {
        let bytes = src.numel() * src.kind().elt_size_in_bytes();
        if !src.device().is_cuda()
            || !src.is_contiguous()
            || dst.device().is_cuda()
            || !dst.is_contiguous()
            || dst.kind() != src.kind()
            || dst.numel() != src.numel()
        {
            return Work::failed(DistError::Protocol(
                "copy_to_host needs a contiguous CUDA source and a host destination of its size and dtype".into(),
            ));
        }
        // the source may have been written on the compute stream (on_stream orders after it);
        // the collective before it on the NCCL stream is ordered by the stream itself
        self.on_stream(true, |api, h| {
            // SAFETY: both buffers are live tensors of `bytes` bytes kept alive by the caller
            // until `wait`, which blocks until the copy is done.
            api.cuda_ok("cuMemcpyDtoHAsync", unsafe {
                (api.cu.cu_memcpy_dtoh_async)(dst.data_ptr(), src.data_ptr() as u64, bytes, h.stream)
            })
        })
    }
    fn all_reduce_scalar(&self, value: f64, op: ReduceOp) -> Result<f64, DistError> {
        let t = Tensor::from_slice(&[value as f32]).to_device(self.device);
        self.all_reduce(&t, op).wait()?;
        Ok(t.double_value(&[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_ranges_use_the_native_collectives() {
        assert!(is_even(&[(0, 4), (4, 4)], 8));
        assert!(!is_even(&[(0, 5), (5, 3)], 8));
        assert!(!is_even(&[(0, 4), (4, 4)], 9));
    }

    #[test]
    fn data_types_and_ops_map_to_nccl_enums() {
        assert_eq!(nccl_dtype(Kind::BFloat16).unwrap(), 9);
        assert_eq!(nccl_dtype(Kind::Float).unwrap(), 7);
        assert!(nccl_dtype(Kind::Int64).is_err());
        assert_eq!((nccl_op(ReduceOp::Sum), nccl_op(ReduceOp::Avg)), (0, 4));
    }
}
