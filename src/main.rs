//! The `ironvme` command-line tool.
fn main() {}
