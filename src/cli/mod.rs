//! The command line: argument parsing and printing, nothing else.
//!
//! Every command loads the config, opens the store and calls one function of the library;
//! stdout carries results (ids, tables, JSON) and stderr carries reports and progress.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::input::import::{self, ImportReport};
use crate::run::audit::Format;
use crate::run::delivery;
use crate::store::{self, Store};

mod campaign_cmd;
mod records;
pub mod schedule;
mod sql_segments;
mod status;
mod template_cmd;

use campaign_cmd::campaign_cmd;

pub const ABOUT: &str =
    "munja (문자): send advertising SMS campaigns to large segments, lawfully and exactly once.";

pub const LONG_ABOUT: &str = "\
munja (문자): send advertising SMS campaigns to large segments, lawfully and exactly once.

It imports recipient segments and opt-out lists (수신거부) from CSV, renders each message from a
template with the (광고) header, sender name and free 080 opt-out footer, sizes it as SMS/LMS in
EUC-KR bytes, sends it through a rate-limited HTTP gateway with retry, and records every message
and attempt. An interrupted run resumes with no duplicate and no lost message.

Typical workflow:
  munja init
  munja optout import optouts.csv
  munja segment import vip customers.csv
  munja template preview recruit --segment vip --limit 3
  ID=$(munja campaign create --name spring-sale --segment vip --template recruit)
  munja campaign run $ID          # exit 0 completed, 2 stopped (resumable), 1 failed
  munja campaign status $ID
  munja audit --campaign $ID --status failed

Unattended: `campaign create --at \"2026-12-01 10:00\"`, `schedule add NAME --cron \"0 10 * * MON\"`,
and `munja serve` (MUNJA_TOKEN set) starts them on time, with an admin API, /metrics and a
dashboard at http://127.0.0.1:8070/.

Try it all at once, with a built-in gateway simulator: munja demo";

/// The options every command takes. The binary (src/main.rs) puts them together with
/// [`Command`] and the commands of the `tools` layer into the whole command line.
#[derive(Debug, Args)]
pub struct Global {
    /// Config file (default: $MUNJA_CONFIG, then ./munja.toml, then built-in defaults).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database and run its migrations (harmless to repeat); no other command creates it.
    Init,
    /// Manage the opt-out list (수신거부).
    #[command(subcommand)]
    Optout(OptoutCmd),
    /// Import, define, list and delete recipient segments (CSV files, or SQL queries on your
    /// database).
    #[command(subcommand)]
    Segment(SegmentCmd),
    /// Check and preview message templates.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Create, run, stop, cancel and inspect campaigns.
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// Recurring schedules: a new campaign at every cron occurrence (run by `munja serve`).
    #[command(subcommand)]
    Schedule(crate::cli::schedule::ScheduleCmd),
    /// Run the server: launches scheduled campaigns, resumes and takes over runs, syncs NHN
    /// delivery results of recent campaigns ([server] sync_results_every_secs), serves the
    /// admin API, /metrics and the dashboard. Needs the admin token in $MUNJA_TOKEN.
    Serve(crate::cli::schedule::ServeArgs),
    /// One row per message of a campaign: ref, phone, status, attempts, gateway id, error, ...
    Audit(AuditArgs),
    /// Delete attempt logs, executions and delivery reports of finished campaigns older than
    /// a date (messages and their final states stay until `campaign delete`).
    Purge {
        /// Delete what is older than this date (YYYY-MM-DD, in policy.timezone) or RFC 3339 time.
        #[arg(long)]
        before: String,
        /// Rows deleted per transaction.
        #[arg(long, default_value_t = 5000)]
        batch: i64,
        /// Print what was deleted and the database's free space as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OptoutCmd {
    /// Import a CSV with a `phone` column (other columns ignored); idempotent. A file with a
    /// quoted field spanning lines (an unbalanced `"`) is refused whole, nothing imported.
    Import { file: PathBuf },
    /// Add one number.
    Add { phone: String },
    /// Remove one number.
    Remove { phone: String },
    /// Exit 0 when the number is opted out, 1 when not.
    Check { phone: String },
    /// Pull an NHN Cloud gateway's 080 opt-out list (수신거부) into munja's; idempotent,
    /// reports numbers added and already present.
    Sync {
        /// An nhn-cloud gateway of munja.toml (app_key_env and secret_key_env set).
        #[arg(long)]
        gateway: String,
        /// Print what was added as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SegmentCmd {
    /// Import (or atomically replace) segment NAME from a CSV with a `phone` column; every other
    /// column becomes a template variable; an optional `night_consent` column (true/false, Y/N, 1/0)
    /// allows ads during quiet hours.
    ///
    /// Special columns (any case):
    ///   phone          the mobile number, in any form
    ///   night_consent  allows quiet-hour ads
    ///   ad_consent_at  when ad consent was given: empty, YYYY-MM-DD, YYYY-MM-DD HH:MM:SS
    ///                  (policy.timezone) or RFC 3339; anything else rejects the row
    ///                  (invalid_ad_consent_at). An ad skips consents older than
    ///                  policy.ad_consent_max_age_days (730) as consent_expired and empty
    ///                  cells as consent_missing; also a template variable
    ///   anything else  a template variable
    #[command(verbatim_doc_comment)]
    Import { name: String, file: PathBuf },
    /// List segments: kind (csv or sql), source and size where known.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Define (or redefine) segment NAME as one SELECT on a `[sources.SRC]` database.
    ///
    /// The query runs when a campaign on it first runs (and for previews), read-only and
    /// within the source's statement_timeout_secs. Its columns work like a CSV's:
    ///   phone          the mobile number (or name another column with --phone-column)
    ///   night_consent  allows quiet-hour ads
    ///   ad_consent_at  checked against policy.ad_consent_max_age_days (730)
    ///   anything else  a template variable
    /// `:as_of` is bound to the time of the read (the run's start), never pasted in:
    ///   munja segment define vip --source crm --query \
    ///     "SELECT mobile AS phone, name FROM customers WHERE grade = 'VIP' AND joined_at < :as_of"
    /// Redefining keeps the earlier versions; a campaign keeps the version it was created from.
    #[command(verbatim_doc_comment)]
    Define {
        name: String,
        /// The `[sources.NAME]` of munja.toml to read.
        #[arg(long)]
        source: String,
        /// A file holding the query.
        #[arg(
            long,
            value_name = "FILE.sql",
            conflicts_with = "query",
            required_unless_present = "query"
        )]
        query_file: Option<PathBuf>,
        /// The query itself.
        #[arg(long, value_name = "SQL")]
        query: Option<String>,
        /// The column holding the mobile number (default: phone).
        #[arg(long, value_name = "COLUMN")]
        phone_column: Option<String>,
    },
    /// Delete segment NAME, CSV (with its recipients) or SQL (its versions leave the lists;
    /// campaigns created from them keep their record). Refused, naming them, while a campaign
    /// created from it is not COMPLETED or CANCELLED.
    Delete { name: String },
    /// Print an SQL segment's query, source and versions (add --json for scripts).
    Show {
        name: String,
        /// Print every version's query, oldest first.
        #[arg(long)]
        all_versions: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run an SQL segment's query now and print its first rows (numbers masked) and the counts of
    /// the whole result: recipients, rejected rows by reason, expired ad consents.
    Preview {
        name: String,
        #[arg(long, default_value_t = 5)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// Check a template's syntax, list the variables it uses and refuse a hand-written ad frame.
    Check {
        name: String,
        /// Informational template: (광고) markers are allowed.
        #[arg(long)]
        no_ad: bool,
    },
    /// Show the final text for the first recipients of a segment, with type, bytes and violations.
    Preview {
        name: String,
        #[arg(long)]
        segment: String,
        #[arg(long, default_value_t = 3)]
        limit: i64,
        #[arg(long)]
        no_ad: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// Check the template over the whole segment and create a campaign; prints only its id.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        segment: String,
        #[arg(long)]
        template: String,
        /// Gateway name from munja.toml (default: the first one). Repeat it for several
        /// gateways: traffic goes to the first whose circuit breaker is closed, and fails over
        /// to the next when it opens (`--gateway nhn --gateway kannel`).
        #[arg(long = "gateway", value_name = "NAME")]
        gateways: Vec<String>,
        /// Share traffic between the gateways by their `weight` in munja.toml instead of
        /// failing over in order (still skipping a gateway whose breaker is open).
        #[arg(long)]
        split: bool,
        /// Informational, not an ad: no (광고) header, no opt-out footer, no night rule.
        #[arg(long)]
        no_ad: bool,
        /// LMS subject (overrides the template's).
        #[arg(long)]
        subject: Option<String>,
        /// Schedule it: "YYYY-MM-DD HH:MM" in policy.timezone, or RFC 3339 with an offset.
        /// `munja serve` starts it then. An ad inside quiet hours is refused unless every
        /// recipient has night consent.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Schedule a campaign that never ran (`--at TIME`), or mark it due now (`--now`);
    /// `munja serve` starts it.
    Schedule {
        id: i64,
        /// "YYYY-MM-DD HH:MM" in policy.timezone, or RFC 3339 with an offset.
        #[arg(
            long,
            value_name = "TIME",
            required_unless_present = "now",
            conflicts_with = "now"
        )]
        at: Option<String>,
        /// Due at once (never refused for quiet hours: the run waits for the window to end).
        #[arg(long)]
        now: bool,
    },
    /// Take a SCHEDULED campaign off the schedule (back to CREATED).
    Unschedule { id: i64 },
    /// Run (or resume) a campaign. Exit 0 COMPLETED, 2 STOPPED (resumable), 1 FAILED or nothing
    /// sent. Ctrl-C / SIGTERM stops after the in-flight requests; a second one abandons them
    /// (their messages stay in doubt, settled by lookup on the next run). On PostgreSQL, start
    /// it on several processes or hosts to share the campaign: each is a worker of the same
    /// execution, and survivors rescue a dead worker's messages; on SQLite a second run of the
    /// same campaign is refused.
    Run {
        /// The campaign id (`munja campaign list`).
        id: i64,
        /// Re-queue messages whose attempts ran out on transient errors (never permanent ones).
        #[arg(long)]
        retry_failed: bool,
        /// After the lookups, send again the messages still in doubt: those at a gateway that
        /// cannot be asked (Kannel) with no delivery report proving them sent. A recipient may
        /// get such a message twice: use it only when you accept that.
        #[arg(long)]
        resend_in_doubt: bool,
        /// Print the final summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Fetch delivery results from a gateway without push (NHN Cloud's result search) and
    /// record them as delivery reports (a result 3006 or -6001 also opts the number out);
    /// idempotent. `munja serve` runs it by itself every [server] sync_results_every_secs.
    SyncResults {
        /// Campaign id (from `campaign create` or `campaign list`).
        id: i64,
        /// Gateway to ask (default: the campaign's); must be kind nhn-cloud.
        #[arg(long)]
        gateway: Option<String>,
        /// Print the counts as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Counts per state (and delivered/undelivered from delivery reports) and every execution.
    Status {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// List campaigns.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ask a running campaign to stop (it finishes in-flight requests, commits and exits 2).
    Stop { id: i64 },
    /// Cancel: pending messages become `cancelled` and are never sent; a live run stops.
    /// Messages in doubt stay in doubt until `campaign run` settles them by lookup.
    Cancel { id: i64 },
    /// Delete a campaign with its messages and logs (refused while it runs).
    Delete { id: i64 },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub campaign: i64,
    /// Any form of the number (010-1234-5678, +82 10 1234 5678, ...).
    #[arg(long)]
    pub phone: Option<String>,
    /// pending, sending, in_doubt, sent, failed, suppressed or cancelled (send states), or
    /// delivered or undelivered (what the carrier's delivery report said).
    #[arg(long)]
    pub status: Option<String>,
    /// table masks numbers; csv and json are full exports.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Sets up logging on stderr: warnings by default, more with -v, RUST_LOG wins.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,sqlx=error",
        1 => "munja=info,warn,sqlx=error",
        _ => "munja=debug,info,sqlx=warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::output::StderrWriter)
        // A log line that cannot be written is remembered by the writer (see `output`);
        // tracing's own report of it would panic on a closed stderr.
        .log_internal_errors(false)
        .with_target(false)
        .try_init();
}

/// Runs one command; returns the process exit code.
pub async fn main(global: &Global, command: Command) -> anyhow::Result<i32> {
    let cfg = Config::discover(global.config.as_deref())?;
    if let Command::Template(TemplateCmd::Check { name, no_ad }) = command {
        // Checking a template needs no database.
        template_cmd::check(&cfg, &name, no_ad, &mut crate::output::Stdout::lock())?;
        return Ok(0);
    }
    // Only `init` creates the database; every other command needs it to exist.
    let store = if matches!(command, Command::Init) {
        store::open(&cfg.database_url).await
    } else {
        store::open_existing(&cfg.database_url).await
    }
    .with_context(|| format!("opening the database {}", store::redact(&cfg.database_url)))?;
    if !matches!(command, Command::Init) {
        store.migrate().await.context("preparing the database")?;
    }
    run_command(command, &cfg, store).await
}

/// Runs a command that needs the config and the database.
async fn run_command(command: Command, cfg: &Config, store: Arc<dyn Store>) -> anyhow::Result<i32> {
    let out = &mut crate::output::Stdout::lock();
    match command {
        Command::Init => {
            store.migrate().await.context("running the migrations")?;
            eprintln!("database ready: {}", store::redact(&cfg.database_url));
        }
        Command::Optout(OptoutCmd::Sync { gateway, json }) => {
            return delivery::commands::optout_sync(&*store, cfg, &gateway, json, out).await;
        }
        Command::Optout(cmd) => return records::optout(cmd, &*store, out).await,
        Command::Campaign(CampaignCmd::SyncResults { id, gateway, json }) => {
            return delivery::commands::sync_results(
                &*store,
                cfg,
                id,
                gateway.as_deref(),
                json,
                out,
            )
            .await;
        }
        Command::Segment(SegmentCmd::Import { name, file }) => {
            let tz = cfg.policy.timezone;
            let r = import::segment(&*store, &name, &file, tz, &mut print_rejected(&file)).await?;
            print_import(&r, "merged duplicates");
            eprintln!("segment {name}: {} recipients", r.imported);
        }
        Command::Segment(SegmentCmd::List { json }) => {
            sql_segments::list(&*store, json, out).await?;
        }
        Command::Segment(SegmentCmd::Delete { name }) => {
            eprintln!(
                "{}",
                crate::run::segments::delete(&*store, &name)
                    .await?
                    .summary()
            );
        }
        Command::Segment(cmd) => return sql_segments::run(cmd, cfg, &*store, out).await,
        Command::Template(TemplateCmd::Check { name, no_ad }) => {
            template_cmd::check(cfg, &name, no_ad, out)?;
        }
        Command::Template(TemplateCmd::Preview {
            name,
            segment,
            limit,
            no_ad,
        }) => return template_cmd::preview(&*store, cfg, &name, &segment, limit, no_ad, out).await,
        Command::Campaign(cmd) => return campaign_cmd(cmd, cfg, store, out).await,
        Command::Schedule(cmd) => {
            return crate::cli::schedule::schedule_cmd(cmd, cfg, store, out).await;
        }
        Command::Serve(args) => return crate::cli::schedule::serve(args, cfg, store).await,
        Command::Audit(a) => records::audit(&a, &*store, out).await?,
        Command::Purge {
            before,
            batch,
            json,
        } => records::purge(&before, batch, json, cfg, &*store, out).await?,
    }
    Ok(0)
}

/// Prints what an import did, and how every line of the file was used.
fn print_import(r: &ImportReport, dup_label: &str) {
    println!(
        "imported {}, {dup_label} {}, rejected {} ({})",
        r.imported, r.already_present, r.rejected, r.encoding
    );
    println!(
        "{} lines: {} header, {} imported, {} {dup_label}, {} rejected, {} blank",
        r.lines, r.header_lines, r.imported, r.already_present, r.rejected_lines, r.blank_lines
    );
}

/// Prints one rejected row of `file` on stderr, as the import meets it.
fn print_rejected(file: &std::path::Path) -> impl FnMut(&import::Rejected) + '_ {
    move |x| {
        eprintln!(
            "{} line {}: {} ({})",
            file.display(),
            x.line,
            x.reason,
            x.detail
        )
    }
}
