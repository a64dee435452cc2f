//! The `tcp` backend's collectives with 1 to 4 ranks (threads of this process, each with its
//! own store connection and ring sockets over loopback): every op, f32 and bf16, sizes that
//! do not divide by the world size and uneven or empty ranges, against the result computed
//! locally from all ranks' inputs.

use baichuan_trainer::dist::comm::{Communicator, ReduceOp};
use baichuan_trainer::dist::even_ranges;
use baichuan_trainer::dist::tcp::run_local_ranks;
use tch::{Kind, Tensor};

/// Rank `r`'s deterministic input (exactly representable in bf16).
fn input(r: usize, n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((r * 31 + i * 17 + salt * 7) % 101) as f32 / 8.0 - 6.0)
        .collect()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&t.to_kind(Kind::Float)).unwrap()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

fn check_rank(comm: &dyn Communicator, world: usize) {
    let r = comm.rank();
    for (kind, tol) in [(Kind::Float, 1e-6f32), (Kind::BFloat16, 8e-3)] {
        for (salt, n) in [1usize, 7, 1000, 4099, 30_011].into_iter().enumerate() {
            let what = format!("world {world} rank {r} {kind:?} n {n}");
            let inputs: Vec<Vec<f32>> = (0..world).map(|q| input(q, n, salt)).collect();
            let sum: Vec<f32> = (0..n).map(|i| inputs.iter().map(|x| x[i]).sum()).collect();

            // all-reduce, sum and mean
            for op in [ReduceOp::Sum, ReduceOp::Avg] {
                let t = Tensor::from_slice(&input(r, n, salt)).to_kind(kind);
                comm.all_reduce(&t, op).wait().unwrap();
                let scale = if op == ReduceOp::Avg { world as f32 } else { 1.0 };
                let want: Vec<f32> = sum.iter().map(|s| s / scale).collect();
                close(&to_vec(&t), &want, tol, &format!("{what} all_reduce {op:?}"));
            }

            // reduce-scatter over even ranges and over uneven ones (one rank empty)
            let uneven: Vec<(usize, usize)> = {
                let cut = [0, n / 5, n / 5, n / 2, n];
                (0..world)
                    .map(|q| {
                        (
                            cut[q.min(3)],
                            if q + 1 == world {
                                n - cut[q.min(3)]
                            } else {
                                cut[(q + 1).min(3)] - cut[q.min(3)]
                            },
                        )
                    })
                    .collect()
            };
            for ranges in [even_ranges(n, world), uneven] {
                let t = Tensor::from_slice(&input(r, n, salt)).to_kind(kind);
                comm.reduce_scatter(&t, &ranges, ReduceOp::Sum).wait().unwrap();
                let (o, l) = ranges[r];
                close(
                    &to_vec(&t)[o..o + l],
                    &sum[o..o + l],
                    tol,
                    &format!("{what} reduce_scatter {ranges:?}"),
                );

                // all-gather: each rank contributes its range of its own input
                let mine = input(r, n, salt);
                let mut buf = vec![f32::NAN; n];
                buf[o..o + l].copy_from_slice(&mine[o..o + l]);
                let t = Tensor::from_slice(&buf).to_kind(kind);
                comm.all_gather(&t, &ranges).wait().unwrap();
                let want: Vec<f32> = (0..n)
                    .map(|i| {
                        let q = ranges.iter().position(|&(a, b)| i >= a && i < a + b).unwrap();
                        inputs[q][i]
                    })
                    .collect();
                close(&to_vec(&t), &want, tol, &format!("{what} all_gather"));
            }

            // broadcast from the last rank
            let root = world - 1;
            let t = if r == root {
                Tensor::from_slice(&input(r, n, salt))
            } else {
                Tensor::zeros([n as i64], (Kind::Float, tch::Device::Cpu))
            }
            .to_kind(kind);
            comm.broadcast(&t, root).wait().unwrap();
            close(&to_vec(&t), &input(root, n, salt), tol, &format!("{what} broadcast"));
        }
    }
    comm.barrier().unwrap();
    assert_eq!(
        comm.all_reduce_scalar(r as f64, ReduceOp::Sum).unwrap(),
        (0..world).sum::<usize>() as f64
    );
}

#[test]
fn every_collective_matches_the_local_result_for_1_to_4_ranks() {
    for world in 1..=4usize {
        run_local_ranks(world, move |comm| check_rank(comm, world)).expect("every rank passes");
    }
}
