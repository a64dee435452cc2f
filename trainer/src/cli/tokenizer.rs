//! `baichuan tokenizer train` (Google's SentencePiece trainer on a seeded reservoir sample of a
//! corpus, Baichuan-7B's recipe by default) and `baichuan tokenizer stats` (tokens per character
//! and the rest of Baichuan's tokenizer table, per tokenizer and file).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use baichuan_data::spm_train::{self, Reservoir, TrainerOptions};
use baichuan_data::text::list_files;
use baichuan_data::tokenizer_stats::{measure, AnyTokenizer, FileStats};
use baichuan_data::Tokenizer;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a SentencePiece model (tokenizer.model and tokenizer.vocab) on a corpus.
    Train(TrainArgs),
    /// Tokens per character, bytes per token, byte fallback and unknowns, unused pieces, speed.
    Stats(StatsArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// Files or directories (.txt one document per line, .jsonl with text_key).
    #[arg(long, num_args = 1.., required_unless_present = "print_config")]
    input: Vec<PathBuf>,
    /// Directory for tokenizer.model and tokenizer.vocab.
    #[arg(long, required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Trainer options (TOML; unknown keys are errors). Default: Baichuan-7B's recipe.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides vocab_size.
    #[arg(long)]
    vocab_size: Option<u32>,
    /// Overrides input_documents (the reservoir sample's size).
    #[arg(long)]
    input_documents: Option<u64>,
    /// Reserve these pieces whole (chat or tool tokens), in addition to the config's.
    #[arg(long, num_args = 1..)]
    user_defined_symbols: Vec<String>,
    /// Keep the sampled training text as OUT/sample.txt.
    #[arg(long)]
    keep_sample: bool,
    /// Print the default options as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    /// Tokenizers to compare (repeat the flag): SentencePiece `tokenizer.model` files or Hugging
    /// Face `tokenizer.json` files.
    #[arg(long = "tokenizer", required = true)]
    tokenizers: Vec<PathBuf>,
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    #[arg(long, default_value = "text")]
    text_key: String,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(what: TokenizerCommand) -> Result<()> {
    match what {
        TokenizerCommand::Train(a) => train(a),
        TokenizerCommand::Stats(a) => stats(a),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    if a.print_config {
        print!("{}", spm_train::default_toml());
        return Ok(());
    }
    let out = a.out.clone().context("--out is required")?;
    let mut opts = match &a.config {
        Some(p) => TrainerOptions::from_toml(p)?,
        None => TrainerOptions::default(),
    };
    if let Some(v) = a.vocab_size {
        opts.vocab_size = v;
    }
    if let Some(n) = a.input_documents {
        opts.input_documents = n;
    }
    opts.user_defined_symbols.extend(a.user_defined_symbols.iter().cloned());
    if opts.input_documents == 0 {
        bail!("input_documents = 0 samples nothing; HINT: pass --input-documents N (the reference used 20 million)");
    }
    let files = list_files(&a.input)?;
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bar = baichuan_trainer::dataset::byte_bar(total, "sampling");
    let mut reservoir = Reservoir::new(opts.input_documents, opts.seed);
    spm_train::for_each_document(
        &files,
        &opts.text_key,
        |d| reservoir.offer(d),
        |done| bar.set_position(done),
    )?;
    bar.finish_and_clear();
    let seen = reservoir.seen();
    let docs = reservoir.into_docs();
    let sample = out.join("sample.txt");
    let lines = spm_train::write_sample(&docs, &sample)?;
    println!(
        "tokenizer: sampled {} of {seen} documents ({lines} lines) from {} files; training {} with {} pieces",
        docs.len(),
        files.len(),
        opts.model_type,
        opts.vocab_size
    );
    drop(docs);
    let started = std::time::Instant::now();
    let result = spm_train::train(&opts, &sample, &out.join("tokenizer"));
    if !a.keep_sample {
        let _ = std::fs::remove_file(&sample);
    }
    result.with_context(|| format!("training into {}", out.display()))?;
    let tok = Tokenizer::open(&out.join("tokenizer.model"))?;
    let config = toml::to_string(&opts).context("serialising the options")?;
    std::fs::write(out.join("tokenizer-train.toml"), config).context("writing tokenizer-train.toml")?;
    println!(
        "tokenizer: {} pieces in {:.1} s; {} (and tokenizer.vocab, tokenizer-train.toml)",
        tok.vocab_size(),
        started.elapsed().as_secs_f64(),
        out.join("tokenizer.model").display()
    );
    Ok(())
}

fn row(name: &str, vocab: usize, unused: usize, s: &FileStats) -> String {
    format!(
        "| {name} | {} | {vocab} | {} | {} | {} | {:.3} | {:.2} | {:.3}% | {} | {unused} | {:.1} |",
        s.file,
        s.documents,
        s.chars,
        s.tokens,
        s.tokens_per_char(),
        s.bytes_per_token(),
        100.0 * s.byte_token_share(),
        s.unk_tokens,
        s.mb_per_s()
    )
}

fn stats(a: StatsArgs) -> Result<()> {
    let files = list_files(&a.input)?;
    let mut all = Vec::new();
    for path in &a.tokenizers {
        let tok = AnyTokenizer::open(path)?;
        all.push(measure(&tok, &files, &a.text_key)?);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!("| tokenizer | file | vocab | documents | characters | tokens | tokens/char | bytes/token | byte fallback | unk | unused pieces | MB/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for t in &all {
        let name = t.tokenizer.as_str();
        for f in &t.files {
            println!("{}", row(name, t.vocab_size, t.unused_pieces, f));
        }
        if t.files.len() > 1 {
            println!("{}", row(name, t.vocab_size, t.unused_pieces, &t.total));
        }
    }
    Ok(())
}
