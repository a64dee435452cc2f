//! Document masking of packed samples: attention restricted to the current document
//! (block-diagonal causal) and rotary positions that restart at 0 at each document start.
//!
//! Packing concatenates documents, each ending with EOS and none starting with BOS
//! (docs/ARCHITECTURE.md, section 1.1), into fixed-length rows, so without a mask a token
//! attends to earlier, unrelated documents of its row. Follows the intra-document causal
//! masking of Llama 3 ("The Llama 3 Herd of Models", 2024, section 3.2: "an attention mask
//! that prevents self-attention between different documents within the same sequence") and
//! the position reset of packed sequences in Hugging Face's `DataCollatorWithFlattening` /
//! FlashAttention-2's `flash_attn_varlen_func` (Dao 2023), whose cumulative sequence lengths
//! the CUDA form uses.
//!
//! Semantics, for a row of input ids (B, T): a document starts at position 0 and at every
//! position right after an EOS (the EOS belongs to the document it ends, so consecutive EOS
//! make one-token documents). Positions count from 0 within each document. Query i attends
//! key j iff `j <= i` and both lie in the same document.
//!
//! Two forms compute the same function ([`DocAttention`]): a dense boolean mask (B, 1, T, T)
//! through `scaled_dot_product_attention` (any device and dtype; the reference), and libtorch's
//! variable-length FlashAttention over the B*T tokens as one packed batch of documents
//! (`at::_flash_attention_forward` with cumulative sequence lengths, through the C++ shim
//! model/csrc/varlen.cpp, since tch 0.24 binds only its backward; CUDA, fp16 and bf16).

use std::ffi::{c_char, c_int};

use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

use crate::ModelError;

extern "C" {
    fn baichuan_flash_varlen(
        q: *mut C_tensor,
        k: *mut C_tensor,
        v: *mut C_tensor,
        cu_seqlens: *mut C_tensor,
        max_len: i64,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// How attention is restricted to documents; both forms compute the same function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocAttention {
    /// A dense boolean mask (B, 1, T, T) through `scaled_dot_product_attention`: any device
    /// and dtype, O(T^2) mask memory per row. The reference.
    Dense,
    /// Variable-length causal FlashAttention over the micro-batch's documents
    /// ([`flash_varlen`]): CUDA (sm80+), fp16 or bf16, head_dim a multiple of 8 up to 256.
    Varlen,
}

impl DocAttention {
    /// [`DocAttention::Varlen`] where FlashAttention-2 runs (CUDA, fp16 or bf16, head_dim a
    /// multiple of 8 up to 256), else [`DocAttention::Dense`].
    pub fn preferred(device: Device, kind: Kind, head_dim: i64) -> Self {
        let half = matches!(kind, Kind::BFloat16 | Kind::Half);
        if device.is_cuda() && half && head_dim % 8 == 0 && head_dim <= 256 {
            DocAttention::Varlen
        } else {
            DocAttention::Dense
        }
    }
}

#[derive(Debug)]
enum Form {
    Dense { mask: Tensor },
    Varlen { cu_seqlens: Tensor, max_len: i64 },
}

/// The documents of a micro-batch of input ids (B, T): per-token positions and the attention
/// restriction, on the ids' device. Built once per micro-batch and shared by every block.
#[derive(Debug)]
pub struct Documents {
    positions: Tensor,
    form: Form,
}

impl Documents {
    /// The documents of `ids` (B, T) int64 split after every `eos` (see the module notes), with
    /// attention in the form `attention`. The varlen form reads the documents' boundaries to
    /// the host (one device synchronisation).
    pub fn new(ids: &Tensor, eos: i64, attention: DocAttention) -> Result<Self, ModelError> {
        let (b, t) = ids
            .size2()
            .map_err(|_| ModelError::Config(format!("document masking: ids must be (B, T), got {:?}", ids.size())))?;
        if ids.kind() != Kind::Int64 || t < 1 {
            return Err(ModelError::Config(format!(
                "document masking: ids must be int64 (B, T) with T >= 1, got {:?} {:?}",
                ids.kind(),
                ids.size()
            )));
        }
        let device = ids.device();
        tch::no_grad(|| {
            // a document starts at 0 and right after every EOS
            let first = Tensor::ones([b, 1], (Kind::Bool, device));
            let starts = Tensor::cat(&[first, ids.narrow(1, 0, t - 1).eq(eos)], 1); // (B, T)
            let index = Tensor::arange(t, (Kind::Int64, device)).expand([b, t], false);
            // each token's document start: the last start at or before it
            let (start_of, _) = index.where_self(&starts, &index.zeros_like()).cummax(1);
            let positions = &index - &start_of;
            let form = match attention {
                DocAttention::Dense => {
                    let keys = Tensor::arange(t, (Kind::Int64, device)).view([1, 1, t]);
                    let same_doc = keys.ge_tensor(&start_of.unsqueeze(2)); // j >= start(i)
                    let causal = keys.le_tensor(&keys.view([1, t, 1])); // j <= i
                    Form::Dense {
                        mask: same_doc.logical_and(&causal).unsqueeze(1), // (B, 1, T, T)
                    }
                }
                DocAttention::Varlen => {
                    // the rows' tokens as one sequence: each row's position 0 is a start too
                    let at = starts.reshape([-1]).nonzero().squeeze_dim(1); // int64 (documents)
                    let end = Tensor::from_slice(&[b * t]).to_device(device);
                    let cu = Tensor::cat(&[at, end], 0);
                    let n = cu.size()[0];
                    let max_len = (cu.narrow(0, 1, n - 1) - cu.narrow(0, 0, n - 1)).max().int64_value(&[]);
                    Form::Varlen {
                        cu_seqlens: cu.to_kind(Kind::Int).contiguous(),
                        max_len,
                    }
                }
            };
            Ok(Documents { positions, form })
        })
    }

    /// Each token's position within its document, (B, T) int64.
    pub fn positions(&self) -> &Tensor {
        &self.positions
    }

    /// Which form the attention takes.
    pub fn attention(&self) -> DocAttention {
        match self.form {
            Form::Dense { .. } => DocAttention::Dense,
            Form::Varlen { .. } => DocAttention::Varlen,
        }
    }

    /// The dense form's mask (B, 1, T, T), true where query i may attend key j.
    pub fn mask(&self) -> Option<&Tensor> {
        match &self.form {
            Form::Dense { mask } => Some(mask),
            Form::Varlen { .. } => None,
        }
    }

    /// The varlen form's cumulative document lengths over the B*T tokens (int32, documents
    /// + 1, from 0 to B*T) and the longest document's length.
    pub fn cu_seqlens(&self) -> Option<(&Tensor, i64)> {
        match &self.form {
            Form::Varlen { cu_seqlens, max_len } => Some((cu_seqlens, *max_len)),
            Form::Dense { .. } => None,
        }
    }

    /// Document-masked causal attention of `q`, `k`, `v` (B, T, nh, hd), each with unit stride
    /// along hd; returns (B, T, nh, hd). Differentiable (autograd records either form).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        match &self.form {
            Form::Dense { mask } => Tensor::scaled_dot_product_attention(
                &q.transpose(1, 2),
                &k.transpose(1, 2),
                &v.transpose(1, 2),
                Some(mask),
                0.0,
                false,
                None,
                false,
            )
            .transpose(1, 2),
            Form::Varlen { cu_seqlens, max_len } => {
                let size = q.size();
                let flat = |x: &Tensor| x.reshape([-1, size[2], size[3]]); // (B T, nh, hd)
                flash_varlen(&flat(q), &flat(k), &flat(v), cu_seqlens, *max_len)
                    .unwrap_or_else(|e| {
                        panic!("document masking: variable-length FlashAttention (CUDA sm80+, fp16/bf16): {e}")
                    })
                    .view(size.as_slice())
            }
        }
    }
}

/// Causal attention within each document of a packed sequence: `q`, `k`, `v` (total, nh, hd)
/// with unit stride along hd, `cu_seqlens` int32 (documents + 1) from 0 to total on their
/// device, `max_len` the longest document. Returns (total, nh, hd), scaled by 1/sqrt(hd).
/// `at::_flash_attention_forward` through model/csrc/varlen.cpp, recorded by autograd; CUDA
/// only (elsewhere libtorch's error is returned).
pub fn flash_varlen(q: &Tensor, k: &Tensor, v: &Tensor, cu_seqlens: &Tensor, max_len: i64) -> Result<Tensor, TchError> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut err = [0 as c_char; 1024];
    // SAFETY: every handle is a live tch tensor (an `at::Tensor*`) borrowed for the call; on
    // success the shim writes one new handle into `out`, which we then own, and at most
    // `err.len()` bytes into `err`.
    let rc = unsafe {
        baichuan_flash_varlen(
            q.as_ptr() as *mut C_tensor,
            k.as_ptr() as *mut C_tensor,
            v.as_ptr() as *mut C_tensor,
            cu_seqlens.as_ptr() as *mut C_tensor,
            max_len,
            &mut out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim NUL-terminates the message within the buffer
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(TchError::Torch(msg.to_string_lossy().into_owned()));
    }
    // SAFETY: on success `out` is a fresh `at::Tensor*` that nothing else owns
    Ok(unsafe { Tensor::from_ptr(out) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOS: i64 = 2;

    fn row(ids: &[i64]) -> Tensor {
        Tensor::from_slice(ids).view([1, -1])
    }

    fn positions(ids: &Tensor) -> Vec<Vec<i64>> {
        let d = Documents::new(ids, EOS, DocAttention::Dense).unwrap();
        Vec::<Vec<i64>>::try_from(d.positions()).unwrap()
    }

    /// The dense mask of one row as 0/1 rows, query by query.
    fn mask_rows(ids: &[i64]) -> Vec<Vec<i64>> {
        let d = Documents::new(&row(ids), EOS, DocAttention::Dense).unwrap();
        let m = d.mask().unwrap();
        assert_eq!(m.size(), vec![1, 1, ids.len() as i64, ids.len() as i64]);
        Vec::<Vec<i64>>::try_from(m.get(0).get(0).to_kind(Kind::Int64)).unwrap()
    }

    #[test]
    fn positions_restart_after_every_eos() {
        // EOS in the middle, two in a row (a one-token document of EOS), then a last document
        assert_eq!(positions(&row(&[5, 2, 7, 8, 2, 2, 9])), vec![vec![0, 1, 0, 1, 2, 0, 0]]);
        // no EOS: one document
        assert_eq!(positions(&row(&[3, 4, 5, 6])), vec![vec![0, 1, 2, 3]]);
        // EOS as the last token ends the only document; nothing starts after it
        assert_eq!(positions(&row(&[3, 4, 2])), vec![vec![0, 1, 2]]);
        // EOS first: a one-token document, then the next starts
        assert_eq!(positions(&row(&[2, 3, 4])), vec![vec![0, 0, 1]]);
        // rows are independent: each starts a document at 0
        let two = Tensor::from_slice(&[3i64, 2, 4, 2, 9, 9]).view([2, 3]);
        assert_eq!(positions(&two), vec![vec![0, 1, 0], vec![0, 0, 1]]);
    }

    #[test]
    fn the_dense_mask_is_block_diagonal_causal() {
        assert_eq!(
            mask_rows(&[5, 2, 7, 2, 2, 9]),
            vec![
                vec![1, 0, 0, 0, 0, 0],
                vec![1, 1, 0, 0, 0, 0],
                vec![0, 0, 1, 0, 0, 0],
                vec![0, 0, 1, 1, 0, 0],
                vec![0, 0, 0, 0, 1, 0],
                vec![0, 0, 0, 0, 0, 1],
            ]
        );
        // without EOS it is the causal mask
        assert_eq!(mask_rows(&[3, 4, 5]), vec![vec![1, 0, 0], vec![1, 1, 0], vec![1, 1, 1]]);
        // a final EOS belongs to the document before it
        assert_eq!(
            mask_rows(&[3, 2, 4, 2]),
            vec![vec![1, 0, 0, 0], vec![1, 1, 0, 0], vec![0, 0, 1, 0], vec![0, 0, 1, 1]]
        );
    }

    #[test]
    fn cumulative_lengths_run_over_the_flattened_rows() {
        let ids = Tensor::from_slice(&[5i64, 2, 7, 8, 2, 2, 9, 3, 4, 5, 6, 2, 1, 1]).view([2, 7]);
        let d = Documents::new(&ids, EOS, DocAttention::Varlen).unwrap();
        let (cu, max_len) = d.cu_seqlens().unwrap();
        assert_eq!(cu.kind(), Kind::Int);
        // row 0: documents of 2, 3, 1, 1 tokens; row 1: 5, 2
        assert_eq!(Vec::<i32>::try_from(cu).unwrap(), vec![0, 2, 5, 6, 7, 12, 14]);
        assert_eq!(max_len, 5);
        assert!(d.mask().is_none());
        assert_eq!(
            Vec::<Vec<i64>>::try_from(d.positions()).unwrap(),
            vec![vec![0, 1, 0, 1, 2, 0, 0], vec![0, 1, 2, 3, 4, 0, 1]]
        );
    }

    #[test]
    fn the_varlen_form_is_chosen_only_where_flash_attention_runs() {
        use DocAttention::*;
        assert_eq!(DocAttention::preferred(Device::Cuda(0), Kind::BFloat16, 128), Varlen);
        assert_eq!(DocAttention::preferred(Device::Cuda(0), Kind::Half, 64), Varlen);
        assert_eq!(DocAttention::preferred(Device::Cuda(0), Kind::Float, 128), Dense);
        assert_eq!(DocAttention::preferred(Device::Cuda(0), Kind::BFloat16, 12), Dense);
        assert_eq!(DocAttention::preferred(Device::Cpu, Kind::BFloat16, 128), Dense);
    }

    #[test]
    fn bad_ids_are_errors_and_the_cpu_varlen_call_reports_libtorch_s_error() {
        assert!(Documents::new(&Tensor::from_slice(&[1i64, 2]), EOS, DocAttention::Dense).is_err());
        assert!(Documents::new(
            &Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]),
            EOS,
            DocAttention::Dense
        )
        .is_err());
        // the shim's error path: FlashAttention has no CPU kernel, and its message comes back
        let q = Tensor::zeros([4, 2, 8], (Kind::BFloat16, Device::Cpu));
        let cu = Tensor::from_slice(&[0i32, 4]);
        let err = flash_varlen(&q, &q, &q, &cu, 4).unwrap_err();
        assert!(err.to_string().contains("flash"), "{err}");
    }
}
