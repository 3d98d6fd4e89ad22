fn main() -> std::process::ExitCode {
    leaktrace::cli::main()
}
