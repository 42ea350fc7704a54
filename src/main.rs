//! The `shoal` command-line tool.
fn main() {}
