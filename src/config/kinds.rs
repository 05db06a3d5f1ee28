//! The `[[gateways]]` entries: each kind's required keys (`http-json`: `url`; `kannel`: `url`,
//! `username`, `password_env`; `nhn-cloud`: `app_key_env`, `secret_key_env`, `url` defaulting
//! to the public base), the shared limits and the circuit breaker, and reading the secrets the
//! entry names from the environment when a gateway is about to be used.

use serde::Deserialize;

use super::{ConfigError, DEFAULT_MAX_RETRY_AFTER_SECS, GatewayConfig, positive};

/// NHN Cloud SMS's public API base.
pub const NHN_DEFAULT_URL: &str = "https://sms.api.nhncloudservice.com";

/// NHN Cloud takes at most this many recipients in one request (-2016 above it).
const NHN_MAX_RECIPIENTS: i64 = 1000;

/// The gateway kinds munja speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    HttpJson,
    Kannel,
    NhnCloud,
}

impl GatewayKind {
    pub const ALL: [GatewayKind; 3] = [
        GatewayKind::HttpJson,
        GatewayKind::Kannel,
        GatewayKind::NhnCloud,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayKind::HttpJson => "http-json",
            GatewayKind::Kannel => "kannel",
            GatewayKind::NhnCloud => "nhn-cloud",
        }
    }
    pub fn parse(s: &str) -> Option<GatewayKind> {
        GatewayKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// One `[[gateways]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    name: String,
    kind: String,
    url: Option<String>,
    api_key_env: Option<String>,
    rate_per_sec: i64,
    burst: Option<i64>,
    concurrency: Option<i64>,
    timeout_ms: Option<i64>,
    max_attempts: Option<i64>,
    batch_size: Option<i64>,
    max_retry_after_secs: Option<i64>,
    username: Option<String>,
    password_env: Option<String>,
    app_key_env: Option<String>,
    secret_key_env: Option<String>,
    dlr_url: Option<String>,
    method: Option<String>,
    weight: Option<i64>,
    breaker_failures: Option<i64>,
    breaker_cooldown_secs: Option<i64>,
    lookup_delay_ms: Option<i64>,
    dlr_token_env: Option<String>,
    webhook_signature_env: Option<String>,
}

/// Validates every `[[gateways]]` entry; names must be unique and not empty.
pub(super) fn parse_all(raw: Vec<RawGateway>, err: Err) -> Result<Vec<GatewayConfig>, ConfigError> {
    let mut gateways = Vec::new();
    for (i, g) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("gateways[{i}].{k}");
        if g.name.trim().is_empty() {
            return Err(err(&key("name"), "expected a non-empty name".into()));
        }
        if gateways.iter().any(|x: &GatewayConfig| x.name == g.name) {
            return Err(err(
                &key("name"),
                format!(
                    "gateway name {:?} is used twice; names must be unique",
                    g.name
                ),
            ));
        }
        gateways.push(parse(g, &key, err)?);
    }
    Ok(gateways)
}

/// Validates entry `g` (`key` names its keys, `gateways[i].KEY`).
pub(super) fn parse(
    g: RawGateway,
    key: &dyn Fn(&str) -> String,
    err: Err,
) -> Result<GatewayConfig, ConfigError> {
    let Some(kind) = GatewayKind::parse(&g.kind) else {
        return Err(err(
            &key("kind"),
            format!(
                "unknown kind {:?}; expected \"http-json\", \"kannel\" or \"nhn-cloud\"",
                g.kind
            ),
        ));
    };
    if g.name.contains(',') || g.name.trim() != g.name {
        return Err(err(
            &key("name"),
            format!(
                "{:?}: a gateway name cannot hold a comma or surrounding spaces",
                g.name
            ),
        ));
    }
    let url = gateway_url(&g, kind, key, err)?;
    require_kind_keys(&g, kind, key, err)?;
    let (rate, burst, batch_size) = rate_burst_batch(&g, kind, key, err)?;
    Ok(GatewayConfig {
        name: g.name,
        kind: g.kind,
        url: url.trim_end_matches('/').to_string(),
        api_key_env: g.api_key_env,
        api_key: None,
        rate_per_sec: rate as u32,
        burst: burst as u32,
        concurrency: positive(g.concurrency, 4, 10_000, &key("concurrency"), err)? as usize,
        timeout_ms: positive(g.timeout_ms, 5_000, 600_000, &key("timeout_ms"), err)? as u64,
        max_attempts: positive(g.max_attempts, 5, 100, &key("max_attempts"), err)? as u32,
        batch_size: batch_size as usize,
        max_retry_after_secs: positive(
            g.max_retry_after_secs,
            DEFAULT_MAX_RETRY_AFTER_SECS as i64,
            86_400,
            &key("max_retry_after_secs"),
            err,
        )? as u64,
        username: g.username,
        password_env: g.password_env,
        password: None,
        app_key_env: g.app_key_env,
        app_key: None,
        secret_key_env: g.secret_key_env,
        secret_key: None,
        method: g.method.unwrap_or_else(|| "post".into()),
        dlr_url: g.dlr_url,
        dlr_token_env: g.dlr_token_env,
        dlr_token: None,
        webhook_signature_env: g.webhook_signature_env,
        weight: positive(g.weight, 1, 1_000_000, &key("weight"), err)? as u32,
        breaker_failures: positive(
            g.breaker_failures,
            20,
            1_000_000,
            &key("breaker_failures"),
            err,
        )? as u32,
        breaker_cooldown_secs: positive(
            g.breaker_cooldown_secs,
            30,
            86_400,
            &key("breaker_cooldown_secs"),
            err,
        )? as u64,
        lookup_delay_ms: lookup_delay(g.lookup_delay_ms, kind, &key("lookup_delay_ms"), err)?,
    })
}

/// NHN Cloud lists a message a while after it took it: see [`GatewayConfig::lookup_delay_ms`].
pub const NHN_DEFAULT_LOOKUP_DELAY_MS: u64 = 5_000;

/// `lookup_delay_ms`: 0 to 600,000; by default 5 s on `nhn-cloud`, 0 on `http-json` (munja's
/// protocol lists a message as soon as it answers). Kannel cannot be asked: the key is refused
/// there by [`require_kind_keys`].
fn lookup_delay(
    v: Option<i64>,
    kind: GatewayKind,
    key: &str,
    err: Err,
) -> Result<u64, ConfigError> {
    let default = match kind {
        GatewayKind::NhnCloud => NHN_DEFAULT_LOOKUP_DELAY_MS,
        GatewayKind::HttpJson | GatewayKind::Kannel => 0,
    };
    match v {
        None => Ok(default),
        Some(ms @ 0..=600_000) => Ok(ms as u64),
        Some(ms) => Err(err(
            key,
            format!("expected a whole number of milliseconds from 0 to 600000, got {ms}"),
        )),
    }
}

/// The entry's base URL (`nhn-cloud` defaults to the public one): http:// or https://.
fn gateway_url(
    g: &RawGateway,
    kind: GatewayKind,
    key: &dyn Fn(&str) -> String,
    err: Err,
) -> Result<String, ConfigError> {
    let url = match (&g.url, kind) {
        (Some(u), _) => u.clone(),
        (None, GatewayKind::NhnCloud) => NHN_DEFAULT_URL.to_string(),
        (None, _) => {
            return Err(err(
                &key("url"),
                format!(
                    "missing; expected a text in quotes: kind {:?} needs the gateway's base URL \
                     (url = \"http://host:port\")",
                    g.kind
                ),
            ));
        }
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(err(
            &key("url"),
            format!("expected an http:// or https:// URL, got {url:?}"),
        ));
    }
    Ok(url)
}

/// `rate_per_sec`, `burst` and `batch_size` (its default and maximum depend on the kind);
/// a batch must fit in one burst.
fn rate_burst_batch(
    g: &RawGateway,
    kind: GatewayKind,
    key: &dyn Fn(&str) -> String,
    err: Err,
) -> Result<(i64, i64, i64), ConfigError> {
    let rate = positive(
        Some(g.rate_per_sec),
        1,
        1_000_000,
        &key("rate_per_sec"),
        err,
    )?;
    let burst = positive(g.burst, rate.min(100), 1_000_000, &key("burst"), err)?;
    let (default_batch, max_batch) = match kind {
        GatewayKind::HttpJson => (1, 10_000),
        GatewayKind::Kannel => (1, 1_000),
        GatewayKind::NhnCloud => (NHN_MAX_RECIPIENTS.min(burst), NHN_MAX_RECIPIENTS),
    };
    let batch_size = positive(
        g.batch_size,
        default_batch,
        max_batch,
        &key("batch_size"),
        err,
    )?;
    if batch_size > burst {
        return Err(err(
            &key("batch_size"),
            format!(
                "batch_size {batch_size} is larger than burst {burst}; a batch must fit in one burst"
            ),
        ));
    }
    Ok((rate, burst, batch_size))
}

/// The keys a kind needs, and the keys of other kinds it refuses (a typo'd kind would
/// otherwise silently ignore them).
fn require_kind_keys(
    g: &RawGateway,
    kind: GatewayKind,
    key: &dyn Fn(&str) -> String,
    err: Err,
) -> Result<(), ConfigError> {
    let present = [
        ("api_key_env", g.api_key_env.is_some()),
        ("username", g.username.is_some()),
        ("password_env", g.password_env.is_some()),
        ("app_key_env", g.app_key_env.is_some()),
        ("secret_key_env", g.secret_key_env.is_some()),
        ("dlr_url", g.dlr_url.is_some()),
        ("method", g.method.is_some()),
        ("dlr_token_env", g.dlr_token_env.is_some()),
        ("webhook_signature_env", g.webhook_signature_env.is_some()),
        ("lookup_delay_ms", g.lookup_delay_ms.is_some()),
    ];
    let (required, allowed): (&[&str], &[&str]) = match kind {
        GatewayKind::HttpJson => (&[], &["api_key_env", "dlr_token_env", "lookup_delay_ms"]),
        GatewayKind::Kannel => (
            &["username", "password_env"],
            &[
                "username",
                "password_env",
                "dlr_url",
                "method",
                "dlr_token_env",
            ],
        ),
        GatewayKind::NhnCloud => (
            &["app_key_env", "secret_key_env"],
            &[
                "app_key_env",
                "secret_key_env",
                "webhook_signature_env",
                "lookup_delay_ms",
            ],
        ),
    };
    for (k, is_set) in present {
        if is_set && !allowed.contains(&k) {
            return Err(err(
                &key(k),
                format!(
                    "not a key of kind {:?} (it takes {allowed:?}); remove it",
                    kind.as_str()
                ),
            ));
        }
        if !is_set && required.contains(&k) {
            return Err(err(
                &key(k),
                format!("missing; kind {:?} needs {required:?}", kind.as_str()),
            ));
        }
    }
    if let Some(m) = &g.method
        && m != "get"
        && m != "post"
    {
        return Err(err(
            &key("method"),
            format!("expected \"post\" or \"get\", got {m:?}"),
        ));
    }
    if let Some(u) = &g.dlr_url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        return Err(err(
            &key("dlr_url"),
            format!("expected an http:// or https:// URL Kannel can call, got {u:?}"),
        ));
    }
    Ok(())
}

/// Reads every secret gateway `g` (entry `i` of `file`) names from the environment.
pub(super) fn read_secrets(g: &mut GatewayConfig, i: usize, file: &str) -> Result<(), ConfigError> {
    let read = |env_key: &str, var: &Option<String>| -> Result<Option<String>, ConfigError> {
        let Some(var) = var else { return Ok(None) };
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(ConfigError {
                file: file.to_string(),
                key: format!("gateways[{i}].{env_key}"),
                message: format!(
                    "names the environment variable {var}, which is not set; \
                     export {var}=<the secret of gateway {}> or remove {env_key}",
                    g.name
                ),
            }),
        }
    };
    let api_key = read("api_key_env", &g.api_key_env)?;
    let password = read("password_env", &g.password_env)?;
    let app_key = read("app_key_env", &g.app_key_env)?;
    let secret_key = read("secret_key_env", &g.secret_key_env)?;
    g.api_key = api_key;
    g.password = password;
    g.app_key = app_key;
    g.secret_key = secret_key;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(t: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_toml_str(t, None)
    }

    #[test]
    fn the_commented_examples_parse_once_uncommented() {
        let text = include_str!("../../config/munja.example.toml");
        let start = text.find("# A real Kannel").expect("kannel example");
        let uncommented: String = text[start..]
            .lines()
            .filter(|l| l.starts_with("# ") && !l.starts_with("# A ") && !l.starts_with("# NHN"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let c = parse(&uncommented).expect("examples parse");
        assert_eq!(c.gateways.len(), 2);
        let nhn = &c.gateways[1];
        assert_eq!(nhn.url, super::NHN_DEFAULT_URL);
        assert_eq!(
            (
                nhn.batch_size,
                nhn.breaker_failures,
                nhn.breaker_cooldown_secs
            ),
            (1000, 20, 30)
        );
        assert_eq!(
            c.gateways[0].dlr_url.as_deref(),
            Some("http://munja-host:8070/v1/dlr/kannel")
        );
    }

    #[test]
    fn each_kind_names_what_it_misses_or_does_not_take() {
        let e = parse(
            "[[gateways]]\nname='k'\nkind='kannel'\nurl='http://x'\nusername='u'\nrate_per_sec=5\n",
        )
        .expect_err("no password_env");
        assert_eq!(e.key, "gateways[0].password_env", "{e}");
        let e = parse("[[gateways]]\nname='n'\nkind='nhn-cloud'\napp_key_env='A'\nsecret_key_env='S'\napi_key_env='K'\nrate_per_sec=5\n")
            .expect_err("api_key_env is http-json's");
        assert_eq!(e.key, "gateways[0].api_key_env", "{e}");
        let e =
            parse("[[gateways]]\nname='a,b'\nkind='http-json'\nurl='http://x'\nrate_per_sec=5\n")
                .expect_err("comma");
        assert_eq!(e.key, "gateways[0].name", "{e}");
        let e = parse("[[gateways]]\nname='n'\nkind='nhn'\nrate_per_sec=5\n").expect_err("kind");
        assert!(e.message.contains("nhn-cloud"), "{e}");
        let e = parse("[[gateways]]\nname='n'\nkind='nhn-cloud'\napp_key_env='A'\nsecret_key_env='S'\nrate_per_sec=5000\nburst=2000\nbatch_size=1001\n")
            .expect_err("over 1000");
        assert_eq!(e.key, "gateways[0].batch_size", "{e}");
    }

    #[test]
    fn secrets_are_read_from_the_environment_and_never_shown() {
        let c = parse("[[gateways]]\nname='n'\nkind='nhn-cloud'\napp_key_env='PATH'\nsecret_key_env='HOME'\nrate_per_sec=5\n")
            .expect("config");
        let g = c.gateway(Some("n")).expect("secrets set");
        assert!(g.app_key.is_some() && g.secret_key.is_some());
        let shown = format!("{g:?}");
        assert!(
            !shown.contains(g.app_key.as_deref().unwrap_or("x")),
            "{shown}"
        );
        let c = parse("[[gateways]]\nname='k'\nkind='kannel'\nurl='http://x'\nusername='u'\npassword_env='MUNJA_SURELY_UNSET_PW'\nrate_per_sec=5\n")
            .expect("config");
        let e = c.gateway(None).expect_err("unset");
        assert_eq!(e.key, "gateways[0].password_env", "{e}");
    }
}
