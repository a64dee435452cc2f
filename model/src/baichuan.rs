//! The Baichuan-7B network: RMSNorm, rotary embeddings, attention with the fused `W_pack`
//! projection, the SwiGLU MLP, the decoder block and the whole causal LM.
//!
//! Follows Baichuan Inc.'s `modeling_baichuan.py` (Baichuan-7B) and Hugging Face's
//! `modeling_llama.py`, which computes the same function: pre-norm RMSNorm with the variance
//! in fp32, RoPE (Su et al. 2021) base 10000 in the NeoX `rotate_half` form with cos/sin built
//! in fp32, causal attention through libtorch's fused `scaled_dot_product_attention`
//! (FlashAttention kernels on CUDA), `down(silu(gate(x)) * up(x))`, no biases, untied head.
//!
//! The element-wise parts have two forms computing the same function (`set_fused_ops`): the
//! Hugging Face formulation, and fused ops with fewer memory passes and autograd nodes. For
//! training, `Block::train_forward`/`train_backward` splice the rotation (and, with a
//! `SwigluKernel`, the MLP product) out of autograd, and `LossKernel` writes the logits'
//! gradient in place; docs/ARCHITECTURE.md (section 3) describes the splices and where the CUDA
//! kernels slot in.
//!
//! Document masking of packed samples (`Baichuan::forward_documents`, the `docs` of the
//! training block; `crate::documents`) restricts attention to each document and restarts the
//! rotary positions there; without documents every path is the one above, unchanged.
//!
//! Parameters are plain tensors named by their Hugging Face keys. The model exposes its
//! pieces (`embed`, `layers[i].forward`, `head`) so that the trainer can run the layer-wise
//! schedule (detached block inputs, recomputation, per-block gradient hand-off); the model
//! itself knows nothing of ranks, buckets or loss scaling.

use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::documents::{DocAttention, Documents};
use crate::ModelError;

/// Root-mean-square layer norm; the variance is always computed in fp32.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    /// ATen's fused `rms_norm` instead of the reference ops.
    pub fused: bool,
}

impl RmsNorm {
    fn new(size: i64, eps: f64, device: Device) -> Self {
        let weight = Tensor::ones([size], (Kind::Float, device)).set_requires_grad(true);
        RmsNorm {
            weight,
            eps,
            fused: true,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.fused {
            // fp32 statistics and weight product inside the kernel, one rounding to x's dtype
            return x.rms_norm([x.size()[x.dim() - 1]], Some(&self.weight), self.eps);
        }
        let dtype = x.kind();
        let xf = x.to_kind(Kind::Float);
        let variance = xf.square().mean_dim(-1, true, Kind::Float); // (B, T, 1)
        let normed = (xf * (variance + self.eps).rsqrt()).to_kind(dtype);
        normed * &self.weight
    }
}

/// Precomputed rotary tables `cos`, `sin`: (max_positions, head_dim), fp32, and `sin` with
/// the sign of `rotate_half` folded into its first half.
#[derive(Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    signed_sin: Tensor,
    /// The fused element-wise ops of the whole model (see the module notes).
    pub fused: bool,
    /// A device kernel for the spliced training block's rotation (the trainer installs one on
    /// CUDA); without one, ATen ops compute the same thing.
    pub kernel: Option<std::sync::Arc<dyn RotaryKernel>>,
    /// A device kernel for the SwiGLU product; with one (and the fused ops) the training block
    /// splices its MLP product out of autograd too (the trainer installs one on CUDA). Kept
    /// here because every block is handed the rotary state.
    pub swiglu: Option<std::sync::Arc<dyn SwigluKernel>>,
}

/// The SwiGLU product `silu(g) * u` as an explicit operator pair outside autograd, for the
/// training block's spliced MLP ([`Block::train_forward`]). Arithmetic in fp32, one rounding
/// to the activations' dtype.
pub trait SwigluKernel: Send + Sync + std::fmt::Debug {
    /// What runs, for logs.
    fn describe(&self) -> String;
    /// `silu(g) * u` of two same-shaped tensors.
    fn forward(&self, g: &Tensor, u: &Tensor) -> Tensor;
    /// The gradients of `g` and `u` from that of the product, `da`:
    /// `dg = da * u * s * (1 + g (1 - s))` with `s = sigmoid(g)`, `du = da * g * s`.
    fn backward(&self, g: &Tensor, u: &Tensor, da: &Tensor) -> (Tensor, Tensor);
}

/// [`SwigluKernel`] in ATen ops in fp32: the reference the CUDA kernel is checked against,
/// and what the CPU tests of the spliced MLP install.
#[derive(Debug)]
pub struct SwigluAten;

impl SwigluKernel for SwigluAten {
    fn describe(&self) -> String {
        "SwiGLU in ATen ops (fp32)".into()
    }

    fn forward(&self, g: &Tensor, u: &Tensor) -> Tensor {
        tch::no_grad(|| (g.to_kind(Kind::Float).silu() * u.to_kind(Kind::Float)).to_kind(g.kind()))
    }

    fn backward(&self, g: &Tensor, u: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let (g32, da32) = (g.to_kind(Kind::Float), da.to_kind(Kind::Float));
            let s = g32.sigmoid();
            let du = &da32 * &g32 * &s;
            let dsilu: Tensor = &s * ((-&s + 1.0) * &g32 + 1.0);
            let dg = da32 * u.to_kind(Kind::Float) * dsilu;
            (dg.to_kind(g.kind()), du.to_kind(g.kind()))
        })
    }
}

/// The rotation of Q and K as an explicit operator pair outside autograd, for the training
/// block that splices it between two autograd graphs ([`Block::train_forward`]).
pub trait RotaryKernel: Send + Sync + std::fmt::Debug {
    /// What runs, for logs.
    fn describe(&self) -> String;
    /// From `qkv` (B, T, 3, nh, hd), contiguous: Q and K rotated for positions 0..T, each
    /// (B, T, nh, hd) contiguous. `cos`, `sin`: fp32 (positions, hd) tables.
    fn forward(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor);
    /// The gradient of `qkv`, contiguous (B, T, 3, nh, hd), from those of the rotated Q and K
    /// and of V (each (B, T, nh, hd) with any strides): Q and K rotated back, V copied.
    fn backward(&self, dq: &Tensor, dk: &Tensor, dv: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor;
}

impl Rotary {
    pub fn new(head_dim: i64, max_positions: i64, base: f64, device: Device) -> Self {
        let exponent = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, device)) / head_dim as f64;
        let inv_freq = Tensor::pow_scalar(base, &exponent).reciprocal(); // (hd/2)
        let t = Tensor::arange(max_positions, (Kind::Float, device)); // (P)
        let freqs = t.unsqueeze(1) * inv_freq.unsqueeze(0); // (P, hd/2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1); // (P, hd)
        let sin = emb.sin();
        let signed_sin = Tensor::cat(&[-freqs.sin(), freqs.sin()], -1);
        Rotary {
            cos: emb.cos(),
            sin,
            signed_sin,
            fused: true,
            kernel: None,
            swiglu: None,
        }
    }

    /// fp32 (positions, hd) tables of the rotation angles' cosines and sines.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Q and K of `qkv` (B, T, 3, nh, hd) rotated for positions 0..T, outside autograd.
    pub fn rotate_qk(&self, qkv: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| match &self.kernel {
            Some(k) => k.forward(&qkv.contiguous(), &self.cos, &self.sin),
            None => {
                let qk = self.apply_bt(&qkv.narrow(2, 0, 2), 0); // (B, T, 2, nh, hd)
                (qk.select(2, 0), qk.select(2, 1))
            }
        })
    }

    /// The gradient of `qkv` from those of [`Rotary::rotate_qk`]'s outputs and of V: the
    /// transposed rotation, `dy * cos - roll(dy) * signed_sin`.
    pub fn unrotate(&self, dq: &Tensor, dk: &Tensor, dv: &Tensor) -> Tensor {
        tch::no_grad(|| match &self.kernel {
            Some(k) => k.backward(dq, dk, dv, &self.cos, &self.sin),
            None => {
                let dy = Tensor::stack(&[dq, dk], 2); // (B, T, 2, nh, hd)
                let size = dy.size();
                let (t, hd) = (size[1], size[4]);
                let cos = self.cos.narrow(0, 0, t).to_kind(dy.kind()).view([t, 1, 1, hd]);
                let sin = self.signed_sin.narrow(0, 0, t).to_kind(dy.kind()).view([t, 1, 1, hd]);
                let mut dx = &dy * cos;
                let _ = dx.addcmul_(&dy.roll([hd / 2], [-1]), &(-sin));
                Tensor::cat(&[dx, dv.unsqueeze(2)], 2)
            }
        })
    }

    /// [`Rotary::rotate_qk`] at per-token `positions` (B, T) int64 (document masking). The
    /// kernel's contract rotates row t of its tables into position t of every batch row, so it
    /// is handed the micro-batch as one row of B*T tokens with the tables gathered per token.
    pub fn rotate_qk_at(&self, qkv: &Tensor, positions: &Tensor) -> (Tensor, Tensor) {
        tch::no_grad(|| match &self.kernel {
            Some(k) => {
                let size = qkv.size(); // (B, T, 3, nh, hd)
                let (bt, nh, hd) = (size[0] * size[1], size[3], size[4]);
                let flat = qkv.contiguous().view([1, bt, 3, nh, hd]);
                let cos = self.gather(&self.cos, positions).view([bt, hd]);
                let sin = self.gather(&self.sin, positions).view([bt, hd]);
                let (q, k) = k.forward(&flat, &cos, &sin);
                let out = [size[0], size[1], nh, hd];
                (q.view(out), k.view(out))
            }
            None => {
                let qk = self.apply_bt_at(&qkv.narrow(2, 0, 2), positions); // (B, T, 2, nh, hd)
                (qk.select(2, 0), qk.select(2, 1))
            }
        })
    }

    /// [`Rotary::unrotate`] at per-token `positions` (B, T), the transpose of
    /// [`Rotary::rotate_qk_at`].
    pub fn unrotate_at(&self, dq: &Tensor, dk: &Tensor, dv: &Tensor, positions: &Tensor) -> Tensor {
        tch::no_grad(|| match &self.kernel {
            Some(k) => {
                let size = dq.size(); // (B, T, nh, hd)
                let (bt, nh, hd) = (size[0] * size[1], size[2], size[3]);
                let flat = |x: &Tensor| x.reshape([1, bt, nh, hd]);
                let cos = self.gather(&self.cos, positions).view([bt, hd]);
                let sin = self.gather(&self.sin, positions).view([bt, hd]);
                k.backward(&flat(dq), &flat(dk), &flat(dv), &cos, &sin)
                    .view([size[0], size[1], 3, nh, hd])
            }
            None => {
                let dy = Tensor::stack(&[dq, dk], 2); // (B, T, 2, nh, hd)
                let size = dy.size();
                let (b, t, hd) = (size[0], size[1], size[4]);
                let cos = self
                    .gather(&self.cos, positions)
                    .to_kind(dy.kind())
                    .view([b, t, 1, 1, hd]);
                let sin = self
                    .gather(&self.signed_sin, positions)
                    .to_kind(dy.kind())
                    .view([b, t, 1, 1, hd]);
                let mut dx = &dy * cos;
                let _ = dx.addcmul_(&dy.roll([hd / 2], [-1]), &(-sin));
                Tensor::cat(&[dx, dv.unsqueeze(2)], 2)
            }
        })
    }

    /// Rows of `table` (positions, hd) at `positions` (B, T): (B, T, hd), contiguous fp32.
    fn gather(&self, table: &Tensor, positions: &Tensor) -> Tensor {
        let size = positions.size();
        table
            .index_select(0, &positions.reshape([-1]))
            .view([size[0], size[1], -1])
    }

    /// [`Rotary::apply_bt`] at per-token `positions` (B, T) instead of `offset..offset+T`.
    pub fn apply_bt_at(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let size = x.size();
        let hd = size[size.len() - 1];
        let mut shape = vec![1i64; size.len()];
        shape[0] = size[0];
        shape[1] = size[1];
        shape[size.len() - 1] = hd; // (B, T, 1, .., 1, hd)
        let cos = self
            .gather(&self.cos, positions)
            .to_kind(x.kind())
            .view(shape.as_slice());
        let sin = self
            .gather(&self.signed_sin, positions)
            .to_kind(x.kind())
            .view(shape.as_slice());
        let mut y = x * cos;
        let _ = y.addcmul_(&x.roll([hd / 2], [-1]), &sin);
        y
    }

    /// [`Rotary::apply`] of `x` (B, nh, T, hd) at per-token `positions` (B, T).
    pub fn apply_at(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let cos = self.gather(&self.cos, positions).to_kind(x.kind()).unsqueeze(1); // (B, 1, T, hd)
        let sin = self.gather(&self.sin, positions).to_kind(x.kind()).unsqueeze(1);
        x * cos + rotate_half(x) * sin
    }

    fn move_to(&mut self, device: Device) {
        self.cos = self.cos.to_device(device);
        self.sin = self.sin.to_device(device);
        self.signed_sin = self.signed_sin.to_device(device);
    }

    /// Rotates `x`: (B, T, ..., hd) at positions `offset..offset+T` (dimension 1), as
    /// `x * cos + roll(x, hd/2) * signed_sin`: `roll` gives `[x2, x1]`, and the folded sign
    /// makes that `rotate_half(x) * sin`.
    pub fn apply_bt(&self, x: &Tensor, offset: i64) -> Tensor {
        let size = x.size();
        let (t, hd) = (size[1], size[size.len() - 1]);
        let mut shape = vec![1i64; size.len() - 2];
        shape[0] = t;
        shape.push(hd); // (T, 1, .., 1, hd), broadcast from dimension 1
        let cos = self.cos.narrow(0, offset, t).to_kind(x.kind()).view(shape.as_slice());
        let sin = self
            .signed_sin
            .narrow(0, offset, t)
            .to_kind(x.kind())
            .view(shape.as_slice());
        let mut y = x * cos;
        let _ = y.addcmul_(&x.roll([hd / 2], [-1]), &sin);
        y
    }

    /// Rotates `x`: (B, nh, T, hd) at positions `offset..offset+T`.
    pub fn apply(&self, x: &Tensor, offset: i64) -> Tensor {
        let t = x.size()[2];
        let cos = self.cos.narrow(0, offset, t).to_kind(x.kind()); // (T, hd)
        let sin = self.sin.narrow(0, offset, t).to_kind(x.kind());
        x * cos + rotate_half(x) * sin
    }
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves along the last dimension.
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// The fused attention kernel libtorch picks for this model's training attention at
/// `batch` x `seq_len` in `kind` on `device` (`at::_fused_sdp_choice`): "flash",
/// "efficient", "cudnn" or "math" (the unfused fallback).
pub fn attention_backend(config: &ModelConfig, batch: i64, seq_len: i64, kind: Kind, device: Device) -> &'static str {
    let shape = [batch, config.num_attention_heads, seq_len, config.head_dim()];
    let q = Tensor::zeros(shape, (kind, device)).set_requires_grad(true);
    let choice = Tensor::f_internal_fused_sdp_choice(&q, &q, &q, None::<Tensor>, 0.0, true, None, false);
    match choice {
        Ok(1) => "flash",
        Ok(2) => "efficient",
        Ok(3) => "cudnn",
        Ok(0) => "math",
        _ => "unknown",
    }
}

/// Keys and values of earlier positions for incremental decoding, preallocated per layer.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,   // per layer (B, nh, capacity, hd)
    values: Vec<Tensor>, // per layer (B, nh, capacity, hd)
    len: i64,
    capacity: i64,
}

impl KvCache {
    pub fn new(config: &ModelConfig, batch: i64, capacity: i64, kind: Kind, device: Device) -> Self {
        let shape = [batch, config.num_attention_heads, capacity, config.head_dim()];
        let layers = config.num_hidden_layers as usize;
        KvCache {
            keys: (0..layers).map(|_| Tensor::zeros(shape, (kind, device))).collect(),
            values: (0..layers).map(|_| Tensor::zeros(shape, (kind, device))).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }
}

/// Multi-head causal self-attention with the fused QKV projection `W_pack` (rows Q, K, V).
#[derive(Debug)]
pub struct Attention {
    pub w_pack: Tensor, // (3d, d)
    pub o_proj: Tensor, // (d, d)
    num_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// Self-attention restricted to `docs`, with rotary positions restarting per document.
    fn forward_documents(&self, x: &Tensor, rotary: &Rotary, docs: &Documents) -> Tensor {
        let (b, t, d) = x.size3().expect("attention input is (B, T, d)");
        let pos = docs.positions();
        let qkv = x
            .linear(&self.w_pack, None::<Tensor>)
            .view([b, t, 3, self.num_heads, self.head_dim]);
        let (q, k, v) = if rotary.fused {
            let parts = qkv.split_with_sizes([2, 1], 2);
            let qk = rotary.apply_bt_at(&parts[0], pos).unbind(2);
            (qk[0].shallow_clone(), qk[1].shallow_clone(), parts[1].squeeze_dim(2))
        // (B, T, nh, hd)
        } else {
            let qkv = qkv.permute([2, 0, 3, 1, 4]); // (3, B, nh, T, hd)
            let q = rotary.apply_at(&qkv.get(0), pos);
            let k = rotary.apply_at(&qkv.get(1), pos);
            (q.transpose(1, 2), k.transpose(1, 2), qkv.get(2).transpose(1, 2))
        };
        let y = docs.attend(&q, &k, &v).contiguous().view([b, t, d]);
        y.linear(&self.o_proj, None::<Tensor>)
    }

    fn forward(&self, x: &Tensor, rotary: &Rotary, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let (b, t, d) = x.size3().expect("attention input is (B, T, d)");
        let offset = cache.as_ref().map_or(0, |(c, _)| c.len);
        let qkv = x
            .linear(&self.w_pack, None::<Tensor>)
            .view([b, t, 3, self.num_heads, self.head_dim]);
        let (q, k, v) = if rotary.fused {
            // Q and K rotated together; every slice's gradient joins in one concatenation
            let parts = qkv.split_with_sizes([2, 1], 2); // (B, T, 2, nh, hd), (B, T, 1, nh, hd)
            let qk = rotary.apply_bt(&parts[0], offset).unbind(2);
            let v = parts[1].squeeze_dim(2);
            (qk[0].transpose(1, 2), qk[1].transpose(1, 2), v.transpose(1, 2)) // (B, nh, T, hd)
        } else {
            let qkv = qkv.permute([2, 0, 3, 1, 4]); // (3, B, nh, T, hd)
            let q = rotary.apply(&qkv.get(0), offset);
            let k = rotary.apply(&qkv.get(1), offset);
            (q, k, qkv.get(2))
        };
        let y = match cache {
            None => Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false),
            Some((cache, layer)) => {
                let end = offset + t;
                cache.keys[layer].narrow(2, offset, t).copy_(&k);
                cache.values[layer].narrow(2, offset, t).copy_(&v);
                let keys = cache.keys[layer].narrow(2, 0, end); // (B, nh, end, hd)
                let values = cache.values[layer].narrow(2, 0, end);
                if t == 1 {
                    // one new query sees every cached position
                    Tensor::scaled_dot_product_attention(&q, &keys, &values, None::<Tensor>, 0.0, false, None, false)
                } else {
                    // query i sits at position offset+i and sees keys 0..=offset+i
                    let mask = Tensor::ones([t, end], (Kind::Bool, x.device())).tril(offset);
                    Tensor::scaled_dot_product_attention(&q, &keys, &values, Some(mask), 0.0, false, None, false)
                }
            }
        }; // (B, nh, T, hd)
        let y = y.transpose(1, 2).contiguous().view([b, t, d]);
        y.linear(&self.o_proj, None::<Tensor>)
    }
}

/// The SwiGLU feed-forward layer: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Tensor, // (f, d)
    pub up_proj: Tensor,   // (f, d)
    pub down_proj: Tensor, // (d, f)
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let gate = x.linear(&self.gate_proj, None::<Tensor>).silu(); // (B, T, f)
        let up = x.linear(&self.up_proj, None::<Tensor>);
        (gate * up).linear(&self.down_proj, None::<Tensor>) // (B, T, d)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    /// `x`: (B, T, d) -> (B, T, d), positions 0..T, causal.
    pub fn forward(&self, x: &Tensor, rotary: &Rotary) -> Tensor {
        self.forward_documents(x, rotary, None)
    }

    /// [`Block::forward`], with `docs` restricted to each document (attention within it,
    /// positions from 0 at its start); None is [`Block::forward`].
    pub fn forward_documents(&self, x: &Tensor, rotary: &Rotary, docs: Option<&Documents>) -> Tensor {
        let normed = self.input_layernorm.forward(x);
        let attn = match docs {
            None => self.self_attn.forward(&normed, rotary, None),
            Some(docs) => self.self_attn.forward_documents(&normed, rotary, docs),
        };
        let h = x + attn;
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }

    fn forward_cached(&self, x: &Tensor, rotary: &Rotary, cache: &mut KvCache, layer: usize) -> Tensor {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), rotary, Some((cache, layer)));
        let h = x + attn;
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }

    /// Training forward of block input `x` (a leaf that requires grad). With the fused ops the
    /// rotation is spliced out of autograd: graph S1 runs from `x` to QKV; the rotation (a
    /// device kernel where one is installed) makes leaves of Q and K, V is a leaf view of QKV,
    /// and graph S2 runs from those leaves and `x` to the output. With the reference ops it is
    /// one graph, as in [`Block::forward`]. With `docs`, attention and rotary positions are
    /// restricted to each document ([`Block::forward_documents`]); the same `docs` must be
    /// passed to [`Block::train_backward`].
    pub fn train_forward(&self, x: &Tensor, rotary: &Rotary, docs: Option<&Documents>) -> BlockTape {
        if !rotary.fused {
            return BlockTape::Graph(self.forward_documents(x, rotary, docs));
        }
        let (b, t, d) = x.size3().expect("block input is (B, T, d)");
        let a = &self.self_attn;
        let qkv =
            self.input_layernorm
                .forward(x)
                .linear(&a.w_pack, None::<Tensor>)
                .view([b, t, 3, a.num_heads, a.head_dim]); // S1's output
        let (q, k) = match docs {
            None => rotary.rotate_qk(&qkv.detach()),
            Some(docs) => rotary.rotate_qk_at(&qkv.detach(), docs.positions()),
        };
        let (q, k) = (q.set_requires_grad(true), k.set_requires_grad(true));
        let v = qkv.detach().select(2, 2).set_requires_grad(true);
        let y = match docs {
            None => Tensor::scaled_dot_product_attention(
                &q.transpose(1, 2),
                &k.transpose(1, 2),
                &v.transpose(1, 2),
                None::<Tensor>,
                0.0,
                true,
                None,
                false,
            )
            .transpose(1, 2), // (B, T, nh, hd)
            Some(docs) => docs.attend(&q, &k, &v),
        };
        let y = y.contiguous().view([b, t, d]);
        let h = x + y.linear(&a.o_proj, None::<Tensor>);
        let Some(swiglu) = &rotary.swiglu else {
            let out = &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h));
            return BlockTape::Spliced {
                qkv,
                q,
                k,
                v,
                out,
                mlp: None,
            };
        };
        let n2 = self.post_attention_layernorm.forward(&h);
        let g = n2.linear(&self.mlp.gate_proj, None::<Tensor>); // S2's outputs, with h
        let u = n2.linear(&self.mlp.up_proj, None::<Tensor>);
        let act = swiglu.forward(&g.detach(), &u.detach());
        let out = tch::no_grad(|| &h + act.linear(&self.mlp.down_proj, None::<Tensor>));
        BlockTape::Spliced {
            qkv,
            q,
            k,
            v,
            out,
            mlp: Some(MlpTape { h, g, u, a: act }),
        }
    }

    /// Back-propagates `grad` (of `tape`'s output) through the block to its input leaf `x` and
    /// its parameters. With `collect`, returns the gradient of `x` and the parameters'
    /// (in [`Block::named_parameters`] order) without touching any `.grad()`; otherwise they
    /// accumulate into `x.grad()` and the parameters' `.grad()` and None is returned. `docs`
    /// are those `tape` was recorded with.
    pub fn train_backward(
        &self,
        tape: BlockTape,
        x: &Tensor,
        grad: &Tensor,
        rotary: &Rotary,
        docs: Option<&Documents>,
        collect: bool,
    ) -> Option<(Tensor, Vec<Tensor>)> {
        let params: Vec<&Tensor> = self.named_parameters().into_iter().map(|(_, p)| p).collect();
        // back-propagates `gs` from `ys`: into .grad, or returned for `inputs`
        let back_many = |ys: &[&Tensor], gs: &[&Tensor], inputs: &[&Tensor]| -> Vec<Tensor> {
            let done = if collect {
                crate::autograd::grad(ys, gs, inputs)
            } else {
                crate::autograd::backward(ys, gs).map(|_| Vec::new())
            };
            done.unwrap_or_else(|e| panic!("block backward: {e}"))
        };
        let back = |y: &Tensor, g: &Tensor, inputs: &[&Tensor]| back_many(&[y], &[g], inputs);
        match tape {
            BlockTape::Graph(out) => {
                let mut inputs = vec![x];
                inputs.extend(&params);
                let mut g = back(&out, grad, &inputs);
                collect.then(|| (g.remove(0), g))
            }
            BlockTape::Spliced { qkv, q, k, v, out, mlp } => {
                let mut inputs = vec![&q, &k, &v, x];
                let g2 = match mlp {
                    // S2: from the output to Q, K, V, x and the parameters after the rotation
                    None => {
                        inputs.extend(&params[2..]);
                        let g2 = back(&out, grad, &inputs);
                        drop(out);
                        g2
                    }
                    Some(MlpTape { h, g, u, a }) => {
                        drop(out);
                        // the down projection by hand: the product's gradient, and the weight's
                        // (returned, or added into its .grad)
                        let (d, f) = (self.mlp.down_proj.size()[0], self.mlp.down_proj.size()[1]);
                        let go = grad.reshape([-1, d]);
                        let a2 = a.reshape([-1, f]);
                        let da = tch::no_grad(|| go.mm(params[6])).view(g.size().as_slice());
                        let d_down = if collect {
                            Some(tch::no_grad(|| go.tr().mm(&a2)))
                        } else {
                            crate::autograd::accumulate_product(params[6], &go.tr(), &a2)
                                .unwrap_or_else(|e| panic!("block backward: {e}"));
                            None
                        };
                        drop((a, a2));
                        let swiglu = rotary.swiglu.as_ref().expect("a spliced MLP has its kernel");
                        let (dg, du) = swiglu.backward(&g, &u, &da);
                        drop(da);
                        // S2: from h (the residual passes the output's gradient), g and u
                        inputs.extend(&params[2..6]);
                        let mut g2 = back_many(&[&h, &g, &u], &[grad, &dg, &du], &inputs);
                        g2.extend(d_down);
                        g2
                    }
                };
                let (dq, dk, dv) = if collect {
                    (g2[0].shallow_clone(), g2[1].shallow_clone(), g2[2].shallow_clone())
                } else {
                    (q.grad(), k.grad(), v.grad())
                };
                let dqkv = match docs {
                    None => rotary.unrotate(&dq, &dk, &dv),
                    Some(docs) => rotary.unrotate_at(&dq, &dk, &dv, docs.positions()),
                };
                drop((dq, dk, dv));
                // S1: from QKV to x, the first norm and W_pack
                let g1 = back(&qkv, &dqkv, &[x, params[0], params[1]]);
                collect.then(|| {
                    let mut grads = vec![g1[1].shallow_clone(), g1[2].shallow_clone()];
                    grads.extend(g2[4..].iter().map(|g| g.shallow_clone()));
                    (&g1[0] + &g2[3], grads)
                })
            }
        }
    }

    /// The block's parameters with their names relative to `model.layers.{i}.`.
    pub fn named_parameters(&self) -> Vec<(&'static str, &Tensor)> {
        vec![
            ("input_layernorm.weight", &self.input_layernorm.weight),
            ("self_attn.W_pack.weight", &self.self_attn.w_pack),
            ("self_attn.o_proj.weight", &self.self_attn.o_proj),
            ("post_attention_layernorm.weight", &self.post_attention_layernorm.weight),
            ("mlp.gate_proj.weight", &self.mlp.gate_proj),
            ("mlp.up_proj.weight", &self.mlp.up_proj),
            ("mlp.down_proj.weight", &self.mlp.down_proj),
        ]
    }
}

/// What a training forward of a block leaves for its backward ([`Block::train_forward`]).
pub enum BlockTape {
    /// The output with one autograd graph back to the input (reference ops).
    Graph(Tensor),
    /// The rotation spliced out: QKV with graph S1, the Q, K, V leaves, and the output with
    /// graph S2; with the MLP product spliced out as well, S2 ends before it (see [`MlpTape`]).
    Spliced {
        qkv: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        mlp: Option<MlpTape>,
    },
}

/// The spliced MLP product: graph S2 ends at the residual stream `h` and the gate and up
/// projections `g`, `u`; the product `a = silu(g) * u` and the down projection run outside
/// autograd (the block's output is `h + down(a)`), their backward by hand.
pub struct MlpTape {
    h: Tensor,
    g: Tensor,
    u: Tensor,
    a: Tensor,
}

impl BlockTape {
    /// The block's output.
    pub fn output(&self) -> &Tensor {
        match self {
            BlockTape::Graph(out) | BlockTape::Spliced { out, .. } => out,
        }
    }
}

/// The Baichuan-7B causal language model.
#[derive(Debug)]
pub struct Baichuan {
    pub config: ModelConfig,
    pub embed_tokens: Tensor, // (V, d)
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    pub lm_head: Tensor, // (V, d)
    pub rotary: Rotary,
    /// A device kernel for the token cross-entropy (the trainer installs one on CUDA); without
    /// one, [`cross_entropy_aten`] computes the same thing.
    pub loss_kernel: Option<std::sync::Arc<dyn LossKernel>>,
}

/// Targets equal to this are ignored: no loss, no gradient (ATen's and Hugging Face's
/// convention).
pub const IGNORE_INDEX: i64 = -100;

/// The token cross-entropy as one explicit operator outside autograd, for the trainer's head
/// (see the module notes).
pub trait LossKernel: Send + Sync + std::fmt::Debug {
    /// What runs, for logs.
    fn describe(&self) -> String;
    /// Per-row losses `logsumexp(x) - x[target]` in fp32, shape (N,), of `logits` (N, V)
    /// contiguous against `targets` (N,) int64; rows whose target is [`IGNORE_INDEX`] give 0.
    /// Arithmetic in fp32 whatever the logits' dtype. With `grad_scale`, the logits are
    /// overwritten with `grad_scale` times the gradient of the losses' sum,
    /// `softmax(x) - onehot(target)` (zero on ignored rows), rounded once to their dtype.
    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor;
}

/// [`LossKernel::cross_entropy`] in ATen ops: fp32 log-softmax, the target's entry gathered,
/// the gradient as the exponentiated log-softmax with one subtracted at the target.
pub fn cross_entropy_aten(logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor {
    tch::no_grad(|| {
        let mut logp = logits.log_softmax(-1, Kind::Float); // (N, V)
        let ignored = targets.eq(IGNORE_INDEX);
        let index = targets.masked_fill(&ignored, 0).unsqueeze(1); // (N, 1)
        let losses = logp
            .gather(1, &index, false)
            .squeeze_dim(1)
            .neg()
            .masked_fill(&ignored, 0.0);
        if let Some(scale) = grad_scale {
            let mut grad = logp.exp_(); // softmax, in place
            let minus_one = Tensor::full([index.size()[0], 1], -1.0, (Kind::Float, logits.device()));
            let _ = grad.scatter_add_(1, &index, &minus_one);
            // the scale and the ignored rows' zeros in one pass that writes the logits' dtype
            let row_scale = ignored.logical_not().to_kind(Kind::Float).unsqueeze(1) * scale;
            let _ = grad.mul_out(logits, &row_scale);
        }
        losses
    })
}

fn param(shape: &[i64], std: f64, device: Device) -> Tensor {
    let mut t = Tensor::empty(shape, (Kind::Float, device));
    let _ = t.normal_(0.0, std);
    t.set_requires_grad(true)
}

impl Baichuan {
    /// A freshly initialised fp32 model: every matrix normal(0, initializer_range), norms
    /// one, the padding row of the embedding zero (as the reference's `_init_weights`).
    /// Seed libtorch (`tch::manual_seed`) first for a reproducible draw.
    pub fn new(config: &ModelConfig, device: Device) -> Result<Self, ModelError> {
        config.validate()?;
        let (v, d, f) = (config.vocab_size, config.hidden_size, config.intermediate_size);
        let std = config.initializer_range;
        let embed_tokens = param(&[v, d], std, device);
        if let Some(pad) = config.pad_token_id {
            tch::no_grad(|| {
                let _ = embed_tokens.get(pad).zero_();
            });
        }
        let layers = (0..config.num_hidden_layers)
            .map(|_| Block {
                input_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                self_attn: Attention {
                    w_pack: param(&[3 * d, d], std, device),
                    o_proj: param(&[d, d], std, device),
                    num_heads: config.num_attention_heads,
                    head_dim: config.head_dim(),
                },
                post_attention_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
                mlp: Mlp {
                    gate_proj: param(&[f, d], std, device),
                    up_proj: param(&[f, d], std, device),
                    down_proj: param(&[d, f], std, device),
                },
            })
            .collect();
        Ok(Baichuan {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::new(d, config.rms_norm_eps, device),
            lm_head: param(&[v, d], std, device),
            rotary: Rotary::new(
                config.head_dim(),
                config.max_position_embeddings,
                config.rope_theta,
                device,
            ),
            loss_kernel: None,
        })
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// Chooses the fused element-wise ops (the default) or the reference ones; both compute
    /// the same function (see the module notes).
    pub fn set_fused_ops(&mut self, fused: bool) {
        self.rotary.fused = fused;
        self.norm.fused = fused;
        for block in &mut self.layers {
            block.input_layernorm.fused = fused;
            block.post_attention_layernorm.fused = fused;
        }
    }

    /// The dtype of the parameters (all share one).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Every parameter with its Hugging Face name, in a fixed order: embedding, blocks in
    /// order, final norm, head. The tensors share storage and autograd state with the model.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, block) in self.layers.iter().enumerate() {
            for (name, t) in block.named_parameters() {
                out.push((format!("model.layers.{i}.{name}"), t));
            }
        }
        out.push(("model.norm.weight".to_string(), &self.norm.weight));
        out.push(("lm_head.weight".to_string(), &self.lm_head));
        out
    }

    pub fn parameters(&self) -> Vec<&Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Replaces every parameter's data by a copy in `kind` on `device`, in place (the
    /// parameter tensors keep their identity), and moves the rotary tables.
    pub fn to(&mut self, device: Device, kind: Kind) {
        tch::no_grad(|| {
            for p in self.parameters() {
                let mut p = p.shallow_clone();
                p.set_data(&p.to_device(device).to_kind(kind));
            }
        });
        self.rotary.move_to(device);
    }

    /// Token embedding: ids (B, T) int64 -> (B, T, d). The padding row gets no gradient.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        let pad = self.config.pad_token_id.unwrap_or(-1);
        Tensor::embedding(&self.embed_tokens, ids, pad, false, false)
    }

    /// Final norm and head: (B, T, d) -> logits (B, T, V) in the parameter dtype.
    pub fn head(&self, h: &Tensor) -> Tensor {
        self.norm.forward(h).linear(&self.lm_head, None::<Tensor>)
    }

    /// Per-row token cross-entropy of `logits` (N, V) against `targets` (N,), through the
    /// installed [`LossKernel`] or [`cross_entropy_aten`]; see [`LossKernel::cross_entropy`]
    /// (with `grad_scale`, the logits are overwritten with the gradient).
    pub fn token_losses(&self, logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor {
        match &self.loss_kernel {
            Some(k) => k.cross_entropy(logits, targets, grad_scale),
            None => cross_entropy_aten(logits, targets, grad_scale),
        }
    }

    /// Runs block `i` on (B, T, d).
    pub fn block(&self, i: usize, x: &Tensor) -> Tensor {
        self.layers[i].forward(x, &self.rotary)
    }

    /// The whole network on ids (B, T): logits (B, T, V).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let mut h = self.embed(ids);
        for i in 0..self.layers.len() {
            h = self.block(i, &h);
        }
        self.head(&h)
    }

    /// The documents of `ids` (B, T) split after each `eos`, in the attention form that suits
    /// this model's device, dtype and head size ([`DocAttention::preferred`]).
    pub fn documents(&self, ids: &Tensor, eos: i64) -> Result<Documents, ModelError> {
        let form = DocAttention::preferred(ids.device(), self.kind(), self.config.head_dim());
        Documents::new(ids, eos, form)
    }

    /// [`Baichuan::forward`] with document masking: each token attends only to earlier tokens
    /// of its own document, at rotary positions counted from the document's start (see
    /// [`crate::documents`]). `docs` of `ids`; None is [`Baichuan::forward`].
    pub fn forward_documents(&self, ids: &Tensor, docs: Option<&Documents>) -> Tensor {
        let mut h = self.embed(ids);
        for block in &self.layers {
            h = block.forward_documents(&h, &self.rotary, docs);
        }
        self.head(&h)
    }

    /// Incremental forward for decoding: appends `ids` (B, T) after the cached positions and
    /// returns the logits of the last position (B, V).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let t = ids.size()[1];
        if cache.len + t > cache.capacity {
            return Err(ModelError::Config(format!(
                "sequence of {} tokens exceeds the cache capacity {} (max_position_embeddings {})",
                cache.len + t,
                cache.capacity,
                self.config.max_position_embeddings
            )));
        }
        let mut h = self.embed(ids);
        for (i, block) in self.layers.iter().enumerate() {
            h = block.forward_cached(&h, &self.rotary, cache, i);
        }
        cache.len += t;
        let last = h.narrow(1, t - 1, 1); // (B, 1, d)
        Ok(self.head(&last).squeeze_dim(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelConfig {
        ModelConfig {
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 32,
            ..ModelConfig::tiny()
        }
    }

    #[test]
    fn parameter_names_and_count_match_the_config() {
        let c = tiny();
        let m = Baichuan::new(&c, Device::Cpu).unwrap();
        let named = m.named_parameters();
        let total: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(total as u64, c.num_parameters());
        assert_eq!(named[0].0, "model.embed_tokens.weight");
        assert_eq!(named[2].0, "model.layers.0.self_attn.W_pack.weight");
        assert_eq!(named[2].1.size(), vec![48, 16]);
        assert_eq!(named.last().unwrap().0, "lm_head.weight");
        // the padding row starts at zero
        assert_eq!(m.embed_tokens.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn rms_norm_matches_its_definition() {
        let n = RmsNorm::new(4, 1e-6, Device::Cpu);
        let x = Tensor::from_slice(&[1.0f32, -2.0, 3.0, -4.0]).view([1, 1, 4]);
        let y = n.forward(&x);
        let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f64 + 1e-6).sqrt();
        let got = y.double_value(&[0, 0, 3]);
        assert!((got - (-4.0 / rms)).abs() < 1e-6, "{got}");
    }

    #[test]
    fn rotary_keeps_norms_and_is_identity_at_position_zero() {
        let r = Rotary::new(8, 16, 10000.0, Device::Cpu);
        let x = Tensor::randn([1, 2, 5, 8], (Kind::Float, Device::Cpu));
        let y = r.apply(&x, 0);
        let d0 = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1)).abs().max().double_value(&[]);
        assert!(d0 < 1e-7);
        let nx = x.square().sum_dim_intlist(-1, false, Kind::Float);
        let ny = y.square().sum_dim_intlist(-1, false, Kind::Float);
        assert!((nx - ny).abs().max().double_value(&[]) < 1e-5);
    }

    /// Logits and every parameter's gradient of a small loss, with the fused or reference ops.
    fn logits_and_grads(m: &mut Baichuan, ids: &Tensor, fused: bool) -> (Tensor, Vec<Tensor>) {
        m.set_fused_ops(fused);
        for p in m.parameters() {
            p.shallow_clone().zero_grad();
        }
        let logits = m.forward(ids);
        (logits.to_kind(Kind::Float).square().mean(Kind::Float)).backward();
        let grads = m
            .parameters()
            .iter()
            .map(|p| p.grad().to_kind(Kind::Float).copy())
            .collect();
        (logits.detach().to_kind(Kind::Float), grads)
    }

    #[test]
    fn fused_ops_compute_the_reference_function_and_gradients() {
        tch::manual_seed(3);
        let c = tiny();
        let ids = Tensor::randint(c.vocab_size, [2, 11], (Kind::Int64, Device::Cpu));
        for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 3e-2)] {
            let mut m = Baichuan::new(&c, Device::Cpu).unwrap();
            m.to(Device::Cpu, kind);
            // random norm weights, so the weight product and its gradient are exercised
            tch::no_grad(|| {
                for b in &m.layers {
                    let _ = b.input_layernorm.weight.shallow_clone().uniform_(0.5, 1.5);
                }
            });
            let (l_ref, g_ref) = logits_and_grads(&mut m, &ids, false);
            let (l_fused, g_fused) = logits_and_grads(&mut m, &ids, true);
            let rel = |a: &Tensor, b: &Tensor| {
                ((a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-12)).abs()
            };
            let lr = rel(&l_fused, &l_ref);
            assert!(lr < tol, "{kind:?}: logits differ by {lr}");
            for ((name, _), (a, b)) in m.named_parameters().iter().zip(g_fused.iter().zip(&g_ref)) {
                let gr = rel(a, b);
                assert!(gr < 3.0 * tol, "{kind:?}: gradient of {name} differs by {gr}");
            }
            // the two rotary forms agree on (B, nh, T, hd) and (B, T, nh, hd) layouts
            let x = Tensor::randn([2, 3, 7, 8], (Kind::Float, Device::Cpu));
            let r = Rotary::new(8, 16, 10000.0, Device::Cpu);
            let a = r.apply(&x, 4);
            let b = r.apply_bt(&x.transpose(1, 2), 4).transpose(1, 2);
            assert!((a - b).abs().max().double_value(&[]) < 1e-6);
        }
    }

    /// The explicit loss operator against ATen's `cross_entropy` and its autograd gradient,
    /// with an ignored row; in bf16 the logits' values are the same, so only the gradient's
    /// final rounding differs.
    #[test]
    fn the_aten_loss_operator_equals_cross_entropy_and_its_gradient() {
        let targets = Tensor::from_slice(&[3i64, 0, IGNORE_INDEX, 36, 9]);
        for kind in [Kind::Float, Kind::BFloat16] {
            let x = (Tensor::randn([5, 37], (Kind::Float, Device::Cpu)) * 4.0).to_kind(kind);
            let leaf = x.to_kind(Kind::Float).set_requires_grad(true);
            let want = leaf.cross_entropy_loss::<Tensor>(&targets, None, tch::Reduction::Sum, IGNORE_INDEX, 0.0);
            (&want * 0.25).backward();
            let logits = x.copy();
            let losses = cross_entropy_aten(&logits, &targets, Some(0.25));
            assert_eq!(losses.size(), vec![5]);
            assert_eq!(losses.double_value(&[2]), 0.0, "ignored row");
            let diff = (losses.sum(Kind::Float) - &want).abs().double_value(&[]);
            assert!(diff < 1e-5, "{kind:?}: loss off by {diff}");
            let tol = if kind == Kind::Float { 1e-6 } else { 2e-3 };
            let diff = (logits.to_kind(Kind::Float) - leaf.grad())
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < tol, "{kind:?}: gradient off by {diff}");
            assert_eq!(logits.get(2).abs().sum(Kind::Float).double_value(&[]), 0.0);
            // without a gradient the logits are left alone
            let kept = x.copy();
            let again = cross_entropy_aten(&kept, &targets, None);
            assert!(again.equal(&losses));
            assert!(kept.equal(&x));
        }
    }

    /// A [`RotaryKernel`] in ATen ops that keeps the kernel's contract to the letter: row t of
    /// the tables rotates position t of every batch row (as cuda/kernels/rotary.cu indexes them).
    #[derive(Debug)]
    struct TableKernel;

    impl RotaryKernel for TableKernel {
        fn describe(&self) -> String {
            "test".into()
        }

        fn forward(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor) {
            let size = qkv.size();
            let (t, hd) = (size[1], size[4]);
            let (c, s) = (
                cos.narrow(0, 0, t).view([t, 1, 1, hd]),
                sin.narrow(0, 0, t).view([t, 1, 1, hd]),
            );
            let x = qkv.narrow(2, 0, 2).to_kind(Kind::Float);
            let rot = Tensor::cat(&[-x.narrow(4, hd / 2, hd / 2), x.narrow(4, 0, hd / 2)], 4);
            let y = (&x * c + rot * s).to_kind(qkv.kind());
            (y.select(2, 0).contiguous(), y.select(2, 1).contiguous())
        }

        fn backward(&self, dq: &Tensor, dk: &Tensor, dv: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
            let size = dq.size();
            let (t, hd) = (size[1], size[3]);
            let (c, s) = (
                cos.narrow(0, 0, t).view([t, 1, 1, hd]),
                sin.narrow(0, 0, t).view([t, 1, 1, hd]),
            );
            let g = Tensor::stack(&[dq, dk], 2).to_kind(Kind::Float);
            // the transpose of y = x c + rotate_half(x) s: dx = g c - rotate_half(g s)
            let gs = &g * s;
            let back = Tensor::cat(&[gs.narrow(4, hd / 2, hd / 2), -gs.narrow(4, 0, hd / 2)], 4);
            let dx = (g * c + back).to_kind(dq.kind());
            Tensor::cat(&[dx, dv.unsqueeze(2)], 2)
        }
    }

    /// Per-token positions: a row counting from `offset` is `apply`'s and `apply_bt`'s offset
    /// form; a row of restarts rotates each piece as if it stood alone; and the kernel path
    /// (the micro-batch flattened to one row with gathered tables) equals the tensor path.
    #[test]
    fn rotary_at_positions() {
        let r = Rotary::new(8, 16, 10000.0, Device::Cpu);
        let x = Tensor::randn([2, 3, 7, 8], (Kind::Float, Device::Cpu)); // (B, nh, T, hd)
        let counting = (Tensor::arange(7, (Kind::Int64, Device::Cpu)) + 4).expand([2, 7], false);
        let max = |a: Tensor| a.abs().max().double_value(&[]);
        assert!(max(r.apply_at(&x, &counting) - r.apply(&x, 4)) < 1e-6);
        let xt = x.transpose(1, 2); // (B, T, nh, hd)
        assert!(max(r.apply_bt_at(&xt, &counting) - r.apply_bt(&xt, 4)) < 1e-6);
        // positions 0 1 2 0 1 0 1: the pieces rotate as alone at offset 0
        let restart = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 0, 1])
            .view([1, 7])
            .expand([2, 7], false);
        let y = r.apply_at(&x, &restart);
        for (start, len) in [(0, 3), (3, 2), (5, 2)] {
            let alone = r.apply(&x.narrow(2, start, len), 0);
            assert!(max(y.narrow(2, start, len) - alone) < 1e-6);
        }
        // the spliced pair, with and without a kernel, at positions that differ per row
        let positions = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 0, 1, 0, 0, 1, 2, 3, 4, 5]).view([2, 7]);
        let qkv = Tensor::randn([2, 7, 3, 3, 8], (Kind::Float, Device::Cpu));
        let mut with = Rotary::new(8, 16, 10000.0, Device::Cpu);
        with.kernel = Some(std::sync::Arc::new(TableKernel));
        let (q0, k0) = r.rotate_qk_at(&qkv, &positions);
        let (q1, k1) = with.rotate_qk_at(&qkv, &positions);
        assert!(max(&q0 - q1) < 1e-6 && max(&k0 - k1) < 1e-6);
        let q_ref = r
            .apply_at(&qkv.select(2, 0).transpose(1, 2), &positions)
            .transpose(1, 2);
        assert!(max(&q0 - q_ref) < 1e-6);
        // gradients with attention's transposed strides
        let g: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn([2, 3, 7, 8], (Kind::Float, Device::Cpu)).transpose(1, 2))
            .collect();
        let d0 = r.unrotate_at(&g[0], &g[1], &g[2], &positions);
        let d1 = with.unrotate_at(&g[0], &g[1], &g[2], &positions);
        assert_eq!(d0.size(), vec![2, 7, 3, 3, 8]);
        assert!(max(&d0 - d1) < 1e-6);
        // unrotate is the transpose of rotate: <rotate(x), g> = <x, unrotate(g)>
        let lhs = (q0 * &g[0]).sum(Kind::Double)
            + (k0 * &g[1]).sum(Kind::Double)
            + (qkv.select(2, 2) * &g[2]).sum(Kind::Double);
        let rhs = (&qkv * &d0).sum(Kind::Double);
        assert!((lhs - rhs).abs().double_value(&[]) < 1e-4);
    }

    /// With documents: no EOS is plain causal attention, and a packed row's second document
    /// sees nothing of the first (its logits equal its own forward alone).
    #[test]
    fn document_forward_isolates_documents() {
        tch::manual_seed(5);
        let mut m = Baichuan::new(&tiny(), Device::Cpu).unwrap();
        let max = |a: Tensor| a.abs().max().double_value(&[]);
        for fused in [true, false] {
            m.set_fused_ops(fused);
            let plain = Tensor::from_slice(&[3i64, 4, 5, 6, 7, 8]).view([1, 6]);
            let docs = m.documents(&plain, 2).unwrap();
            let (a, b) = tch::no_grad(|| (m.forward(&plain), m.forward_documents(&plain, Some(&docs))));
            assert!(max(a - b) < 1e-5, "fused {fused}");
            let packed = Tensor::from_slice(&[9i64, 10, 11, 2, 5, 6, 7]).view([1, 7]);
            let docs = m.documents(&packed, 2).unwrap();
            let (whole, first, second) = tch::no_grad(|| {
                (
                    m.forward_documents(&packed, Some(&docs)),
                    m.forward(&packed.narrow(1, 0, 4)),
                    m.forward(&packed.narrow(1, 4, 3)),
                )
            });
            assert!(max(whole.narrow(1, 0, 4) - first) < 1e-5, "fused {fused}");
            assert!(max(whole.narrow(1, 4, 3) - &second) < 1e-5, "fused {fused}");
            // without the mask the second document's logits depend on the first
            let unmasked = tch::no_grad(|| m.forward(&packed));
            assert!(max(unmasked.narrow(1, 4, 3) - second) > 1e-4);
        }
    }

    #[test]
    fn the_model_is_causal() {
        tch::manual_seed(0);
        let m = Baichuan::new(&tiny(), Device::Cpu).unwrap();
        let a = Tensor::from_slice(&[3i64, 4, 5, 6, 7]).view([1, 5]);
        let b = Tensor::from_slice(&[3i64, 4, 5, 9, 9]).view([1, 5]);
        let (la, lb) = tch::no_grad(|| (m.forward(&a), m.forward(&b)));
        let diff = (la.narrow(1, 0, 3) - lb.narrow(1, 0, 3)).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "earlier positions changed by {diff}");
        let later = (la.narrow(1, 3, 2) - lb.narrow(1, 3, 2)).abs().max().double_value(&[]);
        assert!(later > 1e-4);
    }

    #[test]
    fn the_cpu_picks_the_fused_flash_kernel_for_fp32_and_bf16() {
        for kind in [Kind::Float, Kind::BFloat16] {
            assert_eq!(
                attention_backend(&tiny(), 2, 16, kind, Device::Cpu),
                "flash",
                "{kind:?}"
            );
        }
    }

    #[test]
    fn cached_decoding_equals_the_full_forward() {
        tch::manual_seed(1);
        let c = tiny();
        let m = Baichuan::new(&c, Device::Cpu).unwrap();
        let ids = Tensor::from_slice(&[5i64, 9, 2, 7, 11, 13, 1]).view([1, 7]);
        let full = tch::no_grad(|| m.forward(&ids)); // (1, 7, V)
        let mut cache = KvCache::new(&c, 1, 16, Kind::Float, Device::Cpu);
        tch::no_grad(|| {
            // prefill 4 tokens, then one at a time, then a chunk of 2 against a warm cache
            let l = m.forward_cached(&ids.narrow(1, 0, 4), &mut cache).unwrap();
            assert!((l - full.get(0).get(3)).abs().max().double_value(&[]) < 1e-5);
            let l = m.forward_cached(&ids.narrow(1, 4, 1), &mut cache).unwrap();
            assert!((l - full.get(0).get(4)).abs().max().double_value(&[]) < 1e-5);
            let l = m.forward_cached(&ids.narrow(1, 5, 2), &mut cache).unwrap();
            assert!((l - full.get(0).get(6)).abs().max().double_value(&[]) < 1e-5);
        });
        assert_eq!(cache.len(), 7);
    }
}
