//! What munja writes on its own stdout and stderr, and what a failed write does to a command.
//!
//! - **stdout** carries results (ids, tables, exports). Commands write it through [`Stdout`],
//!   whose errors name standard output and propagate: a full disk ends the command with
//!   `error: writing to standard output: No space left on device (os error 28)` and status 1;
//!   a closed pipe (`munja audit --format csv | head -1`) ends it quietly with status
//!   [`BROKEN_PIPE_STATUS`], what a shell reports for a Unix tool that SIGPIPE ended.
//! - **stderr** carries reports, progress and logs. Writing it never stops a command and never
//!   panics (the crate's `eprintln!`, `eprint!`, `println!` and `print!` are the functions below,
//!   see `lib.rs`, and logs go through [`StderrWriter`]): a run whose stderr is closed goes on
//!   and records every message. The failure is remembered and decides the status at the end
//!   ([`exit_status`]): a command that would have succeeded exits [`BROKEN_PIPE_STATUS`] (a
//!   closed pipe) or 1 (any other failure), one that failed keeps its own status.
//!
//! Rust ignores SIGPIPE, so a closed pipe is an `EPIPE` error on the write, never a signal.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

/// Exit status when stdout or stderr was a closed pipe: 128 + SIGPIPE (13).
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// The first failure met writing each stream outside [`Stdout`] (the `print!` family, logs).
#[derive(Debug, Default)]
struct Failures {
    stdout: Option<io::Error>,
    stderr: Option<io::Error>,
}

static FAILURES: Mutex<Failures> = Mutex::new(Failures {
    stdout: None,
    stderr: None,
});

fn remember(stream: fn(&mut Failures) -> &mut Option<io::Error>, e: io::Error) {
    if let Ok(mut f) = FAILURES.lock() {
        stream(&mut f).get_or_insert(e);
    }
}

/// `eprint!`/`eprintln!`: writes to stderr; a failure is remembered, never raised.
pub fn stderr_write(args: fmt::Arguments<'_>, newline: bool) {
    let mut err = io::stderr().lock();
    let written = err.write_fmt(args).and_then(|()| {
        if newline {
            err.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        remember(|f| &mut f.stderr, e);
    }
}

/// `print!`/`println!`: writes to stdout; a failure is remembered, never raised. Output a
/// command must stop on (exports) goes through [`Stdout`] instead.
pub fn stdout_write(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = Stdout::lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(e) = written {
        remember(|f| &mut f.stdout, e);
    }
}

/// Standard output, locked, with errors that say it was standard output that failed.
pub struct Stdout(io::StdoutLock<'static>);

impl Stdout {
    pub fn lock() -> Stdout {
        Stdout(io::stdout().lock())
    }
}

/// `e` with "writing to standard output" in front, of the same kind, marked as stdout's (so
/// that a closed pipe is told from, say, a database connection reset on a broken pipe).
fn on_stdout(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), StdoutFailed(e))
}

/// A failed write on stdout.
#[derive(Debug)]
struct StdoutFailed(io::Error);

impl fmt::Display for StdoutFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutFailed {}

/// Whether `e` is stdout meeting a closed pipe.
fn stdout_closed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe && e.get_ref().is_some_and(|r| r.is::<StdoutFailed>())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(on_stdout)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(on_stdout)
    }
}

/// Where logs go (`tracing`): stderr, remembering a failure as [`stderr_write`] does.
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write(buf).inspect_err(|e| {
            remember(|f| &mut f.stderr, io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// The process's exit status for what a command returned, after flushing stdout: the
/// command's own status, [`BROKEN_PIPE_STATUS`] quietly when its output met a closed pipe, 1
/// with `error: …` on stderr when it failed otherwise (a write included).
pub fn exit_status(result: anyhow::Result<i32>) -> u8 {
    let flushed = Stdout::lock().flush();
    let code = match result {
        Err(e)
            if e.chain()
                .any(|c| c.downcast_ref::<io::Error>().is_some_and(stdout_closed)) =>
        {
            return BROKEN_PIPE_STATUS;
        }
        Err(e) => {
            stderr_write(format_args!("error: {e:#}"), true);
            1
        }
        Ok(code) => u8::try_from(code).unwrap_or(1),
    };
    if code != 0 {
        return code;
    }
    let (stdout, stderr) = match FAILURES.lock() {
        Ok(mut f) => (f.stdout.take(), f.stderr.take()),
        Err(_) => (None, None),
    };
    match (flushed.err().or(stdout), stderr) {
        (Some(e), _) | (None, Some(e)) if is_broken_pipe(&e) => BROKEN_PIPE_STATUS,
        (Some(e), _) => {
            stderr_write(format_args!("error: {e}"), true);
            1
        }
        // stderr itself failed: nothing can be said, the status says it.
        (None, Some(_)) => 1,
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_stdout_is_quiet_and_other_broken_pipes_are_errors() {
        let closed = on_stdout(io::Error::from(io::ErrorKind::BrokenPipe));
        let e = anyhow::Error::new(closed).context("writing the audit");
        assert_eq!(exit_status(Err(e)), BROKEN_PIPE_STATUS);
        // A broken pipe elsewhere (a socket to the database) is a failure to report.
        let socket = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(exit_status(Err(anyhow::Error::new(socket))), 1);
        let full = on_stdout(io::Error::from_raw_os_error(28));
        assert!(
            full.to_string()
                .starts_with("writing to standard output: No space left on device"),
            "{full}"
        );
        assert_eq!(exit_status(Err(full.into())), 1);
        assert_eq!(exit_status(Ok(2)), 2);
    }
}
