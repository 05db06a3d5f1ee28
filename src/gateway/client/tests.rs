//! Tests of the `http-json` client: wire format, classification of every answer, batch
//! matching, lookups, and that no key or password leaks.
use super::*;
use chrono::TimeZone;

fn gateway(url: &str, key: Option<&str>, timeout_ms: u64) -> HttpJsonGateway {
    HttpJsonGateway::new(
        "test",
        url,
        key.map(str::to_owned),
        Duration::from_millis(timeout_ms),
        4,
    )
    .unwrap()
}

fn msg(r: &str) -> OutMessage {
    test_message(r, "01012345678", "15881234")
}

#[test]
fn wire_format_uses_protocol_keys() {
    let v = serde_json::to_value(msg("r1")).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ref": "r1", "to": "01012345678", "from": "15881234",
            "type": "SMS", "subject": null, "text": "(광고) 안녕하세요", "ad": true,
            "campaign": "c1"})
    );
}

#[test]
fn outcome_codes_and_classes() {
    let acc = Outcome::Accepted {
        gateway_id: "g".into(),
        duplicate: false,
    };
    let dup = Outcome::Accepted {
        gateway_id: "g".into(),
        duplicate: true,
    };
    let rej = Outcome::Rejected {
        code: "invalid_number".into(),
        message: "m".into(),
    };
    let unauth = Outcome::Halt {
        code: "unauthorized".into(),
        message: "m".into(),
    };
    let thr = Outcome::Throttled { retry_after: None };
    let tra = Outcome::Transient {
        code: "http_503".into(),
    };
    let ind = Outcome::InDoubt {
        code: "timeout".into(),
    };
    let codes: Vec<_> = [&acc, &dup, &rej, &unauth, &thr, &tra, &ind]
        .iter()
        .map(|o| o.code().to_owned())
        .collect();
    assert_eq!(
        codes,
        [
            "accepted",
            "duplicate",
            "invalid_number",
            "unauthorized",
            "throttled",
            "http_503",
            "timeout"
        ]
    );
    assert!(acc.is_final() && dup.is_final() && rej.is_final());
    assert!(!unauth.is_final() && !unauth.is_transient());
    assert!(thr.is_transient() && tra.is_transient() && ind.is_transient());
    assert!(!thr.is_final() && !acc.is_transient());
}

#[test]
fn retry_after_seconds_and_dates() {
    let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
    assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn huge_retry_after_values_saturate_and_are_cut_to_the_maximum() {
    let now = Utc::now();
    let max = Duration::from_secs(u64::MAX);
    assert_eq!(parse_retry_after("18446744073709551615", now), Some(max));
    assert_eq!(
        parse_retry_after("99999999999999999999999999", now),
        Some(max)
    );
    assert_eq!(
        parse_retry_after("999999", now),
        Some(Duration::from_secs(999_999))
    );
    let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
    assert!(far > Duration::from_secs(7000 * 365 * 86_400), "{far:?}");

    let g = gateway("http://127.0.0.1:9", None, 100);
    let five_min = Duration::from_secs(300);
    for v in [
        "18446744073709551615",
        "99999999999999999999999999",
        "999999",
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ] {
        assert_eq!(g.retry_after(v), Some(five_min), "default max, {v}");
    }
    assert_eq!(g.retry_after("7"), Some(Duration::from_secs(7)));
    let g = g.with_max_retry_after(Duration::from_secs(2));
    assert_eq!(
        g.retry_after("18446744073709551615"),
        Some(Duration::from_secs(2))
    );
    assert_eq!(g.retry_after("1"), Some(Duration::from_secs(1)));
    assert_eq!(g.retry_after("later"), None);
}

#[test]
fn api_key_never_in_debug() {
    let g = gateway("http://127.0.0.1:9", Some("s3cr3t-key"), 100);
    let dbg = format!("{g:?}");
    assert!(!dbg.contains("s3cr3t"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
    assert!(dbg.contains("http://127.0.0.1:9"));
}

#[test]
fn bad_configuration_is_reported_without_the_key() {
    let err = HttpJsonGateway::new("gw", "not a url", None, Duration::from_secs(1), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gw") && err.contains("not a url"), "{err}");
    let err = HttpJsonGateway::new(
        "gw",
        "http://localhost",
        Some("bad\nkey-s3cr3t".into()),
        Duration::from_secs(1),
        1,
    )
    .unwrap_err();
    let text = format!("{err:#} {err:?}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(HttpJsonGateway::new("gw", "ftp://x", None, Duration::from_secs(1), 1).is_err());
}

#[test]
fn urls_keep_a_path_prefix() {
    let g = gateway("http://example.com/api/", None, 100);
    assert_eq!(
        g.inner.send_url.as_str(),
        "http://example.com/api/v1/messages"
    );
    assert_eq!(
        g.inner.batch_url.as_str(),
        "http://example.com/api/v1/messages/batch"
    );
    assert_eq!(g.base_url(), "http://example.com/api");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let g = gateway(&format!("http://{addr}"), Some("k"), 2000);
    let a = g.send(&msg("r1")).await;
    assert_eq!(
        a.outcome,
        Outcome::Transient {
            code: "connect_error".into()
        }
    );
    assert_eq!(a.http_status, None);
    let b = g.send_batch(&[msg("r1"), msg("r2")]).await;
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|a| a.outcome.code() == "connect_error"));
    match g.lookup("r1").await {
        Lookup::Unavailable { reason } => assert!(reason.contains("connect_error"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(g.send_batch(&[]).await.is_empty());
}

/// A connection closed after the request was read may follow an acceptance: in doubt,
/// not a transient failure that would be retried and then marked failed.
#[tokio::test]
async fn a_connection_closed_after_the_request_is_in_doubt() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            let _ = sock.read(&mut buf).await;
            drop(sock);
        }
    });
    let g = gateway(&format!("http://{addr}"), None, 2000);
    let a = g.send(&msg("r1")).await;
    assert_eq!(
        a.outcome,
        Outcome::InDoubt {
            code: "connection_lost".into()
        }
    );
    let b = g.send_batch(&[msg("r1"), msg("r2")]).await;
    assert!(b.iter().all(|a| a.outcome.code() == "connection_lost"));
}

/// A one-route server answering every request with a fixed status, headers and body.
async fn canned(
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move || {
        let headers = headers.clone();
        async move {
            let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(k, HeaderValue::from_static(v));
            }
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn status_classification() {
    type Case = (
        u16,
        Vec<(&'static str, &'static str)>,
        &'static str,
        Outcome,
    );
    let cases: Vec<Case> = vec![
        (
            201,
            vec![],
            r#"{"gateway_id":"x1","status":"accepted"}"#,
            Outcome::Accepted {
                gateway_id: "x1".into(),
                duplicate: false,
            },
        ),
        (
            200,
            vec![],
            "<html>oops</html>",
            Outcome::InDoubt {
                code: "bad_response".into(),
            },
        ),
        (
            202,
            vec![],
            r#"{"status":"accepted"}"#,
            Outcome::InDoubt {
                code: "bad_response".into(),
            },
        ),
        (
            422,
            vec![],
            r#"{"error":"content_rejected","message":"spam"}"#,
            Outcome::Rejected {
                code: "content_rejected".into(),
                message: "spam".into(),
            },
        ),
        (
            400,
            vec![],
            r#"{"error":"blocked_number"}"#,
            Outcome::Rejected {
                code: "blocked_number".into(),
                message: r#"{"error":"blocked_number"}"#.into(),
            },
        ),
        (
            422,
            vec![],
            "",
            Outcome::Rejected {
                code: "http_422".into(),
                message: "HTTP 422 Unprocessable Entity".into(),
            },
        ),
        (
            429,
            vec![("retry-after", "7")],
            "",
            Outcome::Throttled {
                retry_after: Some(Duration::from_secs(7)),
            },
        ),
        (429, vec![], "", Outcome::Throttled { retry_after: None }),
        (
            429,
            vec![("retry-after", "18446744073709551615")],
            "",
            Outcome::Throttled {
                retry_after: Some(Duration::from_secs(300)),
            },
        ),
        (
            503,
            vec![("retry-after", "9")],
            "",
            Outcome::Throttled {
                retry_after: Some(Duration::from_secs(9)),
            },
        ),
        (
            503,
            vec![],
            "",
            Outcome::Transient {
                code: "http_503".into(),
            },
        ),
        (
            502,
            vec![],
            "",
            Outcome::Transient {
                code: "http_502".into(),
            },
        ),
        (
            404,
            vec![],
            "",
            Outcome::Transient {
                code: "http_404".into(),
            },
        ),
    ];
    for (status, headers, body, want) in cases {
        let url = canned(status, headers, body).await;
        let a = gateway(&url, None, 2000).send(&msg("r1")).await;
        assert_eq!(a.outcome, want, "status {status} body {body:?}");
        assert_eq!(a.http_status, Some(status));
    }
}

#[tokio::test]
async fn unauthorized_message_is_clear_and_keyless() {
    let url = canned(
        403,
        vec![],
        r#"{"error":"forbidden","message":"key k-s3cr3t is suspended"}"#,
    )
    .await;
    let g = gateway(&url, Some("k-s3cr3t"), 2000);
    let a = g.send(&msg("r1")).await;
    match &a.outcome {
        Outcome::Halt { code, message } => {
            assert_eq!(code, "unauthorized");
            assert!(message.contains("HTTP 403"), "{message}");
            assert!(message.contains("api_key_env"), "{message}");
            assert!(message.contains("test"), "{message}");
            assert!(!message.contains("s3cr3t"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let b = g.send_batch(&[msg("r1"), msg("r2")]).await;
    assert!(b.iter().all(|a| a.outcome.code() == "unauthorized"));
    assert!(matches!(g.lookup("r1").await, Lookup::Unavailable { .. }));
}

#[tokio::test]
async fn batch_results_matched_by_ref_when_out_of_order() {
    let url = canned(
        200,
        vec![],
        r#"{"results":[
            {"ref":"b","status":"rejected","gateway_id":null,"duplicate":false,"error":"blocked_number"},
            {"ref":"a","status":"accepted","gateway_id":"ga","duplicate":true,"error":null}]}"#,
    )
    .await;
    let g = gateway(&url, None, 2000);
    let out: Vec<_> = g
        .send_batch(&[msg("a"), msg("b"), msg("c")])
        .await
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        out,
        vec![
            Outcome::Accepted {
                gateway_id: "ga".into(),
                duplicate: true
            },
            Outcome::Rejected {
                code: "blocked_number".into(),
                message: "blocked_number".into()
            },
            Outcome::InDoubt {
                code: "missing_result".into()
            },
        ]
    );
}

/// Answers about the account, the sender or the request apply to every message: they halt
/// the campaign with the cause and the fix, and a redirect is never followed.
#[tokio::test]
async fn account_level_answers_halt_and_redirects_are_not_followed() {
    /// (status, headers, body, halt code, text the message must contain)
    type Case = (
        u16,
        Vec<(&'static str, &'static str)>,
        &'static str,
        &'static str,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            302,
            vec![("location", "http://elsewhere.example/v1/messages")],
            "",
            "redirect",
            "http://elsewhere.example/v1/messages",
        ),
        (
            307,
            vec![("location", "http://elsewhere.example/x")],
            "",
            "redirect",
            "set url of gateway test",
        ),
        (308, vec![], "", "redirect", "no Location header"),
        (
            413,
            vec![],
            "too big",
            "payload_too_large",
            "batch_size of gateway test",
        ),
        (
            400,
            vec![],
            r#"{"error":"invalid_sender","message":"sender 15881234 is not registered"}"#,
            "invalid_sender",
            "[sender]",
        ),
        (400, vec![], "nope", "invalid_request", "batch_size"),
        (401, vec![], "", "unauthorized", "api_key_env"),
    ];
    for (status, headers, body, want_code, want_text) in cases {
        let url = canned(status, headers, body).await;
        let g = gateway(&url, None, 2000);
        let outcomes = [
            g.send(&msg("r1")).await.outcome,
            g.send_batch(&[msg("r1"), msg("r2")]).await[1]
                .outcome
                .clone(),
        ];
        for outcome in outcomes {
            match &outcome {
                Outcome::Halt { code, message } => {
                    assert_eq!(code, want_code, "{status}: {message}");
                    assert!(message.contains(want_text), "{status}: {message}");
                    assert!(message.contains("munja.toml"), "{status}: {message}");
                }
                other => panic!("HTTP {status}: {other:?}"),
            }
            assert!(!outcome.is_final() && !outcome.is_transient());
        }
    }
}

#[test]
fn a_password_in_the_base_url_is_never_shown() {
    let g = gateway("http://user:pw-s3cret@127.0.0.1:1/api", None, 2000);
    assert_eq!(g.inner.base_url, "http://user:redacted@127.0.0.1:1/api");
    assert_eq!(
        g.scrub("error sending request for url (http://user:pw-s3cret@127.0.0.1:1/api/v1)"),
        "error sending request for url (http://user:<redacted>@127.0.0.1:1/api/v1)"
    );
    assert!(!format!("{g:?}").contains("pw-s3cret"));
}

#[tokio::test]
async fn numbers_and_the_key_in_a_location_or_error_code_are_not_shown() {
    let url = canned(
        302,
        vec![(
            "location",
            "http://evil.example/x?to=01012345678&k=sk-secret",
        )],
        "",
    )
    .await;
    let g = gateway(&url, Some("sk-secret"), 2000);
    let Outcome::Halt { message, .. } = g.send(&msg("r1")).await.outcome else {
        panic!("a 302 halts");
    };
    assert!(
        message.contains("http://evil.example/x?to=010****5678"),
        "{message}"
    );
    assert!(!message.contains("sk-secret"), "{message}");

    let body = r#"{"error":"unknown 01012345678 sk-secret","message":"m"}"#;
    let url = canned(400, vec![], body).await;
    let g = gateway(&url, Some("sk-secret"), 2000);
    let outcome = g.send(&msg("r1")).await.outcome;
    assert_eq!(
        outcome.code(),
        "unknown 010****5678 <redacted>",
        "{outcome:?}"
    );
    let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(500));
    let url = canned(400, vec![], Box::leak(long.into_boxed_str())).await;
    let outcome = gateway(&url, None, 2000).send(&msg("r1")).await.outcome;
    assert_eq!(outcome.code().len(), MAX_CODE_CHARS, "{outcome:?}");
}

#[tokio::test]
async fn batch_items_with_unknown_status_or_no_gateway_id_are_in_doubt() {
    let url = canned(
        200,
        vec![],
        r#"{"results":[
            {"ref":"a","status":"queued","gateway_id":"ga"},
            {"ref":"b","status":"accepted","gateway_id":null},
            {"ref":"c","status":"rejected","error":"invalid_sender"}]}"#,
    )
    .await;
    let out: Vec<_> = gateway(&url, None, 2000)
        .send_batch(&[msg("a"), msg("b"), msg("c")])
        .await
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(out[0].code(), "bad_response");
    assert!(matches!(out[0], Outcome::InDoubt { .. }));
    assert!(matches!(out[1], Outcome::InDoubt { .. }));
    assert!(matches!(&out[2], Outcome::Halt { code, .. } if code == "invalid_sender"));
}
