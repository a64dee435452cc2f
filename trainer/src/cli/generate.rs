//! `baichuan generate`: text from a model directory, streamed token by token.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use baichuan_model::generate::{generate, Sampling};
use baichuan_trainer::config::DeviceChoice;
use clap::Args;

#[derive(Args)]
pub struct GenerateArgs {
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
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Print token ids instead of text.
    #[arg(long)]
    ids: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let (m, tokenizer) = super::load_for_inference(&a.model, a.device)?;
    let prompt_ids: Vec<i64> = tokenizer.encode(&a.prompt)?.into_iter().map(i64::from).collect();
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        max_new_tokens: a.max_new_tokens,
        stop_at_eos: true,
        seed: a.seed,
    };
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    print!("{}", a.prompt);
    let mut stopped_by_reader = false;
    let new = generate(&m, &prompt_ids, &sampling, |id| {
        if a.ids {
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
        // a closed stdout (`| head`) ends the stream: stop generating
        let open = stdout.flush().is_ok();
        stopped_by_reader |= !open;
        open
    })?;
    println!();
    let context = m.config.max_position_embeddings as usize;
    let ended_at_eos = new.last() == Some(&m.config.eos_token_id);
    if !stopped_by_reader && !ended_at_eos && new.len() < a.max_new_tokens && prompt_ids.len() + new.len() >= context {
        eprintln!(
            "generate: stopped after {} new token(s) of the {} asked: prompt and output filled the model's context of \
             {context} tokens",
            new.len(),
            a.max_new_tokens
        );
    }
    Ok(())
}
