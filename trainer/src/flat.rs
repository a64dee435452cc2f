//! The flat parameter layout: every parameter of the model as a range of one flat buffer, in
//! the model's parameter order. The optimizer keeps its master weights and moments in this
//! order, the gradient reducer fills buckets of it, and checkpoints record it; ZeRO shards are
//! ranges of it (`dist::even_ranges`).

use tch::Tensor;

/// Where one parameter lives in the flat buffers.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub offset: i64,
    pub numel: i64,
    pub shape: Vec<i64>,
    pub decay: bool,
}

/// The flat layout of named parameters: matrices (2-D) decay, vectors (norms) do not.
pub fn layout(params: &[(String, &Tensor)]) -> Vec<Slot> {
    let mut offset = 0;
    params
        .iter()
        .map(|(name, t)| {
            let numel = t.numel() as i64;
            let slot = Slot {
                name: name.clone(),
                offset,
                numel,
                shape: t.size(),
                decay: t.dim() >= 2,
            };
            offset += numel;
            slot
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn matrices_decay_and_offsets_follow_the_parameter_order() {
        let w = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let n = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let slots = layout(&[("w".into(), &w), ("n".into(), &n)]);
        let got: Vec<(i64, i64, bool)> = slots.iter().map(|s| (s.offset, s.numel, s.decay)).collect();
        assert_eq!(got, vec![(0, 6, true), (6, 3, false)]);
        assert_eq!(slots[0].shape, vec![2, 3]);
    }
}
