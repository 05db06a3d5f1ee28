//! `[sources.NAME]`: the company databases SQL segments read. The URL (with its password)
//! comes only from the environment variable the config names, and is read only when the source
//! is used, so a machine without it can still run every other command.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Default of `statement_timeout_secs`: five minutes.
pub const DEFAULT_STATEMENT_TIMEOUT_SECS: u64 = 300;
/// Longest statement timeout accepted (a day).
const MAX_STATEMENT_TIMEOUT_SECS: i64 = 86_400;

/// One `[sources.NAME]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    url_env: Option<String>,
    statement_timeout_secs: Option<i64>,
}

/// A validated source: where its URL comes from and how long a query may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub name: String,
    /// The environment variable holding the URL (`postgres://`, `mysql://`, `sqlite://`).
    pub url_env: String,
    pub statement_timeout_secs: u64,
}

/// Validates every `[sources.NAME]`.
pub(super) fn validate(
    raw: BTreeMap<String, RawSource>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<BTreeMap<String, SourceConfig>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, r) in raw {
        let key = |k: &str| format!("sources.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(err(
                &format!("sources.{name}"),
                "a source name uses letters, digits, '-' and '_'".into(),
            ));
        }
        let url_env = match r.url_env {
            Some(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => {
                return Err(err(
                    &key("url_env"),
                    "expected the name of the environment variable that holds the database \
                     URL, e.g. url_env = \"CRM_DATABASE_URL\" (the URL itself, with its \
                     password, never goes in this file)"
                        .into(),
                ));
            }
        };
        if url_env.contains("://") {
            return Err(err(
                &key("url_env"),
                "this looks like a URL, not the name of an environment variable: put the URL \
                 in the environment (export CRM_DATABASE_URL=…) and write url_env = \
                 \"CRM_DATABASE_URL\""
                    .into(),
            ));
        }
        let timeout = r
            .statement_timeout_secs
            .unwrap_or(DEFAULT_STATEMENT_TIMEOUT_SECS as i64);
        if !(1..=MAX_STATEMENT_TIMEOUT_SECS).contains(&timeout) {
            return Err(err(
                &key("statement_timeout_secs"),
                format!("expected seconds from 1 to {MAX_STATEMENT_TIMEOUT_SECS}, got {timeout}"),
            ));
        }
        out.insert(
            name.clone(),
            SourceConfig {
                name,
                url_env,
                statement_timeout_secs: timeout as u64,
            },
        );
    }
    Ok(out)
}

impl Config {
    /// Source `name` with its URL read from the environment now.
    pub fn source(&self, name: &str) -> Result<SourceSpec, ConfigError> {
        let Some(s) = self.sources.get(name) else {
            let known: Vec<&str> = self.sources.keys().map(String::as_str).collect();
            return Err(ConfigError {
                file: self.file_label(),
                key: format!("sources.{name}"),
                message: format!(
                    "no source named {name:?}; add [sources.{name}] with url_env = \"…\" to \
                     the config (configured sources: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        };
        let url = match std::env::var(&s.url_env) {
            Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
            _ => {
                return Err(ConfigError {
                    file: self.file_label(),
                    key: format!("sources.{name}.url_env"),
                    message: format!(
                        "environment variable {} is not set: export it with the database URL \
                         (postgres://USER:PASSWORD@HOST/DB, mysql://… or sqlite://PATH)",
                        s.url_env
                    ),
                });
            }
        };
        Ok(SourceSpec::new(
            name,
            url,
            Duration::from_secs(s.statement_timeout_secs),
            self.policy.timezone,
        ))
    }
}

/// A configured source, with its URL (secret: never shown, see [`SourceSpec::redacted_url`]; the store reads it, see
/// the store's `source` module).
#[derive(Clone)]
pub struct SourceSpec {
    pub name: String,
    /// The URL with its password: only for connecting, never shown.
    pub(crate) url: String,
    pub statement_timeout: Duration,
    /// The time zone `:as_of` is written in for MySQL `DATETIME` comparisons.
    pub timezone: chrono_tz::Tz,
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("url", &self.redacted_url())
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl SourceSpec {
    pub fn new(
        name: &str,
        url: String,
        statement_timeout: Duration,
        timezone: chrono_tz::Tz,
    ) -> SourceSpec {
        SourceSpec {
            name: name.to_string(),
            url,
            statement_timeout,
            timezone,
        }
    }

    /// The URL fit for messages: its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        super::redact(&self.url)
    }
}
