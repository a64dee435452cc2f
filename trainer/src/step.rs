//! One micro-batch's forward and backward through the layer-wise schedule (docs/ARCHITECTURE.md).
//!
//! Each block's input is a detached leaf, so backward runs block by block from the top:
//! the head's chunked cross-entropy yields the gradient of the last hidden state, then each
//! block is back-propagated with the gradient of its output (`Block::train_backward`, through
//! autograd with explicit output gradients, `baichuan_model::autograd`; equal to the full graph
//! to 1e-6 in fp32). That one
//! mechanism is where activation recomputation and per-block gradient hand-off (for bucketed
//! all-reduce) slot in, without autograd hooks, which tch does not have. On the micro-batch
//! that hands gradients off, autograd returns each block's and the embedding's gradients
//! instead of accumulating them into `.grad`.
//!
//! The loss is the mean token cross-entropy in fp32, computed in chunks of the sequence so
//! the full (B, T, V) logits never exist at once; each chunk is back-propagated at once,
//! with the head spliced out of autograd (see [`chunked_cross_entropy`]).
//!
//! With [`DocMasking`] (`data.document_masking`), each packed document is seen alone:
//! attention and rotary positions restart after every EOS (`baichuan_model::documents`), and
//! unless `loss_after_eos` the target after an EOS (the next document's first token, which
//! nothing in its own document predicts) is ignored, the mean running over the scored tokens.

use baichuan_model::autograd;
use baichuan_model::baichuan::{BlockTape, IGNORE_INDEX};
use baichuan_model::{Baichuan, Documents};
use tch::{Kind, Tensor};

pub use crate::dist::buckets::Unit;

/// The parameters of a unit, in the flat (Hugging Face) order.
pub fn unit_params(model: &Baichuan, unit: Unit) -> Vec<&Tensor> {
    match unit {
        Unit::Embed => vec![&model.embed_tokens],
        Unit::Block(i) => model.layers[i].named_parameters().into_iter().map(|(_, t)| t).collect(),
        Unit::Head => vec![&model.norm.weight, &model.lm_head],
    }
}

/// Sum of token cross-entropies of `h` (B, T, d) against `targets` (B, T), computed chunk
/// by chunk of the sequence. With `grad_scale`, each chunk's loss times it is back-propagated
/// at once (so only one chunk's logits are ever alive). Returns the loss sum, a scalar on
/// the device (reading it waits for the device, so callers read it last).
///
/// In training the head is spliced out of autograd: the final norm runs in a graph from `h`,
/// the head's two backward GEMMs run by hand, and the loss operator
/// ([`Baichuan::token_losses`]) writes the logits' gradient over the logits. So the logits
/// exist once, in the parameter dtype, where autograd through `cross_entropy` would keep an
/// fp32 copy and its log-softmax and make as many again in backward. The head weight's
/// gradient is added into its `.grad()` (the head's gradients always go there).
pub(crate) fn chunked_cross_entropy(
    model: &Baichuan,
    h: &Tensor,
    targets: &Tensor,
    chunk_tokens: i64,
    grad_scale: Option<f64>,
) -> Tensor {
    let (b, t, d) = h.size3().expect("hidden is (B, T, d)");
    let v = model.lm_head.size()[0];
    let chunk = (chunk_tokens / b).clamp(1, t);
    // summed on the device and read once, so the chunks queue without waiting for each other
    let mut total = Tensor::zeros([], (Kind::Float, h.device()));
    let mut start = 0;
    while start < t {
        let len = chunk.min(t - start);
        let hc = h.narrow(1, start, len);
        let y = targets.narrow(1, start, len).reshape([-1]);
        let Some(scale) = grad_scale else {
            let logits = tch::no_grad(|| model.head(&hc)).view([-1, v]); // (B len, V)
            total += model.token_losses(&logits, &y, None).sum(Kind::Float);
            start += len;
            continue;
        };
        let normed = model.norm.forward(&hc); // graph: into h and the norm weight
        let x = normed.detach().reshape([-1, d]); // (B len, d)
        let (logits, sum) = tch::no_grad(|| {
            let logits = x.mm(&model.lm_head.tr()); // (B len, V)
            let sum = model.token_losses(&logits, &y, Some(scale)).sum(Kind::Float);
            (logits, sum) // `logits` now holds their gradient
        });
        total += sum;
        autograd::accumulate_product(&model.lm_head, &logits.tr(), &x).unwrap_or_else(|e| panic!("head backward: {e}"));
        let d_normed = tch::no_grad(|| logits.mm(&model.lm_head)).view([b, len, d]);
        drop(logits);
        autograd::backward(&[&normed], &[&d_normed]).unwrap_or_else(|e| panic!("head backward: {e}"));
        start += len;
    }
    total
}

/// Document masking of packed samples (the `data.document_masking` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocMasking {
    /// The id that ends every document.
    pub eos: i64,
    /// Whether the token after an EOS (the next document's first) is a target; if not, its
    /// loss is ignored, since nothing of its own document precedes it.
    pub loss_after_eos: bool,
}

/// Inputs `tokens[:, :T]`, targets `tokens[:, 1:]` of a micro-batch (B, T+1), with `masking`
/// the inputs' documents and the targets after an EOS ignored (unless `loss_after_eos`), and
/// the number of scored targets (read from the device when some may be ignored).
fn inputs_targets(
    model: &Baichuan,
    tokens: &Tensor,
    masking: Option<&DocMasking>,
) -> (Tensor, Tensor, Option<Documents>, f64) {
    let t = tokens.size()[1] - 1;
    let (inputs, targets) = (tokens.narrow(1, 0, t), tokens.narrow(1, 1, t));
    let Some(m) = masking else {
        let n = targets.numel() as f64;
        return (inputs, targets, None, n);
    };
    let docs = model
        .documents(&inputs, m.eos)
        .unwrap_or_else(|e| panic!("document masking: {e}"));
    if m.loss_after_eos {
        let n = targets.numel() as f64;
        return (inputs, targets, Some(docs), n);
    }
    let targets = targets.masked_fill(&inputs.eq(m.eos), IGNORE_INDEX);
    let scored = targets.ne(IGNORE_INDEX).sum(Kind::Int64).int64_value(&[]);
    (inputs, targets, Some(docs), scored.max(1) as f64)
}

/// Which blocks drop their activations after forward and recompute them just before their
/// backward (activation checkpointing, Chen et al. 2016): `none`, `full`, or every n-th block.
pub fn recompute_plan(layers: usize, mode: crate::config::Checkpointing, every: usize) -> Vec<bool> {
    use crate::config::Checkpointing;
    (0..layers)
        .map(|i| match mode {
            Checkpointing::None => false,
            Checkpointing::Full => true,
            Checkpointing::EveryN => i % every.max(1) == 0,
        })
        .collect()
}

/// What forward leaves for backward: the embedding's output, each block's detached input (a
/// leaf), each block's tape (None for recomputed blocks), the top leaf, the targets, the
/// documents (with masking) and the number of scored targets.
pub struct Forward {
    embedded: Tensor,
    leaves: Vec<Tensor>,
    tapes: Vec<Option<BlockTape>>,
    top: Tensor,
    targets: Tensor,
    docs: Option<Documents>,
    n_tokens: f64,
}

/// Forward of one micro-batch of `tokens` (B, T+1) int64: inputs `tokens[:, :T]`, targets
/// `tokens[:, 1:]`. Every block starts from a detached leaf; blocks marked in `recompute`
/// run without recording a graph. With `masking`, attention and positions are per document
/// (see [`DocMasking`]).
pub fn forward(model: &Baichuan, tokens: &Tensor, recompute: &[bool], masking: Option<&DocMasking>) -> Forward {
    let (inputs, targets, docs, n_tokens) = inputs_targets(model, tokens, masking);
    let embedded = model.embed(&inputs); // (B, T, d)
    let layers = model.layers.len();
    let mut leaves = Vec::with_capacity(layers);
    let mut tapes = Vec::with_capacity(layers);
    let mut h = embedded.detach();
    for i in 0..layers {
        let x = h.set_requires_grad(true);
        if recompute.get(i).copied().unwrap_or(false) {
            // only the input is kept; the same ops as the recomputation in backward
            h = tch::no_grad(|| {
                model.layers[i]
                    .train_forward(&x, &model.rotary, docs.as_ref())
                    .output()
                    .detach()
            });
            tapes.push(None);
        } else {
            let tape = model.layers[i].train_forward(&x, &model.rotary, docs.as_ref());
            h = tape.output().detach();
            tapes.push(Some(tape));
        }
        leaves.push(x);
    }
    Forward {
        embedded,
        leaves,
        tapes,
        top: h.set_requires_grad(true),
        targets,
        docs,
        n_tokens,
    }
}

/// Called as each unit's gradients of a micro-batch are complete, with the gradients of the
/// unit's parameters (in [`unit_params`] order) where autograd returned them instead of
/// accumulating them; an empty slice means they are in the parameters' `.grad()` (the head's
/// always are). See [`MicroBatchHandOff`] for where they go.
pub type HandOff<'a> = &'a mut dyn FnMut(Unit, &[Tensor]);

/// Where micro-batch `micro` of a step's `accum` sends each finished unit's gradients: the
/// last hands them to the reducer (which launches bucket collectives); earlier ones sum into
/// the reducer's fp32 buffer where it keeps one (ZeRO 0 and 1) and `fp32` asks for it
/// (`train.grad_accum_dtype`), else stay in `.grad()`.
pub struct MicroBatchHandOff<'a> {
    reducer: &'a mut crate::dist::buckets::GradReducer,
    model: &'a Baichuan,
    comm: &'a dyn crate::dist::comm::Communicator,
    first: bool,
    last: bool,
    fp32: bool,
}

impl<'a> MicroBatchHandOff<'a> {
    pub fn new(
        reducer: &'a mut crate::dist::buckets::GradReducer,
        model: &'a Baichuan,
        comm: &'a dyn crate::dist::comm::Communicator,
        micro: i64,
        accum: i64,
        fp32: bool,
    ) -> Self {
        MicroBatchHandOff {
            reducer,
            model,
            comm,
            first: micro == 0,
            last: micro + 1 == accum,
            fp32,
        }
    }

    /// Whether this micro-batch hands anything off (else gradients accumulate in `.grad()`).
    pub fn active(&self) -> bool {
        self.last || (self.fp32 && self.reducer.accumulates())
    }

    pub fn unit(&mut self, unit: Unit, fresh: &[Tensor]) {
        let params = unit_params(self.model, unit);
        if self.last {
            self.reducer.unit_done(unit, &params, fresh, self.comm);
        } else {
            self.reducer.accumulate(unit, &params, fresh, self.first);
        }
    }
}

/// Backward of a micro-batch: the chunked loss into the top leaf and the head, then blocks
/// from the top down (recomputing those marked), then the embedding. Gradients of the mean
/// token loss times `grad_scale` accumulate into the parameters' `.grad()`, except with
/// `on_unit` (the hand-off to the reducer: its fp32 sum of the micro-batches, or on the last
/// micro-batch the bucketed collectives): then each block's and the embedding's gradients are
/// returned by autograd and given to `on_unit`, which saves writing `.grad()`, zeroing it
/// afterwards and adding into it on the next step.
/// Returns the mean token loss.
pub fn backward(
    model: &Baichuan,
    fwd: Forward,
    grad_scale: f64,
    chunk_tokens: i64,
    mut on_unit: Option<HandOff>,
) -> f64 {
    let Forward {
        embedded,
        leaves,
        mut tapes,
        top,
        targets,
        docs,
        n_tokens,
    } = fwd;
    let loss_sum = chunked_cross_entropy(model, &top, &targets, chunk_tokens, Some(grad_scale / n_tokens));
    let handing_off = on_unit.is_some();
    let mut done = |unit: Unit, grads: &[Tensor]| {
        if let Some(f) = on_unit.as_mut() {
            f(unit, grads)
        }
    };
    done(Unit::Head, &[]);

    let mut grad = top.grad();
    for i in (0..model.layers.len()).rev() {
        let block = &model.layers[i];
        let tape = match tapes[i].take() {
            Some(tape) => tape,
            None => block.train_forward(&leaves[i], &model.rotary, docs.as_ref()), // recomputed
        };
        match block.train_backward(tape, &leaves[i], &grad, &model.rotary, docs.as_ref(), handing_off) {
            Some((dx, grads)) => {
                done(Unit::Block(i), &grads);
                grad = dx;
            }
            None => {
                done(Unit::Block(i), &[]);
                grad = leaves[i].grad();
            }
        }
    }
    // `grad` back-propagated into the embedding: into .grad, or returned
    if handing_off {
        let grads = autograd::grad(&[&embedded], &[&grad], &unit_params(model, Unit::Embed))
            .unwrap_or_else(|e| panic!("embedding backward: {e}"));
        done(Unit::Embed, &grads);
    } else {
        autograd::backward(&[&embedded], &[&grad]).unwrap_or_else(|e| panic!("embedding backward: {e}"));
        done(Unit::Embed, &[]);
    }
    loss_sum.double_value(&[]) / n_tokens
}

/// Forward and backward of one micro-batch (see [`forward`] and [`backward`]).
pub fn forward_backward(
    model: &Baichuan,
    tokens: &Tensor,
    grad_scale: f64,
    chunk_tokens: i64,
    recompute: &[bool],
    masking: Option<&DocMasking>,
    on_unit: Option<HandOff>,
) -> f64 {
    let fwd = forward(model, tokens, recompute, masking);
    backward(model, fwd, grad_scale, chunk_tokens, on_unit)
}

/// Mean token loss of a batch without gradients (evaluation), chunked like training, with
/// `masking` as in [`forward`].
pub fn eval_loss(model: &Baichuan, tokens: &Tensor, chunk_tokens: i64, masking: Option<&DocMasking>) -> f64 {
    tch::no_grad(|| {
        let (inputs, targets, docs, n_tokens) = inputs_targets(model, tokens, masking);
        let mut h = model.embed(&inputs);
        for block in &model.layers {
            h = block.forward_documents(&h, &model.rotary, docs.as_ref());
        }
        let total = chunked_cross_entropy(model, &h, &targets, chunk_tokens, None);
        total.double_value(&[]) / n_tokens
    })
}

/// The loss of every target of `tokens` (B, T+1) as (B, T) on the CPU, in fp32: the forward of
/// [`eval_loss`], the head applied `chunk_tokens` tokens at a time.
pub fn eval_token_losses(model: &Baichuan, tokens: &Tensor, chunk_tokens: i64) -> Tensor {
    tch::no_grad(|| {
        let (inputs, targets, _, _) = inputs_targets(model, tokens, None);
        let mut h = model.embed(&inputs);
        for block in &model.layers {
            h = block.forward_documents(&h, &model.rotary, None);
        }
        let (b, t, _) = h.size3().expect("hidden is (B, T, d)");
        let v = model.lm_head.size()[0];
        let chunk = (chunk_tokens / b).clamp(1, t);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < t {
            let len = chunk.min(t - start);
            let logits = model.head(&h.narrow(1, start, len)).view([-1, v]);
            let y = targets.narrow(1, start, len).reshape([-1]);
            parts.push(
                model
                    .token_losses(&logits, &y, None)
                    .view([b, len])
                    .to_kind(Kind::Float),
            );
            start += len;
        }
        Tensor::cat(&parts, 1).to_device(tch::Device::Cpu)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baichuan_model::ModelConfig;
    use tch::{Device, Reduction};

    /// A small random model and an identical twin (tests run in parallel threads and share
    /// libtorch's global generator, so the twin copies weights rather than re-seeding).
    fn small_models() -> (Baichuan, Baichuan) {
        let c = ModelConfig {
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: 40,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            max_position_embeddings: 64,
            ..ModelConfig::tiny()
        };
        let a = Baichuan::new(&c, Device::Cpu).unwrap();
        let b = Baichuan::new(&c, Device::Cpu).unwrap();
        tch::no_grad(|| {
            for ((_, src), (_, dst)) in a.named_parameters().into_iter().zip(b.named_parameters()) {
                dst.shallow_clone().copy_(src);
            }
        });
        (a, b)
    }

    #[test]
    fn layer_wise_backward_equals_the_full_graph() {
        let tokens = Tensor::randint(97, [2, 17], (Kind::Int64, Device::Cpu));
        // layer-wise with the rotation spliced out of autograd (fused ops) or not (reference),
        // and with the MLP product spliced out too (the ATen SwiGLU operator standing in for
        // the CUDA kernel), against one autograd graph of the whole model
        for (layer_wise_fused, graph_fused, mlp) in [
            (true, false, false),
            (false, false, false),
            (true, true, false),
            (true, false, true),
        ] {
            // the whole chunked loss in one chunk, so the reduction order matches
            let (mut m1, mut m2) = small_models();
            m1.set_fused_ops(layer_wise_fused);
            m2.set_fused_ops(graph_fused);
            if mlp {
                m1.rotary.swiglu = Some(std::sync::Arc::new(baichuan_model::baichuan::SwigluAten));
            }
            let loss1 = forward_backward(&m1, &tokens, 1.0, 1 << 20, &[], None, None);
            let logits = m2.forward(&tokens.narrow(1, 0, 16)).to_kind(Kind::Float);
            let loss2 = logits.view([-1, 97]).cross_entropy_loss::<Tensor>(
                &tokens.narrow(1, 1, 16).reshape([-1]),
                None,
                Reduction::Sum,
                -100,
                0.0,
            );
            (&loss2 / 32.0).backward();
            assert!((loss1 - loss2.double_value(&[]) / 32.0).abs() < 1e-6);
            for ((name, a), (_, b)) in m1.named_parameters().iter().zip(m2.named_parameters()) {
                let diff = (a.grad() - b.grad()).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-6,
                    "{layer_wise_fused} vs {graph_fused} (MLP spliced {mlp}): {name}: {diff}"
                );
            }
        }
    }

    /// The hand-off path (gradients returned by autograd, earlier micro-batches' in .grad)
    /// gives each parameter the same total gradient as accumulating everything in .grad.
    #[test]
    fn handed_off_gradients_equal_accumulated_ones() {
        let (mut m1, mut m2) = small_models();
        // with the MLP product spliced out (the ATen operator), whose down projection's
        // gradient is computed by hand: returned, or added into .grad
        for m in [&mut m1, &mut m2] {
            m.rotary.swiglu = Some(std::sync::Arc::new(baichuan_model::baichuan::SwigluAten));
        }
        let batches = [
            Tensor::randint(97, [2, 17], (Kind::Int64, Device::Cpu)),
            Tensor::randint(97, [2, 17], (Kind::Int64, Device::Cpu)),
        ];
        for tokens in &batches {
            forward_backward(&m1, tokens, 0.5, 1 << 20, &[false, true, false], None, None);
        }
        // as the reducer does: this micro-batch's gradient plus the earlier ones in .grad
        let mut got: Vec<(Unit, Vec<Tensor>)> = Vec::new();
        let mut collect = |unit: Unit, fresh: &[Tensor]| {
            let totals = unit_params(&m2, unit)
                .iter()
                .enumerate()
                .map(|(j, p)| match fresh.get(j) {
                    Some(g) if p.grad().defined() => g + p.grad(),
                    Some(g) => g.copy(),
                    None => p.grad().copy(),
                })
                .collect();
            got.push((unit, totals));
        };
        forward_backward(&m2, &batches[0], 0.5, 1 << 20, &[false, true, false], None, None);
        forward_backward(
            &m2,
            &batches[1],
            0.5,
            1 << 20,
            &[false, true, false],
            None,
            Some(&mut collect),
        );
        let units: Vec<Unit> = got.iter().map(|(u, _)| *u).collect();
        assert_eq!(
            units,
            vec![Unit::Head, Unit::Block(2), Unit::Block(1), Unit::Block(0), Unit::Embed]
        );
        for (unit, totals) in &got {
            let want = unit_params(&m1, *unit);
            assert_eq!(totals.len(), want.len());
            for (a, b) in totals.iter().zip(want) {
                let diff = (a - b.grad()).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{unit:?}: {diff}");
            }
        }
        // the blocks' and the embedding's gradients were returned, so .grad holds only the
        // first micro-batch's
        let only_first = (m2.layers[0].mlp.down_proj.grad() - m1.layers[0].mlp.down_proj.grad())
            .abs()
            .max()
            .double_value(&[]);
        assert!(only_first > 1e-6, "the second micro-batch went into .grad");
    }

    /// Below ZeRO stage 2 the micro-batches of a step are summed in the reducer's fp32 buffer:
    /// with bf16 parameters the result is the fp32 sum of each micro-batch's bf16 gradient,
    /// which summing in bf16 `.grad` would round after every addition.
    #[test]
    fn micro_batches_are_summed_in_fp32() {
        use crate::dist::buckets::GradReducer;
        use crate::dist::comm::Solo;
        let (mut m, _) = small_models();
        m.to(Device::Cpu, Kind::BFloat16);
        let batches: Vec<Tensor> = (0..4)
            .map(|_| Tensor::randint(97, [2, 17], (Kind::Int64, Device::Cpu)))
            .collect();
        let named = m.named_parameters();
        let slots = crate::flat::layout(&named);
        let total: i64 = named.iter().map(|(_, p)| p.numel() as i64).sum();
        // each micro-batch's gradient alone, flattened in fp32, summed in fp32
        let mut want = Tensor::zeros([total], (Kind::Float, Device::Cpu));
        for tokens in &batches {
            forward_backward(&m, tokens, 0.25, 1 << 20, &[], None, None);
            let flat: Vec<Tensor> = m
                .parameters()
                .iter()
                .map(|p| p.grad().to_kind(Kind::Float).view([-1]))
                .collect();
            want += Tensor::cat(&flat, 0);
            for p in m.parameters() {
                p.shallow_clone().zero_grad();
            }
        }
        let mut reducer = GradReducer::new(&slots, 3, 1 << 10, 0, vec![(0, total as usize)], 0, Device::Cpu);
        for (micro, tokens) in batches.iter().enumerate() {
            let mut to = MicroBatchHandOff::new(&mut reducer, &m, &Solo, micro as i64, 4, true);
            assert!(to.active(), "stage 0 sums every micro-batch in the buffer");
            let mut f = |unit, fresh: &[Tensor]| to.unit(unit, fresh);
            forward_backward(&m, tokens, 0.25, 1 << 20, &[true, false, false], None, Some(&mut f));
        }
        reducer.finish().unwrap();
        let got = reducer.grad_shard();
        let rel = (&got - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
        assert!(rel < 1e-6, "fp32 sum of the micro-batches differs by {rel}");
        // against summing the first three in bf16 .grad (what ZeRO stage 2 still does)
        let mut bf16_sum = GradReducer::new(&slots, 3, 1 << 10, 0, vec![(0, total as usize)], 0, Device::Cpu);
        for (micro, tokens) in batches.iter().enumerate() {
            if micro < 3 {
                forward_backward(&m, tokens, 0.25, 1 << 20, &[], None, None);
            } else {
                let mut to = MicroBatchHandOff::new(&mut bf16_sum, &m, &Solo, 3, 4, true);
                let mut f = |unit, fresh: &[Tensor]| to.unit(unit, fresh);
                forward_backward(&m, tokens, 0.25, 1 << 20, &[], None, Some(&mut f));
            }
        }
        bf16_sum.finish().unwrap();
        let rel_bf16 = (bf16_sum.grad_shard() - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
        assert!(rel_bf16 > 10.0 * rel.max(1e-9), "bf16 sums {rel_bf16} vs fp32 {rel}");
        // nothing was left behind in .grad
        for (name, p) in m.named_parameters() {
            let g = p.grad();
            assert!(!g.defined() || g.abs().max().double_value(&[]) == 0.0, "{name}");
        }
    }

    #[test]
    fn chunked_loss_equals_the_single_chunk_loss() {
        let tokens = Tensor::randint(97, [3, 21], (Kind::Int64, Device::Cpu));
        let (m, m2) = small_models();
        let whole = eval_loss(&m, &tokens, 1 << 20, None);
        let chunked = eval_loss(&m, &tokens, 7, None);
        assert!((whole - chunked).abs() < 1e-5, "{whole} vs {chunked}");
        let trained = forward_backward(&m2, &tokens, 1.0, 7, &[], None, None);
        assert!((whole - trained).abs() < 1e-5);
    }

    #[test]
    fn activation_checkpointing_gives_the_same_loss_and_gradients() {
        let tokens = Tensor::randint(97, [2, 19], (Kind::Int64, Device::Cpu));
        let (plain, mut ckpt) = small_models();
        // recomputation through the spliced MLP product too
        ckpt.rotary.swiglu = Some(std::sync::Arc::new(baichuan_model::baichuan::SwigluAten));
        let a = forward_backward(&plain, &tokens, 1.0, 1 << 20, &[false, false, false], None, None);
        let b = forward_backward(&ckpt, &tokens, 1.0, 1 << 20, &[true, false, true], None, None);
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        for ((name, x), (_, y)) in plain.named_parameters().iter().zip(ckpt.named_parameters()) {
            let diff = (x.grad() - y.grad()).abs().max().double_value(&[]);
            assert!(diff <= 1e-6, "{name}: {diff}");
        }
    }

    /// Two rows of packed documents (EOS = 2): EOS inside, two in a row, as the first input,
    /// and as the last target only.
    fn packed_tokens() -> Tensor {
        let tokens = Tensor::randint_low(3, 97, [2, 17], (Kind::Int64, Device::Cpu));
        for (r, c) in [(0, 3), (0, 9), (0, 10), (1, 0), (1, 6), (1, 16)] {
            let _ = tokens.get(r).get(c).fill_(2);
        }
        tokens
    }

    /// The targets of `tokens` (B, T+1) written out by hand: the next token, or ignored (-100)
    /// where the input is EOS unless `loss_after_eos`.
    fn masked_targets(tokens: &Tensor, loss_after_eos: bool) -> Tensor {
        let rows = Vec::<Vec<i64>>::try_from(tokens).unwrap();
        let want: Vec<i64> = rows
            .iter()
            .flat_map(|r| (0..r.len() - 1).map(move |i| if r[i] == 2 && !loss_after_eos { -100 } else { r[i + 1] }))
            .collect();
        Tensor::from_slice(&want)
    }

    /// The layer-wise step with document masking (spliced or reference ops, the MLP spliced,
    /// recomputed blocks, the target after EOS ignored or not) against one autograd graph of
    /// `Baichuan::forward_documents` and ATen's cross-entropy with mean reduction.
    #[test]
    fn document_masked_step_equals_the_full_graph() {
        let tokens = packed_tokens();
        let inputs = tokens.narrow(1, 0, 16);
        for (layer_wise_fused, graph_fused, mlp, recompute, loss_after_eos) in [
            (true, false, false, vec![], false),
            (false, false, false, vec![], false),
            (true, true, false, vec![true, false, true], true),
            (true, false, true, vec![true, true, true], false),
            (false, false, false, vec![false, true, false], true),
        ] {
            let (mut m1, mut m2) = small_models();
            m1.set_fused_ops(layer_wise_fused);
            m2.set_fused_ops(graph_fused);
            if mlp {
                m1.rotary.swiglu = Some(std::sync::Arc::new(baichuan_model::baichuan::SwigluAten));
            }
            let masking = DocMasking { eos: 2, loss_after_eos };
            let loss1 = forward_backward(&m1, &tokens, 1.0, 1 << 20, &recompute, Some(&masking), None);
            let docs = m2.documents(&inputs, 2).unwrap();
            let logits = m2.forward_documents(&inputs, Some(&docs)).to_kind(Kind::Float);
            let targets = masked_targets(&tokens, loss_after_eos);
            let loss2 = logits
                .view([-1, 97])
                .cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, -100, 0.0);
            loss2.backward();
            let case =
                format!("{layer_wise_fused} vs {graph_fused}, MLP {mlp}, {recompute:?}, after EOS {loss_after_eos}");
            let diff = (loss1 - loss2.double_value(&[])).abs();
            assert!(diff < 1e-6, "{case}: loss {diff}");
            for ((name, a), (_, b)) in m1.named_parameters().iter().zip(m2.named_parameters()) {
                let diff = (a.grad() - b.grad()).abs().max().double_value(&[]);
                assert!(diff < 1e-6, "{case}: {name}: {diff}");
            }
            // evaluation scores the same tokens
            let eval = eval_loss(&m1, &tokens, 7, Some(&masking));
            assert!((eval - loss1).abs() < 1e-5, "{case}: eval {eval} vs {loss1}");
            // and the masking matters: without it the loss is another
            let plain = eval_loss(&m1, &tokens, 1 << 20, None);
            assert!((plain - loss1).abs() > 1e-4, "{case}: masking changed nothing");
        }
    }

    /// Without an EOS in the inputs, document masking is plain causal training.
    #[test]
    fn document_masking_without_eos_is_the_plain_step() {
        let tokens = Tensor::randint_low(3, 97, [2, 17], (Kind::Int64, Device::Cpu));
        let (m1, m2) = small_models();
        let masking = DocMasking {
            eos: 2,
            loss_after_eos: false,
        };
        let a = forward_backward(&m1, &tokens, 1.0, 1 << 20, &[], Some(&masking), None);
        let b = forward_backward(&m2, &tokens, 1.0, 1 << 20, &[], None, None);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        for ((name, x), (_, y)) in m1.named_parameters().iter().zip(m2.named_parameters()) {
            let diff = (x.grad() - y.grad()).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{name}: {diff}");
        }
    }

    #[test]
    fn recompute_plans() {
        use crate::config::Checkpointing;
        assert_eq!(recompute_plan(4, Checkpointing::None, 2), vec![false; 4]);
        assert_eq!(recompute_plan(4, Checkpointing::Full, 2), vec![true; 4]);
        assert_eq!(
            recompute_plan(5, Checkpointing::EveryN, 2),
            vec![true, false, true, false, true]
        );
    }
}
