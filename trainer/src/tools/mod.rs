//! Tools around a run: `baichuan bench` (a training step's speed and split, and the TCP
//! collectives), `bench --breakdown` (each piece of a block timed alone) and the memory plan of
//! `baichuan info`.

pub mod bench;
pub mod breakdown;
pub mod memory_plan;
