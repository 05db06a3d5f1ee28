//! `kind = "kannel"`: Kannel's `sendsms` interface (smsbox's `sendsms-user`).
//!
//! One request to `{url}/cgi-bin/sendsms` per group: by default a `POST` with the text as a
//! UTF-8 body and `X-Kannel-Username`, `-Password`, `-From`, `-To`, `-Coding: 2` headers (the
//! password and the numbers stay out of URLs and access logs); with `method = "get"` a `GET`
//! with `username&password&from&to&text&charset=UTF-8&coding=2`. Hangul goes as UCS-2
//! (`coding=2`); several recipients of one identical text share a request (`to` separated by
//! spaces). With `dlr_url` configured every message goes alone, with
//! `dlr-mask=31` and a `dlr-url` that carries its ref, so that Kannel's delivery report names it.
//!
//! Replies: `202` (`0: Accepted for delivery`, `3: Queued for later delivery`) accepted; `503`
//! and connection failures before the request was written transient; a timeout or a connection
//! lost after writing in doubt; `403 Authorization failed` halts the campaign like a 401;
//! `403 Not routable` and `400` reject the message. Kannel returns no message id and cannot be
//! asked: [`KannelGateway::lookup`] always answers `Unavailable`, and the message's ref is its
//! gateway id (what a delivery report correlates on).
//!
//! The password is held only in the request URL, never shown: errors are stripped of the URL.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};

use super::http::{attempts, body_excerpt, classify_error, error_chain, http_client};
use super::{Attempt, Lookup, OutMessage, Outcome};
use crate::config::GatewayConfig;

/// Kannel's `dlr-mask` for every report type (delivered, undelivered, buffered, SMSC ack and
/// reject).
pub const DLR_MASK: &str = "31";

/// One Kannel smsbox.
#[derive(Clone)]
pub struct KannelGateway {
    name: String,
    sendsms: Url,
    username: String,
    password: String,
    dlr_url: Option<String>,
    /// The token Kannel presents on the `dlr-url` (never printed).
    dlr_token: Option<String>,
    post: bool,
    client: reqwest::Client,
}

impl fmt::Debug for KannelGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KannelGateway")
            .field("name", &self.name)
            .field("sendsms", &self.sendsms.as_str())
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("dlr_url", &self.dlr_url)
            .finish()
    }
}

impl KannelGateway {
    /// The client for `g`: `url` is smsbox's base (`http://host:13013`) or its full
    /// `…/cgi-bin/sendsms` address.
    pub fn new(g: &GatewayConfig) -> anyhow::Result<KannelGateway> {
        let name = &g.name;
        let mut sendsms = Url::parse(&g.url)
            .with_context(|| format!("gateway {name}: invalid url {:?}", g.url))?;
        if !sendsms.path().ends_with("/cgi-bin/sendsms") {
            let path = format!("{}/cgi-bin/sendsms", sendsms.path().trim_end_matches('/'));
            sendsms.set_path(&path);
        }
        let (Some(username), Some(password)) = (g.username.clone(), g.password.clone()) else {
            bail!(
                "gateway {name}: kind \"kannel\" needs username and password_env (the \
                 sendsms-user of smsbox) in munja.toml"
            );
        };
        let post = g.method != "get";
        if post && HeaderValue::from_str(&password).is_err() {
            bail!(
                "gateway {name}: the password (from password_env) holds characters not allowed in \
                 an HTTP header; set method = \"get\" for gateway {name} or change the password"
            );
        }
        let timeout = Duration::from_millis(g.timeout_ms);
        let client = http_client(name, timeout, g.concurrency, Default::default())?;
        Ok(KannelGateway {
            name: name.clone(),
            sendsms,
            username,
            password,
            dlr_url: g.dlr_url.clone(),
            dlr_token: g.dlr_token.clone(),
            post,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether delivery reports are asked for (then every message goes alone).
    pub fn has_dlr_url(&self) -> bool {
        self.dlr_url.is_some()
    }

    /// The `sendsms` GET for `msgs` (one text for all of them).
    pub fn request_url(&self, msgs: &[OutMessage]) -> Url {
        let mut url = self.sendsms.clone();
        let to: Vec<&str> = msgs.iter().map(|m| m.to.as_str()).collect();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("username", &self.username)
                .append_pair("password", &self.password)
                .append_pair("from", msgs.first().map_or("", |m| m.from.as_str()))
                .append_pair("to", &to.join(" "))
                .append_pair("text", msgs.first().map_or("", |m| m.text.as_str()))
                .append_pair("charset", "UTF-8")
                .append_pair("coding", "2");
            if let (Some(base), [m]) = (&self.dlr_url, msgs) {
                q.append_pair("dlr-mask", DLR_MASK).append_pair(
                    "dlr-url",
                    &dlr_url_for(base, self.dlr_token.as_deref(), &m.msg_ref),
                );
            }
        }
        url
    }

    /// The `sendsms` POST for `msgs`: text in the body, the rest in `X-Kannel-*` headers.
    pub fn post_request(&self, msgs: &[OutMessage]) -> reqwest::RequestBuilder {
        let to: Vec<&str> = msgs.iter().map(|m| m.to.as_str()).collect();
        let first = msgs.first();
        let mut password =
            HeaderValue::from_str(&self.password).unwrap_or_else(|_| HeaderValue::from_static(""));
        password.set_sensitive(true);
        let mut r = self
            .client
            .post(self.sendsms.clone())
            .header(CONTENT_TYPE, "text/plain; charset=UTF-8")
            .header("X-Kannel-Username", &self.username)
            .header("X-Kannel-Password", password)
            .header("X-Kannel-From", first.map_or("", |m| m.from.as_str()))
            .header("X-Kannel-To", to.join(" "))
            .header("X-Kannel-Coding", "2")
            .body(first.map_or(String::new(), |m| m.text.clone()));
        if let (Some(base), [m]) = (&self.dlr_url, msgs) {
            r = r.header("X-Kannel-DLR-Mask", DLR_MASK).header(
                "X-Kannel-DLR-Url",
                dlr_url_for(base, self.dlr_token.as_deref(), &m.msg_ref),
            );
        }
        r
    }

    /// One `sendsms` request for `msgs`; the answer applies to each of them.
    pub async fn send(&self, msgs: &[OutMessage]) -> Vec<Attempt> {
        if msgs.is_empty() {
            return Vec::new();
        }
        let at = Utc::now();
        let t0 = Instant::now();
        let (outcome, http_status) = self.send_once(msgs).await;
        let outcomes = msgs
            .iter()
            .map(|m| match &outcome {
                // No id comes back: the ref is what a delivery report correlates on.
                Outcome::Accepted { duplicate, .. } => Outcome::Accepted {
                    gateway_id: m.msg_ref.clone(),
                    duplicate: *duplicate,
                },
                o => o.clone(),
            })
            .collect();
        attempts(outcomes, http_status, at, t0)
    }

    async fn send_once(&self, msgs: &[OutMessage]) -> (Outcome, Option<u16>) {
        let request = if self.post {
            self.post_request(msgs)
        } else {
            self.client.get(self.request_url(msgs))
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let e = e.without_url();
                tracing::debug!(gateway = %self.name, error = %error_chain(&e), "sendsms failed");
                return (classify_error(&e), None);
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(_) if status == StatusCode::ACCEPTED => {
                let code = "answer_cut_short".into();
                return (Outcome::InDoubt { code }, Some(status.as_u16()));
            }
            Err(_) => Default::default(),
        };
        (self.classify(status, &body), Some(status.as_u16()))
    }

    /// The outcome of a `sendsms` answer.
    pub fn classify(&self, status: StatusCode, body: &[u8]) -> Outcome {
        let text = body_excerpt(body, status).replace(&self.password, "<redacted>");
        let text = crate::domain::phone::mask_in_text(&text);
        let name = &self.name;
        match status.as_u16() {
            200..=299 => Outcome::Accepted {
                gateway_id: String::new(),
                duplicate: false,
            },
            401 => halt_credentials(name, status, &text),
            403 if text.contains("Authorization failed") => halt_credentials(name, status, &text),
            403 => Outcome::Rejected {
                code: "not_routable".into(),
                message: format!("gateway {name}: {text}"),
            },
            400 => Outcome::Rejected {
                code: "kannel_rejected".into(),
                message: format!("gateway {name}: {text}"),
            },
            300..=399 => Outcome::Halt {
                code: "redirect".into(),
                message: format!(
                    "gateway {name} answered HTTP {status}; munja never follows a redirect: set \
                     url of gateway {name} in munja.toml to smsbox's sendsms address"
                ),
            },
            code => Outcome::Transient {
                code: format!("http_{code}"),
            },
        }
    }

    /// Kannel cannot be asked about a message: only a delivery report proves it.
    pub fn lookup(&self, _msg_ref: &str) -> Lookup {
        Lookup::Unavailable {
            reason: format!(
                "gateway {} (kannel) cannot be asked whether it has a message; only a delivery \
                 report proves it",
                self.name
            ),
        }
    }
}

fn halt_credentials(name: &str, status: StatusCode, text: &str) -> Outcome {
    Outcome::Halt {
        code: "unauthorized".into(),
        message: format!(
            "gateway {name} refused the credentials (HTTP {status}: {text}); check username and \
             password_env of gateway {name} in munja.toml against smsbox's sendsms-user"
        ),
    }
}

/// The `dlr-url` Kannel calls back for the message with ref `msg_ref`: the configured URL
/// (`munja serve`'s `/v1/dlr/NAME`) with the ref, the gateway's `dlr_token` and Kannel's escapes
/// (`%d` report type, `%A` SMSC answer, `%T` time) as query parameters, which
/// `delivery::parse` reads back.
pub fn dlr_url_for(base: &str, token: Option<&str>, msg_ref: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    let r: String = url_escape(msg_ref);
    let token = token
        .map(|t| format!("&token={}", url_escape(t)))
        .unwrap_or_default();
    format!("{base}{sep}ref={r}{token}&type=%d&status=%A&at=%T")
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(dlr: Option<&str>) -> KannelGateway {
        let cfg = crate::config::Config::from_toml_str(
            &format!(
                "[[gateways]]\nname='k'\nkind='kannel'\nurl='http://127.0.0.1:13013'\n\
                 username='munja'\npassword_env='X'\nrate_per_sec=10\n{}",
                dlr.map(|d| format!("dlr_url='{d}'\n")).unwrap_or_default()
            ),
            None,
        )
        .expect("config");
        let mut g = cfg.gateways[0].clone();
        g.password = Some("s3cret".into());
        KannelGateway::new(&g).expect("gateway")
    }

    fn out(to: &str) -> OutMessage {
        crate::gateway::client::test_message("c1-7", to, "0212345678")
    }

    #[test]
    fn the_request_asks_for_ucs2_and_carries_the_ref_in_dlr_url() {
        let url = gw(Some("http://m:8088/v1/dlr/k")).request_url(&[out("01012345678")]);
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(url.path(), "/cgi-bin/sendsms");
        assert_eq!(q["coding"], "2");
        assert_eq!(q["charset"], "UTF-8");
        assert_eq!(q["text"], "(광고) 안녕하세요");
        assert_eq!(q["dlr-mask"], "31");
        assert!(q["dlr-url"].starts_with("http://m:8088/v1/dlr/k?ref=c1-7&type=%d"));
    }

    #[test]
    fn the_post_keeps_credentials_and_numbers_out_of_the_url() {
        let g = gw(Some("http://m:8088/v1/dlr/k"));
        let r = g
            .post_request(&[out("01012345678")])
            .build()
            .expect("request");
        assert_eq!(r.url().as_str(), "http://127.0.0.1:13013/cgi-bin/sendsms");
        let h = |k: &str| r.headers()[k].to_str().expect("ascii").to_string();
        assert_eq!(h("X-Kannel-To"), "01012345678");
        assert_eq!(h("X-Kannel-Coding"), "2");
        assert_eq!(h("X-Kannel-DLR-Mask"), "31");
        assert!(h("X-Kannel-DLR-Url").contains("ref=c1-7"));
        assert!(r.headers()["X-Kannel-Password"].is_sensitive());
        let body = r.body().and_then(|b| b.as_bytes()).expect("body");
        assert_eq!(
            std::str::from_utf8(body).expect("utf-8"),
            "(광고) 안녕하세요"
        );
    }

    #[test]
    fn replies_map_to_outcomes() {
        let g = gw(None);
        let c =
            |s: u16, b: &str| g.classify(StatusCode::from_u16(s).expect("status"), b.as_bytes());
        assert!(matches!(
            c(202, "3: Queued for later delivery"),
            Outcome::Accepted { .. }
        ));
        assert!(matches!(
            c(503, "Temporal failure, try again later."),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            c(403, "Authorization failed for sendsms"),
            Outcome::Halt { .. }
        ));
        assert!(matches!(
            c(403, "Not routable. Do not try again."),
            Outcome::Rejected { .. }
        ));
        assert!(matches!(
            c(400, "Receiver number missing"),
            Outcome::Rejected { .. }
        ));
        let shown = format!("{:?}", g);
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
