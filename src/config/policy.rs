//! `[policy]` and `[server]`: their raw keys, each value validated against its range (time
//! zone, quiet hours, chunk size, lease timeout, failure limit, frequency cap, misfire grace,
//! consent age; listen address, token variable, concurrent runs), and [`positive`], the bounded
//! whole number every section uses.

use serde::Deserialize;

use super::{
    ConfigError, DEFAULT_AD_CONSENT_MAX_AGE_DAYS, DEFAULT_LISTEN, DEFAULT_SYNC_RESULTS_DAYS,
    DEFAULT_SYNC_RESULTS_EVERY_SECS, DEFAULT_TOKEN_ENV, FrequencyCap, MAX_CAP_DAYS, Policy,
    ServerConfig,
};
use crate::domain::compliance::{DEFAULT_QUIET_HOURS, QuietHours};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    listen: Option<String>,
    token_env: Option<String>,
    max_concurrent_runs: Option<i64>,
    sync_results_every_secs: Option<i64>,
    sync_results_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    timezone: Option<String>,
    chunk_size: Option<i64>,
    quiet_hours: Option<String>,
    lease_timeout_secs: Option<i64>,
    max_consecutive_failures: Option<i64>,
    max_ads_per_recipient: Option<FrequencyCap>,
    misfire_grace_secs: Option<i64>,
    ad_consent_max_age_days: Option<i64>,
}

/// Validates `[policy]`.
pub(super) fn validate(
    p: RawPolicy,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Policy, ConfigError> {
    let timezone: chrono_tz::Tz = p
        .timezone
        .as_deref()
        .unwrap_or("Asia/Seoul")
        .parse()
        .map_err(|_| {
            err(
                "policy.timezone",
                "expected an IANA time zone name such as \"Asia/Seoul\"".into(),
            )
        })?;
    let quiet_hours: QuietHours = p
        .quiet_hours
        .as_deref()
        .unwrap_or(DEFAULT_QUIET_HOURS)
        .parse()
        .map_err(|e| err("policy.quiet_hours", format!("{e}")))?;
    if let Some(cap) = p.max_ads_per_recipient
        && (cap.count == 0 || cap.days == 0 || cap.days > MAX_CAP_DAYS)
    {
        return Err(err(
            "policy.max_ads_per_recipient",
            format!(
                "expected {{ count = N, days = D }} with N at least 1 and D from 1 to \
                 {MAX_CAP_DAYS}, got count = {}, days = {}",
                cap.count, cap.days
            ),
        ));
    }
    Ok(Policy {
        timezone,
        chunk_size: positive(p.chunk_size, 500, 10_000, "policy.chunk_size", err)? as usize,
        quiet_hours,
        lease_timeout_secs: positive(
            p.lease_timeout_secs,
            30,
            86_400,
            "policy.lease_timeout_secs",
            err,
        )? as u64,
        max_consecutive_failures: positive(
            p.max_consecutive_failures,
            50,
            1_000_000,
            "policy.max_consecutive_failures",
            err,
        )? as u32,
        max_ads_per_recipient: p.max_ads_per_recipient,
        misfire_grace_secs: positive(
            p.misfire_grace_secs,
            3600,
            30 * 86_400,
            "policy.misfire_grace_secs",
            err,
        )? as u64,
        ad_consent_max_age_days: consent_max_age(p.ad_consent_max_age_days, err)?,
    })
}

/// Validates `[server]`.
pub(super) fn server_config(
    raw: RawServer,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ServerConfig, ConfigError> {
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse().map_err(|_| {
        err(
            "server.listen",
            format!("{listen:?} is not an address; expected IP:PORT such as \"{DEFAULT_LISTEN}\""),
        )
    })?;
    let token_env = raw.token_env.unwrap_or_else(|| DEFAULT_TOKEN_ENV.into());
    if token_env.is_empty()
        || !token_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(err(
            "server.token_env",
            format!(
                "{token_env:?} is not an environment variable name; expected letters, digits and \
                 _ such as \"{DEFAULT_TOKEN_ENV}\" (the name of the variable, never the token)"
            ),
        ));
    }
    let max_concurrent_runs = positive(
        raw.max_concurrent_runs,
        2,
        1000,
        "server.max_concurrent_runs",
        err,
    )? as usize;
    let every = raw
        .sync_results_every_secs
        .unwrap_or(DEFAULT_SYNC_RESULTS_EVERY_SECS as i64);
    if !(0..=86_400).contains(&every) {
        return Err(err(
            "server.sync_results_every_secs",
            format!("expected seconds from 0 (off) to 86400, got {every}"),
        ));
    }
    let days = positive(
        raw.sync_results_days,
        i64::from(DEFAULT_SYNC_RESULTS_DAYS),
        30,
        "server.sync_results_days",
        err,
    )?;
    Ok(ServerConfig {
        listen,
        token_env,
        max_concurrent_runs,
        sync_results_every_secs: every as u64,
        sync_results_days: days as u32,
    })
}

/// `policy.ad_consent_max_age_days`: 730 by default, 0 turns the check off.
fn consent_max_age(
    v: Option<i64>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<u32>, ConfigError> {
    match v {
        None => Ok(Some(DEFAULT_AD_CONSENT_MAX_AGE_DAYS)),
        Some(0) => Ok(None),
        Some(d) if (1..=i64::from(MAX_CAP_DAYS)).contains(&d) => Ok(Some(d as u32)),
        Some(d) => Err(err(
            "policy.ad_consent_max_age_days",
            format!(
                "expected days from 1 to {MAX_CAP_DAYS} (730 is the legal two years), or 0 to turn the check off; got {d}"
            ),
        )),
    }
}

/// `v` (or `default`) when it is from 1 to `max`; else an error naming `key`.
pub(super) fn positive(
    v: Option<i64>,
    default: i64,
    max: i64,
    key: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<i64, ConfigError> {
    let v = v.unwrap_or(default);
    if v < 1 || v > max {
        return Err(err(
            key,
            format!("expected a whole number from 1 to {max}, got {v}"),
        ));
    }
    Ok(v)
}
