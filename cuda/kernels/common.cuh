// Element types shared by baichuan's CUDA kernels: each loads to fp32 and stores with one
// rounding (to nearest even); W is the number of elements in a 16-byte vector.
// Included by every kernel source; NVRTC receives it as a named header (cuda/src/driver.rs).
#pragma once
// NaN stays NaN (a quiet bit is set instead of rounding into infinity).
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
