//! AdamW on the host: the update of the fused CUDA kernel (`cuda/kernels/adamw.cu`, the same
//! folded constants and the same order of operations) over fp32 slices in host memory, split
//! into one contiguous chunk per thread and vectorised by the compiler.
//!
//! It is the update of every CPU run and of `train.optimizer_offload = "cpu"`, where the
//! master weights and moments of a GPU run live in host memory (ZeRO-Offload, Ren et al.
//! 2021; DeepSpeed's `DeepSpeedCPUAdam`). Rust never contracts `a * b + c` into a fused
//! multiply-add and IEEE division and square root are exact per lane, so the AVX2 build of the
//! loop (chosen at run time when the CPU has it) and the baseline SSE2 build give the same bits:
//! results do not depend on the machine.

use baichuan_cuda::adamw::StepConsts;

/// Elements per unit of work split between threads (a multiple of every vector width, and
/// 64-byte aligned offsets for 64-byte aligned buffers).
const ALIGN: usize = 64;

/// The buffers of one update: `p`, `m` and `v` are updated in place from `g`.
pub struct HostBuffers<'a> {
    pub p: &'a mut [f32],
    pub g: &'a [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
}

/// One element's update, exactly as the CUDA kernel's `adamw1`.
#[inline(always)]
fn adamw1(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, k: &StepConsts, decay: f32) {
    let g = g * k.grad_scale;
    *m += k.w1 * (g - *m);
    *v += k.w2 * (g * g - *v);
    *p *= decay;
    *p += (*m * k.step_size) / (v.sqrt() + k.eps_hat);
}

#[inline(always)]
fn run(b: HostBuffers, k: &StepConsts, decay: f32) {
    let n = b.p.len();
    let (g, m, v) = (&b.g[..n], &mut b.m[..n], &mut b.v[..n]);
    for i in 0..n {
        adamw1(&mut b.p[i], g[i], &mut m[i], &mut v[i], k, decay);
    }
}

/// The loop compiled for AVX2 (8 lanes); the caller checks that the CPU has it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(b: HostBuffers, k: &StepConsts, decay: f32) {
    run(b, k, decay)
}

/// Whether this CPU runs the AVX2 build of the loop (checked once).
pub fn uses_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Updates one contiguous run with one decay factor, on this thread.
fn update_run(b: HostBuffers, k: &StepConsts, decay: f32) {
    assert!(
        b.g.len() == b.p.len() && b.m.len() == b.p.len() && b.v.len() == b.p.len(),
        "AdamW buffers of one length"
    );
    #[cfg(target_arch = "x86_64")]
    if uses_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        unsafe { run_avx2(b, k, decay) };
        return;
    }
    run(b, k, decay)
}

/// Updates `[0, len)` on this thread: the segments (offset, len, decayed) that intersect
/// `[lo, hi)` of the whole buffer, where `b` holds exactly `[lo, hi)`.
fn update_range(b: HostBuffers, lo: usize, segments: &[(i64, i64, bool)], k: &StepConsts) {
    let hi = lo + b.p.len();
    let HostBuffers { p, g, m, v } = b;
    for &(off, len, decayed) in segments {
        let (a, z) = ((off as usize).max(lo), ((off + len) as usize).min(hi));
        if a >= z {
            continue;
        }
        let r = a - lo..z - lo;
        let part = HostBuffers {
            p: &mut p[r.clone()],
            g: &g[r.clone()],
            m: &mut m[r.clone()],
            v: &mut v[r],
        };
        update_run(part, k, if decayed { k.decay } else { 1.0 });
    }
}

/// The number of threads the update uses: the machine's available parallelism.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One AdamW update of the buffers, whose element 0 is element `base` of the shard whose
/// decayed ranges `segments` (offset, len, decayed) describe: a contiguous chunk per thread.
pub fn update(b: HostBuffers, base: usize, segments: &[(i64, i64, bool)], k: &StepConsts, threads: usize) {
    let n = b.p.len();
    let per = n.div_ceil(threads.max(1)).div_ceil(ALIGN) * ALIGN;
    if threads <= 1 || n <= ALIGN * 4 {
        update_range(b, base, segments, k);
        return;
    }
    let HostBuffers { p, g, m, v } = b;
    std::thread::scope(|s| {
        let mut parts = p
            .chunks_mut(per)
            .zip(g.chunks(per))
            .zip(m.chunks_mut(per))
            .zip(v.chunks_mut(per))
            .enumerate();
        let first = parts.next();
        for (i, (((p, g), m), v)) in parts {
            s.spawn(move || update_range(HostBuffers { p, g, m, v }, base + i * per, segments, k));
        }
        // the calling thread takes the first chunk
        if let Some((_, (((p, g), m), v))) = first {
            update_range(HostBuffers { p, g, m, v }, base, segments, k);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consts() -> StepConsts {
        StepConsts::new(3e-3, (0.9, 0.95), 1e-8, 0.1, 0.7, 3)
    }

    /// Hand-computed step: p = 1, g = 2, m = 0.5, v = 0.25 at lr 1e-2, betas (0.9, 0.99), eps 0,
    /// decay 0.1, clip 0.5, step 1: g' = 1; m = 0.5 + 0.1 * 0.5 = 0.55; v = 0.25 + 0.01 * 0.75 =
    /// 0.2575; bias: step size -lr * sqrt(0.01) / 0.1 = -0.01; p = 0.999 - 0.01 * 0.55 / sqrt(0.2575).
    #[test]
    fn one_element_by_hand() {
        let k = StepConsts::new(1e-2, (0.9, 0.99), 0.0, 0.1, 0.5, 1);
        let (mut p, mut m, mut v) = ([1f32], [0.5f32], [0.25f32]);
        let segs = [(0i64, 1i64, true)];
        update(
            HostBuffers {
                p: &mut p,
                g: &[2.0],
                m: &mut m,
                v: &mut v,
            },
            0,
            &segs,
            &k,
            1,
        );
        let want_p = 0.999 - 0.01 * 0.55 / 0.2575f64.sqrt();
        assert!((m[0] as f64 - 0.55).abs() < 1e-7, "{}", m[0]);
        assert!((v[0] as f64 - 0.2575).abs() < 1e-7, "{}", v[0]);
        assert!((p[0] as f64 - want_p).abs() < 1e-6, "{} vs {want_p}", p[0]);
    }

    /// Threads, segment boundaries inside chunks and an offset base change nothing: the same
    /// bits as one thread over the whole buffer; and undecayed ranges are not decayed.
    #[test]
    fn threads_and_segments_give_the_same_bits() {
        let n = 10_007usize;
        let mut rng = 7u64;
        let mut next = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let p0: Vec<f32> = (0..n).map(|_| next()).collect();
        let g: Vec<f32> = (0..n).map(|_| next()).collect();
        let segs = [(0i64, 1000i64, true), (1000, 3, false), (1003, 9004, true)];
        let k = consts();
        let one = |threads: usize| {
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.01f32; n], vec![0.02f32; n]);
            update(
                HostBuffers {
                    p: &mut p,
                    g: &g,
                    m: &mut m,
                    v: &mut v,
                },
                0,
                &segs,
                &k,
                threads,
            );
            (p, m, v)
        };
        let base = one(1);
        for t in [2, 3, 8] {
            assert!(one(t) == base, "{t} threads");
        }
        // the tail [5000, n) alone, as part of the same shard, equals the tail of the whole
        let (mut p, mut m, mut v) = (p0[5000..].to_vec(), vec![0.01f32; n - 5000], vec![0.02f32; n - 5000]);
        update(
            HostBuffers {
                p: &mut p,
                g: &g[5000..],
                m: &mut m,
                v: &mut v,
            },
            5000,
            &segs,
            &k,
            3,
        );
        assert!(p[..] == base.0[5000..], "an offset part of the shard");
        // element 1001 is undecayed: its update is the decayed formula with decay 1
        let (mut p1, mut m1, mut v1) = ([p0[1001]], [0.01f32], [0.02f32]);
        update_run(
            HostBuffers {
                p: &mut p1,
                g: &g[1001..1002],
                m: &mut m1,
                v: &mut v1,
            },
            &k,
            1.0,
        );
        assert_eq!(p1[0], base.0[1001]);
    }

    /// The AVX2 build and the baseline build of the loop give the same bits.
    #[test]
    fn the_vector_builds_agree() {
        if !uses_avx2() {
            eprintln!("not run here: this CPU has no AVX2, so there is one build of the loop");
            return;
        }
        let n = 4099;
        let p0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 3.0).collect();
        let k = consts();
        let go = |avx: bool| {
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.5f32; n], vec![0.25f32; n]);
            let b = HostBuffers {
                p: &mut p,
                g: &g,
                m: &mut m,
                v: &mut v,
            };
            if avx {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: checked above that the CPU has AVX2.
                unsafe {
                    run_avx2(b, &k, k.decay)
                }
            } else {
                run(b, &k, k.decay)
            }
            (p, m, v)
        };
        assert!(go(true) == go(false));
    }
}
