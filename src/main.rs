//! The vhu-conform command line (wired up by the engine).

fn main() {}
