//! AdamW on one flat fp32 master buffer, global gradient-norm clipping, and the learning-rate
//! schedule (linear warm-up, cosine decay to `min_lr`).
//!
//! The update is `torch.optim.AdamW`'s single-tensor algorithm (Loshchilov & Hutter 2019:
//! decoupled decay, bias-corrected moments) applied with a handful of whole-buffer tensor
//! operations instead of a loop over hundreds of parameters. Weight decay touches matrices
//! only: the decayed parameters' ranges of the buffer are coalesced into a few spans.
//! In fp32 the model's parameters are views of the master buffer, so the update needs no
//! copy back; in lower precision the master is copied into the parameters after each step.

use tch::{Kind, Tensor};

/// Where one parameter lives in the flat buffers.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub offset: i64,
    pub numel: i64,
    pub shape: Vec<i64>,
    pub decay: bool,
}

/// Hyper-parameters of one AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// fp32 master weights, moments and the flat gradient, laid out parameter after parameter.
pub struct FlatAdamW {
    pub slots: Vec<Slot>,
    pub master: Tensor,
    pub grad: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Coalesced (offset, len) spans that receive weight decay.
    decay_spans: Vec<(i64, i64)>,
    pub step: u64,
    /// Whether the parameters are views of `master` (fp32 training).
    params_alias_master: bool,
}

/// Coalesces the decayed slots into contiguous spans.
fn decay_spans(slots: &[Slot]) -> Vec<(i64, i64)> {
    let mut spans: Vec<(i64, i64)> = Vec::new();
    for s in slots.iter().filter(|s| s.decay) {
        match spans.last_mut() {
            Some((off, len)) if *off + *len == s.offset => *len += s.numel,
            _ => spans.push((s.offset, s.numel)),
        }
    }
    spans
}

impl FlatAdamW {
    /// Builds the buffers from the model's named parameters. Matrices (2-D) decay, vectors
    /// (norm weights) do not. When the parameters are fp32 they become views of the master
    /// buffer (same storage); otherwise they stay separate low-precision copies.
    pub fn new(params: &[(String, &Tensor)]) -> Self {
        let device = params.first().map_or(tch::Device::Cpu, |(_, t)| t.device());
        let mut slots = Vec::with_capacity(params.len());
        let mut offset = 0;
        for (name, t) in params {
            let numel = t.numel() as i64;
            slots.push(Slot {
                name: name.clone(),
                offset,
                numel,
                shape: t.size(),
                decay: t.dim() >= 2,
            });
            offset += numel;
        }
        let master = Tensor::zeros([offset], (Kind::Float, device));
        let alias = params.iter().all(|(_, t)| t.kind() == Kind::Float);
        tch::no_grad(|| {
            for ((_, t), s) in params.iter().zip(&slots) {
                let view = master.narrow(0, s.offset, s.numel).view(s.shape.as_slice());
                view.shallow_clone().copy_(t);
                if alias {
                    t.shallow_clone().set_data(&view);
                }
            }
        });
        FlatAdamW {
            decay_spans: decay_spans(&slots),
            slots,
            grad: Tensor::zeros([offset], (Kind::Float, device)),
            exp_avg: Tensor::zeros([offset], (Kind::Float, device)),
            exp_avg_sq: Tensor::zeros([offset], (Kind::Float, device)),
            master,
            step: 0,
            params_alias_master: alias,
        }
    }

    pub fn numel(&self) -> i64 {
        self.master.numel() as i64
    }

    /// Copies the parameters' accumulated `.grad()` into the flat fp32 gradient and clears them.
    pub fn gather_grads(&mut self, params: &[(String, &Tensor)]) {
        tch::no_grad(|| {
            for ((name, t), s) in params.iter().zip(&self.slots) {
                debug_assert_eq!(name, &s.name);
                let g = t.grad();
                let mut dst = self.grad.narrow(0, s.offset, s.numel);
                if g.defined() {
                    dst.copy_(&g.view([-1]));
                } else {
                    let _ = dst.zero_();
                }
                let mut t = t.shallow_clone();
                t.zero_grad();
            }
        });
    }

    /// L2 norm of the flat gradient.
    pub fn grad_norm(&self) -> f64 {
        self.grad.norm().double_value(&[])
    }

    /// Scales the gradient so its norm is at most `max_norm` (as torch's clip_grad_norm_).
    pub fn clip(&mut self, norm: f64, max_norm: f64) {
        if max_norm > 0.0 {
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                let _ = self.grad.f_mul_scalar_(coef);
            }
        }
    }

    /// One AdamW update of the master weights from the flat gradient.
    pub fn update(&mut self, h: AdamWParams) {
        self.step += 1;
        let step = self.step as i32;
        tch::no_grad(|| {
            if h.weight_decay > 0.0 {
                for &(off, len) in &self.decay_spans {
                    let _ = self
                        .master
                        .narrow(0, off, len)
                        .f_mul_scalar_(1.0 - h.lr * h.weight_decay);
                }
            }
            let _ = self.exp_avg.lerp_(&self.grad, 1.0 - h.beta1);
            let _ = self.exp_avg_sq.f_mul_scalar_(h.beta2);
            let _ = self
                .exp_avg_sq
                .addcmul_(&(&self.grad * (1.0 - h.beta2)), &self.grad);
            let bias1 = 1.0 - h.beta1.powi(step);
            let bias2_sqrt = (1.0 - h.beta2.powi(step)).sqrt();
            let denom = (self.exp_avg_sq.sqrt() / bias2_sqrt) + h.eps;
            let update = (&self.exp_avg / denom) * (-h.lr / bias1);
            let _ = self.master.f_add_(&update);
        });
    }

    /// Writes the master weights into lower-precision parameters (no-op when they alias it).
    pub fn write_back(&self, params: &[(String, &Tensor)]) {
        if self.params_alias_master {
            return;
        }
        tch::no_grad(|| {
            for ((_, t), s) in params.iter().zip(&self.slots) {
                let src = self
                    .master
                    .narrow(0, s.offset, s.numel)
                    .view(s.shape.as_slice());
                t.shallow_clone().copy_(&src);
            }
        });
    }
}

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total`.
pub fn lr_at(step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_min() {
        assert!((lr_at(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0, 0.1) - 0.55).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn fp32_parameters_become_views_of_the_master() {
        let a = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let params = vec![("a".to_string(), &a), ("b".to_string(), &b)];
        let mut opt = FlatAdamW::new(&params);
        assert_eq!(opt.numel(), 9);
        assert_eq!(opt.decay_spans, vec![(0, 6)]);
        tch::no_grad(|| {
            let _ = opt.master.fill_(2.0);
        });
        assert_eq!(a.double_value(&[1, 2]), 2.0);
        assert_eq!(b.double_value(&[0]), 2.0);
        // autograd still fills .grad() of a view parameter
        (&a * 3.0).sum(Kind::Float).backward();
        opt.gather_grads(&params);
        assert_eq!(opt.grad.double_value(&[0]), 3.0);
        assert_eq!(opt.grad.double_value(&[8]), 0.0);
        assert!(
            a.grad().abs().sum(Kind::Float).double_value(&[]) == 0.0,
            "grads cleared"
        );
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let a = Tensor::zeros([4], (Kind::Float, tch::Device::Cpu));
        let mut opt = FlatAdamW::new(&[("a".to_string(), &a)]);
        tch::no_grad(|| {
            opt.grad
                .copy_(&Tensor::from_slice(&[3.0f32, 4.0, 0.0, 0.0]));
        });
        let n = opt.grad_norm();
        assert!((n - 5.0).abs() < 1e-9);
        opt.clip(n, 1.0);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
    }
}
