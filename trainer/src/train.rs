//! The training loop of `baichuan train`: set-up (ranks, data, model, optimizer), then one
//! readable loop of micro-batches, forward/backward with bucketed gradient reduction on the
//! last micro-batch, clip, update, parameter gather, schedule; diagnostics after it.
//!
//! Follows nanoGPT's `train.py` shape and DESIGN.md's step. One process is one data-parallel
//! rank; a single process is a world of one with the same code path (the `Solo`
//! communicator). Rank 0 prints, writes `config.toml`, `metrics.jsonl` and, at the end, the
//! trained model as a Hugging Face directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baichuan_model::{hf, Baichuan};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::{Kind, Tensor};

use crate::config::{Backend, Precision, RunConfig};
use crate::dist::buckets::GradReducer;
use crate::dist::comm::{Communicator, ReduceOp, Solo};
use crate::dist::nccl::NcclCommunicator;
use crate::dist::store::{StoreClient, StoreServer};
use crate::dist::tcp::TcpComm;
use crate::dist::{even_ranges, DistEnv};
use crate::metrics::{self, MetricsLog, StepRecord};
use crate::optim::{lr_at, AdamWParams, FlatAdamW};
use crate::precision::LossScaler;
use crate::watchdog::Watchdog;
use crate::{checkpoint, dataset, step};

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
}

/// The tokenizer a run uses: `data.tokenizer`, else the one inside `model.init_from`.
fn tokenizer_path(config: &RunConfig) -> PathBuf {
    if let Some(dir) = &config.model.init_from {
        let inside = dir.join(hf::TOKENIZER_FILE);
        if inside.exists() && config.data.tokenizer == crate::config::DataConfig::default().tokenizer {
            return inside;
        }
    }
    config.data.tokenizer.clone()
}

pub fn param_kind(p: Precision) -> Kind {
    match p {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp16 => Kind::Half,
    }
}

/// The communicator, the store server rank 0 runs (kept alive for the run), and the store's
/// address (for the checkpoint writer's own connection).
type Joined = (Box<dyn Communicator>, Option<StoreServer>, Option<String>);

/// Joins the job described by the environment: rank 0 serves the store, every rank
/// connects and the communicator forms (NCCL for CUDA runs, else the TCP ring). A single
/// process gets the `Solo` communicator, unless NCCL is asked for explicitly (then a world of
/// one runs the real NCCL path, through a private store).
fn join_job(env: &DistEnv, backend: Backend, device: tch::Device) -> Result<Joined> {
    let nccl = backend == Backend::Nccl || (backend == Backend::Auto && device.is_cuda() && env.is_distributed());
    if nccl && !device.is_cuda() {
        bail!("dist.backend = \"nccl\" needs train.device on CUDA; HINT: use dist.backend = \"tcp\" on CPU");
    }
    if !env.is_distributed() && !nccl {
        return Ok((Box::new(Solo), None, None));
    }
    if env.token.is_empty() && env.rank == 0 && env.is_distributed() {
        eprintln!(
            "warning: {} is not set: the store and ring accept any peer (baichuan launch sets it)",
            crate::dist::TOKEN_VAR
        );
    }
    let bind = if env.is_distributed() {
        format!("0.0.0.0:{}", env.master_port)
    } else {
        "127.0.0.1:0".into()
    };
    let server = if env.rank == 0 {
        Some(StoreServer::start(&bind, &env.token).context("starting the rendezvous store")?)
    } else {
        None
    };
    let addr = match &server {
        Some(s) if !env.is_distributed() => s.addr.to_string(),
        _ => format!("{}:{}", env.master_addr, env.master_port),
    };
    let store = Arc::new(StoreClient::connect(
        &addr,
        &env.token,
        env.rank,
        env.world,
        env.timeout,
    )?);
    let comm: Box<dyn Communicator> = if nccl {
        Box::new(NcclCommunicator::connect(env, store).context("creating the NCCL communicator")?)
    } else {
        Box::new(TcpComm::connect(env, store).context("forming the TCP ring")?)
    };
    Ok((comm, server, Some(addr)))
}

/// Where a run starts from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Resume {
    /// From the latest complete checkpoint of `checkpoint.dir`, if there is one.
    #[default]
    Latest,
    /// From scratch, ignoring existing checkpoints.
    No,
    /// From this checkpoint directory.
    From(PathBuf),
}

/// Options of a `train` invocation that are not part of the run config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: Resume,
    /// Save a checkpoint and stop after this step (as a preemption would).
    pub stop_after: Option<u64>,
}

static TERMINATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// On SIGTERM (SLURM preemption, `kill`), finish the step, save a checkpoint and exit.
fn catch_sigterm() {
    #[cfg(unix)]
    {
        extern "C" fn on_term(_: i32) {
            TERMINATE.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        extern "C" {
            fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
        }
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { signal(15, on_term) };
    }
}

/// Trains as `config` says and saves the model into `<run_dir>/model`.
pub fn train(config: &RunConfig, opts: &TrainOptions) -> Result<TrainSummary> {
    catch_sigterm();
    let env = DistEnv::from_env(Duration::from_secs(config.dist.timeout_s))?;
    let (rank, world) = (env.rank, env.world);
    let main = rank == 0;
    let resolved = config.validate(world as i64)?;
    let (t, d) = (&config.train, &config.data);
    let mc = &resolved.model;
    let run_dir = &config.job.run_dir;
    let device = match resolved.device {
        tch::Device::Cuda(_) => tch::Device::Cuda(env.local_rank),
        other => other,
    };
    if main {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating run_dir {}", run_dir.display()))?;
        std::fs::write(run_dir.join("config.toml"), config.to_toml())?;
    }
    if device == tch::Device::Cpu && env.local_world > 1 {
        // ranks sharing a machine share its cores (as torchrun's OMP_NUM_THREADS advice)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / env.local_world).max(1) as i32);
    }
    let (comm, _store, store_addr) = join_job(&env, config.dist.backend, device)?;
    let comm = comm.as_ref();

    // ---- data: rank 0 tokenizes into the cache first, the others then read it ----
    let tok_path = tokenizer_path(config);
    if !main {
        comm.barrier()?;
    }
    let mut data = dataset::open(config, &tok_path, mc.vocab_size, rank as u64, world as u64, main)?;
    if main {
        comm.barrier()?;
    }

    // ---- model, optimizer state (sharded from ZeRO stage 1) and gradient reducer ----
    tch::manual_seed(config.job.seed as i64);
    let mut model = match &config.model.init_from {
        Some(dir) => hf::load_pretrained(dir, tch::Device::Cpu)?,
        None => Baichuan::new(mc, tch::Device::Cpu)?,
    };
    let kind = param_kind(t.precision);
    model.to(device, kind);
    model.set_fused_ops(t.fused_ops);
    let rotary_kind = crate::kernels::install_rotary(&mut model);
    let loss_kind = crate::kernels::install_loss(&mut model);
    let swiglu_kind = crate::kernels::install_swiglu(&mut model);
    let params = model.named_parameters();
    let total = params.iter().map(|(_, p)| p.numel()).sum::<usize>();
    let shards = even_ranges(total, world);
    let stage = t.zero_stage;
    let sharded = (stage >= 1).then_some(shards.as_slice());
    let mut opt = FlatAdamW::new(&params, if stage >= 1 { shards[rank] } else { (0, total) }, comm)?;
    let update_kind = opt.choose_update(t.fused_optimizer);
    let bucket_elems = config.dist.bucket_elems(world);
    let mut reducer = GradReducer::new(
        &opt.slots,
        model.layers.len(),
        bucket_elems,
        stage,
        shards.clone(),
        rank,
        device,
    );

    let fp16 = t.precision == Precision::Fp16;
    let mut scaler = if fp16 {
        LossScaler::new(t.loss_scale, t.loss_scale_window)
    } else {
        LossScaler::disabled()
    };

    // ---- resume: weights, optimizer shard (resharded to this world), data position, scaler ----
    let ckpt_dir = config
        .checkpoint
        .dir
        .clone()
        .unwrap_or_else(|| run_dir.join("checkpoints"));
    if main {
        std::fs::create_dir_all(&ckpt_dir).with_context(|| format!("creating {}", ckpt_dir.display()))?;
        checkpoint::clean_temporaries(&ckpt_dir);
    }
    comm.barrier()?;
    let found = match &opts.resume {
        Resume::No => None,
        Resume::Latest => checkpoint::find_resumable(&ckpt_dir)?,
        Resume::From(path) => Some((path.clone(), checkpoint::verify(path)?)),
    };
    let (mut start, mut bad_total) = (0u64, 0u64);
    if let Some((path, m)) = &found {
        let slots = checkpoint::slot_entries(&opt.slots);
        if m.slots != slots {
            bail!("{}: the checkpoint's parameters differ from this model's; HINT: resume with the model config it was saved with, or --no-resume", path.display());
        }
        let weights: std::collections::HashMap<String, Tensor> = hf::read_safetensors(&path.join(hf::WEIGHTS_FILE))?
            .into_iter()
            .collect();
        let (master, exp_avg, exp_avg_sq) = checkpoint::load_range(path, m, opt.shard.0, opt.shard.1)?;
        tch::no_grad(|| -> Result<()> {
            for sl in &slots {
                let w = weights
                    .get(&sl.name)
                    .with_context(|| format!("{}: model.safetensors lacks {}", path.display(), sl.name))?;
                opt.params
                    .narrow(0, sl.offset as i64, sl.numel as i64)
                    .copy_(&w.view([-1]));
            }
            opt.master.copy_(&master);
            opt.exp_avg.copy_(&exp_avg);
            opt.exp_avg_sq.copy_(&exp_avg_sq);
            Ok(())
        })?;
        opt.step = m.optimizer_step;
        if let Some(saved) = m.train_tokens.filter(|&n| n != data.train_tokens) {
            if main {
                eprintln!(
                    "warning: the training stream holds {} tokens now and held {saved} when {} was saved: \
                     data.path, data.seq_len, data.valid_fraction or data.valid_split changed, so the samples \
                     from here on follow a different order than the saved run's would have",
                    data.train_tokens,
                    path.display()
                );
            }
        }
        data.train.restore(m.loader)?;
        scaler = m.scaler.clone();
        start = m.step;
        bad_total = m.skipped_bad_steps;
        if main {
            println!(
                "resumed from {} (step {}, saved by {} rank(s) at ZeRO stage {}; now {world} at stage {stage})",
                path.display(),
                m.step,
                m.world_size,
                m.zero_stage
            );
        }
    }
    if start >= t.steps && main {
        println!(
            "the run already reached train.steps = {} (checkpoint at step {start}); nothing to train. HINT: raise \
             train.steps, pass --no-resume, or use another job.run_dir",
            t.steps
        );
    }
    let save_ctx = checkpoint::SaveContext {
        dir: ckpt_dir.clone(),
        store: match &store_addr {
            // the writer thread talks to the store on a connection of its own
            Some(addr) if world > 1 => Some(Arc::new(StoreClient::connect(
                addr,
                &env.token,
                rank,
                world,
                env.timeout,
            )?)),
            _ => None,
        },
        model: mc.clone(),
        tokenizer: main.then(|| tok_path.clone()),
        keep_last: config.checkpoint.keep_last,
    };
    let mut saver = checkpoint::AsyncSaver::default();
    let mut last_save = Instant::now();

    let flops_per_token = mc.flops_per_token(d.seq_len);
    let (peak, peak_src) = metrics::peak_flops(device, kind);
    if main {
        println!(
            "model: {} parameters ({} layers, hidden {}, heads {}, ffn {}, vocab {}), {:?} on {:?}",
            mc.num_parameters(),
            mc.num_hidden_layers,
            mc.hidden_size,
            mc.num_attention_heads,
            mc.intermediate_size,
            mc.vocab_size,
            t.precision,
            device
        );
        println!(
            "train: {} steps x {} sequences ({} ranks x {} micro x {} accumulation) x {} tokens; {:.3e} FLOPs/token; \
             peak {:.3e} FLOP/s per device ({peak_src})",
            t.steps,
            t.global_batch_size,
            world,
            t.micro_batch_size,
            resolved.grad_accum,
            d.seq_len,
            flops_per_token,
            peak
        );
        println!(
            "dist: {} backend, ZeRO stage {stage}, {} gradient buckets of ~{:.1} MB; attention: scaled_dot_product_attention, {} kernel",
            comm.name(),
            reducer.num_buckets(),
            bucket_elems as f64 * 4.0 / 1e6,
            baichuan_model::baichuan::attention_backend(mc, t.micro_batch_size, d.seq_len, kind, device)
        );
        println!("optimizer: AdamW, {update_kind}; {rotary_kind}; {loss_kind}; {swiglu_kind}");
        if let Some(warning) = metrics::slow_precision_warning(device, kind) {
            eprintln!("{warning}");
        }
    }

    let mut log = if main {
        Some(MetricsLog::open(run_dir, found.as_ref().map(|(_, m)| m.step))?)
    } else {
        None
    };
    let bar = ProgressBar::new(t.steps).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("valid template"),
    );
    if !main {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let tokens_per_step = (t.global_batch_size * d.seq_len) as u64;
    let mut losses = Vec::with_capacity(t.steps as usize);
    let row = d.seq_len + 1;
    let accum = resolved.grad_accum;
    let fp32_accum = t.grad_accum_dtype == crate::config::GradAccumDtype::Fp32;
    let recompute = step::recompute_plan(model.layers.len(), t.activation_checkpointing, t.checkpoint_every);
    let mut recent: std::collections::VecDeque<f64> = std::collections::VecDeque::new();
    let mut bad_in_a_row = 0u64;
    bar.set_position(start);

    let watchdog = config
        .dist
        .watchdog(comm.name())
        .map(|limit| Watchdog::start(limit, rank, crate::watchdog::exit_on_fire()));
    let beat = |step: u64, phase: &'static str| {
        if let Some(w) = &watchdog {
            w.beat(step, phase)
        }
    };

    // ---- the loop ----
    for s in start..t.steps {
        let t0 = Instant::now();
        let lr = lr_at(s, t.steps, t.warmup_steps, t.lr, t.min_lr);
        let batch = data.train.next_batch();
        let ids: Vec<i64> = batch.tokens.iter().map(|&t| i64::from(t)).collect();
        let all = Tensor::from_slice(&ids).view([batch.samples as i64, row]); // (B_rank, T+1)
        let mut loss = 0.0;
        let mut last_start = Instant::now();
        reducer.issued.clear();
        for micro in 0..accum {
            last_start = Instant::now();
            let x = all
                .narrow(0, micro * t.micro_batch_size, t.micro_batch_size)
                .to_device(device);
            // each finished unit's gradients go to the reducer: summed in fp32, and on the last
            // micro-batch handed to the bucket collectives
            let mut to = step::MicroBatchHandOff::new(&mut reducer, &model, comm, micro, accum, fp32_accum);
            let active = to.active();
            let mut hand_off = |unit, fresh: &[Tensor]| to.unit(unit, fresh);
            let hook: Option<step::HandOff> = if active { Some(&mut hand_off) } else { None };
            let grad_scale = scaler.scale / accum as f64; // fp16: the loss scale
            loss +=
                step::forward_backward(&model, &x, grad_scale, t.loss_chunk_tokens, &recompute, hook) / accum as f64;
        }
        let backward_end = Instant::now();
        reducer.finish()?; // gradients averaged over ranks (this rank's shard of them)
        let loss = comm.all_reduce_scalar(loss, ReduceOp::Avg)?;
        let grad = reducer.grad_shard();
        let used_scale = scaler.scale;
        let mut apply = !fp16 || scaler.update(all_finite(&grad, comm)?); // fp16: skip inf/NaN steps
        let mut grad_norm = f64::NAN;
        if apply {
            if used_scale != 1.0 {
                // fp16: unscaled first, so the norm of large scaled gradients cannot overflow
                let _ = grad.shallow_clone().f_mul_scalar_(1.0 / used_scale);
            }
            grad_norm = opt.grad_norm(&grad, comm, stage >= 1)?;
            // a bad step (NaN/inf loss or norm, or a loss spike) is skipped, never applied
            let spike = is_spike(&recent, loss, t.spike_zscore);
            if !loss.is_finite() || !grad_norm.is_finite() || spike {
                apply = false;
                bad_total += 1;
                bad_in_a_row += 1;
                eprintln!(
                    "step {}: skipped a bad step (loss {loss}, grad norm {grad_norm}{})",
                    s + 1,
                    if spike { ", a loss spike" } else { "" }
                );
                if bad_in_a_row >= t.max_bad_steps {
                    bail!(
                        "{bad_in_a_row} bad steps in a row (NaN/inf loss or gradient norm, or loss spikes) at step {}; \
                         stopping instead of training on garbage. HINT: lower train.lr, check the data, or resume from \
                         an earlier checkpoint",
                        s + 1
                    );
                }
            } else {
                bad_in_a_row = 0;
                recent.push_back(loss);
                if recent.len() > 100 {
                    recent.pop_front();
                }
            }
        }
        if apply {
            let h = AdamWParams {
                lr,
                beta1: t.betas[0],
                beta2: t.betas[1],
                eps: t.eps,
                weight_decay: t.weight_decay,
                grad_scale: FlatAdamW::clip_coef(grad_norm, t.grad_clip),
            };
            opt.update(&grad, h).context("the AdamW update")?;
            opt.write_back(comm, sharded)?; // all-gather the updated shards
        }

        // ---- diagnostics ----
        let dt = t0.elapsed().as_secs_f64();
        let tps = tokens_per_step as f64 / dt;
        let last = s + 1 == t.steps;
        let valid_loss =
            if !data.valid.is_empty() && config.eval.interval > 0 && ((s + 1) % config.eval.interval == 0 || last) {
                beat(s + 1, "validation");
                let local = validate(&model, &data.valid, t.micro_batch_size, device, t.loss_chunk_tokens);
                Some(comm.all_reduce_scalar(local, ReduceOp::Avg)?)
            } else {
                None
            };
        losses.push(loss);
        if let Some(log) = log.as_mut() {
            let record = StepRecord {
                step: s + 1,
                tokens: (s + 1) * tokens_per_step,
                loss,
                lr,
                grad_norm,
                tokens_per_s: tps,
                mfu: flops_per_token * tps / world as f64 / peak,
                step_time_s: dt,
                peak_memory_mb: metrics::peak_memory_mb(device),
                comm_wait_s: reducer.wait.as_secs_f64(),
                bucket_issue_ms: reducer
                    .issued
                    .iter()
                    .map(|t| (*t - last_start).as_secs_f64() * 1e3)
                    .collect(),
                backward_end_ms: (backward_end - last_start).as_secs_f64() * 1e3,
                loss_scale: scaler.scale,
                skipped_steps: scaler.skipped + bad_total,
                valid_loss,
                valid_ppl: valid_loss.map(f64::exp),
            };
            log.write(&record)?;
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
            if (s + 1) % t.log_interval == 0 || s == 0 || last || valid_loss.is_some() {
                let valid = valid_loss.map_or(String::new(), |v| format!(" | valid {v:.4} (ppl {:.1})", v.exp()));
                bar.suspend(|| {
                println!(
                    "step {:>6} | loss {:.4}{valid} | lr {:.3e} | grad norm {:.3} | {:.0} tok/s | MFU {:.1}% | {:.0} ms",
                    s + 1,
                    loss,
                    lr,
                    grad_norm,
                    tps,
                    100.0 * record.mfu,
                    1000.0 * dt
                )
            });
            }
        }
        // ---- checkpoint: by steps, by time, at the end, on SIGTERM or --stop-after ----
        let term = comm.all_reduce_scalar(
            if TERMINATE.load(std::sync::atomic::Ordering::SeqCst) {
                1.0
            } else {
                0.0
            },
            ReduceOp::Sum,
        )? > 0.0;
        let by_time = config.checkpoint.interval_minutes > 0.0
            && last_save.elapsed().as_secs_f64() >= 60.0 * config.checkpoint.interval_minutes;
        let by_time = comm.all_reduce_scalar(if by_time { 1.0 } else { 0.0 }, ReduceOp::Sum)? > 0.0;
        let stop_here = opts.stop_after == Some(s + 1);
        let every = config.checkpoint.interval_steps;
        if term || by_time || stop_here || s + 1 == t.steps || (every > 0 && (s + 1) % every == 0) {
            beat(s + 1, "a checkpoint's copy to host memory");
            let copy_start = Instant::now();
            let snap = snapshot(
                &opt,
                &data.train.state(),
                data.train_tokens,
                &scaler,
                bad_total,
                config,
                s + 1,
                (s + 1) * tokens_per_step,
                rank,
                world,
                main,
            )?;
            let ctx = save_ctx.clone();
            let copied = copy_start.elapsed();
            let write = move || {
                let started = Instant::now();
                let dir = ctx.write(snap)?;
                if main {
                    println!(
                        "checkpoint: saved {} (the loop waited {:.0} ms for the copy to host memory; writing took {:.0} ms)",
                        dir.display(),
                        copied.as_secs_f64() * 1e3,
                        started.elapsed().as_secs_f64() * 1e3
                    );
                }
                Ok(dir)
            };
            if let Some(w) = &watchdog {
                w.disarm(); // writing files has no time bound: a slow filesystem is not a hang
            }
            if config.checkpoint.async_save && !term && !stop_here && s + 1 != t.steps {
                saver.start(write)?; // waits for the previous save, if still writing
            } else {
                saver.wait()?;
                write()?;
            }
            last_save = Instant::now();
        }
        beat(s + 1, "the next step");
        if term || stop_here {
            if let Some(w) = &watchdog {
                w.disarm();
            }
            if main {
                println!(
                    "stopping after step {} ({}); resume with the same command",
                    s + 1,
                    if term { "SIGTERM" } else { "--stop-after" }
                );
            }
            saver.wait()?;
            comm.barrier()?;
            return Ok(TrainSummary {
                main,
                first_step: start + 1,
                losses,
                model_dir: run_dir.join("model"),
                tokens: (s + 1) * tokens_per_step,
            });
        }
    }
    bar.finish_and_clear();
    drop(watchdog); // the final saves have no time bound
    saver.wait()?;

    let master = opt.full_master(comm, sharded)?;
    let model_dir = run_dir.join("model");
    if main {
        let slots = checkpoint::slot_entries(&opt.slots);
        checkpoint::write_model_dir(
            &model_dir,
            &slots,
            &master.to_device(tch::Device::Cpu),
            mc,
            Some(&tok_path),
        )?;
        println!("saved the trained model to {}", model_dir.display());
    }
    comm.barrier()?;
    Ok(TrainSummary {
        main,
        first_step: start + 1,
        losses,
        model_dir,
        tokens: t.steps * tokens_per_step,
    })
}

/// Whether `loss` is more than `z` standard deviations above the mean of `recent` (0: never).
fn is_spike(recent: &std::collections::VecDeque<f64>, loss: f64, z: f64) -> bool {
    if z <= 0.0 || recent.len() < 20 {
        return false;
    }
    let n = recent.len() as f64;
    let mean = recent.iter().sum::<f64>() / n;
    let sd = (recent.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    sd > 0.0 && (loss - mean) / sd > z
}

/// Copies this rank's checkpoint state to host memory (the only part of a save the loop waits for).
#[allow(clippy::too_many_arguments)]
fn snapshot(
    opt: &FlatAdamW,
    loader: &baichuan_data::LoaderState,
    train_tokens: u64,
    scaler: &LossScaler,
    bad_total: u64,
    config: &RunConfig,
    step: u64,
    tokens: u64,
    rank: usize,
    world: usize,
    main: bool,
) -> Result<checkpoint::Snapshot> {
    let stage = config.train.zero_stage;
    // below stage 1 every rank holds the same state: rank 0 writes it as one shard
    let writers = if stage >= 1 { world } else { 1 };
    let total = opt.numel() as usize;
    let ranges = if stage >= 1 {
        even_ranges(total, world)
    } else {
        vec![(0, total)]
    };
    let mine = if rank < writers { opt.shard } else { (0, 0) };
    let host = |t: &Tensor| t.to_device(tch::Device::Cpu).copy();
    let manifest = checkpoint::Manifest {
        format_version: checkpoint::FORMAT_VERSION,
        step,
        tokens,
        world_size: world,
        zero_stage: stage,
        precision: format!("{:?}", config.train.precision).to_lowercase(),
        seed: config.job.seed,
        optimizer_step: opt.step,
        loader: *loader,
        scaler: scaler.clone(),
        skipped_bad_steps: bad_total,
        train_tokens: Some(train_tokens),
        slots: checkpoint::slot_entries(&opt.slots),
        shards: ranges
            .iter()
            .enumerate()
            .map(|(r, &(start, len))| checkpoint::ShardEntry {
                file: format!("optim/shard-{r:05}-of-{writers:05}.safetensors"),
                start,
                len,
            })
            .collect(),
        files: Default::default(),
        config: config.to_toml(),
    };
    Ok(checkpoint::Snapshot {
        step,
        tokens,
        rank,
        world: writers,
        range: mine,
        master: host(&opt.master),
        exp_avg: host(&opt.exp_avg),
        exp_avg_sq: host(&opt.exp_avg_sq),
        params: main.then(|| host(&opt.params)),
        manifest,
    })
}

/// Whether every rank's gradient shard is free of inf and NaN.
fn all_finite(grad: &Tensor, comm: &dyn Communicator) -> Result<bool> {
    let local_bad = if grad.isfinite().all().int64_value(&[]) == 1 {
        0.0
    } else {
        1.0
    };
    Ok(comm.all_reduce_scalar(local_bad, ReduceOp::Sum)? == 0.0)
}

/// Mean token loss over this rank's rows of the fixed validation batches.
fn validate(model: &Baichuan, batches: &[baichuan_data::Batch], micro: i64, device: tch::Device, chunk: i64) -> f64 {
    let mut total = 0.0;
    let mut n = 0;
    for b in batches {
        let ids: Vec<i64> = b.tokens.iter().map(|&t| i64::from(t)).collect();
        let all = Tensor::from_slice(&ids).view([b.samples as i64, b.seq_len as i64 + 1]); // (B, T+1)
        let mut start = 0;
        while start < b.samples as i64 {
            let rows = micro.min(b.samples as i64 - start);
            total += step::eval_loss(model, &all.narrow(0, start, rows).to_device(device), chunk) * rows as f64;
            n += rows;
            start += rows;
        }
    }
    total / n as f64
}
