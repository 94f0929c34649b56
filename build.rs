//! With the `cuda` feature, compiles exp's own kernels (src/cuda/kernels.cu) to PTX with nvcc;
//! the driver JIT-compiles the PTX for the GPU at first use, as it does candle's kernels.
//! Without the feature, does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var("NVCC")
        .ok()
        .or_else(|| {
            std::env::var("CUDA_HOME")
                .ok()
                .map(|h| format!("{h}/bin/nvcc"))
        })
        .unwrap_or_else(|| "nvcc".into());
    // The same target as candle's kernels (scripts/build-cuda.sh sets 90 for H100/H200).
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("exp_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/cuda/kernels.cu")
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {nvcc} to build exp's CUDA kernels ({e}); run scripts/build-cuda.sh")
        });
    assert!(status.success(), "{nvcc} failed on src/cuda/kernels.cu");
}
