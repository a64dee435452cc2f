//! Weighted mixtures of token sources: which source each global sample position draws from.
//!
//! Follows the blends of Megatron-LM and the source mixtures of OLMo-core, with a stateless
//! draw so the loader's state stays a few counters: position `p` of the global sample order
//! (the same positions [`crate::Loader`] slices into ranks) draws from source `i` when a keyed
//! hash of `p`, read as a uniform number in [0, 1), falls in the `i`-th interval of the
//! cumulative weights of the phase that holds `p`'s step. Draws are independent, so over `n`
//! positions a source of weight `w` gets a Binomial(n, w) share; every rank computes the draws
//! of the whole global batch and so knows how many samples each source has handed out, which
//! is the per-source state a checkpoint stores. Each source keeps its own seeded epoch order
//! ([`crate::SampleOrder`]), so a source repeats (epoch after epoch, each reshuffled) until
//! its cap, if it has one.

use serde::{Deserialize, Serialize};

use crate::hash::splitmix64;
use crate::DataError;

/// Weights from a step on: phase `k` covers steps `[start_step_k, start_step_{k+1})`.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub start_step: u64,
    /// One weight per source, normalised to sum to 1.
    pub weights: Vec<f64>,
}

/// The sources' names, the phases of their weights, and their caps.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixture {
    pub names: Vec<String>,
    phases: Vec<Phase>,
    /// Per source: the most samples it may hand out over the run (from `max_epochs` and
    /// `max_tokens`), or None.
    caps: Vec<Option<u64>>,
}

/// One source's share of the run so far, as checkpoints and logs report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub name: String,
    /// Samples drawn from this source over all ranks since the run began (the state; the
    /// other fields are derived from it for readers).
    pub drawn: u64,
    /// Input tokens of those samples.
    #[serde(default)]
    pub tokens: u64,
    /// Samples in one epoch of the source (so `drawn / samples_per_epoch` epochs are done).
    /// Integers only: a checkpoint manifest's checksum covers its JSON text, and floats do
    /// not survive every JSON round trip bit for bit.
    #[serde(default)]
    pub samples_per_epoch: u64,
}

impl SourceState {
    /// Passes over the source so far (fractional).
    pub fn epochs(&self) -> f64 {
        self.drawn as f64 / self.samples_per_epoch.max(1) as f64
    }
}

/// A source that would run past its cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhaustion {
    /// The first global batch (0-based step) that would draw past the cap.
    pub step: u64,
    pub source: usize,
    pub cap: u64,
}

impl Mixture {
    /// A mixture of `names` with the first phase's `weights` (any non-negative scale) from step
    /// 0, and `later` phases `(start_step, weights)` in increasing order of step.
    pub fn new(names: Vec<String>, weights: Vec<f64>, later: Vec<(u64, Vec<f64>)>) -> Result<Self, DataError> {
        if names.is_empty() {
            return Err(DataError::Config("a mixture needs at least one source".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if n.is_empty() || !seen.insert(n.as_str()) {
                return Err(DataError::Config(format!(
                    "source name {n:?} is empty or used twice; HINT: give every [[data.sources]] a unique name"
                )));
            }
        }
        let mut phases = vec![Phase {
            start_step: 0,
            weights: normalise(&names, weights, "data.sources' weights")?,
        }];
        for (start, w) in later {
            let last = phases.last().expect("one phase").start_step;
            if start <= last {
                return Err(DataError::Config(format!(
                    "data.phases: start_step {start} does not come after {last}; HINT: list phases in increasing \
                     start_step, each above 0"
                )));
            }
            phases.push(Phase {
                start_step: start,
                weights: normalise(&names, w, &format!("the weights of the phase at step {start}"))?,
            });
        }
        Ok(Mixture {
            caps: vec![None; names.len()],
            names,
            phases,
        })
    }

    /// Caps source `i` at `samples` samples drawn over the run.
    pub fn set_cap(&mut self, i: usize, samples: Option<u64>) {
        self.caps[i] = samples;
    }

    pub fn caps(&self) -> &[Option<u64>] {
        &self.caps
    }

    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The phase holding `step`.
    pub fn phase_at(&self, step: u64) -> &Phase {
        let k = self.phases.partition_point(|p| p.start_step <= step);
        &self.phases[k - 1]
    }

    /// The source drawn at global sample position `position`, in global batches of `global`.
    pub fn source_at(&self, seed: u64, position: u64, global: u64) -> usize {
        if self.names.len() == 1 {
            return 0;
        }
        let u = uniform(seed, position);
        let weights = &self.phase_at(position / global).weights;
        let mut cum = 0.0;
        let mut last_positive = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                cum += w;
                last_positive = i;
                if u < cum {
                    return i;
                }
            }
        }
        last_positive // rounding left u above the sum: the last source with weight
    }

    /// Samples drawn from each source over the global batches `[from_step, to_step)`, added
    /// to `drawn`.
    pub fn advance(&self, seed: u64, global: u64, from_step: u64, to_step: u64, drawn: &mut [u64]) {
        for p in from_step * global..to_step * global {
            drawn[self.source_at(seed, p, global)] += 1;
        }
    }

    /// The first step in `[from_step, to_step)` whose global batch would draw a source past
    /// its cap, given the samples `drawn` before `from_step`. Counts every draw (O(samples)
    /// hashes: about a second for a trillion-token run of 4096-token samples); nothing to count
    /// when no source has a cap.
    pub fn first_exhaustion(
        &self,
        seed: u64,
        global: u64,
        from_step: u64,
        to_step: u64,
        drawn: &[u64],
    ) -> Option<Exhaustion> {
        if self.caps.iter().all(Option::is_none) {
            return None;
        }
        let mut drawn = drawn.to_vec();
        for step in from_step..to_step {
            for p in step * global..(step + 1) * global {
                let i = self.source_at(seed, p, global);
                drawn[i] += 1;
                if let Some(cap) = self.caps[i] {
                    if drawn[i] > cap {
                        return Some(Exhaustion { step, source: i, cap });
                    }
                }
            }
        }
        None
    }
}

/// The seed of source `name`'s own epoch order.
pub fn source_seed(seed: u64, name: &str) -> u64 {
    name.bytes()
        .fold(splitmix64(seed ^ 0x736f_7572_6365), |h, b| splitmix64(h ^ u64::from(b)))
}

/// A uniform number in [0, 1) from 53 bits of a keyed hash of `position`.
fn uniform(seed: u64, position: u64) -> f64 {
    let h = splitmix64(splitmix64(seed ^ 0x6d69_7874_7572_6521) ^ position);
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn normalise(names: &[String], weights: Vec<f64>, what: &str) -> Result<Vec<f64>, DataError> {
    if weights.len() != names.len() {
        return Err(DataError::Config(format!(
            "{what}: {} weights for {} sources",
            weights.len(),
            names.len()
        )));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite() || **w < 0.0) {
        return Err(DataError::Config(format!(
            "{what}: source {:?} has weight {w}; HINT: weights are non-negative numbers",
            names[i]
        )));
    }
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return Err(DataError::Config(format!(
            "{what} are all zero; HINT: give at least one source a positive weight"
        )));
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn weights_are_normalised_and_bad_ones_named() {
        let m = Mixture::new(names(2), vec![3.0, 1.0], vec![]).unwrap();
        assert_eq!(m.phase_at(1000).weights, vec![0.75, 0.25]);
        for bad in [vec![1.0, -1.0], vec![0.0, 0.0], vec![f64::NAN, 1.0], vec![1.0]] {
            assert!(Mixture::new(names(2), bad, vec![]).is_err());
        }
        let err = Mixture::new(vec!["a".into(), "a".into()], vec![1.0, 1.0], vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("used twice"), "{err}");
        let err = Mixture::new(names(2), vec![1.0, 1.0], vec![(5, vec![1.0, 0.0]), (5, vec![0.0, 1.0])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("start_step 5"), "{err}");
    }

    #[test]
    fn phases_switch_at_their_steps_and_zero_weights_never_draw() {
        let m = Mixture::new(names(2), vec![1.0, 0.0], vec![(10, vec![0.0, 1.0])]).unwrap();
        let global = 8;
        for p in 0..10 * global {
            assert_eq!(m.source_at(7, p, global), 0, "{p}");
        }
        for p in 10 * global..30 * global {
            assert_eq!(m.source_at(7, p, global), 1, "{p}");
        }
        assert_eq!(m.phase_at(9).start_step, 0);
        assert_eq!(m.phase_at(10).start_step, 10);
    }

    #[test]
    fn shares_follow_the_weights_within_binomial_bounds() {
        let m = Mixture::new(names(3), vec![0.6, 0.3, 0.1], vec![]).unwrap();
        let n = 100_000u64;
        let mut drawn = vec![0u64; 3];
        m.advance(11, 100, 0, n / 100, &mut drawn);
        for (i, w) in [0.6, 0.3, 0.1].iter().enumerate() {
            let sd = (n as f64 * w * (1.0 - w)).sqrt();
            let dev = (drawn[i] as f64 - n as f64 * w).abs();
            assert!(dev < 4.0 * sd, "source {i}: {} of {n}, sd {sd:.0}", drawn[i]);
        }
    }

    #[test]
    fn exhaustion_is_found_at_the_first_batch_past_a_cap() {
        let mut m = Mixture::new(names(2), vec![1.0, 1.0], vec![]).unwrap();
        assert_eq!(m.first_exhaustion(3, 4, 0, 1000, &[0, 0]), None);
        m.set_cap(1, Some(50));
        let e = m.first_exhaustion(3, 4, 0, 1000, &[0, 0]).unwrap();
        assert_eq!((e.source, e.cap), (1, 50));
        // by hand: the draws of every step up to e.step
        let mut drawn = vec![0u64; 2];
        m.advance(3, 4, 0, e.step, &mut drawn);
        assert!(drawn[1] <= 50, "{drawn:?}");
        m.advance(3, 4, e.step, e.step + 1, &mut drawn);
        assert!(drawn[1] > 50, "{drawn:?}");
        // counted from a later start with what was drawn before it: the same step
        let mut before = vec![0u64; 2];
        m.advance(3, 4, 0, 5, &mut before);
        assert_eq!(m.first_exhaustion(3, 4, 5, 1000, &before).unwrap().step, e.step);
    }

    #[test]
    fn source_seeds_differ_by_name_and_seed() {
        assert_ne!(source_seed(1, "a"), source_seed(1, "b"));
        assert_ne!(source_seed(1, "a"), source_seed(2, "a"));
        assert_eq!(source_seed(1, "a"), source_seed(1, "a"));
    }
}
