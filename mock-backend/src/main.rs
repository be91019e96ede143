//! The `vhu-mock-backend` program.

fn main() -> std::process::ExitCode {
    vhu_mock_backend::run_from_args(std::env::args_os())
}
