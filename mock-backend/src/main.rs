//! vhu-mock-backend (under construction).

fn main() {}
