//! What the bench runs on: the generated segment and opt-out CSVs (streamed to disk) and the
//! `munja.toml` and template that point the commands at the gateway simulator.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::BenchArgs;

/// The national form of generated number `i` (recipients from 0, other numbers from 10^7).
pub(super) fn number(i: u64) -> String {
    format!("010-{:04}-{:04}", 1000 + i / 10_000, i % 10_000)
}

/// Writes the segment (and opt-out) CSVs; returns how many opt-outs are in the segment.
pub(super) fn generate(root: &Path, recipients: u64, optouts: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        recipients <= 10_000_000 && optouts <= 70_000_000,
        "the bench generates at most 10,000,000 recipients and 70,000,000 opt-outs"
    );
    let mut w = std::io::BufWriter::new(std::fs::File::create(root.join("segment.csv"))?);
    writeln!(w, "phone,name")?;
    for i in 0..recipients {
        writeln!(w, "{},고객{i}", number(i))?;
    }
    w.flush()?;
    let inside = optouts.min(recipients.div_ceil(10));
    if optouts > 0 {
        let mut w = std::io::BufWriter::new(std::fs::File::create(root.join("optouts.csv"))?);
        writeln!(w, "phone")?;
        for k in 0..inside {
            writeln!(w, "{}", number(k * 10))?;
        }
        for k in 0..optouts - inside {
            writeln!(w, "{}", number(10_000_000 + k))?;
        }
        w.flush()?;
    }
    Ok(inside)
}

/// Writes `root/FILE` (`munja.toml`, or the store ceiling's own), pointing at the gateway `url`
/// (the simulator's, or with `--kannel` smsbox's) and the database `database_url` (default:
/// `munja.db` next to it).
pub(super) fn write_config(
    root: &Path,
    file: &str,
    args: &BenchArgs,
    url: &str,
    database_url: Option<&str>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root.join("templates"))?;
    std::fs::write(
        root.join("templates/bench.txt"),
        "{{ name }}님, 이번 주 회원 전용 할인 쿠폰이 도착했어요.",
    )?;
    let path = root.join(file);
    std::fs::write(
        &path,
        format!(
            r#"{database}[sender]
number = "1588-1234"
brand = "munja"
optout_number = "080-600-5653"
[policy]
chunk_size = {chunk}
quiet_hours = "off"
lease_timeout_secs = 3
[[gateways]]
{gateway}url = "{url}"
rate_per_sec = {rate}
burst = {burst}
concurrency = {conc}
timeout_ms = 10000
max_attempts = 5
batch_size = {batch}
"#,
            database = database_url
                .map(|u| format!("database_url = \"{u}\"\n"))
                .unwrap_or_default(),
            chunk = args.chunk_size,
            conc = args.concurrency,
            batch = args.batch_size,
            gateway = if args.kannel {
                format!(
                    "name = \"kannel\"\nkind = \"kannel\"\nusername = \"munja\"\n\
                     password_env = \"{}\"\n",
                    super::kannel::PASSWORD_ENV
                )
            } else {
                "name = \"sim\"\nkind = \"http-json\"\n".to_string()
            },
            rate = args.rate_per_sec,
            burst = args.burst,
        ),
    )?;
    Ok(path)
}
