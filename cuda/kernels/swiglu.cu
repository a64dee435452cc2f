// The SwiGLU product silu(g) * u and its two gradients, one pass each (host side:
// cuda/src/swiglu.rs). fp32 arithmetic, one rounding; 16-byte accesses when the buffers allow.
#include "common.cuh"
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
