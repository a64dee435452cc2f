// Variable-length causal FlashAttention over packed documents, which tch 0.24 does not expose
// (it binds `_flash_attention_backward` but not the forward, whose outputs include an optional
// debug mask). Calls `at::_flash_attention_forward` with cumulative sequence lengths, as
// FlashAttention-2's `flash_attn_varlen_func` (Dao 2023) and PyTorch's nested-tensor SDPA do;
// the call goes through the dispatcher, so autograd records `FlashAttentionBackward0` and the
// backward is libtorch's `_flash_attention_backward`. CUDA only (fp16/bf16, sm80+): on other
// devices libtorch raises, and the error comes back as a message.
//
// Tensors cross the boundary as tch's handles (`at::Tensor*`); the result is a new handle that
// the Rust side owns (model/src/documents.rs). Returns 0, or 1 with the exception's message in
// `err` (truncated to `errlen` bytes, NUL-terminated).
#include <ATen/ATen.h>

#include <cstring>
#include <exception>

static int baichuan_varlen_error(const char *what, char *err, size_t errlen) {
  if (errlen > 0) {
    std::strncpy(err, what, errlen - 1);
    err[errlen - 1] = 0;
  }
  return 1;
}

// q, k, v: (total, nh, hd) with unit stride along hd; cu_seqlens: int32 (documents + 1), the
// first 0 and the last `total`; every document attends causally within itself. `out`: the
// attention output (total, nh, hd), scaled by 1/sqrt(hd) as SDPA's default.
extern "C" int baichuan_flash_varlen(at::Tensor *q, at::Tensor *k, at::Tensor *v, at::Tensor *cu_seqlens,
                                     int64_t max_len, at::Tensor **out, char *err, size_t errlen) {
  try {
    auto r = at::_flash_attention_forward(*q, *k, *v, *cu_seqlens, *cu_seqlens, max_len, max_len, 0.0,
                                          /*is_causal=*/true, /*return_debug_mask=*/false);
    *out = new at::Tensor(std::get<0>(r));
    return 0;
  } catch (const std::exception &e) {
    return baichuan_varlen_error(e.what(), err, errlen);
  } catch (...) {
    return baichuan_varlen_error("unknown C++ exception", err, errlen);
  }
}
