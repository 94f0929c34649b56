//! The process's memory allocator settings. The binary installs mimalloc as its global
//! allocator (src/main.rs); this module tunes it.

/// Milliseconds mimalloc waits before it returns freed memory to the OS (`MIMALLOC_PURGE_DELAY`;
/// -1: never). With mimalloc's default (1 s in v3) a training step's multi-megabyte activations
/// still go back to the OS, and the kernel zeroes every page again on its next first touch:
/// 12.6 % of the CPU samples of a ResNet-18 epoch. Kept, the memory is reused at the process's
/// peak size: resnet18 62 → 71 img/s on 2 cores (docs/benchmarks.md).
const PURGE_DELAY_MS: std::ffi::c_long = -1;

/// `mi_option_purge_delay`'s position in mimalloc.h's option enum, the same in mimalloc v2 and
/// v3 (libmimalloc-sys 0.1.49, which builds v3, does not export the constant); pinned by a
/// test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory committed for reuse (see [`PURGE_DELAY_MS`]), unless the user set
/// `MIMALLOC_PURGE_DELAY` or its older name `MIMALLOC_RESET_DELAY`. Call at the start of `main`.
pub fn keep_freed_memory() {
    let user_set = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    if !user_set {
        // SAFETY: sets one of mimalloc's documented options; any value is valid.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[cfg(test)]
mod tests {
    /// Option 15 is the purge delay: it holds v3's documented default, 1,000 ms (options.c),
    /// which no neighbouring option has (eager-commit delay 1, NUMA nodes 0). A test process
    /// never calls `keep_freed_memory`.
    #[test]
    fn option_15_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_RESET_DELAY").is_some()
        {
            eprintln!("skipped: a mimalloc purge delay is set in this environment");
            return;
        }
        // SAFETY: reads one of mimalloc's options.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, 1000);
    }
}
