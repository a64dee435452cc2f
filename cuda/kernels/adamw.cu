// The fused AdamW update on one flat fp32 buffer (host side: cuda/src/adamw.rs). out_kind:
// 0 no low-precision copy, 1 bf16, 2 fp16 (round to nearest even).
#include "common.cuh"
__device__ __forceinline__ void adamw1(
    float& p, float g, float& m, float& v,
    float gscale, float decay, float w1, float w2, float step_size, float eps_hat)
{
    g = g * gscale;                 // the clip coefficient, as grad.mul_(c)
    m = m + w1 * (g - m);           // torch.lerp(m, g, w1), w1 < 0.5
    v = v + w2 * (g * g - v);       // torch.lerp(v, g*g, w2)
    p = p * decay;
    p = p + (m * step_size) / (sqrtf(v) + eps_hat);
}
__device__ __forceinline__ unsigned short narrow16(float x, int out_kind) {
    return out_kind == 1 ? Bf16::store(x) : F16::store(x);
}
// One element per iteration: segments' unaligned heads and tails.
extern "C" __global__ void baichuan_adamw(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
    unsigned short* __restrict__ out, int out_kind, long long n,
    float decay, float w1, float w2, float step_size, float eps_hat, float gscale)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float pi = p[i], mi = m[i], vi = v[i];
        adamw1(pi, g[i], mi, vi, gscale, decay, w1, w2, step_size, eps_hat);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (out_kind != 0) out[i] = narrow16(pi, out_kind);
    }
}
// Four elements per iteration with 16-byte loads and stores (8-byte for the 16-bit copy):
// the update is memory-bound, and wide accesses keep more bytes in flight per thread.
// Every pointer is aligned to its access width; n4 counts groups of four.
extern "C" __global__ void baichuan_adamw4(
    float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m, float4* __restrict__ v,
    ushort4* __restrict__ out, int out_kind, long long n4,
    float decay, float w1, float w2, float step_size, float eps_hat, float gscale)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 pi = p[i], gi = g[i], mi = m[i], vi = v[i];
        adamw1(pi.x, gi.x, mi.x, vi.x, gscale, decay, w1, w2, step_size, eps_hat);
        adamw1(pi.y, gi.y, mi.y, vi.y, gscale, decay, w1, w2, step_size, eps_hat);
        adamw1(pi.z, gi.z, mi.z, vi.z, gscale, decay, w1, w2, step_size, eps_hat);
        adamw1(pi.w, gi.w, mi.w, vi.w, gscale, decay, w1, w2, step_size, eps_hat);
        m[i] = mi;
        v[i] = vi;
        p[i] = pi;
        if (out_kind != 0) {
            ushort4 o;
            o.x = narrow16(pi.x, out_kind);
            o.y = narrow16(pi.y, out_kind);
            o.z = narrow16(pi.z, out_kind);
            o.w = narrow16(pi.w, out_kind);
            out[i] = o;
        }
    }
}
