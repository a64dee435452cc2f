//! `baichuan tokenize`: stdin encoded to ids (or pieces), or ids decoded to text.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use baichuan_data::Tokenizer;
use clap::Args;

#[derive(Args)]
pub struct TokenizeArgs {
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    pieces: bool,
    #[arg(long)]
    decode: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let tok = Tokenizer::open(&a.tokenizer)?;
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("reading stdin")?;
    if a.decode {
        let ids = input
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().with_context(|| format!("{s:?} is not a token id")))
            .collect::<Result<Vec<_>>>()?;
        println!("{}", tok.decode(&ids)?);
        return Ok(());
    }
    let text = input.strip_suffix('\n').unwrap_or(&input);
    if a.pieces {
        for (id, piece) in tok.encode_pieces(text)? {
            println!("{id}\t{piece}");
        }
    } else {
        let ids: Vec<String> = tok.encode(text)?.iter().map(u32::to_string).collect();
        println!("{}", ids.join(" "));
    }
    Ok(())
}
