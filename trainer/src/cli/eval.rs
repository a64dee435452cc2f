//! `baichuan eval`: few-shot multiple choice in the C-Eval, MMLU, GAOKAO-Bench or AGIEval layout
//! of one or more models with a summary table over them (`eval mc`), and perplexity on text or
//! shards (`eval ppl`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baichuan_trainer::config::DeviceChoice;
use baichuan_trainer::eval::{self, McFormat, McOptions, PromptStyle};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum McBenchmark {
    /// C-Eval: `<dir>/{dev,val,test}/<subject>_<split>.csv` with an id,question,A,B,C,D,answer header.
    Ceval,
    /// MMLU (Hendrycks): `<dir>/{dev,val,test}/<subject>_<split>.csv`, no header.
    Mmlu,
    /// GAOKAO-Bench: `Data/Objective_Questions/*.json`, single-answer four-option questions.
    Gaokao,
    /// AGIEval: `data/v1/*.jsonl`, four-option single-choice questions.
    Agieval,
}

impl McBenchmark {
    fn format(self) -> McFormat {
        match self {
            McBenchmark::Ceval => McFormat::Ceval,
            McBenchmark::Mmlu => McFormat::Mmlu,
            McBenchmark::Gaokao => McFormat::Gaokao,
            McBenchmark::Agieval => McFormat::Agieval,
        }
    }
}

/// `--prompt-style`.
#[derive(Clone, Copy, ValueEnum)]
enum StyleArg {
    Baichuan,
    Official,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Few-shot multiple choice (C-Eval, MMLU, GAOKAO-Bench, AGIEval), scored by the A/B/C/D
    /// logits, of one or more models, with a summary table over them.
    Mc(McArgs),
    /// Perplexity of a model on text (.txt one document per line, .jsonl) or prepared shards.
    Ppl(PplArgs),
}

#[derive(Args)]
pub struct McArgs {
    /// Model directories (several: one summary row each).
    #[arg(long, num_args = 1..)]
    model: Vec<PathBuf>,
    /// A run's checkpoints directory: every complete checkpoint in it, oldest first, as a model.
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// The benchmark directory (C-Eval, MMLU: the one holding dev/, val/ and test/; GAOKAO-Bench:
    /// Data/Objective_Questions; AGIEval: data/v1; a checkout of either repository also works).
    #[arg(long, requires = "format")]
    data: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<McBenchmark>,
    /// More benchmarks, as FORMAT=DIR (e.g. gaokao=GAOKAO-Bench agieval=AGIEval/data/v1).
    #[arg(long = "bench", num_args = 1..)]
    benches: Vec<String>,
    /// The split to score (C-Eval and MMLU; default: val for C-Eval, whose test answers are not
    /// public; test for MMLU).
    #[arg(long)]
    split: Option<String>,
    #[arg(long, default_value_t = 5)]
    shots: usize,
    /// Whose prompts: `baichuan` (Baichuan-7B's evaluate_zh.py / evaluate_mmlu.py: C-Eval examples
    /// joined by single newlines, shots shuffled anew per question; MMLU prompts capped at 2048
    /// tokens) or `official` (C-Eval's own evaluator: blank lines, the first k dev rows; MMLU with
    /// the model's context). README.md gives both templates character by character.
    #[arg(long, value_enum, default_value = "baichuan")]
    prompt_style: StyleArg,
    /// Seed of the shot shuffles: Baichuan-style C-Eval's per-question shuffle (default 0; the
    /// reference's is unseeded), or otherwise one shuffle per subject instead of the first rows;
    /// for GAOKAO-Bench and AGIEval the split of each file into shots and scored questions
    /// (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write every prompt (subject, question, the dev rows it holds, text) as JSON lines here.
    #[arg(long)]
    dump_prompts: Option<PathBuf>,
    /// Only these subjects (comma-separated file keys or, for GAOKAO-Bench and AGIEval, file stems).
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
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Where to write the JSON report of one model on one benchmark (default:
    /// <model>/eval-<format>-<split>-<shots>shot.json, always so for several).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the summary table (one row per model, a column per benchmark and category) here as
    /// Markdown, and beside it as JSON (the same name with .json).
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Args)]
pub struct PplArgs {
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
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Also write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The mean loss per bucket of positions instead, over full windows; --seq-len may then
    /// exceed the model's trained context (its rotary tables are extended) to see how far it
    /// extrapolates.
    #[arg(long)]
    by_position: bool,
    /// Positions per bucket with --by-position (default: a 32nd of --seq-len).
    #[arg(long)]
    bucket: Option<u64>,
    /// With --by-position, draw loss against position into this PNG.
    #[arg(long, requires = "by_position")]
    plot: Option<PathBuf>,
}

pub fn run(what: EvalCommand) -> Result<()> {
    match what {
        EvalCommand::Mc(a) => multiple_choice(a),
        EvalCommand::Ppl(a) => perplexity(a),
    }
}

/// One benchmark to score: its layout and directory.
struct Bench {
    format: McFormat,
    data: PathBuf,
}

/// The benchmarks of `--data/--format` and of every `--bench FORMAT=DIR`.
fn benches(a: &McArgs) -> Result<Vec<Bench>> {
    let mut out = Vec::new();
    if let (Some(data), Some(format)) = (&a.data, a.format) {
        out.push(Bench {
            format: format.format(),
            data: data.clone(),
        });
    }
    for spec in &a.benches {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--bench {spec:?}: expected FORMAT=DIR, e.g. gaokao=GAOKAO-Bench"))?;
        let format = McBenchmark::from_str(name.trim(), true).map_err(|_| {
            anyhow::anyhow!("--bench {spec:?}: unknown format {name:?}; HINT: ceval, mmlu, gaokao or agieval")
        })?;
        out.push(Bench {
            format: format.format(),
            data: PathBuf::from(dir),
        });
    }
    if out.is_empty() {
        bail!("nothing to score: give --data DIR --format FORMAT, or --bench FORMAT=DIR (several allowed)");
    }
    Ok(out)
}

/// The models of `--model` and of `--checkpoints` (its complete checkpoints, oldest first).
fn models(a: &McArgs) -> Result<Vec<PathBuf>> {
    let mut out = a.model.clone();
    if let Some(dir) = &a.checkpoints {
        let mut steps = baichuan_trainer::checkpoint::list(dir);
        steps.reverse();
        steps.retain(|p| p.join("config.json").exists());
        if steps.is_empty() {
            bail!(
                "--checkpoints {}: no complete checkpoint (step-N directories with config.json); HINT: a run's \
                 checkpoints directory is <run_dir>/checkpoints",
                dir.display()
            );
        }
        out.extend(steps);
    }
    if out.is_empty() {
        bail!("no model: give --model DIR (several allowed) or --checkpoints DIR");
    }
    Ok(out)
}

/// `eval mc`: for every model and benchmark, prompts, scoring, the per-subject table and the JSON
/// report; then the summary over them.
fn multiple_choice(a: McArgs) -> Result<()> {
    let benches = benches(&a)?;
    let models = models(&a)?;
    let several = benches.len() * models.len() > 1;
    if several && a.out.is_some() {
        bail!("--out names one report; with several models or benchmarks each report goes to <model>/eval-*.json");
    }
    let mut rows = Vec::new();
    for model in &models {
        let (m, tok) = super::load_for_inference(model, a.device)?;
        let mut reports = Vec::new();
        for bench in &benches {
            if several {
                println!(
                    "== {} on {} ({})",
                    model.display(),
                    bench.format.name(),
                    bench.data.display()
                );
            }
            reports.push(score_benchmark(&a, model, &m, &tok, bench)?);
        }
        rows.push((model.clone(), reports));
    }
    if several || a.summary.is_some() {
        let table = eval::summary_table(&rows);
        println!("{}", table.markdown);
        if let Some(path) = &a.summary {
            std::fs::write(path, &table.markdown).with_context(|| format!("writing {}", path.display()))?;
            let json = path.with_extension("json");
            std::fs::write(&json, serde_json::to_string_pretty(&table.json)?)
                .with_context(|| format!("writing {}", json.display()))?;
            println!("wrote {} and {}", path.display(), json.display());
        }
    }
    Ok(())
}

/// One model on one benchmark: its table printed and its JSON report written.
fn score_benchmark(
    a: &McArgs,
    model: &std::path::Path,
    m: &baichuan_model::Baichuan,
    tok: &baichuan_data::Tokenizer,
    bench: &Bench,
) -> Result<eval::McReport> {
    let format = bench.format;
    let exam = matches!(format, McFormat::Gaokao | McFormat::Agieval);
    if exam && a.split.is_some() {
        bail!(
            "--split: {} has no splits; each file is split into shots and scored questions by --seed",
            format.name()
        );
    }
    let split = a.split.clone().unwrap_or_else(|| format.default_split().into());
    let context = m.config.max_position_embeddings as usize;
    let style = match a.prompt_style {
        StyleArg::Baichuan => PromptStyle::Baichuan,
        StyleArg::Official => PromptStyle::Official,
    };
    let max_len = a.max_len.unwrap_or(format.default_max_len(style, context));
    if max_len == 0 || max_len > context {
        bail!("--max-len {max_len}: must be 1..={context} (the model's context)");
    }
    let (subjects, files) = if exam {
        let (subjects, files) = eval::load_exam(&bench.data, format, &a.subjects, a.shots, a.seed.unwrap_or(0))?;
        println!(
            "{:<44} {:>9} {:>6} {:>13} {:>13}",
            "file", "questions", "kept", "multi-answer", "not 4 options"
        );
        for f in &files {
            println!(
                "{:<44} {:>9} {:>6} {:>13} {:>13}{}",
                f.file,
                f.questions,
                f.kept,
                f.not_single_answer,
                f.not_four_options,
                if f.skipped { "  skipped: too few to score" } else { "" }
            );
        }
        (subjects, files)
    } else {
        (
            eval::load_subjects(&bench.data, format, &split, &a.subjects, a.shots)?,
            Vec::new(),
        )
    };
    let opts = McOptions {
        format,
        style,
        shots: a.shots,
        seed: a.seed,
        max_len,
        bos: a.bos.then_some(m.config.bos_token_id as u32),
    };
    println!(
        "prompts: {}, at most {max_len} tokens (shots dropped to fit)",
        match (exam, style) {
            (true, _) => "the exam's language (Chinese as Baichuan-7B's C-Eval, English as MMLU)",
            (false, PromptStyle::Baichuan) => "Baichuan-7B's style",
            (false, PromptStyle::Official) => "the official evaluators' style",
        }
    );
    if let Some(path) = &a.dump_prompts {
        let mut text = String::new();
        for p in eval::build_prompts(&subjects, &opts) {
            text.push_str(&serde_json::to_string(&p)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let items = eval::build_items(&subjects, tok, &opts)?;
    let letters = eval::letter_ids(tok)?;
    let bar = indicatif::ProgressBar::new(items.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("scoring {bar:30} {pos}/{len} questions, ETA {eta}")
            .expect("valid template"),
    );
    let logits = eval::score_items(&items, a.batch_tokens, |batch| {
        let l = eval::model_letter_logits(m, batch, letters);
        bar.inc(batch.len() as u64);
        l
    });
    bar.finish_and_clear();
    let mut report = eval::summarize(&subjects, &items, &logits, format, &split, a.shots);
    report.files = files;
    println!("{:<44} {:>9} {:>9}", "subject", "questions", "accuracy");
    for r in &report.subjects {
        println!("{:<44} {:>9} {:>8.2}%", r.subject, r.questions, 100.0 * r.accuracy);
    }
    for (c, acc) in &report.categories {
        println!("{:<44} {:>9} {:>8.2}%", format!("[{c}]"), "", 100.0 * acc);
    }
    println!(
        "{:<44} {:>9} {:>8.2}%  ({}; {}-shot, {split} split)",
        "average",
        report.questions,
        100.0 * report.average,
        report.average_kind,
        a.shots
    );
    if report.prompts_with_fewer_shots > 0 || report.prompts_truncated > 0 {
        println!(
            "note: {} prompts dropped shots to fit {max_len} tokens; {} lost their beginning even with none",
            report.prompts_with_fewer_shots, report.prompts_truncated
        );
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| model.join(format!("eval-{}-{split}-{}shot.json", format.name(), a.shots)));
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(report)
}

/// `eval ppl`: perplexity over the windows of the data.
fn perplexity(a: PplArgs) -> Result<()> {
    let PplArgs {
        model,
        data,
        seq_len,
        batch,
        max_tokens,
        text_key,
        device,
        out,
        by_position,
        bucket,
        plot,
    } = a;
    let (mut m, tok) = super::load_for_inference(&model, device)?;
    let context = m.config.max_position_embeddings as u64;
    let seq_len = seq_len.unwrap_or(context);
    if seq_len == 0 || (seq_len > context && !by_position) {
        bail!(
            "--seq-len {seq_len}: must be 1..={context} (the model's context); HINT: --by-position scores longer \
             windows, position by position, to see how far the model extrapolates"
        );
    }
    if seq_len > context {
        // RoPE has no learned positions: the tables extend to any length (as transformers computes them)
        let fused = m.rotary.fused;
        m.rotary =
            baichuan_model::baichuan::Rotary::new(m.config.head_dim(), seq_len as i64, m.config.rope_theta, m.device());
        m.rotary.fused = fused;
        println!("rotary tables extended from the model's {context} positions (max_position_embeddings) to {seq_len}");
    }
    let (shards, _cache) = baichuan_trainer::dataset::open_eval_tokens(&data, &tok, &text_key)?; // removed on drop
    if shards.vocab_size() > m.config.vocab_size as u64 {
        bail!(
            "the data was tokenized with a {}-piece vocabulary but the model has {}; HINT: use the model's tokenizer",
            shards.vocab_size(),
            m.config.vocab_size
        );
    }
    shards.check(m.config.vocab_size as u64, true)?;
    let bar = baichuan_trainer::dataset::byte_bar(0, "scoring");
    bar.set_style(
        indicatif::ProgressStyle::with_template("scoring {bar:30} {pos}/{len} tokens, ETA {eta}")
            .expect("valid template"),
    );
    if by_position {
        let opts = eval::PositionOptions {
            seq_len,
            trained_context: context,
            batch: batch.max(1),
            max_tokens,
            bucket: bucket.unwrap_or((seq_len / 32).max(1)),
            chunk_tokens: 8192,
        };
        let report = eval::loss_by_position(&m, &shards, &opts, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
        bar.finish_and_clear();
        if report.windows == 0 {
            bail!(
                "the data holds {} token(s): not one full window of {} (--seq-len + 1)",
                baichuan_data::TokenSource::num_tokens(&shards),
                seq_len + 1
            );
        }
        println!("{:>17} {:>10} {:>10} {:>12}", "positions", "loss", "ppl", "tokens");
        for b in &report.buckets {
            let past = if b.start >= context {
                "  past the model's context"
            } else {
                ""
            };
            println!(
                "{:>17} {:>10.4} {:>10.2} {:>12}{past}",
                format!("{}-{}", b.start, b.end - 1),
                b.loss,
                b.ppl,
                b.tokens
            );
        }
        println!(
            "mean loss {:.4} over {} windows of {seq_len} positions (the model's context: {context})",
            report.loss, report.windows
        );
        if let Some(path) = &plot {
            write_position_plot(&report, path)?;
            println!("plotted {}", path.display());
        }
        if let Some(out) = out {
            std::fs::write(&out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        return Ok(());
    }
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

    Ok(())
}

/// Loss against position (each bucket at its middle), with the trained context marked.
fn write_position_plot(r: &eval::PositionReport, path: &std::path::Path) -> Result<()> {
    use baichuan_plot::{Mark, Paint, Panel, Series};
    let points: Vec<(f64, f64)> = r
        .buckets
        .iter()
        .map(|b| ((b.start + b.end - 1) as f64 / 2.0, b.loss))
        .collect();
    let mut series = vec![Series {
        label: format!("mean loss per {} positions", r.bucket),
        points,
        paint: Paint::Palette(0),
        mark: Mark::Line,
    }];
    if r.seq_len > r.trained_context {
        let (lo, hi) = r.buckets.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x.loss), b.max(x.loss))
        });
        let x = r.trained_context as f64;
        series.push(Series {
            label: format!("model context ({})", r.trained_context),
            points: vec![(x, lo), (x, hi)],
            paint: Paint::Ink,
            mark: Mark::Dashed,
        });
    }
    let panel = Panel {
        title: format!("loss by position ({} windows of {})", r.windows, r.seq_len),
        x_label: "position".into(),
        y_label: "loss (nats/token)".into(),
        series,
        ..Panel::default()
    };
    baichuan_plot::write_file(path, &baichuan_plot::render_png(&[panel], 1, 1200, 700)?)?;
    Ok(())
}
