//! `munja bench --kannel`: the run goes through a real Kannel on loopback (bearerbox with a fake
//! SMSC, smsbox with a `sendsms-user`, and Debian's `fakesmsc` as the SMSC, as kannel-extras
//! ships them), its HTTP ceiling is a bare load loop on that smsbox's `sendsms`, and every
//! message the run sent is counted where it ends: in fakesmsc's log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";

/// The variable the bench's `munja.toml` names as the Kannel password (`password_env`).
pub(super) const PASSWORD_ENV: &str = "MUNJA_BENCH_KANNEL_PASSWORD";
/// The `sendsms-user` password of the bench's own Kannel (loopback only, gone with it).
pub(super) const PASSWORD: &str = "munja-bench-kannel";

/// What reached fakesmsc of the run's messages.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Received {
    /// Recipients of the segment that fakesmsc got exactly one message for.
    pub once: u64,
    /// Recipients it got more than one message for.
    pub more_than_once: u64,
    /// Recipients it got nothing for.
    pub missing: u64,
}

/// The three Kannel processes of the bench, killed when dropped.
pub(super) struct Kannel {
    children: Children,
    log: PathBuf,
    sendsms_port: u16,
}

/// Child processes, killed and reaped when dropped (a Kannel's boxes and fakesmsc).
#[derive(Debug, Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free loopback port (the listener closes before Kannel binds it).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Waits up to 20 s for `ready`.
async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while !ready().await {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("{what} did not come up within 20 s (its log is in the bench directory)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The ports of a Kannel on loopback.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// bearerbox's admin port.
    pub admin: u16,
    /// bearerbox's port for smsboxes.
    pub boxes: u16,
    /// The fake SMSC's port (fakesmsc connects to it).
    pub smsc: u16,
    /// smsbox's sendsms port.
    pub sendsms: u16,
}

/// The `kannel.conf` of a bearerbox with one fake SMSC and an smsbox on loopback, logging into
/// `dir` at `log_level`, with one sendsms user `munja` whose password is `password`.
pub fn conf(dir: &Path, p: Ports, log_level: u8, password: &str) -> String {
    let d = dir.display();
    let Ports {
        admin,
        boxes,
        smsc,
        sendsms,
    } = p;
    format!(
        "group = core\nadmin-port = {admin}\nadmin-password = adm\nsmsbox-port = {boxes}\n\
         log-level = {log_level}\nlog-file = \"{d}/bearerbox.log\"\nbox-allow-ip = \"127.0.0.1\"\n\
         admin-allow-ip = \"127.0.0.1\"\ndlr-storage = internal\n\n\
         group = smsc\nsmsc = fake\nsmsc-id = fake1\nport = {smsc}\n\
         connect-allow-ip = \"127.0.0.1\"\n\n\
         group = smsbox\nbearerbox-host = 127.0.0.1\nbearerbox-port = {boxes}\n\
         sendsms-port = {sendsms}\nlog-level = {log_level}\nlog-file = \"{d}/smsbox.log\"\n\n\
         group = sendsms-user\nusername = munja\npassword = {password}\nmax-messages = 10\n"
    )
}

impl Kannel {
    /// Starts bearerbox, smsbox and fakesmsc with their configuration and logs in `dir`, and
    /// waits until the fake SMSC is online.
    pub(super) async fn start(dir: &Path) -> anyhow::Result<Kannel> {
        for bin in [BEARERBOX, SMSBOX, FAKESMSC] {
            anyhow::ensure!(
                Path::new(bin).exists(),
                "{bin} is missing: `apt-get install kannel kannel-extras` installs Kannel and fakesmsc"
            );
        }
        let ports = Ports {
            admin: free_port()?,
            boxes: free_port()?,
            smsc: free_port()?,
            sendsms: free_port()?,
        };
        let Ports {
            admin,
            boxes,
            smsc,
            sendsms,
        } = ports;
        let conf = conf(dir, ports, 2, PASSWORD);
        let conf_path = dir.join("kannel.conf");
        std::fs::write(&conf_path, conf).context("writing kannel.conf")?;
        let mut k = Kannel {
            children: Children::default(),
            log: dir.join("fakesmsc.log"),
            sendsms_port: sendsms,
        };
        let conf_arg = conf_path.display().to_string();
        k.spawn(BEARERBOX, &[&conf_arg], Stdio::null())?;
        wait_for("bearerbox", async || port_open(boxes) && port_open(smsc)).await?;
        k.spawn(SMSBOX, &[&conf_arg], Stdio::null())?;
        let log = std::fs::File::create(&k.log).context("creating fakesmsc.log")?;
        let smsc_port = smsc.to_string();
        let fake_args = ["-H", "127.0.0.1", "-r", &smsc_port, "-m", "0", "1 2 text x"];
        k.spawn(FAKESMSC, &fake_args, Stdio::from(log))?;
        wait_for("smsbox", async || port_open(sendsms)).await?;
        let status = format!("http://127.0.0.1:{admin}/status.txt?password=adm");
        let client = reqwest::Client::new();
        wait_for("the fake SMSC", async || {
            match client.get(&status).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains("online")),
                Err(_) => false,
            }
        })
        .await?;
        Ok(k)
    }

    fn spawn(&mut self, bin: &str, args: &[&str], stderr: Stdio) -> anyhow::Result<()> {
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        self.children.0.push(child);
        Ok(())
    }

    /// The `url` of the gateway entry: smsbox's sendsms interface.
    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.sendsms_port)
    }

    /// Messages fakesmsc received so far, per receiver (digits).
    fn per_receiver(&self) -> anyhow::Result<HashMap<String, u64>> {
        let log = std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?;
        let mut m = HashMap::new();
        // `... Got message 1: <15881234 01012345678 ucs-2 %00(...>`
        for line in log.lines() {
            let receiver = line
                .split_once("Got message ")
                .and_then(|(_, rest)| rest.split_once(": <"))
                .and_then(|(_, inner)| inner.split(' ').nth(1));
            if let Some(to) = receiver {
                *m.entry(to.to_string()).or_insert(0) += 1;
            }
        }
        Ok(m)
    }

    /// Waits (up to 60 s without progress) until fakesmsc has a message for each of the
    /// `recipients` first numbers of the segment, then counts them.
    pub(super) async fn received(&self, recipients: u64) -> anyhow::Result<Received> {
        let numbers: Vec<String> = (0..recipients)
            .map(|i| super::number(i).replace('-', ""))
            .collect();
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let got = self.per_receiver()?;
            let mut r = Received::default();
            for n in &numbers {
                match got.get(n).copied().unwrap_or(0) {
                    0 => r.missing += 1,
                    1 => r.once += 1,
                    _ => r.more_than_once += 1,
                }
            }
            let arrived = r.once + r.more_than_once;
            if r.missing == 0 || since.elapsed() > Duration::from_secs(60) {
                return Ok(r);
            }
            if arrived > last {
                (last, since) = (arrived, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
