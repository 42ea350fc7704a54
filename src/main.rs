//! The `shoal` command-line tool (cargo feature `cli`, on by default); see `cli/mod.rs` for
//! the commands. It is built on shoal's public library API only.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
