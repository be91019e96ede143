//! The `vhu-conform` command.

fn main() -> std::process::ExitCode {
    vhu_conform::cli::run()
}
