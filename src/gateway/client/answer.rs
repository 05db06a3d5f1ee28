//! One request's exchange with an `http-json` gateway and the classification of what came
//! back (a transport error, an HTTP status, an unreadable body) into an [`Outcome`], with the
//! API key and the URL password scrubbed from every text kept.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, LOCATION, RETRY_AFTER};
use serde::Deserialize;

use super::{Failed, HttpJsonGateway, MAX_CODE_CHARS, Outcome};
use crate::gateway::http::{body_excerpt, classify_error, error_chain};

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl HttpJsonGateway {
    /// Sends a POST (adding the bearer key), reads the answer and decodes a 2xx body as `T`;
    /// everything else is classified here.
    pub(super) async fn exchange<T: serde::de::DeserializeOwned>(
        &self,
        mut request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<(T, u16), Failed> {
        if let Some(auth) = &self.inner.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err((self.transport_failure(&e), None)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.retry_after(v));
        let location = response
            .headers()
            .get(LOCATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match response.bytes().await {
            Ok(b) => b,
            // A 2xx means the gateway took the request: an answer cut short is in doubt.
            Err(e) if status.is_success() => {
                tracing::warn!(gateway = %self.inner.name, error = %error_chain(&e), "{what} answer cut short");
                let code = "answer_cut_short".into();
                return Err((Outcome::InDoubt { code }, Some(status.as_u16())));
            }
            Err(e) => {
                tracing::debug!(gateway = %self.inner.name, error = %error_chain(&e), "error answer cut short");
                Default::default()
            }
        };
        if !status.is_success() {
            let outcome = self.classify_status(status, &body, retry_after, location.as_deref());
            return Err((outcome, Some(status.as_u16())));
        }
        match serde_json::from_slice::<T>(&body) {
            Ok(parsed) => Ok((parsed, status.as_u16())),
            Err(e) => Err((self.bad_response(what, &e), Some(status.as_u16()))),
        }
    }

    fn classify_status(
        &self,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<Duration>,
        location: Option<&str>,
    ) -> Outcome {
        let code = status.as_u16();
        match code {
            300..=399 => {
                let name = &self.inner.name;
                Outcome::Halt {
                    code: "redirect".into(),
                    message: format!(
                        "gateway {name} answered HTTP {status} redirecting to {}; munja never follows \
                         a redirect (it would send the messages, phone numbers included, to a host that \
                         is not in munja.toml): set url of gateway {name} in munja.toml to the address \
                         the provider documents",
                        self.scrub(&crate::domain::phone::mask_in_text(
                            location.unwrap_or("(no Location header)")
                        ))
                    ),
                }
            }
            413 => {
                let name = &self.inner.name;
                Outcome::Halt {
                    code: "payload_too_large".into(),
                    message: format!(
                        "gateway {name} refused the request as too large (HTTP {status}): lower \
                         batch_size of gateway {name} in munja.toml to what the provider accepts"
                    ),
                }
            }
            400 | 422 => {
                let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
                let code = parsed.error.unwrap_or_else(|| {
                    if code == 400 {
                        "invalid_request".into()
                    } else {
                        format!("http_{code}")
                    }
                });
                let message = parsed.message.unwrap_or_else(|| body_excerpt(body, status));
                self.rejection(code, &message)
            }
            401 | 403 => {
                let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
                let detail = parsed
                    .message
                    .or(parsed.error)
                    .unwrap_or_else(|| body_excerpt(body, status));
                let name = &self.inner.name;
                Outcome::Halt {
                    code: "unauthorized".into(),
                    message: self.scrub(&format!(
                        "gateway {name} refused the credentials (HTTP {status}): {detail}; check \
                         api_key_env of gateway {name} in munja.toml and the key it names"
                    )),
                }
            }
            429 => Outcome::Throttled { retry_after },
            // A 503 that says when to come back pauses the gateway like a 429.
            503 if retry_after.is_some() => Outcome::Throttled { retry_after },
            // 5xx and anything unexpected (404 from a wrong URL, ...) are retried with
            // backoff; the dispatcher's attempt limit bounds them.
            _ => {
                tracing::debug!(gateway = %self.inner.name, %status, "transient HTTP answer");
                Outcome::Transient {
                    code: format!("http_{code}"),
                }
            }
        }
    }

    /// A 400/422 rejection: about the recipient or the content it fails this message; about
    /// the sender or the request itself it applies to every message and halts the campaign.
    pub(super) fn rejection(&self, code: String, message: &str) -> Outcome {
        let message = self.scrub(message);
        // The code is shown in summaries, status and audit: a gateway that echoes the
        // recipient or the key in it must not put them there.
        let code: String = self
            .scrub(&crate::domain::phone::mask_in_text(&code))
            .chars()
            .take(MAX_CODE_CHARS)
            .collect();
        let name = &self.inner.name;
        let fix = match code.as_str() {
            "invalid_sender" => format!(
                "check number in [sender] of munja.toml: gateway {name} must have it registered \
                 (발신번호 사전등록)"
            ),
            "invalid_request" => format!(
                "check url and batch_size of gateway {name} in munja.toml against the provider's \
                 protocol and limits"
            ),
            _ => return Outcome::Rejected { code, message },
        };
        Outcome::Halt {
            message: format!(
                "gateway {name} refused the request with {code} ({}): it applies to every \
                 message; {fix}",
                crate::domain::phone::mask_in_text(&message)
            ),
            code,
        }
    }

    pub(super) fn transport_failure(&self, e: &reqwest::Error) -> Outcome {
        let outcome = classify_error(e);
        let error = self.scrub(&error_chain(e));
        if outcome.code() == "connect_error" && self.inner.warned.first_in(Duration::from_secs(10))
        {
            // Shown at default verbosity (TLS, DNS, refused): the operator must see why.
            tracing::warn!(gateway = %self.inner.name, url = %self.inner.base_url, %error, "cannot connect to the gateway");
        } else {
            tracing::debug!(gateway = %self.inner.name, code = outcome.code(), %error, "request failed");
        }
        outcome
    }

    fn bad_response(&self, what: &str, e: &serde_json::Error) -> Outcome {
        tracing::warn!(gateway = %self.inner.name, error = %e, "unreadable {what} answer");
        Outcome::InDoubt {
            code: "bad_response".into(),
        }
    }

    pub(super) fn unserialisable(&self, e: &serde_json::Error) -> Outcome {
        Outcome::Rejected {
            code: "invalid_request".into(),
            message: format!("message cannot be encoded as JSON: {e}"),
        }
    }

    /// Removes the API key from gateway-supplied text, in case a gateway echoes headers.
    pub(super) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        if let Some(key) = self
            .inner
            .auth
            .as_ref()
            .and_then(|a| a.to_str().ok())
            .and_then(|a| a.strip_prefix("Bearer "))
            .filter(|k| !k.is_empty())
        {
            out = out.replace(key, "<redacted>");
        }
        if let Some(password) = &self.inner.url_password {
            out = out.replace(password.as_str(), "<redacted>");
        }
        out
    }
}
