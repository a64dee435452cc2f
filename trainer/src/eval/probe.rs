//! Multiple choice during training (`[[eval.mc]]`): benchmark subsets read, prompted and
//! tokenized once at start-up exactly as `eval mc` does them (Baichuan-7B's prompts), then scored
//! at every evaluation by the A/B/C/D logits, each rank a share of the questions, the correct
//! answers summed over the ranks.

use anyhow::{Context, Result};
use baichuan_data::Tokenizer;
use baichuan_model::Baichuan;

use super::mc::{self, McFormat, McItem, McOptions, PromptStyle};
use crate::config::McEvalConfig;
use crate::dist::comm::{Communicator, ReduceOp};

/// One benchmark subset: its name in the metrics, this rank's questions, and their number over
/// all ranks.
pub struct McProbe {
    pub name: String,
    mine: Vec<McItem>,
    pub questions: usize,
    letters: [i64; 4],
}

/// Reads and tokenizes every `[[eval.mc]]` table for rank `rank` of `world`; prompts are capped
/// at `context` tokens (2048 for MMLU, as the reference's script). Errors name the table.
pub fn probes(
    configs: &[McEvalConfig],
    tok: &Tokenizer,
    context: usize,
    rank: usize,
    world: usize,
) -> Result<Vec<McProbe>> {
    let mut out: Vec<McProbe> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let key = || format!("eval.mc[{i}] ({} at {})", c.format.name(), c.data.display());
        let exam = matches!(c.format, McFormat::Gaokao | McFormat::Agieval);
        let subjects = if exam {
            super::load_exam(&c.data, c.format, &c.subjects, c.shots, 0)
                .with_context(key)?
                .0
        } else {
            let split = c.split.clone().unwrap_or_else(|| c.format.default_split().into());
            super::load_subjects(&c.data, c.format, &split, &c.subjects, c.shots).with_context(key)?
        };
        let opts = McOptions {
            format: c.format,
            style: PromptStyle::Baichuan,
            shots: c.shots,
            seed: None,
            max_len: c.format.default_max_len(PromptStyle::Baichuan, context),
            bos: None,
        };
        let all = mc::build_items(&subjects, tok, &opts).with_context(key)?;
        let picked = spread(all.len(), c.max_questions);
        let questions = picked.len();
        let mine = picked
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % world == rank)
            .map(|(_, k)| all[k].clone())
            .collect();
        let mut name = c.format.name().to_string();
        let same = out.iter().filter(|p| p.name.starts_with(&name)).count();
        if same > 0 {
            name = format!("{name}-{}", same + 1);
        }
        out.push(McProbe {
            name,
            mine,
            questions,
            letters: mc::letter_ids(tok).with_context(key)?,
        });
    }
    Ok(out)
}

/// `k` indices spread evenly over `0..n` (all of them when `k` is 0 or at least `n`).
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    if k == 0 || k >= n {
        return (0..n).collect();
    }
    (0..k).map(|i| i * n / k).collect()
}

impl McProbe {
    /// The accuracy of `model` on the probe's questions (every rank calls this together).
    pub fn score(&self, model: &Baichuan, comm: &dyn Communicator) -> Result<f64> {
        let logits = mc::score_items(&self.mine, 8192, |batch| {
            mc::model_letter_logits(model, batch, self.letters)
        });
        let correct = self
            .mine
            .iter()
            .zip(&logits)
            .filter(|(item, l)| mc::predict(l) == item.answer)
            .count();
        let total = comm.all_reduce_scalar(correct as f64, ReduceOp::Sum)?;
        Ok(total / self.questions.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_covers_the_range_evenly() {
        assert_eq!(spread(10, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(spread(10, 20), (0..10).collect::<Vec<_>>());
        assert_eq!(spread(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(spread(7, 7), (0..7).collect::<Vec<_>>());
    }
}
