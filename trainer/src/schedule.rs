//! Learning-rate schedules, all after a linear warm-up to `train.lr`:
//! - `cosine`: cosine decay to `train.min_lr` at `train.steps` (nanoGPT's `get_lr`, the
//!   reference's warm-up + cosine);
//! - `wsd`: warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): the peak rate
//!   until the last `decay` steps, then a decay to `min_lr` shaped `linear`, `cosine` or
//!   `1-sqrt`, reaching `min_lr` at the last step. Because the stable phase does not depend on
//!   the run's length, a decay branch from any of its checkpoints is the same run with an
//!   earlier end (`train --decay-from`);
//! - `constant`: the peak rate after warm-up.

use serde::{Deserialize, Serialize};

/// `train.schedule`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Cosine,
    Wsd,
    Constant,
}

/// `train.decay_shape`: how `wsd` falls from the peak to `min_lr` over its decay.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum DecayShape {
    #[default]
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "cosine")]
    Cosine,
    /// `1 - sqrt(x)` (Hägele et al. 2024): falls fast at first and flattens at the end.
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
}

/// A run's schedule with its numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: Schedule,
    pub total: u64,
    pub warmup: u64,
    pub lr: f64,
    pub min_lr: f64,
    /// `wsd`: steps of the decay, ending at `total`.
    pub decay: u64,
    pub shape: DecayShape,
}

impl LrSchedule {
    /// The rate of step index `step` (0-based: the rate of logged step `step + 1`).
    pub fn at(&self, step: u64) -> f64 {
        match self.kind {
            Schedule::Cosine => lr_at(step, self.total, self.warmup, self.lr, self.min_lr),
            Schedule::Constant => warm(step, self.warmup, self.lr).unwrap_or(self.lr),
            Schedule::Wsd => {
                let start = self.decay_start();
                if step >= start && self.decay > 0 {
                    // x = 1/D at the first decay step, 1 at the last (the run ends at min_lr)
                    let x = (((step - start + 1) as f64) / self.decay as f64).min(1.0);
                    let f = match self.shape {
                        DecayShape::Linear => 1.0 - x,
                        DecayShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * x).cos()),
                        DecayShape::OneMinusSqrt => 1.0 - x.sqrt(),
                    };
                    return self.min_lr + (self.lr - self.min_lr) * f;
                }
                warm(step, self.warmup, self.lr).unwrap_or(self.lr)
            }
        }
    }

    /// `wsd`: the first step index of the decay.
    pub fn decay_start(&self) -> u64 {
        self.total.saturating_sub(self.decay)
    }

    /// The step indices whose rate is the peak, unchanged by where the run ends: `[warmup,
    /// decay start)` for `wsd`, everything after warm-up for `constant`, none for `cosine`.
    pub fn stable(&self) -> std::ops::Range<u64> {
        match self.kind {
            Schedule::Cosine => 0..0,
            Schedule::Constant => self.warmup..u64::MAX,
            Schedule::Wsd => self.warmup..self.decay_start(),
        }
    }
}

fn warm(step: u64, warmup: u64, lr: f64) -> Option<f64> {
    (step < warmup).then(|| lr * (step + 1) as f64 / warmup as f64)
}

/// Linear warm-up to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total`.
pub fn lr_at(step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if let Some(r) = warm(step, warmup, lr) {
        return r;
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

    fn wsd(shape: DecayShape) -> LrSchedule {
        LrSchedule {
            kind: Schedule::Wsd,
            total: 100,
            warmup: 10,
            lr: 1.0,
            min_lr: 0.1,
            decay: 20,
            shape,
        }
    }

    #[test]
    fn wsd_is_flat_until_its_decay_and_ends_at_min_lr() {
        for shape in [DecayShape::Linear, DecayShape::Cosine, DecayShape::OneMinusSqrt] {
            let s = wsd(shape);
            assert!((s.at(4) - 0.5).abs() < 1e-12, "warm-up");
            for step in 9..80 {
                assert_eq!(s.at(step), 1.0, "{shape:?} {step}");
            }
            assert!((s.at(99) - 0.1).abs() < 1e-12, "{shape:?}");
            assert!(s.at(80) < 1.0 && s.at(80) > s.at(81), "{shape:?}");
            assert_eq!(s.stable(), 10..80);
        }
        // by hand, the decay's middle step (x = 10/20): linear 0.1 + 0.9 * 0.5 = 0.55; cosine
        // the same (cos(pi/2) = 0); 1-sqrt: 0.1 + 0.9 * (1 - 0.70710678) = 0.36360390
        assert!((wsd(DecayShape::Linear).at(89) - 0.55).abs() < 1e-12);
        assert!((wsd(DecayShape::Cosine).at(89) - 0.55).abs() < 1e-12);
        assert!((wsd(DecayShape::OneMinusSqrt).at(89) - 0.363_603_897).abs() < 1e-9);
        // a quarter in (x = 5/20): cosine 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.86819805
        assert!((wsd(DecayShape::Cosine).at(84) - 0.868_198_052).abs() < 1e-9);
    }

    #[test]
    fn a_shorter_wsd_run_has_the_same_stable_phase() {
        // the branch rule: the run of 60 steps with a 10-step decay agrees with the 100-step run
        // up to its own decay start (step 50)
        let long = wsd(DecayShape::Linear);
        let short = LrSchedule {
            total: 60,
            decay: 10,
            ..long
        };
        for step in 0..50 {
            assert_eq!(short.at(step), long.at(step));
        }
        assert!((short.at(59) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn constant_stays_at_the_peak() {
        let s = LrSchedule {
            kind: Schedule::Constant,
            ..wsd(DecayShape::Linear)
        };
        assert!((s.at(0) - 0.1).abs() < 1e-12);
        assert_eq!(s.at(10), 1.0);
        assert_eq!(s.at(99), 1.0);
        assert_eq!(s.at(500), 1.0);
        let c = LrSchedule {
            kind: Schedule::Cosine,
            ..wsd(DecayShape::Linear)
        };
        assert_eq!(c.at(55), lr_at(55, 100, 10, 1.0, 0.1));
        assert_eq!(c.stable(), 0..0);
    }
}
