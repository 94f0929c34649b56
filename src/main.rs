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

fn main() {
    exp::allocator::keep_freed_memory();
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
