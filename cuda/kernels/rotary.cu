// Rotary embedding of the training block (host side: cuda/src/rotary.rs): Q and K rotated
// out of the packed QKV projection in one pass; their gradients rotated back and joined with
// V's in one pass. NeoX rotate_half form, fp32 arithmetic, one rounding.
#include "common.cuh"
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
