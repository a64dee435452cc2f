//! Bucketed gradient reduction overlapped with backward.
//!
//! The layer-wise backward finishes the model in units: the head (final norm and lm_head),
//! then blocks from the top down, then the embedding. On the last micro-batch of a step each
//! finished unit hands its gradients to the reducer, which copies them into fp32 flat
//! buckets of consecutive units and launches a bucket's collective as soon as its last unit
//! arrives, while the blocks below are still computing (PyTorch DDP's bucketing, Li et al.
//! 2020, driven by the schedule instead of autograd hooks).
//!
//! ZeRO stages 0 and 1 all-reduce each bucket in place in one full fp32 gradient buffer, in
//! which the micro-batches of a step are also summed (in fp32, as Megatron-LM's `main_grad`;
//! bf16 `.grad` would lose bits with every micro-batch added).
//! Stage 2 reduce-scatters each bucket so that every rank receives only the part that falls
//! in its shard of the flat parameter order; no rank ever holds the whole fp32 gradient.
//!
//! With optimizer offload ([`GradReducer::copy_to_host`]) each bucket's part of this rank's
//! shard is also copied to a host buffer right after its collective, in the communicator's
//! order (on CUDA, on the NCCL stream), so the copies overlap the rest of backward.

use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::comm::{Communicator, ReduceOp, Work};
use super::DistError;
use crate::flat::Slot;

/// A part of the model whose gradients become final together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Head,
    Block(usize),
    Embed,
}

/// Contiguous ranges of the flat parameter order that become final together.
#[derive(Debug, Clone)]
struct Bucket {
    start: usize,
    len: usize,
    units: usize,
}

pub struct GradReducer {
    /// (start, len) of each unit, indexed by `unit_index`.
    unit_ranges: Vec<(usize, usize)>,
    unit_bucket: Vec<usize>,
    buckets: Vec<Bucket>,
    remaining: Vec<usize>,
    /// This rank's shard of the flat order (the whole order below stage 1).
    shard: (usize, usize),
    /// Every rank's shard, in rank order.
    shards: Vec<(usize, usize)>,
    stage: u8,
    /// Stages 0 and 1: the whole fp32 gradient; stage 2: this rank's shard only.
    grad: Tensor,
    in_flight: Vec<(Work, Option<(usize, Tensor)>)>,
    /// Time spent waiting for collectives in the last `finish`.
    pub wait: Duration,
    /// When each bucket's collective was issued in the current step.
    pub issued: Vec<Instant>,
    num_layers: usize,
    /// Earlier micro-batches of this step were summed into `grad` ([`GradReducer::accumulate`]).
    accumulated: bool,
    /// Optimizer offload: the host copy of this rank's shard of the reduced gradient.
    host: Option<Tensor>,
}

/// Writes parameter `p`'s gradient into `dst` (fp32): this micro-batch's `new` (returned by
/// autograd) plus whatever is in `p.grad()` (then zeroed), added onto `dst`'s content when
/// `add`, else replacing it.
fn gather(dst: &mut Tensor, p: &Tensor, new: Option<&Tensor>, add: bool) {
    let earlier = p.grad();
    let mut holds = add;
    for g in new.into_iter().chain(earlier.defined().then_some(&earlier)) {
        // reshape: a view when contiguous, whatever layout autograd returned otherwise
        if holds {
            let _ = dst
                .f_add_(&g.reshape([-1]))
                .expect("a gradient of its parameter's size adds into its bucket range");
        } else {
            dst.copy_(&g.reshape([-1]));
            holds = true;
        }
    }
    if earlier.defined() {
        p.shallow_clone().zero_grad();
    }
    if !holds {
        let _ = dst.zero_();
    }
}

impl GradReducer {
    /// `slots` is the flat layout (embedding, blocks, norm, head); `bucket_elems` the target
    /// bucket size in fp32 elements.
    pub fn new(
        slots: &[Slot],
        num_layers: usize,
        bucket_elems: usize,
        stage: u8,
        shards: Vec<(usize, usize)>,
        rank: usize,
        device: tch::Device,
    ) -> Self {
        // units in the flat order: embed = slot 0, block i = slots 1+7i .. 8+7i, head = the rest
        let per_block = (slots.len() - 3) / num_layers.max(1);
        let span = |a: usize, b: usize| {
            (
                slots[a].offset as usize,
                (slots[b - 1].offset + slots[b - 1].numel - slots[a].offset) as usize,
            )
        };
        let mut unit_ranges = vec![span(0, 1)];
        for i in 0..num_layers {
            unit_ranges.push(span(1 + per_block * i, 1 + per_block * (i + 1)));
        }
        unit_ranges.push(span(1 + per_block * num_layers, slots.len()));
        // buckets over units in backward order: head, blocks from the top, embedding
        let order: Vec<usize> = std::iter::once(num_layers + 1)
            .chain((1..=num_layers).rev())
            .chain(std::iter::once(0))
            .collect();
        let mut unit_bucket = vec![0; unit_ranges.len()];
        let mut buckets: Vec<Bucket> = Vec::new();
        for u in order {
            let (start, len) = unit_ranges[u];
            match buckets.last_mut() {
                Some(b) if b.len < bucket_elems => {
                    b.start = start; // units arrive in descending flat order
                    b.len += len;
                    b.units += 1;
                }
                _ => buckets.push(Bucket { start, len, units: 1 }),
            }
            unit_bucket[u] = buckets.len() - 1;
        }
        let total: usize = unit_ranges.iter().map(|r| r.1).sum();
        let shard = if stage >= 1 { shards[rank] } else { (0, total) };
        let grad_len = if stage >= 2 { shard.1 } else { total };
        GradReducer {
            remaining: buckets.iter().map(|b| b.units).collect(),
            unit_ranges,
            unit_bucket,
            buckets,
            shard,
            shards,
            stage,
            grad: Tensor::zeros([grad_len as i64], (Kind::Float, device)),
            in_flight: Vec::new(),
            wait: Duration::ZERO,
            issued: Vec::new(),
            num_layers,
            accumulated: false,
            host: None,
        }
    }

    /// From now on, copies each reduced bucket's part of this rank's shard into `host` (a
    /// host fp32 buffer of the shard's length), valid after `finish`.
    pub fn copy_to_host(&mut self, host: Tensor) {
        assert_eq!(host.numel(), self.shard.1, "the host gradient holds this rank's shard");
        self.host = Some(host);
    }

    /// The host copy of the shard's reduced gradient, when offloading.
    pub fn host_grad(&self) -> Option<Tensor> {
        self.host.as_ref().map(Tensor::shallow_clone)
    }

    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    fn unit_index(&self, unit: Unit) -> usize {
        match unit {
            Unit::Embed => 0,
            Unit::Block(i) => 1 + i,
            Unit::Head => self.num_layers + 1,
        }
    }

    /// The gradient of this rank's shard (all of it below stage 1), valid after `finish`.
    pub fn grad_shard(&self) -> Tensor {
        if self.stage >= 2 {
            self.grad.shallow_clone()
        } else {
            self.grad.narrow(0, self.shard.0 as i64, self.shard.1 as i64)
        }
    }

    /// Below ZeRO stage 2, on a micro-batch before a step's last: sums `unit`'s gradients
    /// (`fresh`, as in [`GradReducer::unit_done`], plus any `.grad()`) into the fp32 buffer,
    /// replacing its content on the step's `first` micro-batch. No collective is issued.
    pub fn accumulate(&mut self, unit: Unit, params: &[&Tensor], fresh: &[Tensor], first: bool) {
        assert!(
            self.stage < 2,
            "ZeRO stage 2 keeps no full gradient buffer to accumulate in"
        );
        let mut offset = self.unit_ranges[self.unit_index(unit)].0 as i64;
        tch::no_grad(|| {
            for (j, p) in params.iter().enumerate() {
                let n = p.numel() as i64;
                let mut dst = self.grad.narrow(0, offset, n);
                gather(&mut dst, p, fresh.get(j).filter(|g| g.defined()), !first);
                offset += n;
            }
        });
        self.accumulated = true;
    }

    /// Whether micro-batches before the last can be summed in the fp32 buffer (stages 0, 1).
    pub fn accumulates(&self) -> bool {
        self.stage < 2
    }

    /// Takes the final gradients of `unit` (its parameters, in flat order) and launches its
    /// bucket's collective when the bucket is complete. Each parameter's gradient is `fresh[j]`
    /// (this micro-batch's, returned by autograd; absent or undefined: none) plus its `.grad()`
    /// (then zeroed) plus, below stage 2, what [`GradReducer::accumulate`] summed this step.
    pub fn unit_done(&mut self, unit: Unit, params: &[&Tensor], fresh: &[Tensor], comm: &dyn Communicator) {
        let u = self.unit_index(unit);
        let b = self.unit_bucket[u];
        let bucket = self.buckets[b].clone();
        // stage 2 gathers a bucket in its own buffer; below, in place in the full gradient
        let (dest, base) = if self.stage >= 2 {
            let existing = self
                .in_flight
                .iter()
                .find_map(|(_, t)| t.as_ref().filter(|(i, _)| *i == b).map(|(_, t)| t.shallow_clone()));
            let buf = existing.unwrap_or_else(|| {
                let t = Tensor::zeros([bucket.len as i64], (Kind::Float, self.grad.device()));
                self.in_flight.push((Work::done(), Some((b, t.shallow_clone()))));
                t
            });
            (buf, bucket.start)
        } else {
            (self.grad.shallow_clone(), 0)
        };
        tch::no_grad(|| {
            let mut offset = self.unit_ranges[u].0;
            for (j, p) in params.iter().enumerate() {
                let n = p.numel();
                let mut dst = dest.narrow(0, (offset - base) as i64, n as i64);
                // this micro-batch's gradient (returned by autograd), earlier ones (.grad or,
                // below stage 2, already summed in the buffer)
                gather(&mut dst, p, fresh.get(j).filter(|g| g.defined()), self.accumulated);
                offset += n;
            }
        });
        self.remaining[b] -= 1;
        if self.remaining[b] > 0 {
            return;
        }
        self.issued.push(Instant::now());
        if self.stage >= 2 {
            // each rank's part of this bucket: its shard intersected with the bucket
            let ranges: Vec<(usize, usize)> = self
                .shards
                .iter()
                .map(|&(s, l)| {
                    let lo = s.clamp(bucket.start, bucket.start + bucket.len);
                    let hi = (s + l).clamp(bucket.start, bucket.start + bucket.len);
                    (lo - bucket.start, hi - lo)
                })
                .collect();
            let work = comm.reduce_scatter(&dest, &ranges, ReduceOp::Avg);
            let slot = self
                .in_flight
                .iter_mut()
                .find(|(_, t)| t.as_ref().is_some_and(|(i, _)| *i == b))
                .expect("bucket buffer");
            slot.0 = work;
        } else {
            let view = self.grad.narrow(0, bucket.start as i64, bucket.len as i64);
            self.in_flight.push((comm.all_reduce(&view, ReduceOp::Avg), None));
        }
        self.copy_part_to_host(&bucket, &dest, base, comm);
    }

    /// Offload: queues the copy of the bucket's part of this rank's shard (held in `src`,
    /// whose element 0 is flat position `base`) to the host buffer, after its collective.
    fn copy_part_to_host(&mut self, bucket: &Bucket, src: &Tensor, base: usize, comm: &dyn Communicator) {
        let Some(host) = &self.host else { return };
        let lo = self.shard.0.max(bucket.start);
        let hi = (self.shard.0 + self.shard.1).min(bucket.start + bucket.len);
        if hi <= lo {
            return;
        }
        let (from, to) = (
            src.narrow(0, (lo - base) as i64, (hi - lo) as i64),
            host.narrow(0, (lo - self.shard.0) as i64, (hi - lo) as i64),
        );
        self.in_flight.push((comm.copy_to_host(&from, &to), None));
    }

    /// Waits for every bucket; under stage 2 copies this rank's parts into its shard.
    pub fn finish(&mut self) -> Result<(), DistError> {
        let started = Instant::now();
        for (work, buffer) in std::mem::take(&mut self.in_flight) {
            work.wait()?;
            if let Some((b, buf)) = buffer {
                let bucket = &self.buckets[b];
                let lo = self.shard.0.clamp(bucket.start, bucket.start + bucket.len);
                let hi = (self.shard.0 + self.shard.1).clamp(bucket.start, bucket.start + bucket.len);
                if hi > lo {
                    tch::no_grad(|| {
                        self.grad
                            .narrow(0, (lo - self.shard.0) as i64, (hi - lo) as i64)
                            .copy_(&buf.narrow(0, (lo - bucket.start) as i64, (hi - lo) as i64));
                    });
                }
            }
        }
        self.wait = started.elapsed();
        self.accumulated = false;
        for (r, b) in self.remaining.iter_mut().zip(&self.buckets) {
            *r = b.units;
        }
        Ok(())
    }
}
