//! Back-propagation with explicit output gradients, through a small C++ shim over libtorch's
//! `torch::autograd::backward`/`grad` (model/csrc/autograd.cpp, compiled by build/rpath.rs).
//!
//! tch can only seed autograd with ones, so a graph cut at a tensor `y` whose gradient `g`
//! is known had to be started as `(y * g).sum()`: a multiply and a sum in forward and one more
//! copy of `g` in backward, at every cut. The training block cuts its graph twice (the rotary
//! splice and its input), the head once and the embedding once; with this the cuts cost
//! nothing beyond the gradients themselves. Numerically the same: the seeded multiply's
//! backward returned `g` exactly.

use std::ffi::{c_char, c_int};

use tch::{TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn baichuan_backward(
        outputs: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        n: c_int,
        inputs: *const *mut C_tensor,
        ninputs: c_int,
        results: *mut *mut C_tensor,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

fn handles(ts: &[&Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

fn run(outputs: &[&Tensor], grads: &[&Tensor], inputs: &[&Tensor]) -> Result<Vec<Tensor>, TchError> {
    assert_eq!(outputs.len(), grads.len(), "one gradient per output");
    let (outs, gs, ins) = (handles(outputs), handles(grads), handles(inputs));
    let mut results: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); inputs.len()];
    let mut err = [0 as c_char; 1024];
    // SAFETY: every handle is a live tch tensor (an `at::Tensor*`) borrowed for the call; the
    // shim writes `inputs.len()` new handles into `results` on success, which we then own,
    // and at most `err.len()` bytes into `err`.
    let rc = unsafe {
        baichuan_backward(
            outs.as_ptr(),
            gs.as_ptr(),
            outs.len() as c_int,
            ins.as_ptr(),
            ins.len() as c_int,
            results.as_mut_ptr(),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the shim NUL-terminates the message within the buffer
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(TchError::Torch(msg.to_string_lossy().into_owned()));
    }
    // SAFETY: on success each entry is a fresh `at::Tensor*` that nothing else owns
    Ok(results.into_iter().map(|p| unsafe { Tensor::from_ptr(p) }).collect())
}

/// Back-propagates `grads[i]` from `outputs[i]` into the leaves' `.grad()`, then frees the
/// graph.
pub fn backward(outputs: &[&Tensor], grads: &[&Tensor]) -> Result<(), TchError> {
    run(outputs, grads, &[]).map(|_| ())
}

/// The gradients of `inputs` (each must be reached) from `grads[i]` at `outputs[i]`,
/// returned without touching any `.grad()`; frees the graph.
pub fn grad(outputs: &[&Tensor], grads: &[&Tensor], inputs: &[&Tensor]) -> Result<Vec<Tensor>, TchError> {
    assert!(!inputs.is_empty(), "grad needs inputs; backward accumulates into .grad");
    run(outputs, grads, inputs)
}

/// `p.grad() += a @ b` for a leaf `p`: in place where `.grad()` exists (the trainer zeroes
/// gradients in place, so it does after the first backward), through autograd the first time,
/// which creates it. For gradients computed by hand, such as a spliced GEMM's weight.
pub fn accumulate_product(p: &Tensor, a: &Tensor, b: &Tensor) -> Result<(), TchError> {
    let mut g = p.grad();
    if g.defined() {
        tch::no_grad(|| g.f_addmm_(a, b)).map(|_| ())
    } else {
        let product = tch::no_grad(|| a.mm(b));
        backward(&[p], &[&product])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Against the seeded form it replaces, `(y * g).sum()`, and against the closed form.
    #[test]
    fn explicit_gradients_equal_the_seeded_sum_and_the_closed_form() {
        let opts = (Kind::Float, Device::Cpu);
        let w = Tensor::randn([4, 3], opts).set_requires_grad(true);
        let x = Tensor::randn([5, 4], opts).set_requires_grad(true);
        let g = Tensor::randn([5, 3], opts);
        // returned: d/dx (x w) g = g w^T, d/dw = x^T g
        let y = x.mm(&w);
        let got = grad(&[&y], &[&g], &[&x, &w]).unwrap();
        assert!(got[0].allclose(&g.mm(&w.tr()), 1e-6, 1e-6, false));
        assert!(got[1].allclose(&x.tr().mm(&g), 1e-6, 1e-6, false));
        assert!(!w.grad().defined(), "grad leaves .grad alone");
        // into .grad, twice: accumulates, equal to the seeded sum's
        backward(&[&x.mm(&w)], &[&g]).unwrap();
        backward(&[&x.mm(&w)], &[&g]).unwrap();
        let twice = w.grad().copy();
        let _ = w.grad().zero_();
        (x.mm(&w) * &g).sum(Kind::Float).backward();
        assert!(twice.allclose(&(w.grad() * 2.0), 1e-6, 1e-6, false));
        // two outputs at once: their contributions add
        let (y1, y2) = (x.mm(&w), x.mm(&w) * 3.0);
        let both = grad(&[&y1, &y2], &[&g, &g], &[&w]).unwrap();
        assert!(both[0].allclose(&(x.tr().mm(&g) * 4.0), 1e-5, 1e-5, false));
    }

    #[test]
    fn products_accumulate_into_grad_whether_or_not_it_exists() {
        let opts = (Kind::Float, Device::Cpu);
        let p = Tensor::zeros([3, 2], opts).set_requires_grad(true);
        let (a, b) = (Tensor::randn([3, 4], opts), Tensor::randn([4, 2], opts));
        accumulate_product(&p, &a, &b).unwrap(); // creates .grad
        accumulate_product(&p, &a, &b).unwrap(); // adds in place
        assert!(p.grad().allclose(&(a.mm(&b) * 2.0), 1e-6, 1e-6, false));
    }

    #[test]
    fn errors_come_back_with_libtorch_s_message() {
        let x = Tensor::randn([3], (Kind::Float, Device::Cpu)); // no requires_grad
        let y = &x * 2.0;
        let e = backward(&[&y], &[&Tensor::ones([3], (Kind::Float, Device::Cpu))]).unwrap_err();
        assert!(e.to_string().contains("does not require grad"), "{e}");
        let leaf = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let z = &leaf * 2.0;
        let wrong = Tensor::ones([3], (Kind::Float, Device::Cpu));
        assert!(backward(&[&z], &[&wrong]).is_err(), "a gradient of the wrong shape");
    }
}
