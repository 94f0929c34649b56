//! The `exp` binary: parse the command line, call the library, map errors to exit codes.

use clap::Parser;
use exp::error::Report;
use exp::Error;

mod cli;

// Training allocates and frees multi-megabyte tensors every step. glibc's malloc serves those
// with fresh mmap/munmap calls, and the page faults cost a third of a CPU epoch; mimalloc
// reuses the memory (measured: 587 → 900+ img/s for seed-cnn on 2 cores).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long candle's CPU worker threads spin for the next op before they sleep, unless the
/// user sets `CANDLE_BARRIER_POOL_SPIN_LIMIT`. candle 0.11.1 runs its element-wise CPU ops on its
/// own pool, whose workers spin 25,000 rounds after each op; exp's CPU kernels run on rayon's
/// threads, and on a 2-core machine the spinning took 12 % of the CPU samples of a seed-cnn
/// epoch. With 100 rounds: seed-cnn 9,230 → 11,500 img/s, cnn 899 → 944 (5 runs each, 2 cores;
/// docs/benchmarks.md).
const CANDLE_SPIN_LIMIT: &str = "100";

/// Milliseconds mimalloc waits before it returns freed memory to the OS (`MIMALLOC_PURGE_DELAY`;
/// -1: never), unless the user sets the variable. With mimalloc's default (1 s in v3) a
/// training step's multi-megabyte activations still go back to the OS, and the kernel zeroes
/// every page again on its next first touch: 12.6 % of the CPU samples of a ResNet-18 epoch.
/// Kept, the memory is reused at the process's peak size: resnet18 62 → 71 img/s on 2 cores
/// (docs/benchmarks.md).
const MIMALLOC_PURGE_DELAY_MS: std::ffi::c_long = -1;

/// `mi_option_purge_delay`'s position in mimalloc.h's option enum, the same in mimalloc v2 and
/// v3 (libmimalloc-sys 0.1.49, which builds v3, does not export the constant); pinned by a
/// test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's documented options; any value is valid.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, MIMALLOC_PURGE_DELAY_MS) };
    }
    // Before any thread exists (candle reads it when its pool starts).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
    let cli = cli::Cli::parse();
    let code = match cli::execute(cli) {
        Ok(()) => exp::ExitCode::Success,
        // A closed pipe (`exp log | head`) is how a reader says it has seen enough.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            exp::ExitCode::Success
        }
        Err(e) => {
            eprintln!("error: {}", Report(&e));
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            e.exit_code()
        }
    };
    std::process::exit(code as i32);
}

#[cfg(test)]
mod tests {
    /// Option 15 is the purge delay: it holds v3's documented default, 1,000 ms (options.c),
    /// which no neighbouring option has (eager-commit delay 1, NUMA nodes 0).
    #[test]
    fn option_15_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set in this environment");
            return;
        }
        // SAFETY: reads one of mimalloc's options.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(value, 1000);
    }
}
