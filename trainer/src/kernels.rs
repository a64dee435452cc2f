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

use std::ffi::c_void;

use baichuan_model::baichuan::RotaryKernel;
use tch::{Kind, Tensor};

use crate::fused::{FusedError, Module};

const SOURCE: &str = r#"
__device__ __forceinline__ unsigned short to_bf16(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
struct Bf16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(T x) { return __uint_as_float(((unsigned int)x) << 16); }
    static __device__ __forceinline__ T store(float x) { return to_bf16(x); }
};
struct F16 {
    typedef unsigned short T;
    static __device__ __forceinline__ float load(T x) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f; }
    static __device__ __forceinline__ T store(float x) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x)); return h; }
};
struct F32 {
    typedef float T;
    static __device__ __forceinline__ float load(T x) { return x; }
    static __device__ __forceinline__ T store(float x) { return x; }
};

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
            module: Module::load(device, SOURCE, "baichuan_rotary.cu", &NAMES)?,
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
        let mut args: [*mut c_void; 9] = [
            &mut src as *mut _ as *mut c_void,
            &mut qp as *mut _ as *mut c_void,
            &mut kp as *mut _ as *mut c_void,
            &mut cp as *mut _ as *mut c_void,
            &mut sp as *mut _ as *mut c_void,
            &mut pairs as *mut _ as *mut c_void,
            &mut seq32 as *mut _ as *mut c_void,
            &mut nh32 as *mut _ as *mut c_void,
            &mut hd32 as *mut _ as *mut c_void,
        ];
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
        let mut args: [*mut c_void; 19] = [
            &mut qp as *mut _ as *mut c_void,
            &mut kp as *mut _ as *mut c_void,
            &mut vp as *mut _ as *mut c_void,
            &mut op as *mut _ as *mut c_void,
            &mut cp as *mut _ as *mut c_void,
            &mut sp as *mut _ as *mut c_void,
            &mut items as *mut _ as *mut c_void,
            &mut seq32 as *mut _ as *mut c_void,
            &mut nh32 as *mut _ as *mut c_void,
            &mut hd32 as *mut _ as *mut c_void,
            &mut qb as *mut _ as *mut c_void,
            &mut qt as *mut _ as *mut c_void,
            &mut qh as *mut _ as *mut c_void,
            &mut kb as *mut _ as *mut c_void,
            &mut kt as *mut _ as *mut c_void,
            &mut kh as *mut _ as *mut c_void,
            &mut vb as *mut _ as *mut c_void,
            &mut vt as *mut _ as *mut c_void,
            &mut vh as *mut _ as *mut c_void,
        ];
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile with the NVRTC of the torch install for Ampere and Hopper (no GPU
    /// needed); skipped, saying so, where that library is absent.
    #[test]
    fn the_rotary_kernels_compile_for_ampere_and_hopper() {
        for (major, minor) in [(8, 0), (9, 0)] {
            match crate::fused::compile_ptx(SOURCE, "baichuan_rotary.cu", major, minor) {
                Ok(ptx) => {
                    let text = String::from_utf8_lossy(&ptx);
                    for name in NAMES {
                        assert!(text.contains(&format!(".entry {name}(")), "{name} missing");
                    }
                }
                Err(FusedError::Unavailable(e)) => {
                    println!("skipped: {e}");
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn cpu_models_keep_the_aten_rotation() {
        let c = baichuan_model::ModelConfig::tiny();
        let mut m = baichuan_model::Baichuan::new(&c, tch::Device::Cpu).unwrap();
        assert_eq!(install_rotary(&mut m), "rotary: ATen ops");
        assert!(m.rotary.kernel.is_none());
    }
}
