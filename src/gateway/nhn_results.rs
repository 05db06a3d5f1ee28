//! NHN Cloud SMS v3.0, read-only: the delivery result search (`GET /sender/sms`,
//! `/sender/mms`) behind `munja campaign sync-results`, and the 080 opt-out list
//! (`GET /blockservice/recipients`) behind `munja optout sync`. Shapes from TOAST-DOCS/SMS
//! (en/api-guide.md): `X-Secret-Key` header, `{header: {isSuccessful, resultCode,
//! resultMessage}, body: {pageNum, pageSize, totalCount, data: [...]}}`, at most 1,000 rows a
//! page. Sending is the adapter's (`nhn.rs`); nothing here writes at NHN.
//!
//! Errors name the call and NHN's answer, never the app key or the secret key.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{GatewayConfig, read_secret_env};

/// Rows asked for per page (NHN's maximum).
pub const PAGE_SIZE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum NhnReadError {
    #[error("gateway {gateway:?}: {key} {message}")]
    Config {
        gateway: String,
        key: &'static str,
        message: String,
    },
    #[error("NHN Cloud {what}: {message}")]
    Transport { what: String, message: String },
    #[error(
        "NHN Cloud {what}: cannot reach {url}: {message}; check the gateway's url and the network"
    )]
    Unreachable {
        what: String,
        url: String,
        message: String,
    },
    #[error("NHN Cloud answered HTTP {status} to {what}{hint}: {body}")]
    Http {
        what: String,
        status: u16,
        hint: &'static str,
        body: String,
    },
    #[error("NHN Cloud refused {what}: resultCode {code}, {message}")]
    Api {
        what: String,
        code: String,
        message: String,
    },
    #[error("NHN Cloud's answer to {what} is not the documented shape: {message}")]
    Shape { what: String, message: String },
}

/// One row of the result search.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultRow {
    pub recipient_grouping_key: Option<String>,
    /// 0 failed, 1 requesting, 2 processing, 3 successful, 4 cancelled, 5 duplicate,
    /// 6 failed (ad), 7 waiting.
    #[serde(default, deserialize_with = "text")]
    pub msg_status: String,
    #[serde(default, deserialize_with = "opt_text")]
    pub result_code: Option<String>,
    pub result_date: Option<String>,
}

/// One opted-out number of the 080 service.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockedRow {
    pub recipient_no: String,
    pub unsubscribe_no: Option<String>,
}

/// One page and the total the search matches.
#[derive(Debug)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub total: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    header: Header,
    body: Option<Body<T>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    is_successful: bool,
    #[serde(default, deserialize_with = "text")]
    result_code: String,
    #[serde(default)]
    result_message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body<T> {
    #[serde(default)]
    total_count: u64,
    #[serde(default = "Vec::new")]
    data: Vec<T>,
}

fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_text(d)?.unwrap_or_default())
}

/// A string or a number (NHN sends codes as either), as text.
fn opt_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.filter(|v| !v.is_null()).map(|v| json_text(&v)))
}

/// An error and its causes, `a: b: c`.
fn chain(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A reader of one `nhn-cloud` gateway's account.
pub struct NhnReader {
    http: reqwest::Client,
    /// `{url}/sms/v3.0/appKeys/{appKey}`.
    base: String,
    /// The gateway's `url` (without the app key), for messages.
    url: String,
    secret: String,
}

impl NhnReader {
    /// Reads the gateway's `app_key_env` and `secret_key_env`.
    pub fn new(gw: &GatewayConfig) -> Result<NhnReader, NhnReadError> {
        let secret = |key: &'static str, env: &Option<String>| -> Result<String, NhnReadError> {
            let cfg = |message: String| NhnReadError::Config {
                gateway: gw.name.clone(),
                key,
                message,
            };
            let var = env.as_ref().ok_or_else(|| {
                cfg(format!(
                    "is missing: NHN Cloud needs it; add {key} = \"VAR\" to the gateway's \
                     [[gateways]] entry and export VAR"
                ))
            })?;
            read_secret_env(var).map_err(cfg)
        };
        let app_key = secret("app_key_env", &gw.app_key_env)?;
        let secret = secret("secret_key_env", &gw.secret_key_env)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(gw.timeout_ms.max(10_000)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("munja/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NhnReadError::Transport {
                what: "client setup".into(),
                message: e.to_string(),
            })?;
        Ok(NhnReader {
            http,
            base: format!("{}/sms/v3.0/appKeys/{app_key}", gw.url),
            url: gw.url.clone(),
            secret,
        })
    }

    /// One page of the result search of `/sender/{sms|mms}` between two Korea-time dates
    /// (`yyyy-MM-dd HH:mm:ss`).
    pub async fn results(
        &self,
        kind: &str,
        start: &str,
        end: &str,
        page: u32,
    ) -> Result<Page<ResultRow>, NhnReadError> {
        let what = format!("result search /sender/{kind} page {page}");
        let page = page.to_string();
        let size = PAGE_SIZE.to_string();
        self.get(
            &what,
            &format!("/sender/{kind}"),
            &[
                ("startRequestDate", start),
                ("endRequestDate", end),
                ("pageNum", &page),
                ("pageSize", &size),
            ],
        )
        .await
    }

    /// One page of the 080 opt-out list.
    pub async fn blocked(&self, page: u32) -> Result<Page<BlockedRow>, NhnReadError> {
        let what = format!("080 opt-out list page {page}");
        let page = page.to_string();
        let size = PAGE_SIZE.to_string();
        self.get(
            &what,
            "/blockservice/recipients",
            &[("pageNum", &page), ("pageSize", &size)],
        )
        .await
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Page<T>, NhnReadError> {
        let shape = |message: String| NhnReadError::Shape {
            what: what.to_string(),
            message,
        };
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), params)
            .map_err(|e| shape(format!("bad URL: {e}")))?;
        let resp = self
            .http
            .get(url)
            .header("X-Secret-Key", &self.secret)
            .header("Content-Type", "application/json;charset=UTF-8")
            .send()
            .await
            .map_err(|e| NhnReadError::Unreachable {
                what: what.to_string(),
                url: self.url.clone(),
                // Without the request URL: it holds the app key.
                message: chain(e.without_url()),
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| NhnReadError::Transport {
            what: what.to_string(),
            message: e.without_url().to_string(),
        })?;
        if !status.is_success() {
            return Err(NhnReadError::Http {
                what: what.to_string(),
                status: status.as_u16(),
                hint: match status.as_u16() {
                    401 | 403 => " (check app_key_env and secret_key_env)",
                    _ => "",
                },
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        let env: Envelope<T> = serde_json::from_slice(&bytes).map_err(|e| shape(e.to_string()))?;
        if !env.header.is_successful {
            return Err(NhnReadError::Api {
                what: what.to_string(),
                code: env.header.result_code,
                message: env.header.result_message,
            });
        }
        let body = env.body.ok_or_else(|| shape("no body".into()))?;
        Ok(Page {
            rows: body.data,
            total: body.total_count,
        })
    }
}

/// A JSON string's text, any other value's JSON (NHN sends codes as strings or numbers).
pub fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
