fn main() -> std::process::ExitCode {
    // Large blocks straight from mmap and back to the kernel when freed, always: glibc would
    // otherwise raise its mmap threshold after the first large free, and the fits' pairwise
    // slopes (4 MB per series at 1,000 points, every few seconds with --metrics-addr) would
    // stay resident in the heap of each thread that ran them (measured: 11 MiB after 1,000
    // cycles, 19 MiB after 4,000, flat without the periodic fits).
    // SAFETY: mallopt only sets a parameter of the allocator, before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
    leaktrace::cli::main()
}
