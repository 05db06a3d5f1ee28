//! `munja campaign …`: create, schedule, run, status, list, stop, cancel and delete, each a
//! call into the library and what it prints.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::CampaignCmd;
use super::status::{campaign_list, campaign_status};
use crate::config::Config;
use crate::run::campaign::CreateRequest;
use crate::run::dispatch::{self, RunOptions};
use crate::run::lease::{self, StopRequest};
use crate::run::progress;
use crate::run::summary::{print_summary, summary_json};
use crate::store::Store;

pub(super) async fn campaign_cmd(
    cmd: CampaignCmd,
    cfg: &Config,
    store: Arc<dyn Store>,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match cmd {
        CampaignCmd::Create {
            name,
            segment,
            template,
            gateways,
            split,
            no_ad,
            subject,
            at,
        } => {
            let req = CreateRequest {
                name,
                segment,
                template,
                gateways,
                split,
                no_ad,
                subject,
            };
            let id = crate::cli::schedule::create(&*store, cfg, &req, at.as_deref()).await?;
            writeln!(out, "{id}")?;
        }
        CampaignCmd::Schedule { id, at, now } => {
            crate::cli::schedule::set(&*store, cfg, id, at.as_deref(), now).await?;
        }
        CampaignCmd::Unschedule { id } => {
            crate::run::schedule::set(&*store, cfg, id, None).await?;
            eprintln!("campaign {id} unscheduled: CREATED, started only by hand or a new schedule");
        }
        CampaignCmd::Run {
            id,
            retry_failed,
            resend_in_doubt,
            json,
        } => {
            let opts = RunOptions {
                retry_failed,
                resend_in_doubt,
                handle_signals: true,
                progress: Some(progress::for_stderr(Duration::from_secs(3))),
                ..Default::default()
            };
            let report = dispatch::run(store, cfg, id, opts).await?;
            print_summary(&report);
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&summary_json(&report))?
                )?;
            }
            return Ok(report.status.exit_code());
        }
        CampaignCmd::Status { id, json } => {
            campaign_status(&*store, cfg, id, json, out).await?;
        }
        CampaignCmd::List { json } => {
            campaign_list(&*store, json, out).await?;
        }
        CampaignCmd::Stop { id } => return stop(&*store, cfg, id).await,
        CampaignCmd::Cancel { id } => cancel(&*store, cfg, id).await?,
        CampaignCmd::SyncResults { .. } => unreachable!("handled by run_command"),
        CampaignCmd::Delete { id } => {
            lease::delete(&*store, id, cfg.policy.lease_timeout_secs).await?;
            eprintln!("campaign {id} deleted with its messages and logs");
        }
    }
    Ok(0)
}

/// `campaign stop`: exit 1 when there is no run to stop.
async fn stop(store: &dyn Store, cfg: &Config, id: i64) -> anyhow::Result<i32> {
    match lease::request_stop(store, id, cfg.policy.lease_timeout_secs).await? {
        StopRequest::Requested => {
            eprintln!("stop requested: the run finishes its in-flight requests, commits and exits");
            Ok(0)
        }
        StopRequest::NotRunning(status) => {
            eprintln!("campaign {id} is not running (status {status})");
            Ok(1)
        }
        StopRequest::HolderGone => {
            eprintln!(
                "campaign {id} is not running: its process is gone. `munja campaign run {id}` \
                 resumes it; `munja campaign cancel {id}` cancels it"
            );
            Ok(1)
        }
    }
}

/// `campaign cancel`.
async fn cancel(store: &dyn Store, cfg: &Config, id: i64) -> anyhow::Result<()> {
    let r = lease::cancel(store, id, cfg.policy.lease_timeout_secs).await?;
    eprintln!(
        "campaign {id} cancelled: {} pending messages will never be sent",
        r.cancelled
    );
    if r.in_doubt > 0 {
        eprintln!(
            "{} messages are in doubt (the gateway may have them): `munja campaign run {id}` \
             looks them up and records them as sent or cancelled; it sends nothing",
            r.in_doubt
        );
    }
    Ok(())
}
