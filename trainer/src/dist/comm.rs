//! The `Communicator` trait: in-place collectives on flat 1-D tensors with asynchronous
//! handles, and `Solo`, the world-of-one communicator for single-process runs.
//!
//! Semantics follow NCCL/torch.distributed, on contiguous buffers:
//! - `all_reduce`: every rank ends with the element-wise sum (or mean) of all ranks' buffers;
//! - `reduce_scatter(ranges)`: `ranges[r]` of rank r ends with the reduction of that range;
//!   the rest of the buffer is left undefined (ranges partition the buffer in rank order and
//!   may be uneven or empty, as ZeRO-2's bucket/shard intersections are);
//! - `all_gather(ranges)`: before, rank r's `ranges[r]` holds its part; after, every rank
//!   holds every part;
//! - `broadcast(root)`: every rank ends with the root's buffer.
//!
//! Operations run in submission order on every rank; `Work::wait` blocks until one is done.
//! `copy_to_host` is a local operation in the same order: it copies a buffer after the
//! collectives submitted before it (ZeRO-Offload's gradient copy, issued with each bucket).

use std::sync::mpsc::{channel, Receiver, Sender};

use tch::Tensor;

use super::DistError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Avg,
}

/// A pending collective; `wait` returns its result.
#[must_use = "a collective must be waited for before its buffer is read"]
pub struct Work {
    inner: Inner,
}

type Completion = Box<dyn FnOnce() -> Result<(), DistError> + Send>;

enum Inner {
    Done,
    Failed(DistError),
    Channel(Receiver<Result<(), DistError>>),
    Deferred(Completion),
}

impl Work {
    /// A handle that is already complete.
    pub fn done() -> Self {
        Work { inner: Inner::Done }
    }

    /// A handle that reports `error` when waited for.
    pub fn failed(error: DistError) -> Self {
        Work {
            inner: Inner::Failed(error),
        }
    }

    /// A handle completed by sending on the returned sender.
    pub fn pending() -> (Sender<Result<(), DistError>>, Self) {
        let (tx, rx) = channel();
        (
            tx,
            Work {
                inner: Inner::Channel(rx),
            },
        )
    }

    /// A handle whose completion runs `finish` (e.g. a GPU-side stream wait).
    pub fn deferred(finish: impl FnOnce() -> Result<(), DistError> + Send + 'static) -> Self {
        Work {
            inner: Inner::Deferred(Box::new(finish)),
        }
    }

    pub fn wait(self) -> Result<(), DistError> {
        match self.inner {
            Inner::Done => Ok(()),
            Inner::Failed(e) => Err(e),
            Inner::Channel(rx) => rx
                .recv()
                .unwrap_or_else(|_| Err(DistError::Protocol("the communication thread stopped".into()))),
            Inner::Deferred(finish) => finish(),
        }
    }
}

/// Collective communication among the data-parallel ranks.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    fn name(&self) -> &'static str;
    fn all_reduce(&self, buf: &Tensor, op: ReduceOp) -> Work;
    fn reduce_scatter(&self, buf: &Tensor, ranges: &[(usize, usize)], op: ReduceOp) -> Work;
    fn all_gather(&self, buf: &Tensor, ranges: &[(usize, usize)]) -> Work;
    fn broadcast(&self, buf: &Tensor, root: usize) -> Work;
    fn barrier(&self) -> Result<(), DistError>;

    /// Copies `src` into `dst` (host memory, same length and dtype) once every collective
    /// submitted before is done; `wait` returns when `dst` holds the data. This default, for
    /// communicators whose collectives complete when submitted, copies at once.
    fn copy_to_host(&self, src: &Tensor, dst: &Tensor) -> Work {
        tch::no_grad(|| dst.shallow_clone().copy_(src));
        Work::done()
    }

    /// Sum (or mean) of one number over all ranks.
    fn all_reduce_scalar(&self, value: f64, op: ReduceOp) -> Result<f64, DistError> {
        let t = Tensor::from_slice(&[value]).to_kind(tch::Kind::Float);
        self.all_reduce(&t, op).wait()?;
        Ok(t.double_value(&[0]))
    }
}

/// The communicator of a single process: every collective is the identity.
pub struct Solo;

impl Communicator for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn name(&self) -> &'static str {
        "none"
    }
    fn all_reduce(&self, _: &Tensor, _: ReduceOp) -> Work {
        Work::done()
    }
    fn reduce_scatter(&self, _: &Tensor, _: &[(usize, usize)], _: ReduceOp) -> Work {
        Work::done()
    }
    fn all_gather(&self, _: &Tensor, _: &[(usize, usize)]) -> Work {
        Work::done()
    }
    fn broadcast(&self, _: &Tensor, _: usize) -> Work {
        Work::done()
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
}
