//! Perplexity of a model on text or token shards (`baichuan eval ppl`), overall or per position
//! bucket (`--by-position`: how far a rotary model extrapolates past its training length, as the
//! Baichuan-7B report's figure shows).

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

/// The mean loss per bucket of positions (`--by-position`).
#[derive(Debug, Clone, Serialize)]
pub struct PositionReport {
    pub seq_len: u64,
    /// The model's context, `max_position_embeddings` of its config (for Baichuan-7B, its training
    /// length).
    pub trained_context: u64,
    pub bucket: u64,
    pub windows: u64,
    pub buckets: Vec<PositionBucket>,
    /// Mean over every scored position (equals the overall loss of the same windows).
    pub loss: f64,
}

/// Positions `start..end` (0-based positions of the predicted token's context end, i.e. the
/// loss of predicting token `p + 1` from tokens `0..=p`).
#[derive(Debug, Clone, Serialize)]
pub struct PositionBucket {
    pub start: u64,
    pub end: u64,
    pub tokens: u64,
    pub loss: f64,
    pub ppl: f64,
}

/// What [`loss_by_position`] scores: windows of `seq_len` positions (`batch` per forward pass,
/// from the first `max_tokens` tokens), buckets of `bucket` positions, the head applied
/// `chunk_tokens` tokens at a time; `trained_context` is reported beside them.
#[derive(Debug, Clone, Copy)]
pub struct PositionOptions {
    pub seq_len: u64,
    pub trained_context: u64,
    pub batch: usize,
    pub max_tokens: Option<u64>,
    pub bucket: u64,
    pub chunk_tokens: i64,
}

/// The mean next-token loss at each bucket of `bucket` positions over full windows of
/// `seq_len + 1` tokens of `source` (overlapping by one, as [`perplexity`]; a last shorter window
/// is left out so that every position averages the same windows). The model must accept
/// `seq_len` positions: extend its rotary tables first to go past its trained length.
pub fn loss_by_position(
    model: &Baichuan,
    source: &dyn TokenSource,
    o: &PositionOptions,
    mut progress: impl FnMut(u64, u64),
) -> PositionReport {
    let PositionOptions {
        seq_len,
        trained_context,
        batch,
        max_tokens,
        bucket,
        chunk_tokens,
    } = *o;
    let n = max_tokens.map_or(source.num_tokens(), |m| m.min(source.num_tokens()));
    let device = model.device();
    let mut sums = vec![0f64; seq_len as usize];
    let mut windows = 0u64;
    let mut start = 0u64;
    while start + seq_len < n {
        let rows = ((n - 1 - start) / seq_len).min(batch as u64);
        let mut buf = vec![0u32; ((seq_len + 1) * rows) as usize];
        for r in 0..rows {
            let s = start + r * seq_len;
            let w = (seq_len + 1) as usize;
            source.read(s, &mut buf[r as usize * w..(r as usize + 1) * w]);
        }
        let ids: Vec<i64> = buf.iter().map(|&x| i64::from(x)).collect();
        let tokens = Tensor::from_slice(&ids)
            .view([rows as i64, seq_len as i64 + 1])
            .to_device(device);
        let losses = crate::step::eval_token_losses(model, &tokens, chunk_tokens).sum_dim_intlist(
            [0i64].as_slice(),
            false,
            tch::Kind::Double,
        );
        let v: Vec<f64> = Vec::try_from(losses).expect("double losses");
        for (s, l) in sums.iter_mut().zip(v) {
            *s += l;
        }
        windows += rows;
        start += rows * seq_len;
        progress(start, n);
    }
    let bucket = bucket.clamp(1, seq_len.max(1));
    let buckets: Vec<PositionBucket> = (0..seq_len)
        .step_by(bucket as usize)
        .map(|b0| {
            let b1 = (b0 + bucket).min(seq_len);
            let tokens = (b1 - b0) * windows;
            let loss = sums[b0 as usize..b1 as usize].iter().sum::<f64>() / tokens.max(1) as f64;
            PositionBucket {
                start: b0,
                end: b1,
                tokens,
                loss,
                ppl: loss.exp(),
            }
        })
        .collect();
    PositionReport {
        seq_len,
        trained_context,
        bucket,
        windows,
        loss: sums.iter().sum::<f64>() / (seq_len * windows).max(1) as f64,
        buckets,
    }
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
