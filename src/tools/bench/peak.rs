//! Peak memory of a process: this one's `VmHWM`, and a child's, sampled while it runs and
//! reported by the child itself when it ends (`MUNJA_PEAK_RSS_FILE`), so that the bench can
//! give each command's own figure.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// Peak resident set size of this process, in MiB (Linux: VmHWM).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `VmHWM` of process `pid` in KiB: the peak RSS of the program it runs now.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Environment variable naming a file where `munja` writes its peak RSS (KiB) when done.
pub const PEAK_RSS_FILE_ENV: &str = "MUNJA_PEAK_RSS_FILE";

/// Writes this process's `VmHWM` to the file named by [`PEAK_RSS_FILE_ENV`] when dropped (at the
/// end of the command); does nothing when the variable is not set.
pub struct PeakReport(Option<PathBuf>);

impl PeakReport {
    pub fn from_env() -> PeakReport {
        PeakReport(std::env::var_os(PEAK_RSS_FILE_ENV).map(PathBuf::from))
    }
}

impl Drop for PeakReport {
    fn drop(&mut self) {
        if let (Some(path), Some(kib)) = (&self.0, vm_hwm_kib(std::process::id())) {
            // A benchmark aid: failing to write it must not fail the command.
            let _ = std::fs::write(path, kib.to_string());
        }
    }
}

/// Measures the peak RSS of one `munja` child process.
///
/// `ru_maxrss` (wait4, getrusage) would be wrong here: Linux starts a child's count at the RSS
/// of the process that spawned it, so every phase would report at least the bench's own size
/// (the simulator's, which grows with the messages it accepted). The child writes its own
/// `VmHWM` when its command ends ([`PeakReport`]); while it runs, `VmHWM` is also sampled from
/// `/proc`, the figure used if the child could not write its own.
pub struct PeakWatch {
    pid: u32,
    report: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: std::thread::JoinHandle<u64>,
}

impl PeakWatch {
    /// Spawns `cmd`, a `munja` command, which reports its peak into the file `report`.
    pub fn spawn(
        cmd: &mut Command,
        report: PathBuf,
    ) -> std::io::Result<(std::process::Child, PeakWatch)> {
        let _ = std::fs::remove_file(&report);
        let child = cmd.env(PEAK_RSS_FILE_ENV, &report).spawn()?;
        let pid = child.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        let watch = PeakWatch {
            pid,
            report,
            stop,
            sampler,
        };
        Ok((child, watch))
    }

    /// Waits for `child` (the one watched); returns its exit status and peak RSS in KiB.
    pub fn finish(self, mut child: std::process::Child) -> std::io::Result<(ExitStatus, u64)> {
        // An exited child stays a zombie until waited for: its pid is not reused meanwhile.
        let mut last = 0;
        let status = loop {
            last = last.max(vm_hwm_kib(self.pid).unwrap_or(0));
            if let Some(s) = child.try_wait()? {
                break s;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sampled = self.sampler.join().unwrap_or(0).max(last);
        let reported = std::fs::read_to_string(&self.report)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        Ok((status, reported.unwrap_or(sampled).max(sampled)))
    }
}
