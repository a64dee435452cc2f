//! Model FLOPs utilisation and device readings: the peak FLOP/s MFU divides by, and peak memory.
//!
//! MFU follows torchtitan's convention: FLOPs per token x tokens/s per device / peak. Peaks: the
//! datasheet's dense bf16 rate for known data-centre GPUs (fp16 has the same dense rate there);
//! otherwise (CPU, fp32, unknown GPU) a matrix-product rate measured here, in the run's dtype.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

/// Name of the first GPU as `nvidia-smi` reports it, if any.
fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(|s| s.trim().to_string())
}

/// Dense 16-bit tensor-core peak of known GPUs, FLOP/s: the datasheets give bf16 and fp16 the
/// same dense rate on all of them.
pub fn datasheet_half_peak(name: &str) -> Option<f64> {
    let table = [
        ("H100", 989e12),
        ("H200", 989e12),
        ("H800", 989e12),
        ("A100", 312e12),
        ("A800", 312e12),
    ];
    table.iter().find(|(key, _)| name.contains(key)).map(|&(_, peak)| peak)
}

/// Measured rate of a square matrix product in `kind` on `device`, FLOP/s.
pub fn measured_matmul_peak(device: Device, kind: Kind) -> f64 {
    let (n, reps) = if device.is_cuda() { (8192, 20) } else { (1024, 5) };
    matmul_rate(device, kind, n, reps)
}

/// Rate of `reps` products of two `n` x `n` matrices in `kind` on `device`, FLOP/s.
fn matmul_rate(device: Device, kind: Kind, n: i64, reps: usize) -> f64 {
    let a = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let b = Tensor::randn([n, n], (Kind::Float, device)).to_kind(kind);
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = a.matmul(&b);
    sync();
    let start = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b);
    }
    sync();
    2.0 * (n * n * n) as f64 * reps as f64 / start.elapsed().as_secs_f64()
}

/// The peak used for MFU, with a word on where it came from.
///
/// Known GPUs in bf16 or fp16: the datasheet's dense rate. Otherwise a matrix product measured
/// now. On a CPU where the run's dtype multiplies slower than fp32 (libtorch has no fast fp16
/// matrix product on most CPUs: about 1 GFLOP/s against 100+ in fp32), the fp32 rate is the
/// peak: the hardware does at least that, and a peak measured on the slow path gives MFUs far
/// above 100%.
pub fn peak_flops(device: Device, kind: Kind) -> (f64, String) {
    if device.is_cuda() && matches!(kind, Kind::BFloat16 | Kind::Half) {
        if let Some(name) = gpu_name() {
            if let Some(peak) = datasheet_half_peak(&name) {
                let what = if kind == Kind::Half { "fp16" } else { "bf16" };
                return (peak, format!("{name} datasheet {what}"));
            }
        }
    }
    if !device.is_cuda() && kind != Kind::Float {
        // a small product first: on the slow path a 1024 x 1024 one takes seconds
        let quick = matmul_rate(device, kind, 256, 2);
        let fp32 = measured_matmul_peak(device, Kind::Float);
        return low_precision_cpu_peak(device, kind, quick, fp32, || measured_matmul_peak(device, kind));
    }
    let peak = measured_matmul_peak(device, kind);
    (peak, format!("measured {kind:?} matmul on {device:?}"))
}

/// The peak of a 16-bit `kind` on a CPU from a quick small product, the fp32 peak and (only when
/// the quick one is not already slow) the full measurement: fp32's whenever the 16-bit products
/// run below half of it, so MFU is never measured against a slow path.
fn low_precision_cpu_peak(
    device: Device,
    kind: Kind,
    quick: f64,
    fp32: f64,
    full: impl FnOnce() -> f64,
) -> (f64, String) {
    let slow = |rate: f64| {
        (
            fp32,
            format!(
                "measured Float matmul on {device:?}; {kind:?} products run at {:.1} GFLOP/s here",
                rate / 1e9
            ),
        )
    };
    if quick * 4.0 < fp32 {
        return slow(quick);
    }
    let peak = full();
    if peak < 0.5 * fp32 {
        return slow(peak);
    }
    (peak, format!("measured {kind:?} matmul on {device:?}"))
}

/// A warning for a precision that runs on a slow path on this device, if it does: fp16 on a CPU
/// whose fp16 matrix products are much slower than its bf16 ones.
pub fn slow_precision_warning(device: Device, kind: Kind) -> Option<String> {
    if device.is_cuda() || kind != Kind::Half {
        return None;
    }
    let half = matmul_rate(device, Kind::Half, 256, 2);
    let bf16 = matmul_rate(device, Kind::BFloat16, 256, 2);
    (half * 4.0 < bf16).then(|| {
        format!(
            "warning: fp16 matrix products on this CPU run at {:.1} GFLOP/s against {:.1} in bf16; \
             train.precision = \"bf16\" keeps the same fp32 master weights and runs faster here \
             (fp16 with its loss scaler is meant for GPUs)",
            half / 1e9,
            bf16 / 1e9
        )
    })
}

/// Peak memory so far in MiB: the process's peak RSS on CPU (VmHWM).
pub fn peak_memory_mb(_device: Device) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak device memory in MiB: CUDA memory in use on the device (the caching allocator's
/// reservation, from nvidia-smi), or the process's peak RSS on CPU.
pub fn device_memory_mb(device: tch::Device) -> f64 {
    if let tch::Device::Cuda(i) = device {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                &format!("--id={i}"),
            ])
            .output();
        if let Some(mb) = out
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        {
            return mb;
        }
    }
    peak_memory_mb(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_gpus_use_the_datasheet_peak() {
        assert_eq!(datasheet_half_peak("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(datasheet_half_peak("NVIDIA A800-SXM4-80GB"), Some(312e12));
        assert_eq!(datasheet_half_peak("Tesla T4"), None);
    }

    #[test]
    fn measured_cpu_peak_is_plausible() {
        let p = measured_matmul_peak(Device::Cpu, Kind::Float);
        assert!(p > 1e8 && p < 1e14, "{p}");
        assert!(peak_memory_mb(Device::Cpu) > 1.0);
    }

    #[test]
    fn only_fp16_off_the_gpu_can_warn() {
        for kind in [Kind::Float, Kind::BFloat16] {
            assert_eq!(slow_precision_warning(Device::Cpu, kind), None);
        }
        assert_eq!(slow_precision_warning(Device::Cuda(0), Kind::Half), None);
        if let Some(w) = slow_precision_warning(Device::Cpu, Kind::Half) {
            assert!(w.contains("train.precision = \"bf16\""), "{w}");
        }
    }

    #[test]
    fn a_cpu_peak_is_never_below_fp32s() {
        // fp16 products take libtorch's slow path on most CPUs; the peak must not follow it
        let cpu = Device::Cpu;
        let full_not_needed = || panic!("the quick product already showed the slow path");
        assert_eq!(
            low_precision_cpu_peak(cpu, Kind::Half, 1e9, 1e11, full_not_needed).0,
            1e11
        );
        let (peak, source) = low_precision_cpu_peak(cpu, Kind::Half, 5e10, 1e11, || 3e10);
        assert_eq!(peak, 1e11, "{source}");
        assert!(source.contains("30.0 GFLOP/s"), "{source}");
        let (peak, source) = low_precision_cpu_peak(cpu, Kind::BFloat16, 9e10, 1e11, || 2e11);
        assert_eq!(peak, 2e11);
        assert!(source.contains("BFloat16"), "{source}");
        let (fp32_again, source) = peak_flops(cpu, Kind::Float);
        assert!(source.contains("Float"), "{source}");
        assert!(fp32_again > 1e8);
    }
}
