//! Tools around a run: `baichuan bench` (a training step's speed and split, and the TCP
//! collectives), `bench --breakdown` (each piece of a block timed alone), the memory plan of
//! `baichuan info` and its cluster step-time model (`cluster.rs`), and DoReMi's learned domain weights (`baichuan mixture doremi`).

pub mod bench;
pub mod breakdown;
pub mod cluster;
pub mod doremi;
pub mod memory_plan;
