// Back-propagation with explicit output gradients, which tch's C API lacks (its `backward`
// seeds a scalar with 1 and its `run_backward` seeds every root with ones). Without it, the
// spliced training graphs seed autograd with `(y * g).sum()`, which costs a multiply, a sum
// and one more copy of `g` in backward for every splice. Follows
// `torch::autograd::backward` / `torch::autograd::grad` (torch/csrc/autograd/autograd.h).
//
// Tensors cross the boundary as tch's handles (`at::Tensor*`); results are new handles that
// the Rust side owns. Returns 0, or 1 with the exception's message in `err` (truncated to
// `errlen` bytes, NUL-terminated).
#include <torch/csrc/autograd/autograd.h>

#include <cstring>
#include <exception>
#include <vector>

static int baichuan_error(const char *what, char *err, size_t errlen) {
  if (errlen > 0) {
    std::strncpy(err, what, errlen - 1);
    err[errlen - 1] = 0;
  }
  return 1;
}

// Back-propagates `grads[i]` from `outputs[i]` (i < n). With `ninputs == 0` the gradients
// accumulate into the leaves' `.grad`; otherwise they are returned for `inputs` in `results`
// (every input must be reached) and no `.grad` is touched. The graph is freed either way.
extern "C" int baichuan_backward(at::Tensor **outputs, at::Tensor **grads, int n,
                                 at::Tensor **inputs, int ninputs, at::Tensor **results,
                                 char *err, size_t errlen) {
  try {
    std::vector<at::Tensor> outs, gs, ins;
    for (int i = 0; i < n; ++i) {
      outs.push_back(*outputs[i]);
      gs.push_back(*grads[i]);
    }
    if (ninputs == 0) {
      torch::autograd::backward(outs, gs, false, false);
      return 0;
    }
    for (int i = 0; i < ninputs; ++i) ins.push_back(*inputs[i]);
    auto r = torch::autograd::grad(outs, ins, gs, false, false, false);
    for (int i = 0; i < ninputs; ++i) results[i] = new at::Tensor(r[i]);
    return 0;
  } catch (const std::exception &e) {
    return baichuan_error(e.what(), err, errlen);
  } catch (...) {
    return baichuan_error("unknown C++ exception", err, errlen);
  }
}
