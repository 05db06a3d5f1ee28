//! Configuration: finding `munja.toml`, parsing it strictly, and validating every value.
//!
//! Lookup order: `--config PATH`, then `$MUNJA_CONFIG`, then `./munja.toml`. When none exists the
//! built-in defaults apply (a SQLite file `munja.db` in the current directory and no gateways),
//! which is enough for `init` and imports; commands that send say what is missing.
//!
//! Every error names the file, the key and the expected form, so the user can fix it in one go.

mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::domain::compliance::QuietHours;
pub use sources::{DEFAULT_STATEMENT_TIMEOUT_SECS, SourceConfig, SourceSpec};

mod errors;
use errors::{describe_parse_error, describe_toml_error};
mod kinds;
pub use kinds::{GatewayKind, NHN_DEFAULT_URL};
mod policy;
use policy::positive;

/// Environment variable overriding `database_url`.
pub const DATABASE_URL_ENV: &str = "MUNJA_DATABASE_URL";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "MUNJA_CONFIG";
/// Default of `[[gateways]] max_retry_after_secs`: the longest `Retry-After` pause honoured.
pub const DEFAULT_MAX_RETRY_AFTER_SECS: u64 = 300;
/// The gateway kinds munja speaks (`[[gateways]] kind`).
pub const GATEWAY_KINDS: [&str; 3] = ["http-json", "kannel", "nhn-cloud"];

/// The value of the environment variable a `*_env` key names, or what to do when it is unset.
pub fn read_secret_env(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!(
            "names the environment variable {var}, which is not set; export {var}=<the secret> \
             or remove the key"
        )),
    }
}
/// Longest window of `max_ads_per_recipient` (ten years): dates before it stay computable.
const MAX_CAP_DAYS: u32 = 3650;

/// A configuration error: which file, which key, what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (`None`: defaults, no file found).
    pub source: Option<PathBuf>,
    pub database_url: String,
    pub templates_dir: PathBuf,
    pub sender: Sender,
    pub policy: Policy,
    pub pricing: Pricing,
    pub gateways: Vec<GatewayConfig>,
    /// `[sources.NAME]`: company databases that SQL segments read.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[server]`: what `munja serve` listens on and how it is guarded.
    pub server: ServerConfig,
}

/// Default of `[server] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8070";
/// Default of `[server] token_env`.
pub const DEFAULT_TOKEN_ENV: &str = "MUNJA_TOKEN";
/// Default of `[server] sync_results_every_secs`.
pub const DEFAULT_SYNC_RESULTS_EVERY_SECS: u64 = 300;
/// Default of `[server] sync_results_days`: NHN gives up on a result after 25 hours (SMS) or
/// 80 hours (LMS).
pub const DEFAULT_SYNC_RESULTS_DAYS: u32 = 4;

/// `[server]`: the listener of `munja serve` and its admin token.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: std::net::SocketAddr,
    /// The name of the environment variable holding the admin token (never the token itself).
    pub token_env: String,
    /// Campaigns the server runs at once; due campaigns beyond it wait their turn.
    pub max_concurrent_runs: usize,
    /// How often the server syncs NHN Cloud delivery results (`campaign sync-results`) of
    /// recent campaigns, in seconds; 0 turns it off.
    pub sync_results_every_secs: u64,
    /// Campaigns whose last run ended more than this many days ago are no longer synced.
    pub sync_results_days: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    /// The registered caller number (발신번호).
    pub number: Option<String>,
    /// The sender name shown after `(광고)`.
    pub brand: Option<String>,
    /// The free 080 opt-out number printed in the footer.
    pub optout_number: Option<String>,
}

/// How many ads one recipient may get in a window, across campaigns.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub count: u32,
    pub days: u32,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub timezone: chrono_tz::Tz,
    pub chunk_size: usize,
    pub quiet_hours: QuietHours,
    pub lease_timeout_secs: u64,
    pub max_consecutive_failures: u32,
    pub max_ads_per_recipient: Option<FrequencyCap>,
    /// How late `munja serve` still runs an occurrence of a recurring schedule it missed
    /// (it was down); older ones are skipped with a log line.
    pub misfire_grace_secs: u64,
    /// Ads go only to recipients whose `ad_consent_at` is at most this many days old (the law
    /// asks to re-confirm ad consent every two years: 730); `None` when set to 0 (off).
    pub ad_consent_max_age_days: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Price of one SMS, in KRW.
    pub sms: Option<f64>,
    /// Price of one LMS, in KRW.
    pub lms: Option<f64>,
}

#[derive(Clone)]
pub struct GatewayConfig {
    pub name: String,
    pub kind: String,
    pub url: String,
    pub api_key_env: Option<String>,
    /// The key read from `api_key_env` by [`Config::gateway`]; never printed.
    pub api_key: Option<String>,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub concurrency: usize,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    /// Messages per request; 1 uses the single-message endpoint, more uses `/v1/messages/batch`.
    pub batch_size: usize,
    /// Longest pause a `Retry-After` answer may impose; longer requests are cut to this.
    pub max_retry_after_secs: u64,
    /// Kannel: the `sendsms-user` name.
    pub username: Option<String>,
    /// Kannel: env var holding the `sendsms-user` password.
    pub password_env: Option<String>,
    /// Read from `password_env` by [`Config::gateway`]; never printed.
    pub password: Option<String>,
    /// NHN Cloud: env var holding the app key (it is part of every URL).
    pub app_key_env: Option<String>,
    /// Read from `app_key_env` by [`Config::gateway`]; never printed.
    pub app_key: Option<String>,
    /// NHN Cloud: env var holding the secret key (`X-Secret-Key`).
    pub secret_key_env: Option<String>,
    /// Read from `secret_key_env` by [`Config::gateway`]; never printed.
    pub secret_key: Option<String>,
    /// Kannel: where Kannel calls back with delivery reports (the message ref is appended).
    pub dlr_url: Option<String>,
    /// Kannel: `post` (default: text in the body, credentials in headers) or `get` (all in the
    /// query string).
    pub method: String,
    /// Share of traffic under `campaign create --split`.
    pub weight: u32,
    /// Transient failures in a row that open this gateway's circuit breaker.
    pub breaker_failures: u32,
    /// Seconds an open breaker waits before one probe request may close it.
    pub breaker_cooldown_secs: u64,
    /// How long after a request the gateway may still not list a message it took: a lookup
    /// answering "not found" is believed only when made at least this long after the message's
    /// last request, and only after it was asked again with backoff (a half, one and two
    /// delays later); until then the message stays in doubt and is never resent.
    ///
    /// NHN Cloud (default 5,000 ms) queues what its send API takes and lists it in the search
    /// (`GET /sender/sms`, `/sender/mms`) only once processed; its documentation gives no
    /// figure for that lag, only that it exists (TOAST-DOCS/SMS `api-guide.md`: the send
    /// answer's `body.data.statusCode` is "1: Requesting, 2: Request completed"; `error-code.md`
    /// -2021 "System error (failed in saving queue)"; `sending-policy.md`: "there may be a delay
    /// in updating message receiving results"). `http-json` (default 0): munja's protocol lists
    /// a message as soon as it answers for it. `kannel` cannot be asked at all (refused there).
    pub lookup_delay_ms: u64,
    /// Env var holding the token a gateway must present on `/v1/dlr/{name}` (http-json, kannel).
    pub dlr_token_env: Option<String>,
    /// The token read from `dlr_token_env` by [`Config::gateway`]; never printed.
    pub dlr_token: Option<String>,
    /// NHN Cloud: env var holding the webhook signature set in the console
    /// (`X-Toast-Webhook-Signature`).
    pub webhook_signature_env: Option<String>,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("rate_per_sec", &self.rate_per_sec)
            .field("burst", &self.burst)
            .field("concurrency", &self.concurrency)
            .field("max_retry_after_secs", &self.max_retry_after_secs)
            .field("kind", &self.kind)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("app_key", &self.app_key.as_ref().map(|_| "<redacted>"))
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("dlr_url", &self.dlr_url)
            .field("weight", &self.weight)
            .field("lookup_delay_ms", &self.lookup_delay_ms)
            .field("dlr_token_env", &self.dlr_token_env)
            .field("dlr_token", &self.dlr_token.as_ref().map(|_| "<redacted>"))
            .field("webhook_signature_env", &self.webhook_signature_env)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database_url: Option<String>,
    templates_dir: Option<PathBuf>,
    #[serde(default)]
    sender: Sender,
    #[serde(default)]
    policy: policy::RawPolicy,
    #[serde(default)]
    pricing: Pricing,
    #[serde(default)]
    gateways: Vec<kinds::RawGateway>,
    #[serde(default)]
    server: policy::RawServer,
    #[serde(default)]
    sources: BTreeMap<String, sources::RawSource>,
}

impl Config {
    /// Finds and loads the configuration (`--config`, `$MUNJA_CONFIG`, `./munja.toml`, defaults).
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match std::env::var_os(CONFIG_ENV) {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    let local = PathBuf::from("munja.toml");
                    local.exists().then_some(local)
                }
            },
        };
        match path {
            Some(p) => Config::load(&p),
            None => Config::from_toml_str("", None),
        }
    }

    /// Loads one file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "(file)".into(),
            message: format!(
                "cannot read the config file: {e}; pass an existing file with --config or \
                 copy config/munja.example.toml to munja.toml"
            ),
        })?;
        Config::from_toml_str(&text, Some(path))
    }

    /// Parses and validates config text; `path` locates the file for messages and relative paths.
    pub fn from_toml_str(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(built-in defaults)".into());
        let err = |key: &str, message: String| ConfigError {
            file: file.clone(),
            key: key.to_string(),
            message,
        };
        let raw = parse_raw(text).map_err(|(key, message)| {
            err(
                &key,
                format!("{message}; see config/munja.example.toml for every key"),
            )
        })?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();

        let database_url = match std::env::var(DATABASE_URL_ENV) {
            Ok(v) if !v.is_empty() => v,
            _ => raw
                .database_url
                .unwrap_or_else(|| "sqlite://munja.db".into()),
        };
        let database_url =
            resolve_sqlite_url(&database_url, &base).map_err(|m| err("database_url", m))?;
        let templates_dir = base.join(raw.templates_dir.unwrap_or_else(|| "templates".into()));

        let policy = policy::validate(raw.policy, &err)?;
        let server = policy::server_config(raw.server, &err)?;
        check_pricing(&raw.pricing, &err)?;
        let gateways = kinds::parse_all(raw.gateways, &err)?;
        let sources = sources::validate(raw.sources, &err)?;
        Ok(Config {
            sources,
            source: path.map(Path::to_path_buf),
            database_url,
            templates_dir,
            sender: raw.sender,
            policy,
            pricing: raw.pricing,
            gateways,
            server,
        })
    }

    /// The gateway named `name` (the first one when `None`), with its API key read from the
    /// environment. The key is read only here, when a gateway is about to be used, so that
    /// `status` or `audit` work on a machine without it.
    pub fn gateway(&self, name: Option<&str>) -> Result<GatewayConfig, ConfigError> {
        let file = self.file_label();
        let (i, g) = match name {
            None => self
                .gateways
                .iter()
                .enumerate()
                .next()
                .ok_or_else(|| ConfigError {
                    file: file.clone(),
                    key: "gateways".into(),
                    message: "no [[gateways]] entry; add one (name, kind = \"http-json\", \
                          \"kannel\" or \"nhn-cloud\", url, rate_per_sec) as in \
                          config/munja.example.toml"
                        .into(),
                })?,
            Some(n) => self
                .gateways
                .iter()
                .enumerate()
                .find(|(_, g)| g.name == n)
                .ok_or_else(|| {
                    let names: Vec<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
                    ConfigError {
                        file: file.clone(),
                        key: "gateways".into(),
                        message: format!("no gateway named {n:?}; configured: {names:?}"),
                    }
                })?,
        };
        let mut g = g.clone();
        kinds::read_secrets(&mut g, i, &file)?;
        if let Some(var) = &g.dlr_token_env {
            let token = read_secret_env(var).and_then(|t| {
                // Kannel copies the token into its dlr-url, where `%` starts its own escapes.
                let safe = t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
                if safe {
                    Ok(t)
                } else {
                    Err(format!(
                        "names {var}, whose token has characters a URL must escape; use only \
                         letters, digits and - . _ ~ (e.g. `openssl rand -hex 24`)"
                    ))
                }
            });
            g.dlr_token = Some(token.map_err(|message| ConfigError {
                file: file.clone(),
                key: format!("gateways[{i}].dlr_token_env"),
                message,
            })?);
        }
        Ok(g)
    }

    /// A required `[sender]` key, or an error saying how to set it.
    pub fn sender_value(&self, key: &str) -> Result<&str, ConfigError> {
        let v = match key {
            "number" => self.sender.number.as_deref(),
            "brand" => self.sender.brand.as_deref(),
            _ => self.sender.optout_number.as_deref(),
        };
        v.filter(|s| !s.trim().is_empty()).ok_or_else(|| ConfigError {
            file: self.file_label(),
            key: format!("sender.{key}"),
            message: match key {
                "number" => "missing: set the registered caller number, e.g. number = \"1588-1234\"",
                "brand" => "missing: an ad must name its sender after (광고); set brand = \"회사명\"",
                _ => "missing: an ad must end with a free 080 opt-out number; set optout_number = \"080-000-0000\"",
            }
            .into(),
        })
    }

    pub fn file_label(&self) -> String {
        self.source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(no config file; built-in defaults)".into())
    }
}

/// Default of `policy.ad_consent_max_age_days`: two years, as the law asks.
pub const DEFAULT_AD_CONSENT_MAX_AGE_DAYS: u32 = 730;

/// Parses the TOML text strictly into its raw form; `Err((dotted key, message))`.
fn parse_raw(text: &str) -> Result<RawConfig, (String, String)> {
    toml::Deserializer::parse(text)
        .map_err(|e| describe_toml_error(text, String::new(), &e))
        .and_then(|de| {
            serde_path_to_error::deserialize(de).map_err(|e| describe_parse_error(text, &e))
        })
}

/// Checks `[pricing]`: prices in KRW, zero or more.
fn check_pricing(
    pricing: &Pricing,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    for (key, price) in [("pricing.sms", pricing.sms), ("pricing.lms", pricing.lms)] {
        if price.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
            return Err(err(key, "expected a price in KRW, zero or more".into()));
        }
    }
    Ok(())
}

/// Makes a relative `sqlite://` path relative to the config file's directory.
fn resolve_sqlite_url(url: &str, base: &Path) -> Result<String, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(url.to_string());
    }
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Err(format!(
            "expected sqlite://PATH (or postgres://...), got {url:?}"
        ));
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" {
        return Err("expected a file path after sqlite://, e.g. sqlite://munja.db".into());
    }
    let p = Path::new(path);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    Ok(match query {
        Some(q) => format!("sqlite://{}?{q}", full.display()),
        None => format!("sqlite://{}", full.display()),
    })
}

#[cfg(test)]
mod tests;

/// A database URL fit for messages and logs: the password of a `scheme://user:password@host`
/// URL is replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}
