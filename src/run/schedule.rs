//! Schedules: when a campaign starts without anyone at the keyboard.
//!
//! - One-off: a campaign created (or later scheduled) with a time is SCHEDULED until
//!   `munja serve` starts it at that time. Times are read in `policy.timezone`
//!   (`2026-12-01 10:00`) unless they carry an offset (RFC 3339). An ad campaign whose time falls
//!   inside quiet hours is refused unless every recipient has night consent.
//! - Recurring: a named cron schedule (5 fields, or 6 with seconds; parsed by `croner`) makes a
//!   new campaign per occurrence, snapshotting the segment as it is then. The store keys that
//!   campaign by (schedule, occurrence time), so an occurrence is created once whatever the
//!   number of servers or restarts; occurrences missed while no server ran are made once if
//!   within `policy.misfire_grace_secs`, and skipped with a log line otherwise.
//!
//! This module owns the rules (parsing, occurrences, misfires, the quiet-hours refusal); the
//! server calls [`tick`] every second; the CLI and the API call the rest.

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use tracing::{info, warn};

use crate::config::Config;
use crate::domain::model::{NewSchedule, Schedule};
use crate::run::campaign::{self, CreateRequest, Plan};
use crate::store::{Store, StoreError};

/// Members read per page when counting night consent.
const PAGE: i64 = 5000;
/// Longest walk over missed occurrences (a per-second cron and a server down for a day).
const MAX_MISSED: usize = 200_000;

/// Parses a cron expression of 5 fields (minute precision) or 6 (with seconds first).
pub fn parse_cron(expr: &str) -> anyhow::Result<Cron> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) && !expr.trim_start().starts_with('@') {
        bail!(
            "--cron {expr:?}: expected 5 fields (minute hour day-of-month month day-of-week, \
             e.g. \"0 10 * * MON\") or 6 with seconds first (e.g. \"*/10 * * * * *\"), got {fields}"
        );
    }
    expr.parse::<Cron>().map_err(|e| {
        anyhow::anyhow!(
            "--cron {expr:?}: {e}; expected e.g. \"0 10 * * MON\" (Mondays 10:00) or \
             \"*/10 * * * * *\" (every 10 seconds)"
        )
    })
}

/// Parses a time: RFC 3339 with an offset, or `YYYY-MM-DD HH:MM[:SS]` in `tz`.
pub fn parse_at(s: &str, tz: Tz) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s.trim(), f).ok())
    .with_context(|| {
        format!(
            "--at {s:?}: expected \"YYYY-MM-DD HH:MM\" (in policy.timezone {tz}) or an RFC 3339 \
                 time with an offset, e.g. \"2026-12-01 10:00\" or \"2026-12-01T10:00:00+09:00\""
        )
    })?;
    let local = tz.from_local_datetime(&naive).earliest().with_context(|| {
        format!("--at {s:?}: that local time does not exist in {tz} (a clock change skips it)")
    })?;
    Ok(local.with_timezone(&Utc))
}

/// Refuses a time more than a minute in the past (a typo, not a plan).
pub fn check_future(at: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) -> anyhow::Result<()> {
    if at < now - chrono::Duration::seconds(60) {
        bail!(
            "--at {}: that time is in the past (now {}); give a future time, or use --now to \
             start at once",
            at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
            now.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
        );
    }
    Ok(())
}

/// Recipients of segment `name` without night consent.
async fn without_night_consent(store: &dyn Store, name: &str) -> anyhow::Result<u64> {
    let seg = campaign::segment(store, name).await?;
    let (mut after, mut n) = (0, 0);
    loop {
        let page = store.segment_members(seg.id, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.0;
        n += page.iter().filter(|m| !m.3).count() as u64;
    }
    Ok(n)
}

/// Refuses an ad at `at` inside quiet hours unless every recipient has night consent.
pub async fn check_quiet_hours(
    store: &dyn Store,
    cfg: &Config,
    segment: &str,
    ad: bool,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let (q, tz) = (cfg.policy.quiet_hours, cfg.policy.timezone);
    if !ad || !q.is_quiet_at(tz, at) {
        return Ok(());
    }
    let n = without_night_consent(store, segment).await?;
    if n > 0 {
        let open = q.next_open(tz, at).with_timezone(&tz);
        bail!(
            "--at {}: inside quiet hours {q} ({tz}), when ads cannot be sent to the {n} recipients \
             of segment {segment:?} without night consent; nothing was created or changed. Pick \
             a time outside the window (e.g. {}), or --no-ad for an informational message",
            at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S"),
            open.format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(())
}

/// `campaign create --at`: every check of `campaign create`, the quiet-hours refusal, then a
/// SCHEDULED campaign; returns its id and plan.
pub async fn create_at(
    store: &dyn Store,
    cfg: &Config,
    req: &CreateRequest,
    at: DateTime<Utc>,
) -> anyhow::Result<(i64, Plan)> {
    check_future(at, Utc::now(), cfg.policy.timezone)?;
    let (new, plan) = campaign::prepare(store, cfg, req).await?;
    check_quiet_hours(store, cfg, &new.segment_name, new.ad, at).await?;
    let id = store
        .create_scheduled_campaign(&new, at, None)
        .await
        .context("storing the campaign")?;
    campaign::link_query(store, id, &plan).await?;
    Ok((id, plan))
}

/// `campaign schedule ID --now`: due at once. No quiet-hours refusal: like `campaign run`, a
/// run inside the window stops for it and the server resumes it when the window ends.
pub async fn set_now(store: &dyn Store, id: i64) -> anyhow::Result<DateTime<Utc>> {
    let now = Utc::now();
    store.set_scheduled_at(id, Some(now)).await?;
    Ok(now)
}

/// `campaign schedule ID --at T`; `None` unschedules.
pub async fn set(
    store: &dyn Store,
    cfg: &Config,
    id: i64,
    at: Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    let c = store.campaign(id).await?;
    if let Some(at) = at {
        check_future(at, Utc::now(), cfg.policy.timezone)?;
        check_quiet_hours(store, cfg, &c.segment_name, c.ad, at).await?;
    }
    store.set_scheduled_at(id, at).await?;
    Ok(())
}

/// The campaign a schedule's occurrence creates, named `name`: the schedule's segment,
/// template, gateway (if it names one) and ad flag.
fn request(
    name: String,
    segment: &str,
    template: &str,
    gateway: Option<&str>,
    ad: bool,
) -> CreateRequest {
    CreateRequest {
        name,
        segment: segment.to_string(),
        template: template.to_string(),
        gateways: gateway.map(str::to_string).into_iter().collect(),
        split: false,
        no_ad: !ad,
        subject: None,
    }
}

/// `schedule add`: checks the cron, the segment, the template and the gateway, then stores it.
pub async fn add(store: &dyn Store, cfg: &Config, s: &NewSchedule) -> anyhow::Result<i64> {
    anyhow::ensure!(
        !s.name.trim().is_empty() && !s.name.contains('/'),
        "schedule name {:?}: expected a non-empty name without '/'",
        s.name
    );
    parse_cron(&s.cron)?;
    let req = request(
        s.name.clone(),
        &s.segment_name,
        &s.template_name,
        s.gateway.as_deref(),
        s.ad,
    );
    // The same checks as an occurrence will run, now, so that mistakes show at once.
    campaign::prepare(store, cfg, &req).await?;
    Ok(store.add_schedule(s).await?)
}

/// The next `n` occurrences of schedule `s` after `after`.
pub fn next_runs(s: &Schedule, tz: Tz, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let Ok(cron) = parse_cron(&s.cron) else {
        return Vec::new();
    };
    cron.iter_after(after.with_timezone(&tz))
        .take(n)
        .map(|t| t.with_timezone(&Utc))
        .collect()
}

/// What to do with the occurrences of one schedule at `now`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Occurrences to create now, oldest first.
    pub run: Vec<DateTime<Utc>>,
    /// Occurrences missed by more than the grace, skipped.
    pub skipped: usize,
    /// The latest occurrence at or before `now`, to mark as handled.
    pub last: Option<DateTime<Utc>>,
}

/// The occurrences of `cron` after `from` up to `now`: those older than `grace` are skipped.
pub fn due(
    cron: &Cron,
    tz: Tz,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Due {
    let mut d = Due::default();
    for t in cron.iter_after(from.with_timezone(&tz)).take(MAX_MISSED) {
        let t = t.with_timezone(&Utc);
        if t > now {
            break;
        }
        if now - t > grace {
            d.skipped += 1;
        } else {
            d.run.push(t);
        }
        d.last = Some(t);
    }
    d
}

/// One pass over the recurring schedules: creates the campaign of every due occurrence
/// (SCHEDULED at its time, so the server starts it like any other) and marks them handled.
/// Returns the ids of campaigns created by this call.
pub async fn tick(store: &dyn Store, cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<Vec<i64>> {
    let grace = chrono::Duration::seconds(cfg.policy.misfire_grace_secs as i64);
    let mut created = Vec::new();
    for s in store.schedules().await? {
        if s.paused {
            continue;
        }
        let cron = match parse_cron(&s.cron) {
            Ok(c) => c,
            Err(e) => {
                warn!(schedule = %s.name, "{e:#}");
                continue;
            }
        };
        let from = s.last_occurrence_at.unwrap_or(s.created_at);
        let due = due(&cron, cfg.policy.timezone, from, now, grace);
        if due.skipped > 0 {
            warn!(
                schedule = %s.name,
                skipped = due.skipped,
                "occurrences missed by more than policy.misfire_grace_secs ({}s) were skipped",
                grace.num_seconds()
            );
        }
        for at in &due.run {
            if let Some(id) = occurrence(store, cfg, &s, *at).await {
                created.push(id);
            }
        }
        if let Some(last) = due.last {
            store.mark_occurrence(s.id, last).await?;
        }
    }
    Ok(created)
}

/// Creates the campaign of one occurrence; `None` when another server made it or it failed
/// (logged: a schedule whose segment or template went missing must not stop the others).
async fn occurrence(
    store: &dyn Store,
    cfg: &Config,
    s: &Schedule,
    at: DateTime<Utc>,
) -> Option<i64> {
    let local = at.with_timezone(&cfg.policy.timezone);
    let name = format!("{}-{}", s.name, local.format("%Y%m%d-%H%M%S"));
    let req = request(
        name,
        &s.segment_name,
        &s.template_name,
        s.gateway.as_deref(),
        s.ad,
    );
    let made = match campaign::prepare(store, cfg, &req).await {
        Ok((new, plan)) => match store
            .create_scheduled_campaign(&new, at, Some((s.id, at)))
            .await
        {
            Ok(id) => campaign::link_query(store, id, &plan).await.map(|()| id),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    match made {
        Ok(id) => {
            info!(schedule = %s.name, campaign = id, occurrence = %local, "occurrence created");
            Some(id)
        }
        Err(e)
            if matches!(
                e.downcast_ref::<StoreError>(),
                Some(StoreError::Conflict(_))
            ) =>
        {
            None
        }
        Err(e) => {
            warn!(schedule = %s.name, occurrence = %local, "occurrence not created: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_are_accepted_and_bad_ones_explained() {
        assert!(parse_cron("0 10 * * MON").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok());
        let e = parse_cron("0 10 * *").expect_err("4 fields").to_string();
        assert!(e.contains("expected 5 fields"), "{e}");
        let e = parse_cron("0 25 * * *").expect_err("hour 25").to_string();
        assert!(e.contains("--cron"), "{e}");
    }

    #[test]
    fn local_times_are_read_in_the_policy_time_zone() {
        let t = parse_at("2026-12-01 10:00", chrono_tz::Asia::Seoul).expect("parse");
        assert_eq!(t.to_rfc3339(), "2026-12-01T01:00:00+00:00");
        let t = parse_at("2026-12-01T10:00:00+00:00", chrono_tz::Asia::Seoul).expect("rfc");
        assert_eq!(t.to_rfc3339(), "2026-12-01T10:00:00+00:00");
        let e = parse_at("tomorrow", chrono_tz::Asia::Seoul).expect_err("bad");
        assert!(e.to_string().contains("YYYY-MM-DD HH:MM"), "{e}");
    }

    #[test]
    fn missed_occurrences_run_within_the_grace_and_are_skipped_beyond_it() {
        let cron = parse_cron("0 * * * *").expect("hourly");
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 30, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 5, 10, 0).unwrap();
        let d = due(
            &cron,
            chrono_tz::UTC,
            from,
            now,
            chrono::Duration::seconds(3600),
        );
        // 01:00 .. 05:00: 04:00 was 70 minutes ago (skipped), 05:00 ten minutes ago (run).
        assert_eq!(d.skipped, 4);
        assert_eq!(
            d.run,
            vec![Utc.with_ymd_and_hms(2026, 1, 1, 5, 0, 0).unwrap()]
        );
        assert_eq!(d.last, d.run.last().copied());
        let again = due(
            &cron,
            chrono_tz::UTC,
            now,
            now,
            chrono::Duration::seconds(3600),
        );
        assert_eq!(again, Due::default());
    }
}
