//! Precision policy: the dynamic loss scaler of fp16 training.
//!
//! Follows Micikevicius et al. 2018 ("Mixed Precision Training") and torch.cuda.amp's
//! GradScaler: the loss is multiplied by the scale before backward so small fp16 gradients
//! do not flush to zero; a step whose gradients hold inf or NaN is skipped (never applied)
//! and the scale backs off by 0.5; after `growth_interval` good steps in a row it doubles.
//! Initial scale 2^16, growth interval 1000, as the reference frameworks.

use serde::{Deserialize, Serialize};

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
}
