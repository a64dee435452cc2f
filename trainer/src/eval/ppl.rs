//! Perplexity of a model on text or token shards (`baichuan eval ppl`).

use baichuan_data::TokenSource;
use baichuan_model::Baichuan;
use serde::Serialize;
use tch::Tensor;

/// Perplexity of a model over a token stream.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    pub tokens: u64,
    pub predicted_tokens: u64,
    pub windows: u64,
    pub seq_len: u64,
    /// Mean cross-entropy per predicted token (nats).
    pub loss: f64,
    pub ppl: f64,
}

/// Mean next-token loss over `source`: windows of `seq_len + 1` tokens overlapping by one, so
/// every token after the first is predicted exactly once with up to `seq_len` tokens of context
/// from its window; the last, shorter window included. `max_tokens` limits the tokens read.
pub fn perplexity(
    model: &Baichuan,
    source: &dyn TokenSource,
    seq_len: u64,
    batch: usize,
    max_tokens: Option<u64>,
    chunk_tokens: i64,
    mut progress: impl FnMut(u64, u64),
) -> PplReport {
    let n = max_tokens.map_or(source.num_tokens(), |m| m.min(source.num_tokens()));
    let device = model.device();
    let mut sum = 0.0;
    let mut predicted = 0u64;
    let mut windows = 0u64;
    let mut start = 0u64;
    while start + 1 < n {
        // as many full windows as fit the batch, or the one short last window
        let full = ((n - 1 - start) / seq_len).min(batch as u64);
        let (rows, t) = if full > 0 { (full, seq_len) } else { (1, n - 1 - start) };
        let mut buf = vec![0u32; ((t + 1) * rows) as usize];
        for r in 0..rows {
            let s = start + r * t;
            source.read(s, &mut buf[(r * (t + 1)) as usize..((r + 1) * (t + 1)) as usize]);
        }
        let ids: Vec<i64> = buf.iter().map(|&x| i64::from(x)).collect();
        let tokens = Tensor::from_slice(&ids)
            .view([rows as i64, t as i64 + 1])
            .to_device(device);
        let mean = crate::step::eval_loss(model, &tokens, chunk_tokens, None);
        sum += mean * (rows * t) as f64;
        predicted += rows * t;
        windows += rows;
        start += rows * t;
        progress(start, n);
    }
    let loss = sum / predicted.max(1) as f64;
    PplReport {
        tokens: n,
        predicted_tokens: predicted,
        windows,
        seq_len,
        loss,
        ppl: loss.exp(),
    }
}
