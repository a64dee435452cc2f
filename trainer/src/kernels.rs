//! The rotary-embedding kernels of the training block (the model's `RotaryKernel`): one
//! NVRTC-compiled kernel rotates Q and K out of the packed QKV projection, another rotates
//! their gradients back and assembles the QKV gradient with V's. Each reads and writes every
//! element once, where the same rotation as ATen ops with autograd takes about ten passes and
//! as many autograd nodes (on an H100 at 4096 tokens it was the largest element-wise cost of a
//! block; with these kernels the 1.47B step went from 118 to 107 ms, notes/gpu-2026-11-27.md).
//!
//! Arithmetic in fp32 with the fp32 angle tables and one rounding to the activation dtype
//! (bf16, fp16 or fp32), the NeoX `rotate_half` form of Hugging Face's `apply_rotary_pos_emb`:
//! `y1 = x1 cos - x2 sin`, `y2 = x2 cos + x1 sin` for the halves of each head, and the
//! transposed rotation for the gradient. Compiled and launched like the fused AdamW
//! (fused.rs); where NVRTC or the driver is missing the model's ATen ops compute the same.
//!
//! The token cross-entropy kernel (the model's `LossKernel`) computes each row's
//! log-sum-exp online in fp32 (Milakov and Gimelshein 2018) and writes the gradient
//! `softmax - onehot` over the logits, as llm.c's fused classifier does: two reads and one
//! write of the logits in their dtype, where autograd through ATen's fp32 `cross_entropy`
//! makes an fp32 copy, a log-softmax, and as many passes again in backward. It is checked
//! against `cross_entropy_aten` on the device before it is installed.
//!
//! The SwiGLU kernels (the model's `SwigluKernel`) compute `silu(g) * u` and its two
//! gradients in one pass each, checked against `SwigluAten` before they are installed; with
//! them the training block splices its MLP product out of autograd.

use std::ffi::c_void;

use baichuan_model::baichuan::{cross_entropy_aten, LossKernel, RotaryKernel, SwigluAten, SwigluKernel, IGNORE_INDEX};
use tch::{Kind, Tensor};

use crate::fused::{FusedError, Module};

/// Element types shared by the kernels: `load` to fp32, `store` rounding once (to nearest
/// even), `W` elements per 16-byte vector.
const DTYPES: &str = r#"
__device__ __forceinline__ unsigned short to_bf16(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
struct Bf16 {
    typedef unsigned short T;
    static const int W = 8;
    static __device__ __forceinline__ float load(T x) { return __uint_as_float(((unsigned int)x) << 16); }
    static __device__ __forceinline__ T store(float x) { return to_bf16(x); }
};
struct F16 {
    typedef unsigned short T;
    static const int W = 8;
    static __device__ __forceinline__ float load(T x) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f; }
    static __device__ __forceinline__ T store(float x) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x)); return h; }
};
struct F32 {
    typedef float T;
    static const int W = 4;
    static __device__ __forceinline__ float load(T x) { return x; }
    static __device__ __forceinline__ T store(float x) { return x; }
};
"#;

const ROTARY_SOURCE: &str = r#"

// qkv (B, T, 3, nh, hd) contiguous -> q, k (B, T, nh, hd) contiguous; one thread per pair
// (j, j + hd/2) of one head of Q or K at one position.
template <class D>
__device__ void rotary_fwd(const typename D::T* __restrict__ qkv, typename D::T* __restrict__ q,
                           typename D::T* __restrict__ k, const float* __restrict__ cos_t,
                           const float* __restrict__ sin_t, long long pairs, int seq, int nh, int hd) {
    int half = hd / 2;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += stride) {
        int j = (int)(i % half);
        long long r = i / half;
        int h = (int)(r % nh);
        r /= nh;
        int s = (int)(r % 2);
        long long bt = r / 2;
        int t = (int)(bt % seq);
        const typename D::T* src = qkv + ((bt * 3 + s) * nh + h) * (long long)hd;
        float x1 = D::load(src[j]), x2 = D::load(src[j + half]);
        float c = cos_t[(long long)t * hd + j], sn = sin_t[(long long)t * hd + j];
        typename D::T* dst = (s == 0 ? q : k) + (bt * nh + h) * (long long)hd;
        dst[j] = D::store(x1 * c - x2 * sn);
        dst[j + half] = D::store(x2 * c + x1 * sn);
    }
}

// dq, dk, dv (B, T, nh, hd) with strides (b, t, h; the last is 1) -> dqkv (B, T, 3, nh, hd)
// contiguous: Q's and K's gradients rotated back, V's copied.
template <class D>
__device__ void rotary_bwd(const typename D::T* __restrict__ dq, const typename D::T* __restrict__ dk,
                           const typename D::T* __restrict__ dv, typename D::T* __restrict__ dqkv,
                           const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                           long long items, int seq, int nh, int hd,
                           long long qb, long long qt, long long qh, long long kb, long long kt, long long kh,
                           long long vb, long long vt, long long vh) {
    int half = hd / 2;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        int j = (int)(i % half);
        long long r = i / half;
        int h = (int)(r % nh);
        long long bt = r / nh;
        long long t = bt % seq, b = bt / seq;
        float c = cos_t[t * hd + j], sn = sin_t[t * hd + j];
        typename D::T* out = dqkv + (bt * 3 * nh + h) * (long long)hd;
        const typename D::T* g = dq + b * qb + t * qt + h * qh;
        float g1 = D::load(g[j]), g2 = D::load(g[j + half]);
        out[j] = D::store(g1 * c + g2 * sn);
        out[j + half] = D::store(g2 * c - g1 * sn);
        out += (long long)nh * hd;
        g = dk + b * kb + t * kt + h * kh;
        g1 = D::load(g[j]);
        g2 = D::load(g[j + half]);
        out[j] = D::store(g1 * c + g2 * sn);
        out[j + half] = D::store(g2 * c - g1 * sn);
        out += (long long)nh * hd;
        g = dv + b * vb + t * vt + h * vh;
        out[j] = g[j];
        out[j + half] = g[j + half];
    }
}

#define ROTARY(NAME, D)                                                                          \
extern "C" __global__ void rotary_fwd_##NAME(const D::T* qkv, D::T* q, D::T* k, const float* c,   \
        const float* s, long long pairs, int seq, int nh, int hd) {                              \
    rotary_fwd<D>(qkv, q, k, c, s, pairs, seq, nh, hd);                                          \
}                                                                                                \
extern "C" __global__ void rotary_bwd_##NAME(const D::T* dq, const D::T* dk, const D::T* dv,      \
        D::T* dqkv, const float* c, const float* s, long long items, int seq, int nh, int hd,     \
        long long qb, long long qt, long long qh, long long kb, long long kt, long long kh,       \
        long long vb, long long vt, long long vh) {                                              \
    rotary_bwd<D>(dq, dk, dv, dqkv, c, s, items, seq, nh, hd, qb, qt, qh, kb, kt, kh, vb, vt, vh); \
}
ROTARY(bf16, Bf16)
ROTARY(f16, F16)
ROTARY(f32, F32)
"#;

/// The token cross-entropy (the model's `LossKernel`): one block of 256 threads per row of
/// logits (grid-stride over rows). One read computes the row's maximum and sum of
/// exponentials online (each thread, then merged across the block); a second read, mostly
/// from L2, writes the gradient over the logits in place. 16-byte accesses where the row
/// length allows.
const LOSS_SOURCE: &str = r#"
#define NEG_INF __int_as_float(0xff800000)
// Merges the pair (m2, s2) into (m, s), where s is the sum of exp(x - m) over some x (NaN
// once a NaN was seen; fmaxf would drop it from the maximum, so it travels in s).
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    float hi = fmaxf(m, m2);
    if (hi == NEG_INF) { s = s + s2; return; }  // nothing finite yet: 0, or NaN
    s = s * __expf(m - hi) + s2 * __expf(m2 - hi);
    m = hi;
}

__device__ __forceinline__ void lse_warp(float& m, float& s) {
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
}

// Adds the values f[0..n) to (m, s).
__device__ __forceinline__ void lse_add(float& m, float& s, const float* f, int n) {
    float hi = NEG_INF;
    bool nan = false;
    for (int j = 0; j < n; j++) { hi = fmaxf(hi, f[j]); nan |= f[j] != f[j]; }
    if (hi > m) { s *= __expf(m - hi); m = hi; }
    if (m > NEG_INF)
        for (int j = 0; j < n; j++) s += __expf(f[j] - m);
    if (nan) s = __int_as_float(0x7fc00000);
}

// logits (rows, v) contiguous, in place; targets (rows); losses (rows) fp32.
template <class D>
__device__ void cross_entropy_rows(typename D::T* __restrict__ logits, const long long* __restrict__ targets,
                                   float* __restrict__ losses, long long rows, long long v, float scale,
                                   int write_grad, int vec) {
    typedef typename D::T T;
    __shared__ float part_m[32], part_s[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        T* x = logits + r * v;
        long long t = targets[r];
        bool valid = t >= 0 && t < v;
        // read before any thread of the block overwrites the row with its gradient
        float xt = (threadIdx.x == 0 && valid) ? D::load(x[t]) : 0.f;
        float m = NEG_INF, s = 0.f;
        if (vec) {
            const uint4* xv = reinterpret_cast<const uint4*>(x);
            long long nv = v / D::W;
            for (long long i = threadIdx.x; i < nv; i += blockDim.x) {
                uint4 u = xv[i];
                const T* e = reinterpret_cast<const T*>(&u);
                float f[D::W];
#pragma unroll
                for (int j = 0; j < D::W; j++) f[j] = D::load(e[j]);
                lse_add(m, s, f, D::W);
            }
        } else {
            for (long long i = threadIdx.x; i < v; i += blockDim.x) {
                float f = D::load(x[i]);
                lse_add(m, s, &f, 1);
            }
        }
        lse_warp(m, s);
        if (lane == 0) { part_m[warp] = m; part_s[warp] = s; }
        __syncthreads();
        // every warp merges the partials itself, so no second barrier is needed to share them
        m = lane < warps ? part_m[lane] : NEG_INF;
        s = lane < warps ? part_s[lane] : 0.f;
        lse_warp(m, s);
        if (threadIdx.x == 0)
            losses[r] = t == -100 ? 0.f : (valid ? m + logf(s) - xt : __int_as_float(0x7fc00000));
        if (write_grad) {
            // exp(x - logsumexp) = exp(x - m) / s; rows without a valid target get zeros
            float inv = 1.f / s;
            if (vec) {
                uint4* xv = reinterpret_cast<uint4*>(x);
                long long nv = v / D::W;
                for (long long i = threadIdx.x; i < nv; i += blockDim.x) {
                    uint4 u = xv[i];
                    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
                    for (int j = 0; j < D::W; j++) {
                        float p = __expf(D::load(e[j]) - m) * inv;
                        e[j] = D::store(valid ? (p - (i * D::W + j == t ? 1.f : 0.f)) * scale : 0.f);
                    }
                    xv[i] = u;
                }
            } else {
                for (long long i = threadIdx.x; i < v; i += blockDim.x) {
                    float p = __expf(D::load(x[i]) - m) * inv;
                    x[i] = D::store(valid ? (p - (i == t ? 1.f : 0.f)) * scale : 0.f);
                }
            }
        }
        __syncthreads();  // the partials are reused by the next row
    }
}

#define CROSS_ENTROPY(NAME, D)                                                                    \
extern "C" __global__ void cross_entropy_##NAME(D::T* logits, const long long* targets, float* losses, \
        long long rows, long long v, float scale, int write_grad, int vec) {                     \
    cross_entropy_rows<D>(logits, targets, losses, rows, v, scale, write_grad, vec);            \
}
CROSS_ENTROPY(bf16, Bf16)
CROSS_ENTROPY(f16, F16)
CROSS_ENTROPY(f32, F32)
"#;

/// The SwiGLU product (the model's `SwigluKernel`): forward reads the gate and up
/// projections once and writes `silu(g) * u`; backward reads them and the product's gradient
/// once and writes both gradients, where ATen's ops with autograd take five passes forward
/// and backward together and keep `silu(g)` for backward. fp32 arithmetic, one rounding;
/// 16-byte accesses when the buffers allow.
const SWIGLU_SOURCE: &str = r#"
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + __expf(-x)); }

template <class D>
__device__ __forceinline__ void swiglu_fwd_one(const typename D::T* g, const typename D::T* u, typename D::T* a, long long i) {
    float x = D::load(g[i]);
    a[i] = D::store(x * sigmoid_f(x) * D::load(u[i]));
}

template <class D>
__device__ __forceinline__ void swiglu_bwd_one(const typename D::T* g, const typename D::T* u, const typename D::T* da,
                                               typename D::T* dg, typename D::T* du, long long i) {
    float x = D::load(g[i]), y = D::load(u[i]), d = D::load(da[i]);
    float s = sigmoid_f(x);
    du[i] = D::store(d * x * s);
    dg[i] = D::store(d * y * s * (1.f + x * (1.f - s)));
}

// n elements; with vec, items are groups of D::W elements (n a multiple of D::W, buffers
// 16-byte aligned), else single elements.
template <class D>
__device__ void swiglu_fwd(const typename D::T* __restrict__ g, const typename D::T* __restrict__ u,
                           typename D::T* __restrict__ a, long long n, int vec) {
    typedef typename D::T T;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long items = vec ? n / D::W : n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        if (vec) {
            uint4 gv = reinterpret_cast<const uint4*>(g)[i], uv = reinterpret_cast<const uint4*>(u)[i], av;
            const T* ge = reinterpret_cast<const T*>(&gv);
            const T* ue = reinterpret_cast<const T*>(&uv);
            T* ae = reinterpret_cast<T*>(&av);
#pragma unroll
            for (int j = 0; j < D::W; j++) swiglu_fwd_one<D>(ge, ue, ae, j);
            reinterpret_cast<uint4*>(a)[i] = av;
        } else {
            swiglu_fwd_one<D>(g, u, a, i);
        }
    }
}

template <class D>
__device__ void swiglu_bwd(const typename D::T* __restrict__ g, const typename D::T* __restrict__ u,
                           const typename D::T* __restrict__ da, typename D::T* __restrict__ dg,
                           typename D::T* __restrict__ du, long long n, int vec) {
    typedef typename D::T T;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long items = vec ? n / D::W : n;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        if (vec) {
            uint4 gv = reinterpret_cast<const uint4*>(g)[i], uv = reinterpret_cast<const uint4*>(u)[i];
            uint4 dv = reinterpret_cast<const uint4*>(da)[i], dgv, duv;
            const T* ge = reinterpret_cast<const T*>(&gv);
            const T* ue = reinterpret_cast<const T*>(&uv);
            const T* de = reinterpret_cast<const T*>(&dv);
            T* dge = reinterpret_cast<T*>(&dgv);
            T* due = reinterpret_cast<T*>(&duv);
#pragma unroll
            for (int j = 0; j < D::W; j++) swiglu_bwd_one<D>(ge, ue, de, dge, due, j);
            reinterpret_cast<uint4*>(dg)[i] = dgv;
            reinterpret_cast<uint4*>(du)[i] = duv;
        } else {
            swiglu_bwd_one<D>(g, u, da, dg, du, i);
        }
    }
}

#define SWIGLU(NAME, D)                                                                          \
extern "C" __global__ void swiglu_fwd_##NAME(const D::T* g, const D::T* u, D::T* a, long long n, int vec) { \
    swiglu_fwd<D>(g, u, a, n, vec);                                                              \
}                                                                                                \
extern "C" __global__ void swiglu_bwd_##NAME(const D::T* g, const D::T* u, const D::T* da, D::T* dg, \
        D::T* du, long long n, int vec) {                                                        \
    swiglu_bwd<D>(g, u, da, dg, du, n, vec);                                                     \
}
SWIGLU(bf16, Bf16)
SWIGLU(f16, F16)
SWIGLU(f32, F32)
"#;

/// Kernel names, forward then backward per dtype, in [`dtype_index`] order.
const NAMES: [&str; 6] = [
    "rotary_fwd_bf16",
    "rotary_bwd_bf16",
    "rotary_fwd_f16",
    "rotary_bwd_f16",
    "rotary_fwd_f32",
    "rotary_bwd_f32",
];

fn dtype_index(kind: Kind) -> usize {
    match kind {
        Kind::BFloat16 => 0,
        Kind::Half => 1,
        Kind::Float => 2,
        other => panic!("rotary kernel: activations in {other:?} (bf16, fp16 or fp32 expected)"),
    }
}

/// The rotary kernels compiled for one CUDA device.
pub struct CudaRotary {
    module: Module,
}

impl std::fmt::Debug for CudaRotary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaRotary")
    }
}

impl CudaRotary {
    pub fn new(device: tch::Device) -> Result<Self, FusedError> {
        Ok(CudaRotary {
            module: Module::load(device, &[DTYPES, ROTARY_SOURCE].concat(), "baichuan_rotary.cu", &NAMES)?,
        })
    }
}

fn ptr(t: &Tensor) -> *mut c_void {
    t.data_ptr()
}

/// Checks that the angle tables are fp32 on `x`'s device, contiguous, long enough for `seq`.
fn check_tables(x: &Tensor, cos: &Tensor, sin: &Tensor, seq: i64, hd: i64) {
    for t in [cos, sin] {
        assert!(
            t.kind() == Kind::Float && t.is_contiguous() && t.device() == x.device(),
            "rotary kernel: the angle tables must be contiguous fp32 on {:?}",
            x.device()
        );
        assert!(
            t.size()[0] >= seq && t.size()[1] == hd,
            "rotary kernel: tables {:?} too short for {seq} positions of {hd}",
            t.size()
        );
    }
}

impl RotaryKernel for CudaRotary {
    fn describe(&self) -> String {
        "rotary kernel (NVRTC)".into()
    }

    fn forward(&self, qkv: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor) {
        let size = qkv.size();
        assert!(
            size.len() == 5 && size[2] == 3 && qkv.is_contiguous(),
            "rotary kernel: qkv must be contiguous (B, T, 3, nh, hd), got {size:?}"
        );
        let (b, seq, nh, hd) = (size[0], size[1], size[3], size[4]);
        check_tables(qkv, cos, sin, seq, hd);
        let q = Tensor::empty([b, seq, nh, hd], (qkv.kind(), qkv.device()));
        let k = Tensor::empty([b, seq, nh, hd], (qkv.kind(), qkv.device()));
        let (mut src, mut qp, mut kp, mut cp, mut sp) = (ptr(qkv), ptr(&q), ptr(&k), ptr(cos), ptr(sin));
        let mut pairs = b * seq * 2 * nh * (hd / 2);
        let (mut seq32, mut nh32, mut hd32) = (seq as i32, nh as i32, hd as i32);
        let mut args = crate::fused::kernel_args!(src, qp, kp, cp, sp, pairs, seq32, nh32, hd32);
        // SAFETY: the arguments match rotary_fwd_*'s parameters; the tensors are live device
        // buffers of the shapes the kernel indexes (checked above).
        unsafe { self.module.launch(2 * dtype_index(qkv.kind()), pairs, &mut args) }
            .unwrap_or_else(|e| panic!("rotary kernel: {e}"));
        (q, k)
    }

    fn backward(&self, dq: &Tensor, dk: &Tensor, dv: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let size = dq.size();
        let (b, seq, nh, hd) = (size[0], size[1], size[2], size[3]);
        check_tables(dq, cos, sin, seq, hd);
        // the kernel indexes (b, t, h) by strides and needs unit stride along the head
        let unit = |t: &Tensor| {
            assert_eq!(t.size(), size, "rotary kernel: dq, dk, dv shapes differ");
            assert_eq!(t.kind(), dq.kind(), "rotary kernel: dq, dk, dv dtypes differ");
            if t.stride()[3] == 1 {
                t.shallow_clone()
            } else {
                t.contiguous()
            }
        };
        let (dq, dk, dv) = (unit(dq), unit(dk), unit(dv));
        let dqkv = Tensor::empty([b, seq, 3, nh, hd], (dq.kind(), dq.device()));
        let (mut qp, mut kp, mut vp, mut op, mut cp, mut sp) =
            (ptr(&dq), ptr(&dk), ptr(&dv), ptr(&dqkv), ptr(cos), ptr(sin));
        let mut items = b * seq * nh * (hd / 2);
        let (mut seq32, mut nh32, mut hd32) = (seq as i32, nh as i32, hd as i32);
        let st = |t: &Tensor| {
            let s = t.stride();
            [s[0], s[1], s[2]]
        };
        let [mut qb, mut qt, mut qh] = st(&dq);
        let [mut kb, mut kt, mut kh] = st(&dk);
        let [mut vb, mut vt, mut vh] = st(&dv);
        let mut args = crate::fused::kernel_args!(
            qp, kp, vp, op, cp, sp, items, seq32, nh32, hd32, qb, qt, qh, kb, kt, kh, vb, vt, vh
        );
        // SAFETY: the arguments match rotary_bwd_*'s parameters; every pointer addresses a live
        // device buffer that the strides above index within.
        unsafe { self.module.launch(2 * dtype_index(dq.kind()) + 1, items, &mut args) }
            .unwrap_or_else(|e| panic!("rotary kernel: {e}"));
        dqkv
    }
}

/// Installs the rotary kernel on a CUDA model with the fused ops; says what runs.
pub fn install_rotary(model: &mut baichuan_model::Baichuan) -> String {
    let device = model.device();
    if !device.is_cuda() || !model.rotary.fused {
        return "rotary: ATen ops".into();
    }
    match CudaRotary::new(device) {
        Ok(k) => {
            let what = k.describe();
            model.rotary.kernel = Some(std::sync::Arc::new(k));
            format!("rotary: {what}")
        }
        Err(e) => format!("rotary: ATen ops ({e})"),
    }
}

/// Loss kernel names in [`dtype_index`] order.
const LOSS_NAMES: [&str; 3] = ["cross_entropy_bf16", "cross_entropy_f16", "cross_entropy_f32"];

/// The cross-entropy kernel compiled for one CUDA device.
pub struct CudaLoss {
    module: Module,
}

impl std::fmt::Debug for CudaLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaLoss")
    }
}

impl CudaLoss {
    pub fn new(device: tch::Device) -> Result<Self, FusedError> {
        Ok(CudaLoss {
            module: Module::load(
                device,
                &[DTYPES, LOSS_SOURCE].concat(),
                "baichuan_cross_entropy.cu",
                &LOSS_NAMES,
            )?,
        })
    }
}

impl LossKernel for CudaLoss {
    fn describe(&self) -> String {
        "cross-entropy kernel (NVRTC)".into()
    }

    fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor {
        let size = logits.size();
        assert!(
            size.len() == 2 && logits.is_contiguous(),
            "loss kernel: logits must be contiguous (N, V), got {size:?}"
        );
        let (rows, v) = (size[0], size[1]);
        assert!(
            targets.kind() == Kind::Int64 && targets.size() == [rows] && targets.device() == logits.device(),
            "loss kernel: targets must be int64 ({rows},) on {:?}",
            logits.device()
        );
        let targets = targets.contiguous();
        let losses = Tensor::empty([rows], (Kind::Float, logits.device()));
        let which = dtype_index(logits.kind());
        // 16-byte accesses when every row starts on a 16-byte boundary
        let row_bytes = v * logits.kind().elt_size_in_bytes() as i64;
        let mut vec = (row_bytes % 16 == 0 && (logits.data_ptr() as usize).is_multiple_of(16)) as i32;
        let (mut lp, mut tp, mut op) = (ptr(logits), ptr(&targets), ptr(&losses));
        let (mut rows_, mut v_) = (rows, v);
        let mut scale = grad_scale.unwrap_or(0.0) as f32;
        let mut write_grad = grad_scale.is_some() as i32;
        let mut args = crate::fused::kernel_args!(lp, tp, op, rows_, v_, scale, write_grad, vec);
        // SAFETY: the arguments match cross_entropy_*'s parameters; logits, targets and losses
        // are live contiguous buffers of (rows, v), (rows) and (rows) on this device (checked
        // above). One block of 256 threads per row: 256 items per row.
        unsafe { self.module.launch(which, rows * 256, &mut args) }.unwrap_or_else(|e| panic!("loss kernel: {e}"));
        losses
    }
}

/// Largest difference of `kernel` from [`cross_entropy_aten`] on random logits of `kind` on
/// `device`, relative to the largest value compared: per-row losses, then gradients (after
/// the gradient's rounding to `kind`). Rows include an ignored target and both row lengths,
/// one that takes 16-byte accesses and one that does not; there are more rows than the
/// kernel's grid has blocks on any current GPU (8 per multiprocessor), so blocks take
/// several rows each.
pub fn loss_kernel_error(kernel: &dyn LossKernel, device: tch::Device, kind: Kind) -> (f64, f64) {
    let rel = relative_error;
    let (mut loss_err, mut grad_err) = (0.0f64, 0.0f64);
    for v in [1000i64, 1003] {
        let rows = 1500;
        let logits = (Tensor::randn([rows, v], (Kind::Float, device)) * 3.0).to_kind(kind);
        let mut t: Vec<i64> = (0..rows).map(|r| (r * 131 + 5) % v).collect();
        t[3] = IGNORE_INDEX;
        t[5] = v - 1;
        let targets = Tensor::from_slice(&t).to_device(device);
        let (mine, theirs) = (logits.copy(), logits.copy());
        let a = kernel.cross_entropy(&mine, &targets, Some(0.5));
        let b = cross_entropy_aten(&theirs, &targets, Some(0.5));
        loss_err = loss_err.max(rel(&a, &b));
        grad_err = grad_err.max(rel(&mine, &theirs));
        let plain = kernel.cross_entropy(&logits.copy(), &targets, None);
        loss_err = loss_err.max(rel(&plain, &b));
    }
    (loss_err, grad_err)
}

/// Installs the cross-entropy kernel on a CUDA model with the fused ops, after checking it
/// against the ATen operator in the model's dtype (a kernel that disagrees is not used, and
/// the reason is said); says what runs.
pub fn install_loss(model: &mut baichuan_model::Baichuan) -> String {
    let device = model.device();
    if !device.is_cuda() || !model.rotary.fused {
        return "loss: ATen ops".into();
    }
    let kernel = match CudaLoss::new(device) {
        Ok(k) => k,
        Err(e) => return format!("loss: ATen ops ({e})"),
    };
    let kind = model.kind();
    let (loss_err, grad_err) = loss_kernel_error(&kernel, device, kind);
    // one rounding of the gradient to the dtype, and fp32 exponentials
    let grad_tol = kernel_tolerance(kind);
    if loss_err > 1e-5 || grad_err > grad_tol {
        return format!(
            "loss: ATen ops (the kernel's check failed: loss error {loss_err:.1e}, gradient error {grad_err:.1e})"
        );
    }
    let what = kernel.describe();
    model.loss_kernel = Some(std::sync::Arc::new(kernel));
    format!("loss: {what}, checked (loss error {loss_err:.1e}, gradient {grad_err:.1e})")
}

/// SwiGLU kernel names, forward then backward per dtype, in [`dtype_index`] order.
const SWIGLU_NAMES: [&str; 6] = [
    "swiglu_fwd_bf16",
    "swiglu_bwd_bf16",
    "swiglu_fwd_f16",
    "swiglu_bwd_f16",
    "swiglu_fwd_f32",
    "swiglu_bwd_f32",
];

/// The SwiGLU kernels compiled for one CUDA device.
pub struct CudaSwiglu {
    module: Module,
}

impl std::fmt::Debug for CudaSwiglu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CudaSwiglu")
    }
}

impl CudaSwiglu {
    pub fn new(device: tch::Device) -> Result<Self, FusedError> {
        Ok(CudaSwiglu {
            module: Module::load(
                device,
                &[DTYPES, SWIGLU_SOURCE].concat(),
                "baichuan_swiglu.cu",
                &SWIGLU_NAMES,
            )?,
        })
    }
}

/// Contiguous views of same-shaped, same-dtype tensors, and whether all of them allow
/// 16-byte accesses (element count a multiple of the vector width, 16-byte aligned).
fn same_layout(ts: &[&Tensor]) -> (Vec<Tensor>, i32) {
    let (size, kind) = (ts[0].size(), ts[0].kind());
    let out: Vec<Tensor> = ts
        .iter()
        .map(|t| {
            assert!(
                t.size() == size && t.kind() == kind && t.device() == ts[0].device(),
                "swiglu kernel: operands differ in shape, dtype or device"
            );
            t.contiguous()
        })
        .collect();
    let width = 16 / kind.elt_size_in_bytes() as i64;
    let aligned = out.iter().all(|t| (t.data_ptr() as usize).is_multiple_of(16));
    (out, (ts[0].numel() as i64 % width == 0 && aligned) as i32)
}

impl SwigluKernel for CudaSwiglu {
    fn describe(&self) -> String {
        "SwiGLU kernel (NVRTC)".into()
    }

    fn forward(&self, g: &Tensor, u: &Tensor) -> Tensor {
        let (ops, vec) = same_layout(&[g, u]);
        let a = Tensor::empty(g.size(), (g.kind(), g.device()));
        let (mut gp, mut up, mut ap) = (ptr(&ops[0]), ptr(&ops[1]), ptr(&a));
        let mut n = g.numel() as i64;
        let mut vec = vec;
        let items = if vec == 1 {
            n / (16 / g.kind().elt_size_in_bytes() as i64)
        } else {
            n
        };
        let mut args = crate::fused::kernel_args!(gp, up, ap, n, vec);
        // SAFETY: the arguments match swiglu_fwd_*'s parameters; g, u and a are live contiguous
        // device buffers of n elements (checked above), 16-byte aligned where vec is set.
        unsafe { self.module.launch(2 * dtype_index(g.kind()), items, &mut args) }
            .unwrap_or_else(|e| panic!("swiglu kernel: {e}"));
        a
    }

    fn backward(&self, g: &Tensor, u: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
        let (ops, vec) = same_layout(&[g, u, da]);
        let dg = Tensor::empty(g.size(), (g.kind(), g.device()));
        let du = Tensor::empty(g.size(), (g.kind(), g.device()));
        let (mut gp, mut up, mut dap, mut dgp, mut dup) =
            (ptr(&ops[0]), ptr(&ops[1]), ptr(&ops[2]), ptr(&dg), ptr(&du));
        let mut n = g.numel() as i64;
        let mut vec = vec;
        let items = if vec == 1 {
            n / (16 / g.kind().elt_size_in_bytes() as i64)
        } else {
            n
        };
        let mut args = crate::fused::kernel_args!(gp, up, dap, dgp, dup, n, vec);
        // SAFETY: the arguments match swiglu_bwd_*'s parameters; every buffer is a live
        // contiguous device buffer of n elements (checked above), 16-byte aligned where vec is set.
        unsafe { self.module.launch(2 * dtype_index(g.kind()) + 1, items, &mut args) }
            .unwrap_or_else(|e| panic!("swiglu kernel: {e}"));
        (dg, du)
    }
}

/// Largest difference of `kernel` from [`SwigluAten`] on random operands of `kind` on
/// `device`, relative to the largest value compared: the product, then both gradients. Sizes
/// with and without 16-byte accesses.
pub fn swiglu_kernel_error(kernel: &dyn SwigluKernel, device: tch::Device, kind: Kind) -> (f64, f64) {
    let (mut fwd, mut bwd) = (0.0f64, 0.0f64);
    for n in [4096i64, 4099] {
        let draw = || (Tensor::randn([n], (Kind::Float, device)) * 4.0).to_kind(kind);
        let (g, u, da) = (draw(), draw(), draw());
        fwd = fwd.max(relative_error(&kernel.forward(&g, &u), &SwigluAten.forward(&g, &u)));
        let (dg1, du1) = kernel.backward(&g, &u, &da);
        let (dg2, du2) = SwigluAten.backward(&g, &u, &da);
        bwd = bwd.max(relative_error(&dg1, &dg2)).max(relative_error(&du1, &du2));
    }
    (fwd, bwd)
}

/// Largest absolute difference relative to the largest magnitude of `b`; NaN anywhere counts
/// as infinite.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    let d = (&a - &b).abs().max().double_value(&[]);
    if d.is_nan() {
        f64::INFINITY
    } else {
        d / scale
    }
}

/// Tolerance of a kernel against its fp32 ATen reference in `kind`: one rounding apart.
fn kernel_tolerance(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => 1e-2,
        Kind::Half => 2e-3,
        _ => 1e-5,
    }
}

/// Installs the SwiGLU kernel on a CUDA model with the fused ops (the training block then
/// splices its MLP product out of autograd), after checking it against [`SwigluAten`] in the
/// model's dtype; says what runs.
pub fn install_swiglu(model: &mut baichuan_model::Baichuan) -> String {
    let device = model.device();
    if !device.is_cuda() || !model.rotary.fused {
        return "swiglu: ATen ops".into();
    }
    let kernel = match CudaSwiglu::new(device) {
        Ok(k) => k,
        Err(e) => return format!("swiglu: ATen ops ({e})"),
    };
    let kind = model.kind();
    let (fwd, bwd) = swiglu_kernel_error(&kernel, device, kind);
    let tol = kernel_tolerance(kind);
    if fwd > tol || bwd > tol {
        return format!(
            "swiglu: ATen ops (the kernel's check failed: product error {fwd:.1e}, gradient error {bwd:.1e})"
        );
    }
    let what = kernel.describe();
    model.rotary.swiglu = Some(std::sync::Arc::new(kernel));
    format!("swiglu: {what}, checked (product error {fwd:.1e}, gradient {bwd:.1e})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel source compiles with the NVRTC of the torch install for Ampere and Hopper
    /// (no GPU needed), with all its entry points; skipped, saying so, where that library is
    /// absent.
    #[test]
    fn the_kernels_compile_for_ampere_and_hopper() {
        let sources: [(&str, &str, &[&str]); 3] = [
            (ROTARY_SOURCE, "baichuan_rotary.cu", &NAMES),
            (LOSS_SOURCE, "baichuan_cross_entropy.cu", &LOSS_NAMES),
            (SWIGLU_SOURCE, "baichuan_swiglu.cu", &SWIGLU_NAMES),
        ];
        for (source, file, names) in sources {
            for (major, minor) in [(8, 0), (9, 0)] {
                match crate::fused::compile_ptx(&[DTYPES, source].concat(), file, major, minor) {
                    Ok(ptx) => {
                        let text = String::from_utf8_lossy(&ptx);
                        for name in names {
                            assert!(text.contains(&format!(".entry {name}(")), "{file}: {name} missing");
                        }
                    }
                    Err(FusedError::Unavailable(e)) => {
                        println!("skipped: {e}");
                        return;
                    }
                    Err(e) => panic!("{file}: {e}"),
                }
            }
        }
    }

    /// The SwiGLU check measures a right operator as right and a wrong one as wrong (on the
    /// CPU with the ATen operator: the check itself needs no GPU).
    #[test]
    fn the_swiglu_check_tells_a_wrong_operator_from_a_right_one() {
        #[derive(Debug)]
        struct Off(f64);
        impl SwigluKernel for Off {
            fn describe(&self) -> String {
                "test".into()
            }
            fn forward(&self, g: &Tensor, u: &Tensor) -> Tensor {
                SwigluAten.forward(g, u) * (1.0 + self.0)
            }
            fn backward(&self, g: &Tensor, u: &Tensor, da: &Tensor) -> (Tensor, Tensor) {
                SwigluAten.backward(g, u, da)
            }
        }
        let (f, b) = swiglu_kernel_error(&Off(0.0), tch::Device::Cpu, Kind::Float);
        assert!(f == 0.0 && b == 0.0, "{f} {b}");
        let (f, _) = swiglu_kernel_error(&Off(1e-3), tch::Device::Cpu, Kind::Float);
        assert!(f > kernel_tolerance(Kind::Float), "{f}");
    }

    /// The check that guards the kernel's installation rejects an operator that is wrong,
    /// here one off by one ulp-sized shift in every gradient (run with the ATen operator on
    /// the CPU: the check itself needs no GPU).
    #[test]
    fn the_installation_check_tells_a_wrong_operator_from_a_right_one() {
        #[derive(Debug)]
        struct Aten(f64);
        impl LossKernel for Aten {
            fn describe(&self) -> String {
                "test".into()
            }
            fn cross_entropy(&self, logits: &Tensor, targets: &Tensor, grad_scale: Option<f64>) -> Tensor {
                let losses = cross_entropy_aten(logits, targets, grad_scale);
                if grad_scale.is_some() {
                    let _ = logits.shallow_clone().g_add_scalar_(self.0);
                }
                losses
            }
        }
        let (l, g) = loss_kernel_error(&Aten(0.0), tch::Device::Cpu, Kind::Float);
        assert!(l < 1e-6 && g < 1e-6, "{l} {g}");
        let (l, g) = loss_kernel_error(&Aten(1e-3), tch::Device::Cpu, Kind::Float);
        assert!(l < 1e-6 && g > 1e-3, "{l} {g}");
    }

    #[test]
    fn cpu_models_keep_the_aten_rotation() {
        let c = baichuan_model::ModelConfig::tiny();
        let mut m = baichuan_model::Baichuan::new(&c, tch::Device::Cpu).unwrap();
        assert_eq!(install_rotary(&mut m), "rotary: ATen ops");
        assert!(m.rotary.kernel.is_none());
        assert_eq!(install_loss(&mut m), "loss: ATen ops");
        assert!(m.loss_kernel.is_none());
        assert_eq!(install_swiglu(&mut m), "swiglu: ATen ops");
        assert!(m.rotary.swiglu.is_none());
    }
}
