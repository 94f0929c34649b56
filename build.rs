//! With the `cuda` feature, compiles exp's own kernels (src/cuda/kernels.cu) to PTX with nvcc;
//! the driver JIT-compiles the PTX for the GPU at first use, as it does candle's kernels.
//! Without the feature, does nothing for the kernels.
//!
//! Always: reads the candle version this build links from Cargo.lock (the record names it),
//! so it can never disagree with what was compiled.

use std::path::PathBuf;
use std::process::Command;

/// The version of `candle-core` in Cargo.lock (the lock file is what the build links).
fn locked_candle_version() -> String {
    let lock = std::fs::read_to_string("Cargo.lock").expect("Cargo.lock beside Cargo.toml");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"candle-core\"" {
            let version = lines.next().unwrap_or("");
            if let Some(v) = version
                .trim()
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
            {
                return v.to_string();
            }
        }
    }
    panic!("no candle-core package in Cargo.lock");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!(
        "cargo:rustc-env=EXP_CANDLE_VERSION={}",
        locked_candle_version()
    );
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
