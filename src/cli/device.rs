//! `exp device`.

use clap::Args;

use exp::device::{cuda_devices, DeviceError, DeviceRequest};
use exp::kernel_check::{run_checks, CheckFailed};
use exp::Error;

/// The long help of `exp device`.
pub(super) const DEVICE_LONG_ABOUT: &str =
    "Show the devices exp can train on: the CPU (threads candle uses), whether this \
build has CUDA, and each GPU it can open (name, driver, CUDA versions, compute capability, \
memory). `auto` picks cuda:0 when it opens, else the CPU.

With --check, run exp's own kernels (2×2 max-pool forward and backward in f32, bf16 and f16, the \
kernel-gradient-only convolution, fused Adam and AdamW) on DEVICE and compare each with the CPU \
implementation; exit 1 when one is outside its tolerance. Build and run it on a GPU machine to \
test a CUDA setup before training.";

/// Arguments of `exp device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Check exp's kernels on this device (auto | cpu | cuda | cuda:N).
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, default_missing_value = "auto")]
    pub check: Option<String>,
}

pub(super) fn execute(args: DeviceArgs) -> Result<(), Error> {
    super::outln!(
        "cpu      {} threads (RAYON_NUM_THREADS / the machine's cores)",
        candle_core::utils::get_num_threads()
    );
    let cuda_build = cfg!(feature = "cuda");
    super::outln!(
        "cuda     {}",
        if cuda_build {
            "built with CUDA"
        } else {
            "not in this build (scripts/build-cuda.sh builds one)"
        }
    );
    if cuda_build {
        match cuda_devices() {
            Ok(devices) => {
                for d in devices {
                    if let Some(g) = &d.gpu {
                        super::outln!(
                            "{:<8} {}, driver {}, CUDA {} (built with {}), compute {}, {} MiB",
                            d.description.split_whitespace().next().unwrap_or("cuda"),
                            g.name,
                            g.driver,
                            g.cuda_driver,
                            g.cuda_build,
                            g.compute_capability,
                            g.memory_mib
                        );
                    }
                }
            }
            Err(reason) => super::outln!("         no GPU: {reason}"),
        }
    }
    let Some(request) = args.check else {
        return Ok(());
    };
    let opened = DeviceRequest::parse(&request)
        .map_err(|reason| DeviceError {
            requested: request.clone(),
            reason,
        })?
        .open(&request)?;
    super::outln!();
    super::outln!("Checking exp's kernels on {}:", opened.description);
    let results = run_checks(&opened.device).map_err(exp::train::TrainError::from)?;
    let mut failed = 0;
    for r in &results {
        failed += usize::from(!r.passed);
        super::outln!(
            "  {}  {}  (max difference {:.3e}, tolerance {:.0e})",
            if r.passed { "ok  " } else { "FAIL" },
            r.name,
            r.max_abs_diff,
            r.tolerance
        );
    }
    if failed > 0 {
        return Err(CheckFailed {
            failed,
            total: results.len(),
            device: opened.description,
        }
        .into());
    }
    super::outln!("All {} checks passed.", results.len());
    Ok(())
}
