// Token cross-entropy over rows of logits (host side: cuda/src/loss.rs): one block of 256
// threads per row (grid-stride over rows); one read computes the row's maximum and sum of
// exponentials online, a second writes softmax - onehot over the logits in place. 16-byte
// accesses where the row length allows.
#include "common.cuh"
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
