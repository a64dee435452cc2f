// Page-locked (pinned) host tensors allocated directly, which tch 0.24 cannot ask for: it has
// `pin_memory`, which copies an existing tensor, so a pinned buffer of N bytes would first
// need N ordinary bytes too. ZeRO-Offload keeps the optimizer state of a whole model in pinned
// memory (the GPU copies to and from it asynchronously), where that transient copy does not
// fit. Uses libtorch's pinned allocator (the CUDA caching host allocator), as
// `torch.empty(..., pin_memory=True)`.
//
// Returns 0 with a new handle in `out` that the Rust side owns (model/src/pinned.rs), or 1 with
// the exception's message in `err` (truncated to `errlen` bytes, NUL-terminated).
#include <ATen/ATen.h>

#include <cstring>
#include <exception>

static int baichuan_pinned_error(const char *what, char *err, size_t errlen) {
  if (errlen > 0) {
    std::strncpy(err, what, errlen - 1);
    err[errlen - 1] = 0;
  }
  return 1;
}

// An uninitialised 1-D pinned host tensor of `numel` elements of ScalarType `dtype`.
extern "C" int baichuan_empty_pinned(int64_t numel, int dtype, at::Tensor **out, char *err, size_t errlen) {
  try {
    auto options = at::TensorOptions().dtype(static_cast<at::ScalarType>(dtype)).pinned_memory(true);
    *out = new at::Tensor(at::empty({numel}, options));
    return 0;
  } catch (const std::exception &e) {
    return baichuan_pinned_error(e.what(), err, errlen);
  } catch (...) {
    return baichuan_pinned_error("unknown C++ exception", err, errlen);
  }
}
