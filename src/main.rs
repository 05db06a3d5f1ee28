//! The `munja` binary: parses the command line and hands over to [`munja::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = munja::cli::Cli::parse();
    munja::cli::init_logging(cli.verbose);
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(munja::cli::main(cli)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    // A closed pipe ends quietly (status 141), any other failure says what failed.
    std::process::ExitCode::from(munja::output::exit_status(result))
}
