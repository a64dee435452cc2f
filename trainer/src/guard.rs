//! Guards of the update: the dynamic loss scaler of fp16 training, and the bad-step guard
//! that skips a step whose loss or gradient norm is NaN/inf or a loss spike, and stops a run
//! that keeps producing them.
//!
//! The loss scaler follows Micikevicius et al. 2018 ("Mixed Precision Training") and torch.cuda.amp's
//! GradScaler: the loss is multiplied by the scale before backward so small fp16 gradients
//! do not flush to zero; a step whose gradients hold inf or NaN is skipped (never applied)
//! and the scale backs off by 0.5; after `growth_interval` good steps in a row it doubles.
//! Initial scale 2^16, growth interval 1000, as the reference frameworks.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::dist::comm::{Communicator, ReduceOp};
use crate::dist::DistError;

/// State of the dynamic loss scaler (saved with checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_interval: u64,
    pub backoff: f64,
    pub growth: f64,
    /// Good steps since the last change of scale.
    pub good_steps: u64,
    /// Steps skipped for inf/NaN gradients, in total.
    pub skipped: u64,
}

impl LossScaler {
    pub fn new(initial: f64, growth_interval: u64) -> Self {
        LossScaler {
            scale: initial,
            growth_interval,
            backoff: 0.5,
            growth: 2.0,
            good_steps: 0,
            skipped: 0,
        }
    }

    /// A scaler that never scales (fp32 and bf16).
    pub fn disabled() -> Self {
        LossScaler::new(1.0, u64::MAX)
    }

    /// Records the outcome of a step whose (scaled) gradients were `finite` or not. Returns
    /// whether the update may be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale *= self.backoff;
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale *= self.growth;
            self.good_steps = 0;
        }
        true
    }
}

/// Whether every rank's gradient shard is free of inf and NaN.
pub fn all_finite(grad: &Tensor, comm: &dyn Communicator) -> Result<bool, DistError> {
    let local_bad = if grad.isfinite().all().int64_value(&[]) == 1 {
        0.0
    } else {
        1.0
    };
    Ok(comm.all_reduce_scalar(local_bad, ReduceOp::Sum)? == 0.0)
}

/// Losses kept for spike detection.
const RECENT: usize = 100;
/// Losses needed before a spike can be called.
const MIN_HISTORY: usize = 20;

/// Skips bad steps (`train.spike_zscore`, `train.max_bad_steps`): a step is bad when its loss
/// or gradient norm is not finite, or its loss lies more than `spike_zscore` standard
/// deviations above the mean of the last good losses.
#[derive(Debug, Clone)]
pub struct BadStepGuard {
    recent: VecDeque<f64>,
    spike_zscore: f64,
    max_in_a_row: u64,
    in_a_row: u64,
    /// Bad steps skipped in the whole run (restored on resume).
    pub total: u64,
}

/// What the guard says of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Apply,
    /// Skip it; the text says why.
    Skip(String),
}

impl BadStepGuard {
    pub fn new(spike_zscore: f64, max_in_a_row: u64, total: u64) -> Self {
        BadStepGuard {
            recent: VecDeque::with_capacity(RECENT + 1),
            spike_zscore,
            max_in_a_row,
            in_a_row: 0,
            total,
        }
    }

    /// Judges `step` from its loss and gradient norm; a skipped step is reported on stderr.
    /// Errs after `max_bad_steps` bad steps in
    /// a row, rather than training on garbage.
    pub fn check(&mut self, step: u64, loss: f64, grad_norm: f64) -> Result<Verdict, String> {
        let spike = is_spike(&self.recent, loss, self.spike_zscore);
        if loss.is_finite() && grad_norm.is_finite() && !spike {
            self.in_a_row = 0;
            self.recent.push_back(loss);
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
            return Ok(Verdict::Apply);
        }
        self.total += 1;
        self.in_a_row += 1;
        let why = format!(
            "step {step}: skipped a bad step (loss {loss}, grad norm {grad_norm}{})",
            if spike { ", a loss spike" } else { "" }
        );
        eprintln!("{why}");
        if self.in_a_row >= self.max_in_a_row {
            return Err(format!(
                "{} bad steps in a row (NaN/inf loss or gradient norm, or loss spikes) at step {step}; \
                 stopping instead of training on garbage. HINT: lower train.lr, check the data, or resume from \
                 an earlier checkpoint",
                self.in_a_row
            ));
        }
        Ok(Verdict::Skip(why))
    }
}

/// Whether `loss` is more than `z` standard deviations above the mean of `recent` (0: never).
fn is_spike(recent: &VecDeque<f64>, loss: f64, z: f64) -> bool {
    if z <= 0.0 || recent.len() < MIN_HISTORY {
        return false;
    }
    let n = recent.len() as f64;
    let mean = recent.iter().sum::<f64>() / n;
    let sd = (recent.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    sd > 0.0 && (loss - mean) / sd > z
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inf_step_is_skipped_and_the_scale_recovers() {
        let mut s = LossScaler::new(65536.0, 3);
        assert!(s.update(true));
        assert!(!s.update(false), "an overflowing step must not be applied");
        assert_eq!((s.scale, s.skipped, s.good_steps), (32768.0, 1, 0));
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!(s.scale, 65536.0, "three good steps double the scale again");
    }

    #[test]
    fn the_disabled_scaler_never_changes() {
        let mut s = LossScaler::disabled();
        for _ in 0..10 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 1.0);
    }

    #[test]
    fn non_finite_steps_and_spikes_are_skipped_and_too_many_in_a_row_stop_the_run() {
        let mut g = BadStepGuard::new(3.0, 3, 0);
        for i in 0..30 {
            // losses around 2.0 with a little spread
            let loss = 2.0 + 0.01 * ((i % 5) as f64);
            assert_eq!(g.check(i + 1, loss, 1.0), Ok(Verdict::Apply));
        }
        assert!(matches!(g.check(31, f64::NAN, 1.0), Ok(Verdict::Skip(_))));
        let spike = g.check(32, 9.0, 1.0).expect("a second bad step is skipped");
        assert!(
            matches!(&spike, Verdict::Skip(why) if why.contains("a loss spike")),
            "{spike:?}"
        );
        let stop = g.check(33, 2.0, f64::INFINITY).expect_err("the third in a row stops");
        assert!(stop.contains("3 bad steps in a row"), "{stop}");
        assert_eq!(g.total, 3);
        // without a z-score no spike is called
        let mut plain = BadStepGuard::new(0.0, 3, 0);
        for i in 0..30 {
            assert_eq!(plain.check(i + 1, 2.0 + (i % 2) as f64 * 0.01, 1.0), Ok(Verdict::Apply));
        }
        assert_eq!(plain.check(31, 100.0, 1.0), Ok(Verdict::Apply));
    }
}
