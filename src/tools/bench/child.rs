//! Running one `munja` command of the bench as a child process, exactly as an operator would,
//! and measuring it: wall time, peak RSS (via [`PeakWatch`]), and its stdout kept or counted.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use super::{PeakWatch, Phase};

/// What the child's stdout is used for.
pub(super) enum Stdout {
    /// Kept (ids, JSON summaries: small).
    Keep,
    /// Counted line by line and dropped (exports: large).
    CountLines,
}

/// What one child run gave: its exit status, wall time, peak RSS and stdout.
pub(super) struct ChildRun {
    pub(super) status: ExitStatus,
    pub(super) secs: f64,
    pub(super) peak_kib: u64,
    pub(super) stdout: String,
    pub(super) lines: u64,
}

/// Where the bench keeps its files and how it runs `munja`.
#[derive(Clone)]
pub(super) struct Bench {
    pub(super) exe: PathBuf,
    pub(super) root: PathBuf,
    pub(super) config: PathBuf,
}

impl Bench {
    /// Runs `munja --config munja.toml ARGS` and measures it; stderr goes to `NAME.log`.
    pub(super) fn child(
        &self,
        name: &str,
        args: &[&str],
        stdout: Stdout,
    ) -> anyhow::Result<ChildRun> {
        let log_path = self.root.join(format!("{}.log", name.replace(' ', "-")));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let started = Instant::now();
        let (mut child, watch) = PeakWatch::spawn(
            Command::new(&self.exe)
                .current_dir(&self.root)
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
            self.root.join(format!("{}.peak", name.replace(' ', "-"))),
        )
        .with_context(|| format!("starting {}", self.exe.display()))?;
        let mut out = child.stdout.take().context("child stdout")?;
        let (mut text, mut lines) = (String::new(), 0u64);
        match stdout {
            Stdout::Keep => {
                out.read_to_string(&mut text)?;
            }
            Stdout::CountLines => {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = out.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                }
            }
        }
        let (status, peak_kib) = watch.finish(child)?;
        Ok(ChildRun {
            status,
            secs: started.elapsed().as_secs_f64(),
            peak_kib,
            stdout: text,
            lines,
        })
    }

    /// Like [`Bench::child`], failing with the end of its log unless it exits with one of `ok`.
    pub(super) async fn phase(
        &self,
        name: &str,
        args: &[&str],
        stdout: Stdout,
        ok: &[i32],
    ) -> anyhow::Result<(Phase, ChildRun)> {
        let this = self.clone();
        let (n, a): (String, Vec<String>) =
            (name.into(), args.iter().map(|s| s.to_string()).collect());
        let run = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            this.child(&n, &a, stdout)
        })
        .await??;
        let code = run.status.code().unwrap_or(-1);
        if !ok.contains(&code) {
            let log =
                std::fs::read_to_string(self.root.join(format!("{}.log", name.replace(' ', "-"))))
                    .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "bench phase {name:?} (munja {}) exited with {code}:\n{}",
                args.join(" "),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let phase = Phase {
            name: name.into(),
            secs: run.secs,
            peak_rss_mib: run.peak_kib as f64 / 1024.0,
            rows: None,
            per_sec: None,
        };
        Ok((phase, run))
    }
}
