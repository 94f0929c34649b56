//! The `exp` binary: parse the command line, call the library, map errors to exit codes.

use clap::Parser;
use exp::error::Report;

fn main() {
    let cli = exp::cli::Cli::parse();
    let code = match exp::cli::execute(cli) {
        Ok(()) => exp::ExitCode::Success,
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
