//! The `munja` binary: the whole command line, put together from the commands of
//! [`munja::cli`] and those of [`munja::tools`] (demo, bench, gateway-sim), which sit in the
//! layer above the CLI (see src/lib.rs).

use clap::{Parser, Subcommand};
use munja::tools::{bench, demo, sim};

#[derive(Debug, Parser)]
#[command(name = "munja", version, about = munja::cli::ABOUT, long_about = munja::cli::LONG_ABOUT)]
struct Cli {
    #[command(flatten)]
    global: munja::cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Core(munja::cli::Command),
    /// Serve the http-json gateway protocol on loopback, with injectable faults (for tests and demos).
    GatewaySim(sim::SimArgs),
    /// Run a whole campaign in a temporary directory against the built-in simulator.
    Demo(demo::DemoArgs),
    /// Measure throughput and peak memory with the in-process simulator.
    Bench(bench::BenchArgs),
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    // Writes this process's peak RSS for `munja bench` when it ends (MUNJA_PEAK_RSS_FILE).
    let _peak = bench::PeakReport::from_env();
    match cli.command {
        Command::Core(command) => munja::cli::main(&cli.global, command).await,
        Command::GatewaySim(args) => {
            sim::serve_until_ctrl_c(args.listen, args.sim_config()?).await?;
            Ok(0)
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    munja::cli::init_logging(cli.global.verbose);
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    // A closed pipe ends quietly (status 141), any other failure says what failed.
    std::process::ExitCode::from(munja::output::exit_status(result))
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
