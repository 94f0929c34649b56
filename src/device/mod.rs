//! Where training runs: `train.device` / `--device` (`auto`, `cpu`, `cuda`, `cuda:N`), opening
//! the device, and what the run record says about it (GPU name, driver, CUDA version).
//!
//! CUDA exists only in builds with the `cuda` cargo feature. Asking for it from a build without
//! the feature, or where no GPU answers, is an error before anything is loaded or trained: a
//! run the user meant for the GPU must never train silently on the CPU. Only `auto` falls back.

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// The requested device is not available.
#[derive(Debug, thiserror::Error)]
#[error("device {requested:?} is not available: {reason}")]
pub struct DeviceError {
    /// The request as written.
    pub requested: String,
    /// Why not.
    pub reason: String,
}

/// `train.device` as requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA device 0 when this build has CUDA and a GPU answers, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

/// What the record stores about a GPU that trained a run (`[run.gpu]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Marketing name, e.g. `NVIDIA H200`.
    pub name: String,
    /// Kernel driver version from `/proc/driver/nvidia/version`, e.g. `580.159.04`
    /// (`unknown` where the file is not readable, e.g. some containers).
    pub driver: String,
    /// Highest CUDA version the driver supports (cuDriverGetVersion), e.g. `13.0`.
    pub cuda_driver: String,
    /// CUDA version this exp was built against, e.g. `13.0`.
    pub cuda_build: String,
    /// Compute capability, e.g. `9.0`.
    pub compute_capability: String,
    /// Total device memory in MiB.
    pub memory_mib: u64,
}

/// The CUDA devices this build can see, opened one by one (empty without the `cuda` feature
/// or without a GPU), with the reason when there are none.
pub fn cuda_devices() -> Result<Vec<OpenedDevice>, String> {
    let first = open_cuda(0)?;
    let mut devices = vec![first];
    let mut ordinal = 1;
    while let Ok(d) = open_cuda(ordinal) {
        devices.push(d);
        ordinal += 1;
    }
    Ok(devices)
}

/// An opened device and how the record names it.
pub struct OpenedDevice {
    /// The candle device.
    pub device: Device,
    /// `cpu` or `cuda:N <GPU name>`.
    pub description: String,
    /// Details of the GPU, for CUDA devices.
    pub gpu: Option<GpuInfo>,
}

impl DeviceRequest {
    /// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
    pub fn parse(text: &str) -> Result<DeviceRequest, String> {
        match text {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::Cuda)
                .ok_or_else(|| format!("expected auto, cpu, cuda or cuda:N, got {other:?}")),
        }
    }

    /// Opens the device. `requested` is the text the user wrote, for the error message.
    pub fn open(self, requested: &str) -> Result<OpenedDevice, DeviceError> {
        let unavailable = |reason: String| DeviceError {
            requested: requested.to_string(),
            reason,
        };
        let cpu = || OpenedDevice {
            device: Device::Cpu,
            description: "cpu".into(),
            gpu: None,
        };
        match self {
            DeviceRequest::Cpu => Ok(cpu()),
            DeviceRequest::Auto => Ok(open_cuda(0).unwrap_or_else(|_| cpu())),
            DeviceRequest::Cuda(n) => open_cuda(n).map_err(unavailable),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<OpenedDevice, String> {
    Err(
        "this exp was built without CUDA support (build it with scripts/build-cuda.sh, \
         or `cargo build --release --features cuda`)"
            .into(),
    )
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<OpenedDevice, String> {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};

    // Count first: with no GPU (or the link stubs of a GPU-less build machine) this is the
    // clear "no CUDA device" answer instead of a context-creation error.
    let count = CudaContext::device_count().map_err(|e| {
        if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE {
            "no CUDA GPU is visible (the driver reports CUDA_ERROR_NO_DEVICE)".to_string()
        } else {
            format!("the CUDA driver did not initialise ({:?})", e.0)
        }
    })?;
    if count == 0 {
        return Err("no CUDA GPU is visible (CUDA reports 0 devices)".into());
    }
    if ordinal >= count as usize {
        return Err(format!(
            "CUDA device {ordinal} does not exist; this machine has {count} (cuda:0 … cuda:{})",
            count - 1
        ));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| e.to_string())?;
    let context = device
        .as_cuda_device()
        .map_err(|e| e.to_string())?
        .cuda_stream()
        .context()
        .clone();
    let name = context.name().unwrap_or_else(|_| "unknown GPU".into());
    let compute_capability = context
        .compute_capability()
        .map(|(major, minor)| format!("{major}.{minor}"))
        .unwrap_or_else(|_| "unknown".into());
    let memory_mib = context.total_mem().map(|b| b as u64 >> 20).unwrap_or(0);
    let mut version: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer we own.
    let driver_api = unsafe { sys::cuDriverGetVersion(&mut version) };
    let cuda_driver = if driver_api == sys::CUresult::CUDA_SUCCESS {
        cuda_version(version)
    } else {
        "unknown".into()
    };
    let gpu = GpuInfo {
        name: name.clone(),
        driver: kernel_driver_version().unwrap_or_else(|| "unknown".into()),
        cuda_driver,
        cuda_build: option_env!("CUDARC_CUDA_VERSION")
            .and_then(|v| v.parse().ok())
            .map(cuda_version)
            .unwrap_or_else(|| "unknown".into()),
        compute_capability,
        memory_mib,
    };
    Ok(OpenedDevice {
        device,
        description: format!("cuda:{ordinal} {name}"),
        gpu: Some(gpu),
    })
}

/// `13000` → `13.0`, as CUDA encodes versions (1000·major + 10·minor).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn cuda_version(encoded: i32) -> String {
    format!("{}.{}", encoded / 1000, (encoded % 1000) / 10)
}

/// The NVIDIA kernel module's version, as `nvidia-smi` shows it, read from procfs so that
/// recording it needs neither NVML nor a child process.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn kernel_driver_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    parse_kernel_driver_version(&text)
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn parse_kernel_driver_version(text: &str) -> Option<String> {
    // "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct ..."
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|word| word.contains('.') && word.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_requests_parse() {
        assert_eq!(DeviceRequest::parse("auto"), Ok(DeviceRequest::Auto));
        assert_eq!(DeviceRequest::parse("cpu"), Ok(DeviceRequest::Cpu));
        assert_eq!(DeviceRequest::parse("cuda"), Ok(DeviceRequest::Cuda(0)));
        assert_eq!(DeviceRequest::parse("cuda:3"), Ok(DeviceRequest::Cuda(3)));
        assert!(DeviceRequest::parse("gpu").is_err());
        assert!(DeviceRequest::parse("cuda:x").is_err());
        assert!(DeviceRequest::parse("cuda:-1").is_err());
    }

    #[test]
    fn versions_decode() {
        assert_eq!(cuda_version(13000), "13.0");
        assert_eq!(cuda_version(12080), "12.8");
        let procfs = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct  2 \
                      19:51:17 UTC 2025\nGCC version:  gcc version 12.2.0\n";
        assert_eq!(
            parse_kernel_driver_version(procfs).as_deref(),
            Some("580.159.04")
        );
        assert_eq!(parse_kernel_driver_version("garbage"), None);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = DeviceRequest::Cuda(0).open("cuda").err().unwrap();
        assert!(e.to_string().contains("without CUDA support"), "{e}");
        let auto = DeviceRequest::Auto.open("auto").unwrap();
        assert_eq!(auto.description, "cpu");
        assert!(auto.gpu.is_none());
    }
}
