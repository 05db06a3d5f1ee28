//! The `munja` binary: parses the command line and hands over to [`munja::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = munja::cli::Cli::parse();
    munja::cli::init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(munja::cli::main(cli)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // `munja audit | head` closing the pipe early is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// glibc gives each thread that allocates an arena of its own, up to eight per core, and an
/// arena keeps what was freed in it: a run's threads (the runtime's workers, one per SQLite
/// connection, the blocking pool) each held a few MiB freed by another thread's tasks, so the
/// run's RSS grew well past its heap. Two arenas keep the peak near the heap (measured: see
/// README, Performance). `MALLOC_ARENA_MAX` in the environment still decides when set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists; mallopt only
        // sets an allocator parameter (its failure leaves the default, harmless).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
