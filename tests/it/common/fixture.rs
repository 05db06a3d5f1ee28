//! Shared set-up of the command-line tests: [`Setup`] builds what most tests start from
//! (munja.toml for the simulator, `munja init`, segment `seg` and a campaign on it), and the
//! [`Env`] methods here are the steps tests repeat around a run: create a campaign, start a run
//! and wait for the gateway to take messages, insist on an exit code, read the campaign's
//! status, check what the gateway accepted.

use std::path::Path;
use std::process::Child;

use munja::tools::sim::SimConfig;
use serde_json::Value;

use super::{Env, Gw, Out, on_postgres, wait};

/// What a test starts from, built step by step: by default 0 recipients, template `hello`,
/// the harness's gateway ([`Gw::default`]) and policy, on the backend `MUNJA_TEST_BACKEND` names.
pub struct Setup {
    sim: SimConfig,
    gw: Gw,
    policy: String,
    sqlite_only: bool,
    recipients: u64,
    template: String,
    create: Vec<String>,
}

impl Setup {
    /// A segment of `recipients` numbers ([`super::number`]`(0)` on), written to `seg.csv`.
    pub fn new(recipients: u64) -> Setup {
        Setup {
            sim: SimConfig::default(),
            gw: Gw::default(),
            policy: String::new(),
            sqlite_only: false,
            recipients,
            template: "hello".into(),
            create: Vec::new(),
        }
    }

    /// The simulator's faults and settings.
    pub fn sim(mut self, sim: SimConfig) -> Setup {
        self.sim = sim;
        self
    }

    /// The gateway's settings in munja.toml.
    pub fn gw(mut self, gw: Gw) -> Setup {
        self.gw = gw;
        self
    }

    /// The gateway's `rate_per_sec` and `burst`, its other settings unchanged.
    pub fn rate(mut self, rate: u32, burst: u32) -> Setup {
        self.gw.rate = rate;
        self.gw.burst = burst;
        self
    }

    /// Extra lines of munja.toml's `[policy]` table (see [`Env::with`]).
    pub fn policy(mut self, policy: &str) -> Setup {
        self.policy = policy.into();
        self
    }

    /// A run that never pauses for failures in a row (`max_consecutive_failures = 100000`):
    /// for tests whose gateway fails on purpose.
    pub fn never_pause(self) -> Setup {
        self.policy("max_consecutive_failures = 100000")
    }

    /// On a SQLite file whatever `MUNJA_TEST_BACKEND` says (see [`Env::on_sqlite`]).
    pub fn on_sqlite(mut self) -> Setup {
        self.sqlite_only = true;
        self
    }

    /// The campaign's template (default `hello`).
    pub fn template(mut self, template: &str) -> Setup {
        self.template = template.into();
        self
    }

    /// Extra arguments of `campaign create` (`--no-ad`, `--gateway`, …).
    pub fn create_with(mut self, extra: &[&str]) -> Setup {
        self.create = extra.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The environment alone: munja.toml and the templates written, no database yet.
    pub async fn env(self) -> Env {
        Env::on(
            self.sim,
            self.gw,
            &self.policy,
            on_postgres() && !self.sqlite_only,
        )
        .await
    }

    /// `munja init` and segment `seg` imported from `seg.csv`.
    pub async fn segment(self) -> Env {
        let recipients = self.recipients;
        let env = self.env().await;
        let seg = env.segment_csv("seg.csv", 0, recipients);
        env.ok(&["init"]).await;
        env.import("seg", &seg).await;
        env
    }

    /// As [`Setup::segment`], and campaign `t` created on it (not started); returns its id.
    pub async fn campaign(self) -> (Env, String) {
        let (recipients, template) = (self.recipients, self.template.clone());
        let extra = self.create.clone();
        let env = self.env().await;
        let seg = env.segment_csv("seg.csv", 0, recipients);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let id = env.campaign(&seg, &template, &extra).await;
        (env, id)
    }
}

/// `campaign create --name NAME --segment SEGMENT --template TEMPLATE EXTRA…`.
pub fn create_args<'a>(
    name: &'a str,
    segment: &'a str,
    template: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "campaign",
        "create",
        "--name",
        name,
        "--segment",
        segment,
        "--template",
        template,
    ];
    args.extend_from_slice(extra);
    args
}

/// Waits for a started `munja` and insists on its exit code (-1: killed by a signal).
pub async fn exit_code(child: Child, code: i32) -> Out {
    let o = wait(child).await;
    assert_eq!(o.code, code, "{}", o.all());
    o
}

impl Env {
    /// Runs the binary with extra environment variables (a gateway key, a source's URL).
    pub async fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Out {
        let mut c = self.cmd(args);
        for (k, v) in vars {
            c.env(k, v);
        }
        tokio::task::spawn_blocking(move || c.output())
            .await
            .expect("join")
            .expect("spawn munja")
            .into()
    }

    /// Runs and insists on exit code `code`.
    pub async fn exits(&self, code: i32, args: &[&str]) -> Out {
        let o = self.run(args).await;
        assert_eq!(o.code, code, "munja {args:?}:\n{}", o.all());
        o
    }

    /// `segment import NAME FILE`, which must succeed.
    pub async fn import(&self, name: &str, file: &Path) -> Out {
        let f = file.to_str().expect("utf-8 path");
        self.ok(&["segment", "import", name, f]).await
    }

    /// `campaign create` (see [`create_args`]), whatever its exit code.
    pub async fn create(&self, name: &str, segment: &str, template: &str, extra: &[&str]) -> Out {
        self.run(&create_args(name, segment, template, extra)).await
    }

    /// `campaign create`, which must succeed; returns the id it printed.
    pub async fn create_ok(&self, name: &str, segment: &str, template: &str) -> String {
        let args = create_args(name, segment, template, &[]);
        self.ok(&args).await.stdout.trim().to_string()
    }

    /// `schedule add NAME --segment seg --template hello --no-ad --cron CRON`, which must succeed.
    pub async fn schedule_hello(&self, name: &str, cron: &str) -> Out {
        let args = [
            "schedule",
            "add",
            name,
            "--segment",
            "seg",
            "--template",
            "hello",
            "--no-ad",
            "--cron",
            cron,
        ];
        self.ok(&args).await
    }

    /// `campaign run ID` exits 0, and the gateway has accepted `n` messages, none twice.
    pub async fn run_sends_once(&self, id: &str, n: u64) {
        self.exits(0, &["campaign", "run", id]).await;
        let s = self.sim.stats();
        assert_eq!((s.accepted, s.numbers_accepted_twice), (n, 0));
    }

    /// The gateway accepted `sent` messages in `took` seconds, never above its shared limit of
    /// 100 a second (bucket 10) in any calendar second nor on average.
    pub fn assert_shared_100_a_second(&self, sent: u64, took: f64) {
        let s = self.sim.stats();
        assert_eq!(s.accepted, sent);
        assert!(
            s.max_per_second <= 100 + 10,
            "a calendar second saw {} messages: {:?}",
            s.max_per_second,
            s.per_second
        );
        assert!(
            took >= (sent as f64 - 10.0) / 100.0,
            "sent {sent} in {took:.2}s, faster than the shared 100/s"
        );
    }

    /// Starts `campaign run ID` and waits until the gateway has accepted `accepted` messages
    /// in all (the run is under way).
    pub async fn start(&self, id: &str, accepted: u64) -> Child {
        let child = self.spawn_run(id, &[]);
        self.until_accepted(accepted).await;
        child
    }

    /// The campaign's `status --json`, after checking that its status is `want`.
    pub async fn status_is(&self, id: &str, want: &str) -> Value {
        let st = self.status(id).await;
        assert_eq!(st["status"], want, "campaign {id}: {st}");
        st
    }

    /// Checks that the gateway accepted `n` messages in all and no number twice.
    pub fn assert_accepted_once(&self, n: u64) {
        let s = self.sim.stats();
        assert_eq!(
            (s.accepted, s.numbers_accepted_twice),
            (n, 0),
            "accepted, numbers accepted twice"
        );
    }
}

impl Out {
    /// Checks that the command printed `part` on stdout; shows everything it printed if not.
    pub fn assert_stdout_has(&self, part: &str) {
        assert!(
            self.stdout.contains(part),
            "no {part:?} on stdout:\n{}",
            self.all()
        );
    }

    /// Checks that the command printed `part` on stderr; shows everything it printed if not.
    pub fn assert_stderr_has(&self, part: &str) {
        assert!(
            self.stderr.contains(part),
            "no {part:?} on stderr:\n{}",
            self.all()
        );
    }
}
