//! Per-operation timing for `EXP_PROFILE_OPS=1`: each instrumented operation synchronises the
//! device before and after itself and adds its wall time to a table that `exp run` prints at the
//! end. GPUs run asynchronously, so without the synchronisation a host timer measures only the
//! launch; with it, the parts add up to the step (slower than an unprofiled run, but the shares
//! are the truth). Off, each call costs one relaxed atomic load.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{Device, Result};

static TABLE: Mutex<BTreeMap<Cow<'static, str>, (Duration, u64)>> = Mutex::new(BTreeMap::new());
static ENABLED: OnceLock<AtomicBool> = OnceLock::new();

/// Whether `EXP_PROFILE_OPS=1` is set.
pub fn enabled() -> bool {
    ENABLED
        .get_or_init(|| {
            AtomicBool::new(std::env::var_os("EXP_PROFILE_OPS").is_some_and(|v| v == "1"))
        })
        .load(Ordering::Relaxed)
}

/// Runs `f`, timing it as `name` when profiling is on.
pub fn span<T>(name: &'static str, device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let start = Instant::now();
    let value = f()?;
    device.synchronize()?;
    add(name, start.elapsed());
    Ok(value)
}

/// Adds one call of `elapsed` to `name`'s row (for times measured elsewhere: the phases of
/// exp's CPU kernels, src/model/cpu).
pub fn add(name: impl Into<Cow<'static, str>>, elapsed: Duration) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let entry = table.entry(name.into()).or_default();
    entry.0 += elapsed;
    entry.1 += 1;
}

/// The table so far, `(name, total seconds, calls)`, in name order; clears it.
pub fn take() -> Vec<(String, f64, u64)> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *table)
        .into_iter()
        .map(|(name, (total, calls))| (name.into_owned(), total.as_secs_f64(), calls))
        .collect()
}
