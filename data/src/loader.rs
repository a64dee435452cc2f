//! The deterministic, resumable sample order and the per-rank batch slicing.
//!
//! As docs/ARCHITECTURE.md describes: all documents form one token stream; sample k is the tokens
//! `[k*T, k*T + T + 1)` (inputs and shifted targets); each epoch visits every sample once in
//! a seeded pseudo-random order; global step s takes positions `[s*G, (s+1)*G)` of the
//! epoch-after-epoch order and rank r the r-th contiguous slice. The loader's whole state is
//! one position counter (reported as epoch and next sample), so resuming — at any world
//! size — continues the same sequence of global batches.
//!
//! The permutation is a keyed Feistel network over the sample indices with cycle walking
//! (Black & Rogaway 2002): O(1) memory whatever the corpus size, and stable across crate
//! versions because it uses only its own mixing function.

use serde::{Deserialize, Serialize};

use crate::hash::splitmix64;
use crate::mixture::{source_seed, Mixture, SourceState};
use crate::DataError;

/// A keyed bijection of `0..n`.
#[derive(Debug, Clone)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    pub fn new(n: u64, seed: u64, epoch: u64) -> Self {
        // smallest even bit width covering n, at least 2
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let bits = bits + (bits & 1);
        let base = splitmix64(seed ^ splitmix64(epoch.wrapping_add(0x5151_5151)));
        let keys = [
            splitmix64(base ^ 1),
            splitmix64(base ^ 2),
            splitmix64(base ^ 3),
            splitmix64(base ^ 4),
        ];
        Permutation {
            n,
            half_bits: bits / 2,
            keys,
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for key in self.keys {
            let f = splitmix64(right ^ key) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }

    /// The image of `i` (< n).
    pub fn apply(&self, i: u64) -> u64 {
        debug_assert!(i < self.n);
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x); // cycle walking stays inside 0..n
        }
        x
    }
}

/// Where the loader stands: `position` counts samples handed out since the start of
/// training over all ranks (so it is independent of the world size). A single stream reports
/// it as epoch and next sample of its order; a mixture reports `epoch` 0, `next_sample` =
/// the position, and the samples drawn from each source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub epoch: u64,
    pub next_sample: u64,
    /// Mixtures only: samples drawn from each source over all ranks, in the sources' order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceState>,
}

/// The sample order over a stream of `num_tokens` tokens.
#[derive(Debug, Clone)]
pub struct SampleOrder {
    seq_len: u64,
    num_samples: u64,
    seed: u64,
}

impl SampleOrder {
    /// `num_tokens` tokens cut into samples of `seq_len` + 1 (the targets overlap the next
    /// sample's first input by one token, so no token is dropped between samples).
    pub fn new(num_tokens: u64, seq_len: u64, seed: u64) -> Result<Self, DataError> {
        if seq_len == 0 {
            return Err(DataError::Config("data.seq_len must be positive".into()));
        }
        if num_tokens < seq_len + 1 {
            return Err(DataError::Config(format!(
                "the data holds {num_tokens} tokens, fewer than one sample of seq_len + 1 = {}; \
                 HINT: lower data.seq_len or add data",
                seq_len + 1
            )));
        }
        let num_samples = (num_tokens - 1) / seq_len;
        Ok(SampleOrder {
            seq_len,
            num_samples,
            seed,
        })
    }

    pub fn num_samples(&self) -> u64 {
        self.num_samples
    }

    pub fn seq_len(&self) -> u64 {
        self.seq_len
    }

    /// Tokens at the end of the stream that no sample covers as an input (fewer than seq_len).
    pub fn leftover_tokens(&self, num_tokens: u64) -> u64 {
        num_tokens - 1 - self.num_samples * self.seq_len
    }

    /// The sample index at global position `p` (epoch `p / num_samples`).
    pub fn sample_at(&self, position: u64) -> u64 {
        let epoch = position / self.num_samples;
        Permutation::new(self.num_samples, self.seed, epoch).apply(position % self.num_samples)
    }

    pub fn state_at(&self, position: u64) -> LoaderState {
        LoaderState {
            epoch: position / self.num_samples,
            next_sample: position % self.num_samples,
            sources: Vec::new(),
        }
    }

    pub fn position_of(&self, state: LoaderState) -> Result<u64, DataError> {
        if state.next_sample >= self.num_samples {
            return Err(DataError::Config(format!(
                "loader state points at sample {} of an epoch of {}: the data changed since the \
                 checkpoint; HINT: resume with the same data and seq_len",
                state.next_sample, self.num_samples
            )));
        }
        Ok(state.epoch * self.num_samples + state.next_sample)
    }
}

/// Something that holds one token stream and can copy a range of it.
pub trait TokenSource: Send + Sync {
    fn num_tokens(&self) -> u64;
    /// Copies tokens `[start, start + out.len())` into `out`.
    fn read(&self, start: u64, out: &mut [u32]);
}

impl TokenSource for Vec<u32> {
    fn num_tokens(&self) -> u64 {
        self.len() as u64
    }
    fn read(&self, start: u64, out: &mut [u32]) {
        let s = start as usize;
        out.copy_from_slice(&self[s..s + out.len()]);
    }
}

impl<T: TokenSource + ?Sized> TokenSource for std::sync::Arc<T> {
    fn num_tokens(&self) -> u64 {
        (**self).num_tokens()
    }
    fn read(&self, start: u64, out: &mut [u32]) {
        (**self).read(start, out)
    }
}

/// A contiguous range of another token stream (e.g. the training or held-out part).
pub struct TokenRange<S: TokenSource> {
    source: S,
    start: u64,
    len: u64,
}

impl<S: TokenSource> TokenRange<S> {
    pub fn new(source: S, start: u64, len: u64) -> Self {
        assert!(start + len <= source.num_tokens(), "range outside the stream");
        TokenRange { source, start, len }
    }
}

impl<S: TokenSource> TokenSource for TokenRange<S> {
    fn num_tokens(&self) -> u64 {
        self.len
    }
    fn read(&self, start: u64, out: &mut [u32]) {
        self.source.read(self.start + start, out)
    }
}

/// One side of a hold-out spread over a whole stream: the stream is cut into blocks of `block`
/// tokens, every `period`-th block (the last of each group of `period`) is held out, and the
/// rest, with the tokens after the last whole block, is the training side. Each side reads as
/// one stream of its blocks in stream order; a sample that crosses from one block into the
/// next joins two parts of the corpus that are not adjacent, as a sample crossing a document
/// boundary does. Unlike a hold-out of the stream's end, the held-out text comes from the whole
/// corpus (every file, every shard), so validation sees the same mixture as training.
pub struct Interleaved<S: TokenSource> {
    source: S,
    block: u64,
    period: u64,
    held: bool,
    len: u64,
}

impl<S: TokenSource> Interleaved<S> {
    /// The training side (`held` false) or the held-out side (`held` true) of `source`.
    pub fn new(source: S, block: u64, period: u64, held: bool) -> Self {
        assert!(block > 0 && period >= 2, "block {block} and period {period}");
        let n = source.num_tokens();
        let held_blocks = n / block / period;
        let len = if held {
            held_blocks * block
        } else {
            n - held_blocks * block
        };
        Interleaved {
            source,
            block,
            period,
            held,
            len,
        }
    }

    /// Where logical token `t` of this side lies in the source, and how many tokens from there
    /// on are contiguous on this side.
    fn physical(&self, t: u64) -> (u64, u64) {
        let group = self.block * self.period;
        let groups = self.source.num_tokens() / group;
        let kept = groups * (self.period - 1) * self.block;
        if !self.held && t >= kept {
            // the training side's tail: everything after the last whole group, in one run
            return (groups * group + (t - kept), self.len - t);
        }
        let (b, within) = (t / self.block, t % self.block);
        let j = if self.held {
            b * self.period + self.period - 1
        } else {
            (b / (self.period - 1)) * self.period + b % (self.period - 1)
        };
        (j * self.block + within, self.block - within)
    }
}

impl<S: TokenSource> TokenSource for Interleaved<S> {
    fn num_tokens(&self) -> u64 {
        self.len
    }
    fn read(&self, start: u64, out: &mut [u32]) {
        assert!(start + out.len() as u64 <= self.len, "read outside the stream");
        let mut done = 0usize;
        while done < out.len() {
            let (p, run) = self.physical(start + done as u64);
            let take = (run as usize).min(out.len() - done);
            self.source.read(p, &mut out[done..done + take]);
            done += take;
        }
    }
}

/// One rank's part of a global batch: `samples` rows of `seq_len + 1` tokens, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub samples: usize,
    pub seq_len: usize,
    /// Sample indices of the rows within their sources, for tests and diagnostics.
    pub sample_ids: Vec<u64>,
    /// The source of each row (its index in the mixture; 0 for a single stream).
    pub sources: Vec<u16>,
}

/// Hands each rank its slice of consecutive global batches, from one token stream or from a
/// weighted [`Mixture`] of several.
pub struct Loader<S: TokenSource> {
    sources: Vec<S>,
    orders: Vec<SampleOrder>,
    mixture: Option<Mixture>,
    seed: u64,
    seq_len: u64,
    global_batch: u64,
    rank: u64,
    world: u64,
    position: u64,
    /// Samples drawn from each source before `position`, over all ranks.
    drawn: Vec<u64>,
}

impl<S: TokenSource> Loader<S> {
    /// The loader of one stream.
    pub fn new(
        source: S,
        seq_len: u64,
        global_batch: u64,
        seed: u64,
        rank: u64,
        world: u64,
    ) -> Result<Self, DataError> {
        check_world(global_batch, rank, world)?;
        let order = SampleOrder::new(source.num_tokens(), seq_len, seed)?;
        Ok(Loader {
            sources: vec![source],
            orders: vec![order],
            mixture: None,
            seed,
            seq_len,
            global_batch,
            rank,
            world,
            position: 0,
            drawn: vec![0],
        })
    }

    /// The loader of a mixture: `sources` in the order of `mixture.names`, each with its own
    /// epoch order seeded by the run's seed and its name.
    pub fn mixed(
        sources: Vec<S>,
        mixture: Mixture,
        seq_len: u64,
        global_batch: u64,
        seed: u64,
        rank: u64,
        world: u64,
    ) -> Result<Self, DataError> {
        check_world(global_batch, rank, world)?;
        if sources.len() != mixture.len() {
            return Err(DataError::Config(format!(
                "{} token sources for a mixture of {}",
                sources.len(),
                mixture.len()
            )));
        }
        let mut orders = Vec::with_capacity(sources.len());
        for (s, name) in sources.iter().zip(&mixture.names) {
            let order = SampleOrder::new(s.num_tokens(), seq_len, source_seed(seed, name))
                .map_err(|e| DataError::Config(format!("source {name:?}: {e}")))?;
            orders.push(order);
        }
        let n = sources.len();
        Ok(Loader {
            sources,
            orders,
            mixture: Some(mixture),
            seed,
            seq_len,
            global_batch,
            rank,
            world,
            position: 0,
            drawn: vec![0; n],
        })
    }

    /// The first source's order (the only one of a single stream).
    pub fn order(&self) -> &SampleOrder {
        &self.orders[0]
    }

    pub fn orders(&self) -> &[SampleOrder] {
        &self.orders
    }

    pub fn mixture(&self) -> Option<&Mixture> {
        self.mixture.as_ref()
    }

    pub fn source(&self) -> &S {
        &self.sources[0]
    }

    /// Samples drawn from each source so far, over all ranks.
    pub fn drawn(&self) -> &[u64] {
        &self.drawn
    }

    /// The global batches handed out so far.
    pub fn step(&self) -> u64 {
        self.position / self.global_batch
    }

    /// The first step at or after `from_step` and before `to_step` that would draw a source
    /// past its cap (mixtures with caps only), counted from the current position.
    pub fn first_exhaustion(&self, to_step: u64) -> Option<crate::mixture::Exhaustion> {
        self.mixture
            .as_ref()?
            .first_exhaustion(self.seed, self.global_batch, self.step(), to_step, &self.drawn)
    }

    pub fn state(&self) -> LoaderState {
        match &self.mixture {
            None => self.orders[0].state_at(self.position),
            Some(m) => LoaderState {
                epoch: 0,
                next_sample: self.position,
                sources: m
                    .names
                    .iter()
                    .zip(&self.drawn)
                    .zip(&self.orders)
                    .map(|((name, &drawn), order)| SourceState {
                        name: name.clone(),
                        drawn,
                        tokens: drawn * self.seq_len,
                        samples_per_epoch: order.num_samples(),
                    })
                    .collect(),
            },
        }
    }

    /// Continues from `state`, which may come from a run at another world size (and, for a
    /// mixture, with other weights from here on).
    pub fn restore(&mut self, state: LoaderState) -> Result<(), DataError> {
        let (position, drawn) = match &self.mixture {
            None => {
                if !state.sources.is_empty() {
                    return Err(DataError::Config(
                        "the checkpoint was written by a run of [[data.sources]] and this config has one stream; \
                         HINT: resume with the same sources"
                            .into(),
                    ));
                }
                let p = self.orders[0].position_of(state.clone())?;
                (p, vec![p])
            }
            Some(m) => {
                let saved: Vec<&str> = state.sources.iter().map(|s| s.name.as_str()).collect();
                let names: Vec<&str> = m.names.iter().map(String::as_str).collect();
                if saved != names {
                    return Err(DataError::Config(format!(
                        "the checkpoint's data sources are {saved:?} and this config's are {names:?}; \
                         HINT: resume with the same [[data.sources]] names in the same order (weights may change)"
                    )));
                }
                let drawn: Vec<u64> = state.sources.iter().map(|s| s.drawn).collect();
                if drawn.iter().sum::<u64>() != state.next_sample {
                    return Err(DataError::Config(format!(
                        "the checkpoint's loader state is inconsistent: its sources' draws sum to {} at position {}",
                        drawn.iter().sum::<u64>(),
                        state.next_sample
                    )));
                }
                (state.next_sample, drawn)
            }
        };
        if position % self.global_batch != 0 {
            return Err(DataError::Config(format!(
                "loader state (epoch {}, sample {}) is not at a global-batch boundary of {}; \
                 HINT: resume with the same global batch size",
                state.epoch, state.next_sample, self.global_batch
            )));
        }
        self.position = position;
        self.drawn = drawn;
        Ok(())
    }

    /// This rank's rows of the next global batch.
    pub fn next_batch(&mut self) -> Batch {
        let per_rank = self.global_batch / self.world;
        let first = self.position + self.rank * per_rank;
        let row = self.seq_len as usize + 1;
        let mut tokens = vec![0u32; per_rank as usize * row];
        let mut sample_ids = Vec::with_capacity(per_rank as usize);
        let mut sources = Vec::with_capacity(per_rank as usize);
        let mut rows = tokens.chunks_mut(row);
        for p in self.position..self.position + self.global_batch {
            let i = match &self.mixture {
                None => 0,
                Some(m) => m.source_at(self.seed, p, self.global_batch),
            };
            let k = self.drawn[i];
            self.drawn[i] += 1;
            if (first..first + per_rank).contains(&p) {
                let sample = self.orders[i].sample_at(k);
                let chunk = rows.next().expect("one row per position of this rank");
                self.sources[i].read(sample * self.seq_len, chunk);
                sample_ids.push(sample);
                sources.push(i as u16);
            }
        }
        self.position += self.global_batch;
        Batch {
            tokens,
            samples: per_rank as usize,
            seq_len: row - 1,
            sample_ids,
            sources,
        }
    }
}

fn check_world(global_batch: u64, rank: u64, world: u64) -> Result<(), DataError> {
    if world == 0 || rank >= world {
        return Err(DataError::Config(format!("rank {rank} is outside a world of {world}")));
    }
    if global_batch == 0 || !global_batch.is_multiple_of(world) {
        return Err(DataError::Config(format!(
            "global batch of {global_batch} sequences does not split evenly over {world} ranks"
        )));
    }
    Ok(())
}

/// Produces batches on a background thread, `depth` ahead of the trainer, so the step never
/// waits for data. `state()` is the state after the last batch handed out, not after the
/// prefetched ones, so a checkpoint taken between steps resumes exactly.
pub struct Prefetcher<S: TokenSource + 'static> {
    loader: Option<Loader<S>>,
    worker: Option<std::thread::JoinHandle<Loader<S>>>,
    rx: Option<std::sync::mpsc::Receiver<(Batch, LoaderState)>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    consumed: LoaderState,
    depth: usize,
}

impl<S: TokenSource + 'static> Prefetcher<S> {
    pub fn new(loader: Loader<S>, depth: usize) -> Self {
        let consumed = loader.state();
        let mut p = Prefetcher {
            loader: Some(loader),
            worker: None,
            rx: None,
            stop: Default::default(),
            consumed,
            depth: depth.max(1),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let mut loader = self.loader.take().expect("loader is parked");
        let (tx, rx) = std::sync::mpsc::sync_channel(self.depth);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop = stop.clone();
        self.worker = Some(std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = loader.next_batch();
                if tx.send((batch, loader.state())).is_err() {
                    break;
                }
            }
            loader
        }));
        self.rx = Some(rx);
    }

    fn park(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.rx = None; // a blocked send fails and the worker returns the loader
        if let Some(worker) = self.worker.take() {
            self.loader = Some(worker.join().expect("prefetch thread"));
        }
    }

    /// The next batch of this rank.
    pub fn next_batch(&mut self) -> Batch {
        let (batch, state) = self
            .rx
            .as_ref()
            .expect("running")
            .recv()
            .expect("prefetch thread alive");
        self.consumed = state;
        batch
    }

    /// The state after the last batch returned by `next_batch`.
    pub fn state(&self) -> LoaderState {
        self.consumed.clone()
    }

    /// Continues from `state` (dropping whatever was prefetched).
    pub fn restore(&mut self, state: LoaderState) -> Result<(), DataError> {
        self.park();
        let result = self.loader.as_mut().expect("parked").restore(state.clone());
        if result.is_ok() {
            self.consumed = state;
        }
        self.start();
        result
    }
}

impl<S: TokenSource + 'static> Drop for Prefetcher<S> {
    fn drop(&mut self) {
        self.park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn permutation_is_a_bijection_for_many_sizes() {
        for n in [1u64, 2, 3, 5, 16, 17, 100, 1000, 4097] {
            let p = Permutation::new(n, 7, 0);
            let image: HashSet<u64> = (0..n).map(|i| p.apply(i)).collect();
            assert_eq!(image.len() as u64, n);
            assert!(image.iter().all(|&x| x < n));
        }
    }

    #[test]
    fn order_depends_on_seed_and_epoch() {
        let a: Vec<u64> = (0..50).map(|i| Permutation::new(50, 1, 0).apply(i)).collect();
        let b: Vec<u64> = (0..50).map(|i| Permutation::new(50, 2, 0).apply(i)).collect();
        let c: Vec<u64> = (0..50).map(|i| Permutation::new(50, 1, 1).apply(i)).collect();
        let again: Vec<u64> = (0..50).map(|i| Permutation::new(50, 1, 0).apply(i)).collect();
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_sample_appears_once_per_epoch_across_ranks() {
        let tokens: Vec<u32> = (0..1001).collect();
        let seq = 10u64; // 100 samples
        for world in 1..=4u64 {
            let global = 4 * world;
            let mut seen = Vec::new();
            for rank in 0..world {
                let mut l = Loader::new(tokens.clone(), seq, global, 3, rank, world).unwrap();
                for _ in 0..(100 / global) {
                    let b = l.next_batch();
                    for (row, &s) in b.tokens.chunks(11).zip(&b.sample_ids) {
                        assert_eq!(row[0] as u64, s * seq, "row holds its sample's tokens");
                        assert_eq!(row.len(), 11);
                    }
                    seen.extend(b.sample_ids);
                }
            }
            let full_batches = (100 / global) * global;
            let unique: HashSet<u64> = seen.iter().copied().collect();
            assert_eq!(unique.len() as u64, full_batches, "world {world}");
        }
    }

    #[test]
    fn restore_continues_the_same_global_batches_at_another_world_size() {
        let tokens: Vec<u32> = (0..5000).collect();
        let mut straight = Loader::new(tokens.clone(), 16, 8, 9, 0, 1).unwrap();
        let batches: Vec<Batch> = (0..40).map(|_| straight.next_batch()).collect();
        let mut first = Loader::new(tokens.clone(), 16, 8, 9, 0, 1).unwrap();
        for _ in 0..13 {
            first.next_batch();
        }
        let state = first.state();
        // resume on 2 ranks: their slices concatenated equal the 1-rank batches
        let mut r0 = Loader::new(tokens.clone(), 16, 8, 9, 0, 2).unwrap();
        let mut r1 = Loader::new(tokens, 16, 8, 9, 1, 2).unwrap();
        r0.restore(state.clone()).unwrap();
        r1.restore(state).unwrap();
        for want in &batches[13..] {
            let mut got = r0.next_batch().tokens;
            got.extend(r1.next_batch().tokens);
            assert_eq!(&got, &want.tokens);
        }
    }

    #[test]
    fn prefetcher_state_and_restore_match_an_uninterrupted_loader() {
        let tokens: Vec<u32> = (0..3000).collect();
        let mut plain = Loader::new(tokens.clone(), 8, 6, 4, 0, 1).unwrap();
        let want: Vec<Batch> = (0..30).map(|_| plain.next_batch()).collect();
        let mut p = Prefetcher::new(Loader::new(tokens.clone(), 8, 6, 4, 0, 1).unwrap(), 3);
        for w in &want[..11] {
            assert_eq!(&p.next_batch(), w);
        }
        let state = p.state();
        assert_eq!(
            state.clone(),
            Loader::new(tokens.clone(), 8, 6, 4, 0, 1).unwrap().order().state_at(66)
        );
        // a fresh prefetcher restored mid-run, and the same one rewound, both continue exactly
        let mut q = Prefetcher::new(Loader::new(tokens, 8, 6, 4, 0, 1).unwrap(), 2);
        q.restore(state.clone()).unwrap();
        for w in &want[11..] {
            assert_eq!(&q.next_batch(), w);
        }
        p.restore(state).unwrap();
        assert_eq!(&p.next_batch(), &want[11]);
    }

    #[test]
    fn token_ranges_split_a_stream() {
        let tokens: std::sync::Arc<Vec<u32>> = std::sync::Arc::new((0..100).collect());
        let tail = TokenRange::new(tokens.clone(), 90, 10);
        let mut out = [0u32; 3];
        tail.read(7, &mut out);
        assert_eq!(out, [97, 98, 99]);
        assert_eq!(tail.num_tokens(), 10);
    }

    #[test]
    fn an_interleaved_hold_out_splits_every_token_once_across_the_stream() {
        for (n, block, period) in [
            (1000u64, 10u64, 4u64),
            (1003, 7, 2),
            (999, 50, 5),
            (40, 10, 4),
            (39, 10, 4),
        ] {
            let all: Vec<u32> = (0..n as u32).collect();
            let train = Interleaved::new(all.clone(), block, period, false);
            let held = Interleaved::new(all.clone(), block, period, true);
            assert_eq!(train.num_tokens() + held.num_tokens(), n, "{n} {block} {period}");
            let read_all = |s: &Interleaved<Vec<u32>>| {
                let mut v = vec![0u32; s.num_tokens() as usize];
                s.read(0, &mut v);
                v
            };
            let (t, h) = (read_all(&train), read_all(&held));
            // held out: exactly the last block of every whole group of `period` blocks
            let want: Vec<u32> = (0..n as u32)
                .filter(|&x| {
                    let j = x as u64 / block;
                    j % period == period - 1 && (j + 1) * block <= n - n % (block * period)
                })
                .collect();
            assert_eq!(h, want, "{n} {block} {period}");
            let mut both: Vec<u32> = t.iter().chain(&h).copied().collect();
            both.sort_unstable();
            assert_eq!(both, all, "every token once");
            assert!(t.windows(2).all(|w| w[0] < w[1]), "stream order");
            // reads at every offset and length across block seams equal the whole side's slice
            for start in 0..t.len().min(60) {
                for len in [1usize, 3, 11, 23] {
                    if start + len <= t.len() {
                        let mut out = vec![0u32; len];
                        train.read(start as u64, &mut out);
                        assert_eq!(out, t[start..start + len]);
                    }
                }
            }
            for start in 0..h.len() {
                let len = (h.len() - start).min(13);
                let mut out = vec![0u32; len];
                held.read(start as u64, &mut out);
                assert_eq!(out, h[start..start + len]);
            }
        }
        // the held-out side spans the stream: its blocks come from its first and last tenth
        let held = Interleaved::new((0..10_000u32).collect::<Vec<_>>(), 10, 10, true);
        let mut v = vec![0u32; held.num_tokens() as usize];
        held.read(0, &mut v);
        assert!(
            v[0] < 1000 && *v.last().unwrap() >= 9000,
            "{} .. {}",
            v[0],
            v.last().unwrap()
        );
    }

    /// Three sources whose tokens tell them apart (source i's tokens are i * 1_000_000 + k).
    fn three_sources() -> (Vec<Vec<u32>>, Mixture) {
        let sources = (0..3u32)
            .map(|i| {
                (0..[3000u32, 800, 200][i as usize])
                    .map(|k| i * 1_000_000 + k)
                    .collect()
            })
            .collect();
        let names = vec!["web".to_string(), "books".to_string(), "code".to_string()];
        let mixture = Mixture::new(names, vec![5.0, 3.0, 2.0], vec![(30, vec![1.0, 1.0, 8.0])]).unwrap();
        (sources, mixture)
    }

    fn mixed(rank: u64, world: u64) -> Loader<Vec<u32>> {
        let (sources, mixture) = three_sources();
        Loader::mixed(sources, mixture, 10, 12, 5, rank, world).unwrap()
    }

    #[test]
    fn a_mixture_resumes_exactly_and_at_another_world_size() {
        let mut straight = mixed(0, 1);
        let want: Vec<Batch> = (0..60).map(|_| straight.next_batch()).collect();
        // every row holds the tokens of the sample of the source it names
        for b in &want {
            for ((row, &src), &id) in b.tokens.chunks(11).zip(&b.sources).zip(&b.sample_ids) {
                assert_eq!(row[0], src as u32 * 1_000_000 + id as u32 * 10);
            }
        }
        // two ranks from step 0 to 17, then one rank from their checkpoint (past the phase change)
        let (mut r0, mut r1) = (mixed(0, 2), mixed(1, 2));
        for w in &want[..17] {
            let (a, b) = (r0.next_batch(), r1.next_batch());
            assert_eq!([a.tokens, b.tokens].concat(), w.tokens);
            assert_eq!([a.sources, b.sources].concat(), w.sources);
        }
        assert_eq!(r0.state(), r1.state(), "ranks agree on the per-source counts");
        let state = r0.state();
        assert_eq!(state.sources.iter().map(|s| s.drawn).sum::<u64>(), 17 * 12);
        let json = serde_json::to_string(&state).unwrap();
        let mut one = mixed(0, 1);
        one.restore(serde_json::from_str(&json).unwrap()).unwrap();
        for w in &want[17..] {
            assert_eq!(&one.next_batch(), w);
        }
        // a checkpoint of other sources is refused, naming both lists
        let mut other = Loader::new((0..5000u32).collect::<Vec<_>>(), 10, 12, 5, 0, 1).unwrap();
        assert!(other
            .restore(state.clone())
            .unwrap_err()
            .to_string()
            .contains("[[data.sources]]"));
        let (sources, _) = three_sources();
        let renamed = Mixture::new(vec!["a".into(), "b".into(), "c".into()], vec![1.0; 3], vec![]).unwrap();
        let mut l = Loader::mixed(sources, renamed, 10, 12, 5, 0, 1).unwrap();
        let err = l.restore(state).unwrap_err().to_string();
        assert!(err.contains("\"web\"") && err.contains("\"a\""), "{err}");
    }

    #[test]
    fn a_mixture_draws_each_source_in_proportion_and_repeats_small_ones() {
        // before the phase change at step 30 the weights are 0.5, 0.3, 0.2
        let mut l = mixed(0, 1);
        let mut rows = [0u64; 3];
        for _ in 0..30 {
            for &s in &l.next_batch().sources {
                rows[s as usize] += 1;
            }
        }
        let n = 30.0 * 12.0;
        for (i, w) in [0.5f64, 0.3, 0.2].iter().enumerate() {
            let sd = (n * w * (1.0 - w)).sqrt();
            assert!((rows[i] as f64 - n * w).abs() < 4.0 * sd, "source {i}: {rows:?}");
        }
        // "code" (19 samples an epoch) is drawn far more often than it has samples: each epoch
        // of it visits every sample once
        for _ in 30..80 {
            l.next_batch();
        }
        let code = l.drawn()[2];
        assert!(code > 3 * 19, "{code}");
        let mut ids = Vec::new();
        let mut replay = mixed(0, 1);
        while ids.len() < 38 {
            let b = replay.next_batch();
            ids.extend(
                b.sources
                    .iter()
                    .zip(&b.sample_ids)
                    .filter(|(s, _)| **s == 2)
                    .map(|(_, &id)| id),
            );
        }
        let first: HashSet<u64> = ids[..19].iter().copied().collect();
        let second: HashSet<u64> = ids[19..38].iter().copied().collect();
        assert_eq!(first.len(), 19);
        assert_eq!(second.len(), 19);
        assert_ne!(&ids[..19], &ids[19..38], "each epoch is reshuffled");
    }

    #[test]
    fn too_little_data_is_a_clear_error() {
        let err = SampleOrder::new(10, 16, 0).unwrap_err().to_string();
        assert!(err.contains("seq_len"), "{err}");
    }
}
