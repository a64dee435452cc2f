//! `baichuan eval`: few-shot multiple choice in C-Eval or MMLU layout (`eval mc`), and
//! perplexity on text or shards (`eval ppl`).

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
}

/// `--prompt-style`.
#[derive(Clone, Copy, ValueEnum)]
enum StyleArg {
    Baichuan,
    Official,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Few-shot multiple choice (C-Eval or MMLU layout), scored by the A/B/C/D logits.
    Mc(McArgs),
    /// Perplexity of a model on text (.txt one document per line, .jsonl) or prepared shards.
    Ppl(PplArgs),
}

#[derive(Args)]
pub struct McArgs {
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
    /// Whose prompts: `baichuan` (Baichuan-7B's evaluate_zh.py / evaluate_mmlu.py: C-Eval examples
    /// joined by single newlines, shots shuffled anew per question; MMLU prompts capped at 2048
    /// tokens) or `official` (C-Eval's own evaluator: blank lines, the first k dev rows; MMLU with
    /// the model's context). README.md gives both templates character by character.
    #[arg(long, value_enum, default_value = "baichuan")]
    prompt_style: StyleArg,
    /// Seed of the shot shuffles: Baichuan-style C-Eval's per-question shuffle (default 0; the
    /// reference's is unseeded), or otherwise one shuffle per subject instead of the first rows.
    #[arg(long)]
    seed: Option<u64>,
    /// Also write every prompt (subject, question, the dev rows it holds, text) as JSON lines here.
    #[arg(long)]
    dump_prompts: Option<PathBuf>,
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
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Where to write the JSON report (default: <model>/eval-<format>-<split>-<shots>shot.json).
    #[arg(long)]
    out: Option<PathBuf>,
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
}

pub fn run(what: EvalCommand) -> Result<()> {
    match what {
        EvalCommand::Mc(a) => multiple_choice(a),
        EvalCommand::Ppl(a) => perplexity(a),
    }
}

/// `eval mc`: prompts, scoring, the per-subject table, and the JSON report.
fn multiple_choice(a: McArgs) -> Result<()> {
    let McArgs {
        model,
        data,
        format,
        split,
        shots,
        prompt_style,
        seed,
        dump_prompts,
        subjects,
        max_len,
        batch_tokens,
        bos,
        device,
        out,
    } = a;
    let format = match format {
        McBenchmark::Ceval => McFormat::Ceval,
        McBenchmark::Mmlu => McFormat::Mmlu,
    };
    let split = split.unwrap_or_else(|| if format == McFormat::Ceval { "val" } else { "test" }.into());
    let (m, tok) = super::load_for_inference(&model, device)?;
    let context = m.config.max_position_embeddings as usize;
    let style = match prompt_style {
        StyleArg::Baichuan => PromptStyle::Baichuan,
        StyleArg::Official => PromptStyle::Official,
    };
    let default_len = if format == McFormat::Mmlu && style == PromptStyle::Baichuan {
        eval::BAICHUAN_MMLU_MAX_LEN.min(context)
    } else {
        context
    };
    let max_len = max_len.unwrap_or(default_len);
    if max_len == 0 || max_len > context {
        bail!("--max-len {max_len}: must be 1..={context} (the model's context)");
    }
    let subjects = eval::load_subjects(&data, format, &split, &subjects, shots)?;
    let opts = McOptions {
        format,
        style,
        shots,
        seed,
        max_len,
        bos: bos.then_some(m.config.bos_token_id as u32),
    };
    println!(
        "prompts: {} style, at most {max_len} tokens (shots dropped to fit)",
        match style {
            PromptStyle::Baichuan => "Baichuan-7B's",
            PromptStyle::Official => "the official evaluators'",
        }
    );
    if let Some(path) = &dump_prompts {
        let mut text = String::new();
        for p in eval::build_prompts(&subjects, &opts) {
            text.push_str(&serde_json::to_string(&p)?);
            text.push('\n');
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
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

    Ok(())
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
    } = a;
    let (m, tok) = super::load_for_inference(&model, device)?;
    let context = m.config.max_position_embeddings as u64;
    let seq_len = seq_len.unwrap_or(context);
    if seq_len == 0 || seq_len > context {
        bail!("--seq-len {seq_len}: must be 1..={context} (the model's context)");
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
