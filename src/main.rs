//! The `shoal` command-line tool; see [`shoal::cli`] for the commands.

fn main() -> std::process::ExitCode {
    shoal::cli::main()
}
