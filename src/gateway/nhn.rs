//! `kind = "nhn-cloud"`: NHN Cloud SMS API v3.0 (`/sms/v3.0/appKeys/{appKey}`, header
//! `X-Secret-Key`).
//!
//! Sending: `POST /sender/sms` (SMS), `/sender/mms` (LMS, `title` = subject), and for ad
//! campaigns `/sender/ad-sms` and `/sender/ad-mms`. One `body` for up to 1,000 recipients (so
//! only identical texts share a request), `senderGroupingKey` = the campaign, each recipient's
//! `recipientGroupingKey` = the message's ref. The answer's `sendResultList` gives each
//! recipient a `resultCode` (0 accepted; -6001 and 3006 opted out, and the run then adds the
//! number to munja's opt-out list (munja's `run::delivery::optouts`); 3003 and -2019 invalid
//! number; anything else rejected as `nhn_CODE`); `requestId/recipientSeq` is the gateway id.
//! A whole-request failure (`header.isSuccessful = false`) about the account, the sender or the
//! 080 service halts the campaign; -2021 and -9999 (NHN's own errors) are transient.
//!
//! Lookup: `GET /sender/sms` then `/sender/mms` with `recipientGroupingKey` = ref over the last
//! 29 days (NHN allows one month): found is sent, none on both is "never got it".
//!
//! The app key is part of every URL: transport errors are stripped of their URL, and neither
//! key appears in `Debug` output or messages.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use super::http::{attempts, body_excerpt, classify_error, error_chain, http_client};
use super::{Attempt, Lookup, OutMessage, Outcome};
use crate::config::GatewayConfig;

/// Days back a lookup searches (NHN refuses windows over a month: -4000).
const LOOKUP_DAYS: i64 = 29;

/// One NHN Cloud SMS app.
#[derive(Clone)]
pub struct NhnGateway {
    name: String,
    /// `{url}/sms/v3.0/appKeys/{appKey}`: holds the app key, never shown.
    base: String,
    app_key: String,
    client: reqwest::Client,
}

impl fmt::Debug for NhnGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NhnGateway")
            .field("name", &self.name)
            .field("app_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl NhnGateway {
    pub fn new(g: &GatewayConfig) -> anyhow::Result<NhnGateway> {
        let name = &g.name;
        let (Some(app_key), Some(secret)) = (g.app_key.clone(), g.secret_key.clone()) else {
            bail!("gateway {name}: kind \"nhn-cloud\" needs app_key_env and secret_key_env");
        };
        let mut secret = HeaderValue::from_str(&secret).map_err(|_| {
            anyhow::anyhow!(
                "gateway {name}: the secret key holds characters not allowed in a header"
            )
        })?;
        secret.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("X-Secret-Key", secret);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        let timeout = Duration::from_millis(g.timeout_ms);
        let client = http_client(name, timeout, g.concurrency, headers)?;
        let base = format!(
            "{}/sms/v3.0/appKeys/{}",
            g.url.trim_end_matches('/'),
            app_key
        );
        Url::parse(&base).with_context(|| format!("gateway {name}: invalid url {:?}", g.url))?;
        Ok(NhnGateway {
            name: name.clone(),
            base,
            app_key,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The send endpoint of a message: ad or not, SMS or LMS.
    pub fn endpoint(m: &OutMessage) -> &'static str {
        match (m.ad, m.kind == "LMS") {
            (false, false) => "sms",
            (false, true) => "mms",
            (true, false) => "ad-sms",
            (true, true) => "ad-mms",
        }
    }

    /// The request body for `msgs` (one text for all of them).
    pub fn request_body(msgs: &[OutMessage]) -> Value {
        let Some(first) = msgs.first() else {
            return Value::Null;
        };
        let recipients: Vec<Value> = msgs
            .iter()
            .map(|m| {
                json!({"recipientNo": m.to, "countryCode": "82", "recipientGroupingKey": m.msg_ref})
            })
            .collect();
        let mut body = json!({
            "body": first.text,
            "sendNo": first.from,
            "senderGroupingKey": first.campaign,
            "recipientList": recipients,
        });
        if first.kind == "LMS" {
            body["title"] = json!(first.subject.clone().unwrap_or_default());
        }
        body
    }

    /// One send request for `msgs`; one attempt per message, in order.
    pub async fn send(&self, msgs: &[OutMessage]) -> Vec<Attempt> {
        let Some(first) = msgs.first() else {
            return Vec::new();
        };
        let at = Utc::now();
        let t0 = Instant::now();
        let url = format!("{}/sender/{}", self.base, Self::endpoint(first));
        let request = self.client.post(url).json(&Self::request_body(msgs));
        let (outcomes, http_status) = match self.exchange(request).await {
            Err(failed) => (vec![failed.0; msgs.len()], failed.1),
            Ok((v, status)) => (self.results(msgs, &v), Some(status)),
        };
        attempts(outcomes, http_status, at, t0)
    }

    /// Sends a request and reads a successful JSON answer; anything else is classified.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(Value, u16), (Outcome, Option<u16>)> {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                tracing::debug!(gateway = %self.name, error = %error_chain(&e), "request failed");
                return Err((classify_error(&e), None));
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(_) if status.is_success() => {
                let code = "answer_cut_short".into();
                return Err((Outcome::InDoubt { code }, Some(status.as_u16())));
            }
            Err(_) => Default::default(),
        };
        if !status.is_success() {
            return Err((self.classify_status(status, &body), Some(status.as_u16())));
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            let code = "bad_response".into();
            return Err((Outcome::InDoubt { code }, Some(status.as_u16())));
        };
        if v["header"]["isSuccessful"] == json!(true) {
            return Ok((v, status.as_u16()));
        }
        let code = v["header"]["resultCode"].as_i64().unwrap_or(0);
        let message = v["header"]["resultMessage"]
            .as_str()
            .unwrap_or("")
            .to_string();
        Err((self.request_failure(code, &message), Some(status.as_u16())))
    }

    fn classify_status(&self, status: StatusCode, body: &[u8]) -> Outcome {
        let text = self.scrub(&body_excerpt(body, status));
        let name = &self.name;
        match status.as_u16() {
            401 | 403 => Outcome::Halt {
                code: "unauthorized".into(),
                message: format!(
                    "gateway {name} refused the credentials (HTTP {status}: {text}); check \
                     app_key_env and secret_key_env of gateway {name} in munja.toml"
                ),
            },
            300..=399 => Outcome::Halt {
                code: "redirect".into(),
                message: format!(
                    "gateway {name} answered HTTP {status}; munja never follows a redirect: \
                     check url of gateway {name} in munja.toml"
                ),
            },
            429 => Outcome::Throttled { retry_after: None },
            code => Outcome::Transient {
                code: format!("http_{code}"),
            },
        }
    }

    /// A whole request refused (`header.isSuccessful = false`, `resultCode` `code`).
    pub fn request_failure(&self, code: i64, message: &str) -> Outcome {
        let name = &self.name;
        let message = self.scrub(&crate::domain::phone::mask_in_text(message));
        let halt = |what: &str, fix: &str| Outcome::Halt {
            code: format!("nhn_{code}"),
            message: format!(
                "gateway {name} refused the request: {what} ({code}: {message}); {fix}"
            ),
        };
        match code {
            -1008..=-1000 => halt(
                "the app key, project or client IP is not allowed",
                "check app_key_env and secret_key_env of the gateway and the console's IP list",
            ),
            -2312 | -2313 => halt(
                "the sender number is not registered or blocked",
                "register [sender] number in the NHN Cloud console (발신번호 사전등록)",
            ),
            -6000 | -6003 | -6004 => halt(
                "the 080 opt-out service or footer is not accepted",
                "join the 080 service in the console and check [sender] optout_number",
            ),
            -2016 => halt("over 1,000 recipients", "lower batch_size to 1000 or less"),
            -2052 | -2053 => halt(
                "the sending limit is exhausted",
                "raise the limit in the console",
            ),
            -2021 | -9999 => Outcome::Transient {
                code: format!("nhn_{code}"),
            },
            c => recipient_outcome(c, &message),
        }
    }

    /// One outcome per message from `body.data.sendResultList`, matched by
    /// `recipientGroupingKey` (positionally when it is absent); a message without a result is
    /// in doubt.
    fn results(&self, msgs: &[OutMessage], v: &Value) -> Vec<Outcome> {
        let data = &v["body"]["data"];
        let request_id = data["requestId"].as_str().unwrap_or("");
        let list = data["sendResultList"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let by_key: HashMap<&str, &Value> = list
            .iter()
            .filter_map(|r| Some((r["recipientGroupingKey"].as_str()?, r)))
            .collect();
        msgs.iter()
            .enumerate()
            .map(|(i, m)| {
                let r = by_key
                    .get(m.msg_ref.as_str())
                    .copied()
                    .or_else(|| list.get(i).filter(|_| by_key.is_empty()));
                let Some(r) = r else {
                    return Outcome::InDoubt {
                        code: "missing_result".into(),
                    };
                };
                match r["resultCode"].as_i64() {
                    Some(0) => match r["recipientSeq"].as_i64() {
                        Some(seq) if !request_id.is_empty() => Outcome::Accepted {
                            gateway_id: format!("{request_id}/{seq}"),
                            duplicate: false,
                        },
                        _ => Outcome::InDoubt {
                            code: "bad_response".into(),
                        },
                    },
                    Some(c) => recipient_outcome(c, r["resultMessage"].as_str().unwrap_or("")),
                    None => Outcome::InDoubt {
                        code: "bad_response".into(),
                    },
                }
            })
            .collect()
    }

    /// Searches the send log for `recipientGroupingKey` = `msg_ref`, SMS then LMS.
    pub async fn lookup(&self, msg_ref: &str) -> Lookup {
        let seoul = chrono_tz::Asia::Seoul;
        let now = Utc::now().with_timezone(&seoul);
        let fmt = "%Y-%m-%d %H:%M:%S";
        let start = (now - chrono::Duration::days(LOOKUP_DAYS))
            .format(fmt)
            .to_string();
        let end = (now + chrono::Duration::days(1)).format(fmt).to_string();
        for ep in ["sms", "mms"] {
            let Ok(mut url) = Url::parse(&format!("{}/sender/{ep}", self.base)) else {
                return self.unavailable("invalid url");
            };
            url.query_pairs_mut()
                .append_pair("startRequestDate", &start)
                .append_pair("endRequestDate", &end)
                .append_pair("recipientGroupingKey", msg_ref)
                .append_pair("pageSize", "15");
            let (v, _) = match self.exchange(self.client.get(url)).await {
                Ok(ok) => ok,
                Err((o, _)) => return self.unavailable(o.code()),
            };
            let data = v["body"]["data"].as_array().cloned().unwrap_or_default();
            if let Some(r) = data
                .iter()
                .find(|r| r["recipientGroupingKey"].as_str() == Some(msg_ref))
            {
                let request_id = r["requestId"].as_str().unwrap_or("");
                let seq = r["recipientSeq"].as_i64().unwrap_or(0);
                return Lookup::Found {
                    gateway_id: format!("{request_id}/{seq}"),
                    status: r["msgStatusName"].as_str().unwrap_or("").to_string(),
                };
            }
        }
        Lookup::NotFound
    }

    fn unavailable(&self, why: &str) -> Lookup {
        Lookup::Unavailable {
            reason: format!(
                "gateway {}: search by recipientGroupingKey: {why}",
                self.name
            ),
        }
    }

    /// Removes the app key from provider text.
    fn scrub(&self, text: &str) -> String {
        text.replace(&self.app_key, "<redacted>")
    }
}

/// A recipient-level result code (`resultCode` of `sendResultList`, or a whole request for one
/// recipient) as munja's outcome.
pub fn recipient_outcome(code: i64, message: &str) -> Outcome {
    let code = match code {
        0 => {
            return Outcome::Accepted {
                gateway_id: String::new(),
                duplicate: false,
            };
        }
        -6001 | 3006 => crate::domain::model::OPTED_OUT.to_string(),
        3003 | -2019 | -2018 | 1002 => "invalid_number".to_string(),
        3001 => "no_subscriber".to_string(),
        -2023 => "unencodable_char".to_string(),
        c => format!("nhn_{c}"),
    };
    Outcome::Rejected {
        code,
        message: crate::domain::phone::mask_in_text(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_codes_map_to_outcomes() {
        let code = |c| recipient_outcome(c, "").code().to_string();
        assert_eq!(code(-6001), "opted_out");
        assert_eq!(code(3006), "opted_out");
        assert_eq!(code(3003), "invalid_number");
        assert_eq!(code(3012), "nhn_3012");
        assert_eq!(code(0), "accepted");
    }
}
