//! The `baichuan` command line: `train`, `launch`, `prepare`, `tokenize`, `init`, `export`,
//! `generate`, `eval`, `plot`, `info`, `bench`.
//! Each subcommand is a thin layer over the library crates; errors carry context naming the
//! file or flag at fault (anyhow), and end with a HINT where a fix is known.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baichuan_data::prepare::{prepare, PrepareOptions};
use baichuan_data::Tokenizer;
use baichuan_model::generate::{generate, Sampling};
use baichuan_model::{hf, Baichuan, Layout};
use baichuan_trainer::config::RunConfig;
use baichuan_trainer::eval::{self, McFormat, McOptions};
use baichuan_trainer::{bench, dataset, info, launch, plot, train};
use clap::{Parser, Subcommand, ValueEnum};
use tch::{Device, Kind};

#[derive(Parser)]
#[command(
    name = "baichuan",
    version,
    about = "Pretrain Baichuan-7B-architecture language models on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Fused W_pack, as Baichuan-7B is published.
    Baichuan,
    /// Separate q/k/v: loads in transformers' LlamaForCausalLM without custom code.
    Llama,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    Fp32,
    Bf16,
    Fp16,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// All-reduce bus bandwidth across message sizes, beside memory-copy and loopback TCP bandwidth.
    Comm {
        /// Backend to measure (this build has tcp).
        #[arg(long, default_value = "tcp")]
        backend: String,
        /// Ranks (threads of this process).
        #[arg(long, default_value_t = 2)]
        nproc: usize,
        /// Largest message in MiB (sizes double from 4 KiB).
        #[arg(long, default_value_t = 64)]
        max_mb: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum McBenchmark {
    /// C-Eval: `<dir>/{dev,val,test}/<subject>_<split>.csv` with an id,question,A,B,C,D,answer header.
    Ceval,
    /// MMLU (Hendrycks): `<dir>/{dev,val,test}/<subject>_<split>.csv`, no header.
    Mmlu,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Few-shot multiple choice (C-Eval or MMLU layout), scored by the A/B/C/D logits.
    Mc {
        #[arg(long)]
        model: PathBuf,
        /// The benchmark directory holding dev/, val/ and test/.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum)]
        format: McBenchmark,
        /// The split to score (default: val for C-Eval, whose test answers are not public; test for MMLU).
        #[arg(long)]
        split: Option<String>,
        #[arg(long, default_value_t = 5)]
        shots: usize,
        /// Choose the shots by a seeded shuffle of dev (default: its first rows, as the reference).
        #[arg(long)]
        seed: Option<u64>,
        /// Only these subjects (comma-separated file keys).
        #[arg(long, value_delimiter = ',')]
        subjects: Vec<String>,
        /// Longest prompt in tokens (default: the model's context); shots are dropped to fit.
        #[arg(long)]
        max_len: Option<usize>,
        /// Padded tokens per forward pass.
        #[arg(long, default_value_t = 16384)]
        batch_tokens: usize,
        /// Start every prompt with the BOS token.
        #[arg(long)]
        bos: bool,
        /// cpu, cuda or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Where to write the JSON report (default: <model>/eval-<format>-<split>-<shots>shot.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Perplexity of a model on text (.txt one document per line, .jsonl) or prepared shards.
    Ppl {
        #[arg(long)]
        model: PathBuf,
        /// Files or directories: text, JSONL, a `baichuan prepare` output, or shard files.
        #[arg(long, required = true, num_args = 1..)]
        data: Vec<PathBuf>,
        /// Tokens of context per window (default: the model's context).
        #[arg(long)]
        seq_len: Option<u64>,
        /// Windows per forward pass.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Score only the first N tokens (text inputs are still tokenized whole first).
        #[arg(long)]
        max_tokens: Option<u64>,
        /// JSONL field holding the document.
        #[arg(long, default_value = "text")]
        text_key: String,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Also write the result as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a TOML run config (resuming from the latest checkpoint, if any).
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Override a config value, e.g. --set train.lr=1e-3 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        /// Resume from this checkpoint directory instead of checkpoint.dir's latest.
        #[arg(long, conflicts_with = "no_resume")]
        resume: Option<PathBuf>,
        /// Start from scratch even if checkpoints exist.
        #[arg(long)]
        no_resume: bool,
        /// Save a checkpoint and stop after this step (as a preemption would).
        #[arg(long)]
        stop_after: Option<u64>,
    },
    /// Start one `train` process per slot of a hostfile (or --nproc local ranks).
    Launch {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        /// DeepSpeed-style hostfile: `<host> slots=<n>` per line.
        #[arg(long)]
        hostfile: Option<PathBuf>,
        /// Local ranks when no hostfile is given (default: the GPUs, or 1).
        #[arg(long)]
        nproc: Option<usize>,
        /// Only these hosts of the hostfile (comma-separated).
        #[arg(long, value_delimiter = ',')]
        include: Vec<String>,
        /// Not these hosts of the hostfile (comma-separated).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<String>,
        /// Address of rank 0's store (default: the first host).
        #[arg(long)]
        master_addr: Option<String>,
        /// Port of rank 0's store; 0 picks a free one (single-host jobs).
        #[arg(long, default_value_t = 29500)]
        master_port: u16,
        /// Overrides launch.remote_shell, e.g. "ssh -p 2222".
        #[arg(long)]
        remote_shell: Option<String>,
        /// Further `train` arguments for every rank, after `--` (e.g. -- --stop-after 100).
        #[arg(last = true)]
        train_extra: Vec<String>,
    },
    /// Benchmark a training step of CONFIG's model on random tokens (or `bench comm`).
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        #[command(subcommand)]
        what: Option<BenchCommand>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        /// Timed steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Time each piece of a block (norms, GEMMs, rotary, attention, SwiGLU, residuals),
        /// the whole block with fused and reference ops, and the head, alone; `--steps` calls each.
        #[arg(long)]
        breakdown: bool,
    },
    /// Write a freshly initialised model directory (a seed checkpoint).
    Init {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, value_enum, default_value = "fp32")]
        dtype: Dtype,
    },
    /// Rewrite a model directory in Baichuan or LLaMA layout, optionally sharded.
    Export {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "baichuan")]
        format: Format,
        #[arg(long, value_enum, default_value = "fp32")]
        dtype: Dtype,
        /// Largest shard in bytes (suffixes KB, MB, GB); one file when omitted.
        #[arg(long)]
        max_shard_size: Option<String>,
    },
    /// Generate text from a model directory, streaming tokens as they come.
    Generate {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 0)]
        top_k: i64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 1.1)]
        repetition_penalty: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Print token ids instead of text.
        #[arg(long)]
        ids: bool,
    },
    /// Evaluate a model directory: `eval mc` (C-Eval/MMLU few-shot) or `eval ppl` (perplexity).
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Plot the metrics of one or more run directories (overlaid) into a PNG.
    Plot {
        /// Run directories (each with its metrics.jsonl).
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        #[arg(long, default_value = "curves.png")]
        out: PathBuf,
        /// Image size in pixels, WIDTHxHEIGHT.
        #[arg(long, default_value = "1600x1000")]
        size: String,
    },
    /// Parameter count, FLOPs per token and the per-GPU memory plan of a config.
    Info {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, default_value_t = 8)]
        world_size: u64,
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: Dtype,
        #[arg(long, default_value_t = 1)]
        zero_stage: u8,
        #[arg(long)]
        activation_checkpointing: bool,
    },
    /// Tokenize UTF-8 text (one document per line) or JSONL into token shards.
    Prepare {
        /// Files or directories (.txt and .jsonl files are taken from directories).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// JSONL field holding the document.
        #[arg(long, default_value = "text")]
        text_key: String,
        /// Tokenizing threads (default: all cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Tokens per shard.
        #[arg(long, default_value_t = 1 << 28)]
        shard_tokens: u64,
        /// MiB of text per work item.
        #[arg(long, default_value_t = 4)]
        chunk_mb: usize,
        /// Redo even if the output is up to date.
        #[arg(long)]
        force: bool,
    },
    /// Encode stdin to ids (or pieces), or decode ids to text.
    Tokenize {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        pieces: bool,
        #[arg(long)]
        decode: bool,
    },
}

fn kind_of(d: Dtype) -> Kind {
    match d {
        Dtype::Fp32 => Kind::Float,
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::Fp16 => Kind::Half,
    }
}

fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_uppercase();
    let (num, mult) = [("GB", 1u64 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)]
        .iter()
        .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim().to_string(), *m)))
        .unwrap_or((t.clone(), 1));
    let value: f64 = num
        .parse()
        .with_context(|| format!("--max-shard-size {text:?}: expected e.g. 5GB"))?;
    Ok((value * mult as f64) as u64)
}

fn device_of(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        "auto" => Device::cuda_if_available(),
        other => bail!("--device {other:?}: expected cpu, cuda or auto"),
    })
}

fn main() -> Result<()> {
    baichuan_trainer::host_alloc::tune_host_allocator();
    match Cli::parse().command {
        Command::Train {
            config,
            overrides,
            resume,
            no_resume,
            stop_after,
        } => {
            let cfg = RunConfig::load(&config, &overrides)?;
            let resume = match (resume, no_resume) {
                (Some(path), _) => train::Resume::From(path),
                (None, true) => train::Resume::No,
                (None, false) => train::Resume::Latest,
            };
            let summary = train::train(&cfg, &train::TrainOptions { resume, stop_after })?;
            if let (true, Some(first), Some(last)) = (summary.main, summary.losses.first(), summary.losses.last()) {
                let last_step = summary.first_step + summary.losses.len() as u64 - 1;
                println!(
                    "loss: {first:.4} at step {} -> {last:.4} at step {last_step}",
                    summary.first_step
                );
            }
        }
        Command::Launch {
            config,
            overrides,
            hostfile,
            nproc,
            include,
            exclude,
            master_addr,
            master_port,
            remote_shell,
            train_extra,
        } => {
            let cfg = RunConfig::load(&config, &overrides)?;
            let hosts = match &hostfile {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading hostfile {}", path.display()))?;
                    launch::filter_hosts(launch::parse_hostfile(&text, path)?, &include, &exclude)?
                }
                None => vec![launch::HostSlots {
                    host: "localhost".into(),
                    slots: nproc.unwrap_or_else(launch::local_gpus).max(1),
                }],
            };
            let world: usize = hosts.iter().map(|h| h.slots).sum();
            cfg.validate(world as i64)
                .with_context(|| format!("config {} for {world} ranks", config.display()))?;
            let master_port = if master_port == 0 {
                std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
            } else {
                master_port
            };
            let shell = remote_shell.unwrap_or(cfg.launch.remote_shell.clone());
            let mut train_args = vec![
                "--config".to_string(),
                std::path::absolute(&config)?.to_string_lossy().to_string(),
            ];
            for o in &overrides {
                train_args.push("--set".into());
                train_args.push(o.clone());
            }
            train_args.extend(train_extra);
            let plan = launch::LaunchPlan {
                hosts,
                master_addr,
                master_port,
                remote_shell: shell.split_whitespace().map(String::from).collect(),
                train_args,
                exe: std::env::current_exe().context("locating the baichuan executable")?,
                workdir: std::env::current_dir()?,
            };
            let mut restarts = 0;
            loop {
                let code = launch::launch(&plan)?;
                if code == 0 {
                    break;
                }
                if restarts >= cfg.launch.max_restarts {
                    if cfg.launch.max_restarts > 0 {
                        eprintln!("launch: giving up after {restarts} restart(s) (launch.max_restarts)");
                    }
                    std::process::exit(code);
                }
                restarts += 1;
                eprintln!(
                    "launch: restarting the job from its latest checkpoint (restart {restarts} of {})",
                    cfg.launch.max_restarts
                );
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Command::Bench {
            what: None,
            config,
            overrides,
            steps,
            warmup,
            json,
            breakdown,
        } => {
            let config = config.context("bench needs --config (or the `comm` subcommand)")?;
            let cfg = RunConfig::load(&config, &overrides)?;
            if breakdown {
                let r = baichuan_trainer::profile::breakdown(&cfg, steps.max(1))?;
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    print!("{}", baichuan_trainer::profile::render(&r));
                }
                return Ok(());
            }
            let r = bench::train_step(&cfg, steps.max(1), warmup)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} parameters, {} training on {}, {} tokens/step, attention {}, AdamW {}, {}, {}, {}",
                    r.parameters,
                    r.precision,
                    r.device,
                    r.tokens_per_step,
                    r.attention,
                    r.optimizer,
                    r.rotary,
                    r.loss,
                    r.swiglu
                );
                println!(
                    "step {:.1} ms = forward {:.1} + backward {:.1} + comm wait {:.1} + optimizer {:.1} (medians of {steps})",
                    r.step_s * 1e3,
                    r.forward_s * 1e3,
                    r.backward_s * 1e3,
                    r.comm_wait_s * 1e3,
                    r.optimizer_s * 1e3
                );
                println!(
                    "{:.0} tokens/s, MFU {:.1}% of {:.3e} FLOP/s ({}), peak memory {:.0} MiB",
                    r.tokens_per_s,
                    100.0 * r.mfu,
                    r.peak,
                    r.peak_source,
                    r.peak_memory_mb
                );
            }
        }
        Command::Bench {
            what: Some(BenchCommand::Comm { backend, nproc, max_mb }),
            ..
        } => {
            if backend != "tcp" {
                bail!("--backend {backend:?}: this build measures the tcp backend");
            }
            let memcpy = bench::memcpy_bandwidth();
            let tcp = bench::loopback_tcp_bandwidth()?;
            println!(
                "ceilings: memory copy {:.2} GB/s (read + write), one loopback TCP stream {:.2} GB/s",
                memcpy / 1e9,
                tcp / 1e9
            );
            let mut sizes = vec![4096usize];
            while *sizes.last().expect("one size") < max_mb << 20 {
                sizes.push(sizes.last().expect("one size") * 4);
            }
            let rows = bench::tcp_all_reduce(nproc.max(2), &sizes, std::time::Duration::from_millis(300))?;
            println!("all-reduce, tcp backend, {} ranks (fp32, in place)", nproc.max(2));
            println!(
                "{:>12} {:>12} {:>12} {:>12} {:>16}",
                "bytes", "time (us)", "algbw GB/s", "busbw GB/s", "busbw / TCP"
            );
            for r in rows {
                println!(
                    "{:>12} {:>12.1} {:>12.3} {:>12.3} {:>15.0}%",
                    r.bytes,
                    r.seconds * 1e6,
                    r.algbw_gbs,
                    r.busbw_gbs,
                    100.0 * r.busbw_gbs * 1e9 / tcp
                );
            }
        }
        Command::Init {
            config,
            out,
            overrides,
            dtype,
        } => {
            let cfg = RunConfig::load(&config, &overrides)?;
            let resolved = cfg.validate(1)?;
            tch::manual_seed(cfg.job.seed as i64);
            let model = Baichuan::new(&resolved.model, Device::Cpu)?;
            hf::save_pretrained(&model, &out, Layout::Baichuan, kind_of(dtype), None)?;
            if cfg.data.tokenizer.exists() {
                hf::copy_tokenizer(&cfg.data.tokenizer, &out)?;
            } else {
                eprintln!(
                    "warning: tokenizer {} not found; the model directory has none",
                    cfg.data.tokenizer.display()
                );
            }
            println!(
                "wrote a freshly initialised model ({} parameters) to {}",
                resolved.model.num_parameters(),
                out.display()
            );
        }
        Command::Export {
            model,
            out,
            format,
            dtype,
            max_shard_size,
        } => {
            let m = hf::load_pretrained(&model, Device::Cpu).with_context(|| format!("loading {}", model.display()))?;
            let shard = max_shard_size.as_deref().map(parse_size).transpose()?;
            let layout = match format {
                Format::Baichuan => Layout::Baichuan,
                Format::Llama => Layout::Llama,
            };
            hf::save_pretrained(&m, &out, layout, kind_of(dtype), shard)?;
            let tok = model.join(hf::TOKENIZER_FILE);
            if tok.exists() {
                hf::copy_tokenizer(&tok, &out)?;
            }
            println!("exported {} to {}", model.display(), out.display());
        }
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            seed,
            device,
            ids,
        } => {
            let tok_path = model.join(hf::TOKENIZER_FILE);
            let tokenizer = Tokenizer::open(&tok_path)?;
            let mut m =
                hf::load_pretrained(&model, Device::Cpu).with_context(|| format!("loading {}", model.display()))?;
            let device = device_of(&device)?;
            m.to(device, if device.is_cuda() { Kind::BFloat16 } else { Kind::Float });
            let prompt_ids: Vec<i64> = tokenizer.encode(&prompt)?.into_iter().map(i64::from).collect();
            let sampling = Sampling {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                max_new_tokens,
                stop_at_eos: true,
                seed,
            };
            let mut generated: Vec<u32> = Vec::new();
            let mut printed = 0usize;
            let mut stdout = std::io::stdout();
            print!("{prompt}");
            generate(&m, &prompt_ids, &sampling, |id| {
                if ids {
                    print!(" {id}");
                } else if id != m.config.eos_token_id {
                    generated.push(id as u32);
                    // print the newly completed text; hold back a partial UTF-8 character
                    if let Ok(text) = tokenizer.decode(&generated) {
                        if !text.ends_with('\u{FFFD}') && text.len() > printed {
                            print!("{}", &text[printed..]);
                            printed = text.len();
                        }
                    }
                }
                let _ = stdout.flush();
                true
            })?;
            println!();
        }
        Command::Info {
            config,
            overrides,
            world_size,
            dtype,
            zero_stage,
            activation_checkpointing,
        } => {
            let cfg = RunConfig::load(&config, &overrides)?;
            let model = cfg.model.resolve()?;
            if zero_stage > 2 {
                bail!("--zero-stage {zero_stage}: stages 0, 1 and 2 are supported");
            }
            let input = info::PlanInput {
                world_size,
                param_bytes: kind_of(dtype).elt_size_in_bytes() as u64,
                zero_stage,
                activation_checkpointing,
                micro_batch_size: cfg.train.micro_batch_size as u64,
                seq_len: cfg.data.seq_len as u64,
                loss_chunk_tokens: cfg.train.loss_chunk_tokens as u64,
            };
            print!("{}", info::report(&model, &input));
        }
        Command::Prepare {
            input,
            tokenizer,
            out,
            text_key,
            jobs,
            shard_tokens,
            chunk_mb,
            force,
        } => {
            let tok = Tokenizer::open(&tokenizer)?;
            let mut opts = PrepareOptions::new(input, out.clone());
            opts.text_key = text_key;
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            opts.shard_tokens = shard_tokens.max(1);
            opts.chunk_bytes = chunk_mb.max(1) << 20;
            opts.force = force;
            let bar = dataset::byte_bar(0, "tokenizing");
            let summary = prepare(&tok, &opts, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            dataset::print_summary(&summary, &out);
        }
        Command::Eval { what } => run_eval(what)?,
        Command::Plot { runs, out, size } => {
            let (w, h) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                .filter(|&(w, h)| (200..=10000).contains(&w) && (150..=10000).contains(&h))
                .with_context(|| format!("--size {size:?}: expected WIDTHxHEIGHT, e.g. 1600x1000"))?;
            let summary = plot::plot_runs(&runs, &out, w, h)?;
            println!("{summary}");
        }
        Command::Tokenize {
            tokenizer,
            pieces,
            decode,
        } => {
            let tok = Tokenizer::open(&tokenizer)?;
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("reading stdin")?;
            if decode {
                let ids = input
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u32>().with_context(|| format!("{s:?} is not a token id")))
                    .collect::<Result<Vec<_>>>()?;
                println!("{}", tok.decode(&ids)?);
            } else {
                let text = input.strip_suffix('\n').unwrap_or(&input);
                if pieces {
                    for (id, piece) in tok.encode_pieces(text)? {
                        println!("{id}\t{piece}");
                    }
                } else {
                    let ids: Vec<String> = tok.encode(text)?.iter().map(u32::to_string).collect();
                    println!("{}", ids.join(" "));
                }
            }
        }
    }
    Ok(())
}

/// Loads a model directory for evaluation on `device` (bf16 on CUDA, fp32 on CPU) with its tokenizer.
fn load_for_eval(model: &std::path::Path, device: &str) -> Result<(Baichuan, Tokenizer)> {
    let tok_path = model.join(hf::TOKENIZER_FILE);
    let tokenizer = Tokenizer::open(&tok_path)
        .with_context(|| format!("{}: the model directory needs its tokenizer.model", model.display()))?;
    let mut m = hf::load_pretrained(model, Device::Cpu).with_context(|| format!("loading {}", model.display()))?;
    let device = device_of(device)?;
    m.to(device, if device.is_cuda() { Kind::BFloat16 } else { Kind::Float });
    Ok((m, tokenizer))
}

fn run_eval(what: EvalCommand) -> Result<()> {
    match what {
        EvalCommand::Mc {
            model,
            data,
            format,
            split,
            shots,
            seed,
            subjects,
            max_len,
            batch_tokens,
            bos,
            device,
            out,
        } => {
            let format = match format {
                McBenchmark::Ceval => McFormat::Ceval,
                McBenchmark::Mmlu => McFormat::Mmlu,
            };
            let split = split.unwrap_or_else(|| if format == McFormat::Ceval { "val" } else { "test" }.into());
            let (m, tok) = load_for_eval(&model, &device)?;
            let context = m.config.max_position_embeddings as usize;
            let max_len = max_len.unwrap_or(context);
            if max_len == 0 || max_len > context {
                bail!("--max-len {max_len}: must be 1..={context} (the model's context)");
            }
            let subjects = eval::load_subjects(&data, format, &split, &subjects, shots)?;
            let opts = McOptions {
                format,
                shots,
                seed,
                max_len,
                bos: bos.then_some(m.config.bos_token_id as u32),
            };
            let items = eval::build_items(&subjects, &tok, &opts)?;
            let letters = eval::letter_ids(&tok)?;
            let bar = indicatif::ProgressBar::new(items.len() as u64).with_style(
                indicatif::ProgressStyle::with_template("scoring {bar:30} {pos}/{len} questions, ETA {eta}")
                    .expect("valid template"),
            );
            let logits = eval::score_items(&items, batch_tokens, |batch| {
                let l = eval::model_letter_logits(&m, batch, letters);
                bar.inc(batch.len() as u64);
                l
            });
            bar.finish_and_clear();
            let report = eval::summarize(&subjects, &items, &logits, format, &split, shots);
            println!("{:<44} {:>9} {:>9}", "subject", "questions", "accuracy");
            for r in &report.subjects {
                println!("{:<44} {:>9} {:>8.2}%", r.subject, r.questions, 100.0 * r.accuracy);
            }
            for (c, acc) in &report.categories {
                println!("{:<44} {:>9} {:>8.2}%", format!("[{c}]"), "", 100.0 * acc);
            }
            println!(
                "{:<44} {:>9} {:>8.2}%  ({}; {shots}-shot, {split} split)",
                "average",
                report.questions,
                100.0 * report.average,
                report.average_kind
            );
            if report.prompts_with_fewer_shots > 0 || report.prompts_truncated > 0 {
                println!(
                    "note: {} prompts dropped shots to fit {max_len} tokens; {} lost their beginning even with none",
                    report.prompts_with_fewer_shots, report.prompts_truncated
                );
            }
            let name = match format {
                McFormat::Ceval => "ceval",
                McFormat::Mmlu => "mmlu",
            };
            let out = out.unwrap_or_else(|| model.join(format!("eval-{name}-{split}-{shots}shot.json")));
            std::fs::write(&out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
        }
        EvalCommand::Ppl {
            model,
            data,
            seq_len,
            batch,
            max_tokens,
            text_key,
            device,
            out,
        } => {
            let (m, tok) = load_for_eval(&model, &device)?;
            let context = m.config.max_position_embeddings as u64;
            let seq_len = seq_len.unwrap_or(context);
            if seq_len == 0 || seq_len > context {
                bail!("--seq-len {seq_len}: must be 1..={context} (the model's context)");
            }
            let (shards, _cache) = dataset::open_eval_tokens(&data, &tok, &text_key)?; // removed on drop
            if shards.vocab_size() > m.config.vocab_size as u64 {
                bail!(
                    "the data was tokenized with a {}-piece vocabulary but the model has {}; HINT: use the model's tokenizer",
                    shards.vocab_size(),
                    m.config.vocab_size
                );
            }
            let bar = dataset::byte_bar(0, "scoring");
            bar.set_style(
                indicatif::ProgressStyle::with_template("scoring {bar:30} {pos}/{len} tokens, ETA {eta}")
                    .expect("valid template"),
            );
            let report = eval::perplexity(&m, &shards, seq_len, batch.max(1), max_tokens, 8192, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            if report.predicted_tokens == 0 {
                bail!("the data holds {} token(s): nothing to predict", report.tokens);
            }
            println!(
                "perplexity {:.4} (loss {:.4} nats/token) over {} predicted tokens in {} windows of up to {} tokens",
                report.ppl, report.loss, report.predicted_tokens, report.windows, report.seq_len
            );
            if let Some(out) = out {
                std::fs::write(&out, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
        }
    }
    Ok(())
}
