//! The trainer: [`Trainer`] holds what one data-parallel rank trains with (the model on its
//! device with its kernels, the flat AdamW, the bucketed gradient reducer, the loss scaler and
//! the bad-step guard) and runs one optimizer step; [`train`] is the loop of `baichuan train`
//! around it. `bench` and `bench --breakdown` build their models the same way
//! ([`Trainer::new`], [`place_model`]).
//!
//! The loop follows nanoGPT's `train.py`: one process is one rank (a single process is a world
//! of one with the same code path, the `Solo` communicator); each step runs its micro-batches
//! through the layer-wise schedule of `step.rs`, reduces gradients, clips, updates and gathers
//! the parameters; rank 0 logs, and checkpoints are written as `checkpoint.*` says. See
//! docs/ARCHITECTURE.md for the schedule and the distribution contract.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use baichuan_data::Batch;
use baichuan_model::{hf, Baichuan, ModelConfig};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::save::RunState;
use crate::checkpoint::{self, Checkpointer, Resume, SaveContext, Snapshot};
use crate::config::{GradAccumDtype, OptimizerOffload, Precision, Resolved, RunConfig, TrainConfig};
use crate::dataset::{self, Datasets};
use crate::dist::buckets::GradReducer;
use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::store::StoreClient;
use crate::dist::watchdog::{self, Watchdog};
use crate::dist::{even_ranges, join, DistEnv};
use crate::guard::{all_finite, BadStepGuard, LossScaler, Verdict};
use crate::metrics::{self, MetricsLog, StepRecord};
use crate::optim::{AdamWParams, FlatAdamW};
use crate::step;

/// Which implementation runs each replaceable piece (a kernel, or ATen ops and why).
#[derive(Debug, Clone)]
pub struct Kernels {
    pub optimizer: String,
    pub rotary: String,
    pub loss: String,
    pub swiglu: String,
}

/// Moves `model` to `device` in `kind`, sets its fused element-wise ops, and installs the
/// CUDA kernels that pass their checks (on other devices the ATen ops stay). Returns what
/// runs; the optimizer's entry is filled in by [`Trainer::new`].
pub fn place_model(model: &mut Baichuan, device: Device, kind: Kind, fused_ops: bool) -> Kernels {
    model.to(device, kind);
    model.set_fused_ops(fused_ops);
    Kernels {
        optimizer: String::new(),
        rotary: baichuan_cuda::rotary::install_rotary(model),
        loss: baichuan_cuda::loss::install_loss(model),
        swiglu: baichuan_cuda::swiglu::install_swiglu(model),
    }
}

/// Where one step's time went, measured only when [`Trainer::step`] is asked to time it
/// (the device is then synchronised between phases).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub forward_s: f64,
    pub backward_s: f64,
    pub comm_wait_s: f64,
    pub optimizer_s: f64,
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// Mean token loss over every rank's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping (NaN when the step was skipped before it).
    pub grad_norm: f64,
    pub applied: bool,
    pub times: PhaseTimes,
    /// When the last micro-batch started, and when its backward ended (bucket issue times in
    /// the reducer are relative to the start).
    pub last_micro_start: Instant,
    pub backward_end: Instant,
}

/// One rank's training state.
pub struct Trainer {
    pub model: Baichuan,
    pub opt: FlatAdamW,
    pub reducer: GradReducer,
    pub scaler: LossScaler,
    pub guard: BadStepGuard,
    pub kernels: Kernels,
    pub device: Device,
    pub kind: Kind,
    rank: usize,
    world: usize,
    train: TrainConfig,
    accum: i64,
    recompute: Vec<bool>,
    /// `data.document_masking`: attention within each packed document, with its EOS id.
    masking: Option<step::DocMasking>,
    /// Every rank's optimizer range, when the state is sharded (ZeRO stage 1 and 2).
    sharded: Option<Vec<(usize, usize)>>,
}

impl Trainer {
    /// Places `model` (built on the CPU) on `device`, makes its parameters views of the flat
    /// buffer (equal on every rank), and sets up the optimizer for this rank's range, the
    /// reducer and the loss scaler.
    pub fn new(
        config: &RunConfig,
        resolved: &Resolved,
        mut model: Baichuan,
        device: Device,
        comm: &dyn Communicator,
    ) -> Result<Self> {
        let t = &config.train;
        let (rank, world) = (comm.rank(), comm.world());
        let kind = t.precision.kind();
        let mut kernels = place_model(&mut model, device, kind, t.fused_ops);
        let params = model.named_parameters();
        let total = params.iter().map(|(_, p)| p.numel()).sum::<usize>();
        let shards = even_ranges(total, world);
        let stage = t.zero_stage;
        let mine = if stage >= 1 { shards[rank] } else { (0, total) };
        let offload = t.optimizer_offload == OptimizerOffload::Cpu;
        let mut opt = FlatAdamW::new(&params, mine, comm, offload)?;
        kernels.optimizer = opt.choose_update(t.fused_optimizer);
        let mut reducer = GradReducer::new(
            &opt.slots,
            model.layers.len(),
            config.dist.bucket_elems(world),
            stage,
            shards.clone(),
            rank,
            device,
        );
        if offload {
            reducer.copy_to_host(opt.host_grad_buffer()?);
        }
        let scaler = if t.precision == Precision::Fp16 {
            LossScaler::new(t.loss_scale, t.loss_scale_window)
        } else {
            LossScaler::disabled()
        };
        let recompute = step::recompute_plan(model.layers.len(), t.activation_checkpointing, t.checkpoint_every);
        Ok(Trainer {
            model,
            opt,
            reducer,
            scaler,
            guard: BadStepGuard::new(t.spike_zscore, t.max_bad_steps, 0),
            kernels,
            device,
            kind,
            rank,
            world,
            train: t.clone(),
            accum: resolved.grad_accum,
            recompute,
            masking: config.data.document_masking.then_some(step::DocMasking {
                eos: resolved.model.eos_token_id,
                loss_after_eos: config.data.loss_after_eos,
            }),
            sharded: (stage >= 1).then_some(shards),
        })
    }

    /// Waits for the device's queued work (timing only).
    fn sync(&self) {
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// One optimizer step on this rank's rows `batch` (B_rank, T+1) of global step `step`
    /// (from 1) at learning rate `lr`: every micro-batch forward and backward, each finished
    /// unit's gradients handed to the reducer (summed in fp32 across micro-batches, and on the
    /// last one reduced across ranks in buckets during backward); then, unless the fp16 scaler
    /// or the bad-step guard skips it, clipping, the AdamW update and the parameter gather.
    /// With `timed` the device is synchronised between phases to measure them.
    pub fn step(
        &mut self,
        batch: &Tensor,
        lr: f64,
        step: u64,
        comm: &dyn Communicator,
        timed: bool,
    ) -> Result<StepOutcome> {
        let (micro_rows, accum) = (self.train.micro_batch_size, self.accum);
        let fp32_accum = self.train.grad_accum_dtype == GradAccumDtype::Fp32;
        let mut times = PhaseTimes::default();
        let mut loss = 0.0;
        let mut last_micro_start = Instant::now();
        self.reducer.issued.clear();
        for micro in 0..accum {
            last_micro_start = Instant::now();
            let x = batch.narrow(0, micro * micro_rows, micro_rows).to_device(self.device);
            let fwd = step::forward(&self.model, &x, &self.recompute, self.masking.as_ref());
            if timed {
                self.sync();
            }
            let backward_start = Instant::now();
            // each finished unit's gradients go to the reducer
            let mut to = step::MicroBatchHandOff::new(&mut self.reducer, &self.model, comm, micro, accum, fp32_accum);
            let active = to.active();
            let mut hand_off = |unit, fresh: &[Tensor]| to.unit(unit, fresh);
            let hook: Option<step::HandOff> = if active { Some(&mut hand_off) } else { None };
            let grad_scale = self.scaler.scale / accum as f64; // fp16: the loss scale
            loss += step::backward(&self.model, fwd, grad_scale, self.train.loss_chunk_tokens, hook) / accum as f64;
            if timed {
                self.sync();
                times.forward_s += (backward_start - last_micro_start).as_secs_f64();
                times.backward_s += backward_start.elapsed().as_secs_f64();
            }
        }
        let backward_end = Instant::now();
        self.reducer.finish()?; // gradients averaged over ranks (this rank's shard of them)
        if timed {
            self.sync();
            times.comm_wait_s = backward_end.elapsed().as_secs_f64();
        }
        let optimizer_start = Instant::now();
        let loss = comm.all_reduce_scalar(loss, ReduceOp::Avg)?;
        let grad = self.reducer.grad_shard();
        let used_scale = self.scaler.scale;
        let fp16 = self.train.precision == Precision::Fp16;
        let mut applied = !fp16 || self.scaler.update(all_finite(&grad, comm)?); // fp16: skip inf/NaN
        let mut grad_norm = f64::NAN;
        if applied {
            if used_scale != 1.0 {
                // fp16: unscaled first, so the norm of large scaled gradients cannot overflow
                let _ = grad
                    .shallow_clone()
                    .f_mul_scalar_(1.0 / used_scale)
                    .context("unscaling the fp16 gradients")?;
            }
            grad_norm = self.opt.grad_norm(&grad, comm, self.sharded.is_some())?;
            // a bad step (NaN/inf loss or norm, or a loss spike) is skipped, never applied
            applied = self.guard.check(step, loss, grad_norm).map_err(|e| anyhow!(e))? == Verdict::Apply;
        }
        if applied {
            let t = &self.train;
            let h = AdamWParams {
                lr,
                beta1: t.betas[0],
                beta2: t.betas[1],
                eps: t.eps,
                weight_decay: t.weight_decay,
                grad_scale: FlatAdamW::clip_coef(grad_norm, t.grad_clip),
            };
            match self.reducer.host_grad() {
                // offload: the host copy was taken before the fp16 unscaling above
                Some(host) => {
                    let h = AdamWParams {
                        grad_scale: h.grad_scale / used_scale,
                        ..h
                    };
                    self.opt.update(&host, h).context("the AdamW update on the host")?
                }
                None => self.opt.update(&grad, h).context("the AdamW update")?,
            }
            self.opt.write_back(comm, self.sharded.as_deref())?; // all-gather the updated shards
        }
        if timed {
            self.sync();
            times.optimizer_s = optimizer_start.elapsed().as_secs_f64();
        }
        Ok(StepOutcome {
            loss,
            grad_norm,
            applied,
            times,
            last_micro_start,
            backward_end,
        })
    }

    /// Mean token loss over this rank's rows of the fixed validation batches, averaged over ranks.
    pub fn validate(&self, batches: &[Batch], comm: &dyn Communicator) -> Result<f64> {
        let micro = self.train.micro_batch_size;
        let (mut total, mut n) = (0.0, 0);
        for b in batches {
            let all = batch_tensor(b, self.model.config.vocab_size)?;
            let mut start = 0;
            while start < b.samples as i64 {
                let rows = micro.min(b.samples as i64 - start);
                let x = all.narrow(0, start, rows).to_device(self.device);
                total +=
                    step::eval_loss(&self.model, &x, self.train.loss_chunk_tokens, self.masking.as_ref()) * rows as f64;
                n += rows;
                start += rows;
            }
        }
        Ok(comm.all_reduce_scalar(total / n as f64, ReduceOp::Avg)?)
    }

    /// The whole model's fp32 master weights on the CPU (gathered from every rank when sharded).
    pub fn full_master(&self, comm: &dyn Communicator) -> Result<Tensor> {
        Ok(self
            .opt
            .full_master(comm, self.sharded.as_deref())?
            .to_device(Device::Cpu))
    }

    /// Gathers the fp32 weights; rank 0 writes them to `dir` as a Hugging Face model directory
    /// with the tokenizer.
    pub fn save_model(&self, dir: &Path, model: &ModelConfig, tokenizer: &Path, comm: &dyn Communicator) -> Result<()> {
        let master = self.full_master(comm)?;
        if comm.rank() == 0 {
            let slots = checkpoint::slot_entries(&self.opt.slots);
            checkpoint::write_model_dir(dir, &slots, &master, model, Some(tokenizer))?;
        }
        Ok(())
    }

    /// This rank's checkpoint state after `step`, copied to host memory.
    pub fn snapshot(
        &self,
        config: &RunConfig,
        data: &Datasets,
        step: u64,
        tokens_per_step: u64,
        parent: Option<&checkpoint::Parent>,
    ) -> Snapshot {
        Snapshot::take(
            &self.opt,
            RunState {
                config,
                loader: data.train.state(),
                train_tokens: data.train_tokens,
                scaler: &self.scaler,
                skipped_bad_steps: self.guard.total,
                step,
                tokens: step * tokens_per_step,
                rank: self.rank,
                world: self.world,
                parent: parent.cloned(),
            },
        )
    }
}

/// A batch's tokens as an int64 tensor (B, T+1) on the CPU; an id outside the model's
/// `vocab` (damaged data that was not verified, see `data.verify_shards`) is an error, not a
/// crash inside the embedding.
fn batch_tensor(b: &Batch, vocab: i64) -> Result<Tensor> {
    if let Some(&bad) = b.tokens.iter().find(|&&t| i64::from(t) >= vocab) {
        anyhow::bail!(
            "token id {bad} in the data is outside model.vocab_size = {vocab}: a shard is damaged or was made with \
             another tokenizer; HINT: set data.verify_shards = true to find the file, and re-run `baichuan prepare`"
        );
    }
    let ids: Vec<i64> = b.tokens.iter().map(|&t| i64::from(t)).collect();
    Ok(Tensor::from_slice(&ids).view([b.samples as i64, b.seq_len as i64 + 1]))
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Whether this process is rank 0 (the one that reports).
    pub main: bool,
    /// The first step this process ran (after a resume, not 1).
    pub first_step: u64,
    pub losses: Vec<f64>,
    pub model_dir: PathBuf,
    pub tokens: u64,
    /// Stopped by SIGTERM before `train.steps` (a checkpoint was saved): the job should be
    /// requeued, and `train` exits with [`EXIT_PREEMPTED`].
    pub preempted: bool,
}

/// The exit code of a `train` (and `launch`) stopped by SIGTERM before its last step, with its
/// checkpoint saved: EX_TEMPFAIL of sysexits.h, "try again later", for schedulers to requeue on.
pub const EXIT_PREEMPTED: i32 = 75;

/// Options of a `train` invocation that are not part of the run config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: Resume,
    /// A decay branch (`--decay-from`): the parent checkpoint, recorded in every manifest.
    pub parent: Option<checkpoint::Parent>,
    /// Save a checkpoint and stop after this step (as a preemption would).
    pub stop_after: Option<u64>,
}

/// The tokenizer a run uses: `data.tokenizer`, else the one inside `model.init_from`.
pub(crate) fn tokenizer_path(config: &RunConfig) -> PathBuf {
    if let Some(dir) = &config.model.init_from {
        let inside = dir.join(hf::TOKENIZER_FILE);
        if inside.exists() && config.data.tokenizer == crate::config::DataConfig::default().tokenizer {
            return inside;
        }
    }
    config.data.tokenizer.clone()
}

/// Whether any rank says `flag`.
fn any_rank(flag: bool, comm: &dyn Communicator) -> Result<bool> {
    Ok(comm.all_reduce_scalar(if flag { 1.0 } else { 0.0 }, ReduceOp::Sum)? > 0.0)
}

/// Trains as `config` says and saves the model into `<run_dir>/model`.
pub fn train(config: &RunConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    crate::sigterm::install();
    let env = DistEnv::from_env(Duration::from_secs(config.dist.timeout_s))?;
    let (rank, world, main) = (env.rank, env.world, env.rank == 0);
    let resolved = config.validate(world as i64)?;
    let (t, mc, run_dir) = (&config.train, &resolved.model, &config.job.run_dir);
    let device = match resolved.device {
        Device::Cuda(_) => Device::Cuda(env.local_rank),
        other => other,
    };
    // one run per run_dir: rank 0 holds its lock until it exits
    let _lock = main.then(|| crate::runlock::RunLock::acquire(run_dir)).transpose()?;
    if main {
        std::fs::write(run_dir.join("config.toml"), config.to_toml())?;
        for w in config.warnings() {
            eprintln!("warning: {w}");
        }
    }
    let host_work = device == Device::Cpu || config.train.optimizer_offload == OptimizerOffload::Cpu;
    if host_work && env.local_world > 1 {
        // ranks sharing a machine share its cores (as torchrun's OMP_NUM_THREADS advice); so
        // do offloaded optimizers, whose host update uses libtorch's thread count
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / env.local_world).max(1) as i32);
    }
    let (comm, _store, store_addr) = join::join_job(&env, config.dist.backend, device)?;
    let comm = comm.as_ref();

    // data first: rank 0 tokenizes into the cache, the others then read it
    let tok_path = tokenizer_path(config);
    let mut data = rank_zero_first(comm, main, || {
        dataset::open(config, &tok_path, mc.vocab_size, rank as u64, world as u64, main)
    })?;
    tch::manual_seed(config.job.seed as i64);
    let model = match &config.model.init_from {
        Some(dir) => hf::load_pretrained(dir, Device::Cpu)?,
        None => Baichuan::new(mc, Device::Cpu)?,
    };
    let mut tr = Trainer::new(config, &resolved, model, device, comm)?;
    let ckpt_dir = config
        .checkpoint
        .dir
        .clone()
        .unwrap_or_else(|| run_dir.join("checkpoints"));
    let (resumed_at, resumed_parent) = resume(config, opts, &ckpt_dir, &mut tr, &mut data, comm)?;
    // a branch's checkpoints name its parent, also after the branch resumes its own
    let parent = opts.parent.clone().or(resumed_parent);
    let start = resumed_at.unwrap_or(0);
    // a mixture whose capped source runs out stops the run there, saying so
    let (end, ran_out) = match data.exhaustion(t.steps) {
        Some((step, why)) => (step, Some(why)),
        None => (t.steps, None),
    };
    if let Some(why) = &ran_out {
        if end <= start {
            anyhow::bail!(
                "the run cannot go on from step {start}: {why}; HINT: raise that source's max_epochs or max_tokens, \
                 lower its weight, or lower train.steps"
            );
        }
        if main {
            println!("data: {why}: the run will stop after step {end}");
        }
    }
    let probes = if config.eval.mc.is_empty() {
        Vec::new()
    } else {
        let tok = baichuan_data::Tokenizer::open(&tok_path)?;
        let probes =
            crate::eval::probe::probes(&config.eval.mc, &tok, mc.max_position_embeddings as usize, rank, world)?;
        if main {
            for p in &probes {
                println!(
                    "eval: {} multiple choice, {} questions at each evaluation",
                    p.name, p.questions
                );
            }
        }
        probes
    };
    let mut saver = checkpointer(config, &env, store_addr.as_deref(), ckpt_dir, mc, &tok_path)?;
    let rates = Rates::new(config, &resolved, &tr, world);
    if main {
        print_plan(config, &resolved, &tr, comm, (rates.peak, &rates.peak_source));
    }
    let mut log = main.then(|| MetricsLog::open(run_dir, resumed_at)).transpose()?;
    let bar = progress_bar(t.steps, start, main);
    let mut losses = Vec::with_capacity(t.steps as usize);
    let watchdog = config
        .dist
        .watchdog(comm.name())
        .map(|limit| Watchdog::start(limit, rank, watchdog::exit_on_fire()));
    let beat = |step: u64, phase: &'static str| {
        if let Some(w) = &watchdog {
            w.beat(step, phase)
        }
    };
    let disarm = || {
        if let Some(w) = &watchdog {
            w.disarm(); // writing files has no time bound: a slow filesystem is not a hang
        }
    };

    let schedule = t.lr_schedule();
    for s in start..end {
        let t0 = Instant::now();
        let lr = schedule.at(s);
        let out = tr.step(
            &batch_tensor(&data.train.next_batch(), mc.vocab_size)?,
            lr,
            s + 1,
            comm,
            false,
        )?;
        let dt = t0.elapsed().as_secs_f64();
        let last = s + 1 == end;
        let evaluate = config.eval.interval > 0 && ((s + 1) % config.eval.interval == 0 || last);
        let mut by_source = BTreeMap::new();
        let valid_loss = if !data.valid.is_empty() && evaluate {
            beat(s + 1, "validation");
            let mut sum = 0.0;
            for (name, batches) in &data.valid {
                let l = tr.validate(batches, comm)?;
                if let Some(name) = name {
                    by_source.insert(name.clone(), l);
                }
                sum += l;
            }
            Some(sum / data.valid.len() as f64)
        } else {
            None
        };
        let mut mc_scores = BTreeMap::new();
        if evaluate {
            for p in &probes {
                beat(s + 1, "multiple-choice evaluation");
                mc_scores.insert(p.name.clone(), p.score(&tr.model, comm)?);
            }
        }
        losses.push(out.loss);
        if let Some(log) = log.as_mut() {
            let mut record = rates.record(s + 1, lr, dt, &out, valid_loss, &tr);
            record.sources = source_records(&data, &by_source);
            record.mc = mc_scores;
            log.write(&record)?;
            report_step(
                &bar,
                &record,
                (s + 1) % t.log_interval == 0 || s == 0 || last || valid_loss.is_some() || !record.mc.is_empty(),
            );
        }
        // checkpoint: by steps, by time, at the end, on SIGTERM or --stop-after
        let term = any_rank(crate::sigterm::received(), comm)?;
        let stop_here = opts.stop_after == Some(s + 1);
        if saver.due(s + 1, end, term || stop_here, comm)? {
            beat(s + 1, "a checkpoint's copy to host memory");
            let copy_start = Instant::now();
            let snap = tr.snapshot(config, &data, s + 1, rates.tokens_per_step, parent.as_ref());
            disarm();
            saver.save(snap, copy_start.elapsed(), !(term || stop_here || last))?;
        }
        beat(s + 1, "the next step");
        if term || stop_here {
            disarm();
            if main {
                let why = if term { "SIGTERM" } else { "--stop-after" };
                println!("stopping after step {} ({why}); resume with the same command", s + 1);
            }
            saver.wait()?;
            comm.barrier()?;
            let tokens = (s + 1) * rates.tokens_per_step;
            let mut summary = TrainSummary::new(main, start, losses, run_dir, tokens);
            summary.preempted = term && !last;
            return Ok(summary);
        }
    }
    bar.finish_and_clear();
    drop(watchdog); // the final saves have no time bound
    saver.wait()?;
    let model_dir = run_dir.join("model");
    tr.save_model(&model_dir, mc, &tok_path, comm)?;
    if main {
        if let Some(why) = &ran_out {
            println!("stopped after step {end} of {}: {why}", t.steps);
        }
        println!("saved the trained model to {}", model_dir.display());
    }
    comm.barrier()?;
    Ok(TrainSummary::new(
        main,
        start,
        losses,
        run_dir,
        end * rates.tokens_per_step,
    ))
}

/// Resumes as `opts.resume` says from `ckpt_dir` (created, and cleared of interrupted saves,
/// by rank 0): the weights, this rank's optimizer range (resharded to this world), the data
/// position, the loss scaler and the bad-step count. Returns the step resumed at, if any, and
/// the checkpoint's decay-branch parent.
fn resume(
    config: &RunConfig,
    opts: &TrainOptions,
    ckpt_dir: &Path,
    tr: &mut Trainer,
    data: &mut Datasets,
    comm: &dyn Communicator,
) -> Result<(Option<u64>, Option<checkpoint::Parent>)> {
    let main = comm.rank() == 0;
    if main {
        std::fs::create_dir_all(ckpt_dir).with_context(|| format!("creating {}", ckpt_dir.display()))?;
        checkpoint::clean_temporaries(ckpt_dir);
    }
    comm.barrier()?;
    let point = checkpoint::resume_point(&opts.resume, ckpt_dir, tr.opt.shard, comm)?;
    if main {
        let from = point.as_ref().map(|(p, m)| (p.as_path(), m.step));
        branch_off(ckpt_dir, &config.job.run_dir, from)?;
    }
    comm.barrier()?;
    let Some((path, m)) = point else {
        return Ok((None, None));
    };
    let r = checkpoint::restore(&path, &m, &mut tr.opt, data, main)?;
    (tr.scaler, tr.guard.total) = (r.scaler, r.skipped_bad_steps);
    let steps = config.train.steps;
    if main {
        println!(
            "resumed from {} (step {}, saved by {} rank(s) at ZeRO stage {}; now {} at stage {})",
            path.display(),
            m.step,
            m.world_size,
            m.zero_stage,
            comm.world(),
            config.train.zero_stage
        );
        if r.step >= steps {
            println!(
                "the run already reached train.steps = {steps} (checkpoint at step {}); nothing to train. HINT: \
                 raise train.steps, pass --no-resume, or use another job.run_dir",
                r.step
            );
        }
    }
    Ok((Some(r.step), m.parent.clone()))
}

/// The branch rule, applied by rank 0 once the start point is chosen: checkpoints of later
/// steps than `from` (a fresh start: all of them) belong to the branch the run leaves. They
/// are moved aside, untouched, with a copy of the `metrics.jsonl` that recorded them, and the
/// user is told where.
fn branch_off(ckpt_dir: &Path, run_dir: &Path, from: Option<(&Path, u64)>) -> Result<()> {
    let step = from.map_or(0, |(_, s)| s);
    let Some((folder, steps)) = checkpoint::set_aside_later(ckpt_dir, step, from.map(|(p, _)| p))? else {
        return Ok(());
    };
    let metrics = run_dir.join("metrics.jsonl");
    if metrics.exists() {
        std::fs::copy(&metrics, folder.join("metrics.jsonl"))
            .with_context(|| format!("copying {} into {}", metrics.display(), folder.display()))?;
    }
    let listed: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    println!(
        "checkpoint: this run starts at step {step}, so the {} later checkpoint(s) (step {}) belong to the branch it \
         leaves: moved, untouched, with that branch's metrics.jsonl, to {}",
        steps.len(),
        listed.join(", "),
        folder.display()
    );
    Ok(())
}

/// The run's checkpoint writer; across ranks its thread talks to the store (at `store_addr`)
/// on a connection of its own.
fn checkpointer(
    config: &RunConfig,
    env: &DistEnv,
    store_addr: Option<&str>,
    dir: PathBuf,
    model: &ModelConfig,
    tokenizer: &Path,
) -> Result<Checkpointer> {
    let store = match store_addr {
        Some(addr) if env.world > 1 => Some(Arc::new(StoreClient::connect(
            addr,
            &env.token,
            env.rank,
            env.world,
            env.timeout,
        )?)),
        _ => None,
    };
    let main = env.rank == 0;
    let ctx = SaveContext {
        dir,
        store,
        model: model.clone(),
        tokenizer: main.then(|| tokenizer.to_path_buf()),
        keep_last: config.checkpoint.keep_last,
        keep_steps: config.checkpoint.keep_steps.clone(),
    };
    Ok(Checkpointer::new(ctx, &config.checkpoint, main))
}

/// The per-step constants of the metrics: tokens per step, FLOPs per token, the device's peak.
struct Rates {
    tokens_per_step: u64,
    flops_per_token: f64,
    peak: f64,
    peak_source: String,
    world: usize,
}

impl Rates {
    fn new(config: &RunConfig, resolved: &Resolved, tr: &Trainer, world: usize) -> Self {
        let (peak, peak_source) = metrics::peak_flops(tr.device, tr.kind);
        Rates {
            tokens_per_step: (config.train.global_batch_size * config.data.seq_len) as u64,
            flops_per_token: resolved.model.flops_per_token(config.data.seq_len),
            peak,
            peak_source,
            world,
        }
    }

    /// The metrics line of `step`, which took `dt` seconds.
    fn record(
        &self,
        step: u64,
        lr: f64,
        dt: f64,
        out: &StepOutcome,
        valid_loss: Option<f64>,
        tr: &Trainer,
    ) -> StepRecord {
        let tps = self.tokens_per_step as f64 / dt;
        let since_last = |i: &Instant| (*i - out.last_micro_start).as_secs_f64() * 1e3;
        StepRecord {
            step,
            tokens: step * self.tokens_per_step,
            loss: out.loss,
            lr,
            grad_norm: out.grad_norm,
            tokens_per_s: tps,
            mfu: self.flops_per_token * tps / self.world as f64 / self.peak,
            step_time_s: dt,
            peak_memory_mb: metrics::peak_memory_mb(tr.device),
            comm_wait_s: tr.reducer.wait.as_secs_f64(),
            bucket_issue_ms: tr.reducer.issued.iter().map(since_last).collect(),
            backward_end_ms: since_last(&out.backward_end),
            loss_scale: tr.scaler.scale,
            skipped_steps: tr.scaler.skipped + tr.guard.total,
            valid_loss,
            valid_ppl: valid_loss.map(f64::exp),
            sources: BTreeMap::new(),
            mc: BTreeMap::new(),
        }
    }
}

/// Each source's tokens and epochs after the last batch handed out, with its validation loss.
fn source_records(data: &Datasets, valid: &BTreeMap<String, f64>) -> BTreeMap<String, metrics::SourceRecord> {
    data.train
        .state()
        .sources
        .into_iter()
        .map(|s| {
            let record = metrics::SourceRecord {
                tokens: s.tokens,
                epochs: s.epochs(),
                valid_loss: valid.get(&s.name).copied(),
            };
            (s.name, record)
        })
        .collect()
}

impl TrainSummary {
    fn new(main: bool, start: u64, losses: Vec<f64>, run_dir: &Path, tokens: u64) -> Self {
        TrainSummary {
            main,
            first_step: start + 1,
            losses,
            model_dir: run_dir.join("model"),
            tokens,
            preempted: false,
        }
    }
}

/// Runs `f` on rank 0 first, then on the other ranks (rank 0 fills a cache the others read).
fn rank_zero_first<T>(comm: &dyn Communicator, main: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !main {
        comm.barrier()?;
    }
    let out = f()?;
    if main {
        comm.barrier()?;
    }
    Ok(out)
}

/// Rank 0's description of the run before the first step.
fn print_plan(config: &RunConfig, resolved: &Resolved, tr: &Trainer, comm: &dyn Communicator, peak: (f64, &str)) {
    let (t, d, mc) = (&config.train, &config.data, &resolved.model);
    let world = comm.world();
    println!(
        "model: {} parameters ({} layers, hidden {}, heads {}, ffn {}, vocab {}), {:?} on {:?}",
        mc.num_parameters(),
        mc.num_hidden_layers,
        mc.hidden_size,
        mc.num_attention_heads,
        mc.intermediate_size,
        mc.vocab_size,
        t.precision,
        tr.device
    );
    println!(
        "train: {} steps x {} sequences ({} ranks x {} micro x {} accumulation) x {} tokens; {:.3e} FLOPs/token; \
         peak {:.3e} FLOP/s per device ({})",
        t.steps,
        t.global_batch_size,
        world,
        t.micro_batch_size,
        resolved.grad_accum,
        d.seq_len,
        mc.flops_per_token(d.seq_len),
        peak.0,
        peak.1
    );
    let sched = t.lr_schedule();
    let shape = match t.schedule {
        crate::schedule::Schedule::Cosine => format!("cosine to {:e} at step {}", t.min_lr, t.steps),
        crate::schedule::Schedule::Constant => "constant".into(),
        crate::schedule::Schedule::Wsd => format!(
            "stable to step {}, then a {:?} decay over {} steps to {:e}",
            sched.decay_start(),
            t.decay_shape,
            sched.decay,
            t.min_lr
        ),
    };
    println!("lr: {} warm-up steps to {:e}, {shape}", t.warmup_steps, t.lr);
    let bucket_elems = config.dist.bucket_elems(world);
    let attention = if d.document_masking {
        let form = baichuan_model::DocAttention::preferred(tr.device, tr.kind, mc.head_dim());
        format!(
            "within each document ({form:?}; loss on the token after EOS: {})",
            if d.loss_after_eos { "yes" } else { "no" }
        )
    } else {
        format!(
            "scaled_dot_product_attention, {} kernel",
            baichuan_model::baichuan::attention_backend(mc, t.micro_batch_size, d.seq_len, tr.kind, tr.device)
        )
    };
    println!(
        "dist: {} backend, ZeRO stage {}, {} gradient buckets of ~{:.1} MB; attention: {attention}",
        comm.name(),
        t.zero_stage,
        tr.reducer.num_buckets(),
        bucket_elems as f64 * 4.0 / 1e6,
    );
    let k = &tr.kernels;
    println!(
        "optimizer: AdamW, {}; {}; {}; {}",
        k.optimizer, k.rotary, k.loss, k.swiglu
    );
    if let Some(warning) = metrics::slow_precision_warning(tr.device, tr.kind) {
        eprintln!("{warning}");
    }
}

/// The progress bar of rank 0 (hidden on the other ranks), at `start` of `steps`.
fn progress_bar(steps: u64, start: u64, main: bool) -> ProgressBar {
    let bar = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    if !main {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_position(start);
    bar
}

/// Advances the bar and, when `shown`, prints the step's line above it.
fn report_step(bar: &ProgressBar, r: &StepRecord, shown: bool) {
    bar.set_message(format!("loss {:.4}", r.loss));
    bar.inc(1);
    if shown {
        let mut valid = r
            .valid_loss
            .map_or(String::new(), |v| format!(" | valid {v:.4} (ppl {:.1})", v.exp()));
        for (name, acc) in &r.mc {
            valid.push_str(&format!(" | {name} {:.1}%", 100.0 * acc));
        }
        bar.suspend(|| {
            println!(
                "step {:>6} | loss {:.4}{valid} | lr {:.3e} | grad norm {:.3} | {:.0} tok/s | MFU {:.1}% | {:.0} ms",
                r.step,
                r.loss,
                r.lr,
                r.grad_norm,
                r.tokens_per_s,
                100.0 * r.mfu,
                1000.0 * r.step_time_s
            )
        });
    }
}
