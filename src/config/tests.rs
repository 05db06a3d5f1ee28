//! Tests of munja.toml parsing: defaults, every key's errors, secrets from the environment.
use super::*;
use crate::domain::compliance::DEFAULT_QUIET_HOURS;

#[test]
fn the_shipped_example_parses() {
    let text = include_str!("../../config/munja.example.toml");
    let c = Config::from_toml_str(text, Some(Path::new("config/munja.example.toml")))
        .expect("example config");
    assert_eq!(c.gateways.len(), 1);
    assert_eq!(c.policy.chunk_size, 500);
    assert_eq!(c.sender.brand.as_deref(), Some("토스페이먼츠"));
}

#[test]
fn defaults_apply_without_a_file() {
    let c = Config::from_toml_str("", None).expect("defaults");
    assert_eq!(c.policy.chunk_size, 500);
    assert_eq!(c.policy.timezone, chrono_tz::Asia::Seoul);
    assert!(c.database_url.ends_with("munja.db"));
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = Config::from_toml_str(
        "[policy]\nchunk_sise = 3\n",
        Some(Path::new("x/munja.toml")),
    )
    .expect_err("unknown key");
    let s = e.to_string();
    assert!(s.contains("x/munja.toml"), "{s}");
    assert!(s.contains("chunk_sise"), "{s}");
    assert!(s.contains("line 2"), "{s}");
}

#[test]
fn bad_value_says_expected_form() {
    let e = Config::from_toml_str("[policy]\nchunk_size = 0\n", None).expect_err("zero");
    assert_eq!(e.key, "policy.chunk_size");
    assert!(e.message.contains("from 1 to"));
}

#[test]
fn unset_api_key_env_is_an_error() {
    let t = "[[gateways]]\nname='a'\nkind='http-json'\nurl='http://x'\nrate_per_sec=5\napi_key_env='MUNJA_TEST_SURELY_UNSET_VAR'\n";
    let c = Config::from_toml_str(t, None).expect("parsed; the key is read on use");
    let e = c.gateway(None).expect_err("unset env");
    assert_eq!(e.key, "gateways[0].api_key_env");
    assert!(e.message.contains("MUNJA_TEST_SURELY_UNSET_VAR"));
}

#[test]
fn missing_required_gateway_key() {
    let t = "[[gateways]]\nname='a'\nkind='http-json'\nrate_per_sec=5\n";
    let e = Config::from_toml_str(t, None).expect_err("no url");
    assert!(e.to_string().contains("url"), "{e}");
}

const GATEWAY: &str = "[[gateways]]\nname='a'\nkind='http-json'\nurl='http://x'\n";

fn parse_err(text: &str) -> ConfigError {
    Config::from_toml_str(text, Some(Path::new("conf/munja.toml"))).expect_err("invalid")
}

#[test]
fn wrong_type_names_the_key_and_a_plain_form() {
    let e = parse_err(&format!("{GATEWAY}rate_per_sec = \"fast\"\n"));
    assert_eq!(e.key, "gateways[0].rate_per_sec", "{e}");
    let s = e.to_string();
    assert!(s.contains("conf/munja.toml"), "{s}");
    assert!(s.contains("expected a whole number"), "{s}");
    assert!(s.contains("\"fast\""), "{s}");
    assert!(s.contains("line 5"), "{s}");
    assert!(!s.contains("i64"), "{s}");
}

#[test]
fn frequency_cap_given_as_a_number() {
    let e = parse_err("[policy]\nmax_ads_per_recipient = 3\n");
    assert_eq!(e.key, "policy.max_ads_per_recipient", "{e}");
    let s = e.to_string();
    assert!(s.contains("conf/munja.toml"), "{s}");
    assert!(s.contains("{ count = N, days = D }"), "{s}");
    assert!(!s.contains("struct"), "{s}");
}

#[test]
fn unknown_key_gets_its_full_dotted_name() {
    let e = parse_err("[sender]\nbrnd = \"x\"\n");
    assert_eq!(e.key, "sender.brnd", "{e}");
    let s = e.to_string();
    assert!(s.contains("conf/munja.toml"), "{s}");
    assert!(s.contains("unknown key"), "{s}");
    assert!(s.contains("`brand`"), "{s}");
    assert!(s.contains("line 2"), "{s}");
}

#[test]
fn missing_key_gets_its_full_dotted_name() {
    let e = parse_err("[[gateways]]\nname='a'\nkind='http-json'\nrate_per_sec=5\n");
    assert_eq!(e.key, "gateways[0].url", "{e}");
    let s = e.to_string();
    assert!(s.contains("conf/munja.toml"), "{s}");
    assert!(s.contains("missing"), "{s}");
    assert!(s.contains("a text in quotes"), "{s}");
}

#[test]
fn other_plain_forms() {
    let e = parse_err("[pricing]\nsms = \"cheap\"\n");
    assert_eq!(e.key, "pricing.sms", "{e}");
    assert!(e.message.contains("expected a number"), "{e}");
    let e = parse_err("[sender]\nbrand = 3\n");
    assert_eq!(e.key, "sender.brand", "{e}");
    assert!(
        e.message.contains("expected a text in quotes, got 3"),
        "{e}"
    );
    let e = parse_err("gateways = 3\n");
    assert_eq!(e.key, "gateways", "{e}");
    assert!(e.message.contains("expected a list"), "{e}");
    let e = parse_err("[policy]\nmax_ads_per_recipient = { count = 2, days = 7, weeks = 1 }\n");
    assert_eq!(e.key, "policy.max_ads_per_recipient.weeks", "{e}");
    let e = parse_err("chunk_size = 3\n");
    assert_eq!(e.key, "chunk_size", "{e}");
    let e = parse_err("[policy\n");
    assert_eq!(e.key, "(syntax)", "{e}");
    assert!(e.message.contains("line 1"), "{e}");
}

#[test]
fn relative_paths_follow_the_config_file() {
    let c = Config::from_toml_str(
        "database_url='sqlite://d.db'\n",
        Some(Path::new("/etc/m/munja.toml")),
    )
    .expect("ok");
    assert_eq!(c.database_url, "sqlite:///etc/m/d.db");
    assert_eq!(c.templates_dir, PathBuf::from("/etc/m/templates"));
}

#[test]
fn quiet_hours_with_equal_start_and_end_is_refused_and_off_is_accepted() {
    let e = parse_err("[policy]\nquiet_hours = \"21:00-21:00\"\n");
    assert_eq!(e.key, "policy.quiet_hours", "{e}");
    let s = e.to_string();
    assert!(s.contains("conf/munja.toml"), "{s}");
    assert!(s.contains("\"off\""), "how to turn the rule off: {s}");
    let c = Config::from_toml_str("[policy]\nquiet_hours = \"off\"\n", None).expect("off");
    assert!(c.policy.quiet_hours.is_off());
    let c = Config::from_toml_str("", None).expect("defaults");
    assert_eq!(c.policy.quiet_hours.to_string(), DEFAULT_QUIET_HOURS);
}

#[test]
fn a_frequency_cap_window_too_long_for_the_calendar_is_refused() {
    let e = parse_err("[policy]\nmax_ads_per_recipient = { count = 1, days = 4294967295 }\n");
    assert_eq!(e.key, "policy.max_ads_per_recipient", "{e}");
    assert!(e.message.contains("from 1 to 3650"), "{e}");
    let c = Config::from_toml_str(
        "[policy]\nmax_ads_per_recipient = { count = 1, days = 3650 }\n",
        None,
    )
    .expect("ten years");
    assert_eq!(c.policy.max_ads_per_recipient.map(|c| c.days), Some(3650));
}

#[test]
fn delivery_keys_are_read_and_a_token_must_be_url_safe() {
    // Variables every test process has: cargo sets CARGO_PKG_NAME ("munja"); PATH has `/`.
    let t = |var: &str| {
        format!(
            "[[gateways]]\nname='k'\nkind='kannel'\nurl='http://x'\nrate_per_sec=5\n\
             username='munja'\npassword_env='CARGO_PKG_NAME'\n\
             dlr_url='http://m/v1/dlr/k'\ndlr_token_env='{var}'\n"
        )
    };
    let c = Config::from_toml_str(&t("CARGO_PKG_NAME"), None).expect("parse");
    assert_eq!(c.gateways[0].dlr_url.as_deref(), Some("http://m/v1/dlr/k"));
    let g = c.gateway(Some("k")).expect("url-safe token");
    assert_eq!(g.dlr_token.as_deref(), Some("munja"));
    let c = Config::from_toml_str(&t("PATH"), None).expect("parse");
    let e = c.gateway(Some("k")).unwrap_err();
    assert!(
        e.key.ends_with("dlr_token_env") && e.message.contains("letters, digits"),
        "{e}"
    );
    let path = std::env::var("PATH").unwrap_or_default();
    assert!(
        !e.to_string().contains(&path),
        "no secret in the error: {e}"
    );
    let bad = t("PATH").replace("http://m/v1/dlr/k", "ftp://m");
    assert!(
        Config::from_toml_str(&bad, None)
            .unwrap_err()
            .key
            .ends_with("dlr_url")
    );
}

#[test]
fn max_retry_after_secs_defaults_and_is_validated() {
    let c = Config::from_toml_str(&format!("{GATEWAY}rate_per_sec = 5\n"), None).expect("ok");
    assert_eq!(
        c.gateways[0].max_retry_after_secs,
        DEFAULT_MAX_RETRY_AFTER_SECS
    );
    let c = Config::from_toml_str(
        &format!("{GATEWAY}rate_per_sec = 5\nmax_retry_after_secs = 2\n"),
        None,
    )
    .expect("ok");
    assert_eq!(c.gateways[0].max_retry_after_secs, 2);
    for bad in ["0", "-1", "86401"] {
        let e = parse_err(&format!(
            "{GATEWAY}rate_per_sec = 5\nmax_retry_after_secs = {bad}\n"
        ));
        assert_eq!(e.key, "gateways[0].max_retry_after_secs", "{e}");
        assert!(e.message.contains("from 1 to 86400"), "{e}");
    }
}

#[test]
fn lookup_delay_ms_defaults_per_kind_is_validated_and_refused_on_kannel() {
    let nhn = "[[gateways]]\nname='n'\nkind='nhn-cloud'\napp_key_env='A'\nsecret_key_env='S'\n\
               rate_per_sec = 5\n";
    let c = Config::from_toml_str(nhn, None).expect("nhn");
    assert_eq!(c.gateways[0].lookup_delay_ms, 5_000);
    let c = Config::from_toml_str(&format!("{nhn}lookup_delay_ms = 0\n"), None).expect("0");
    assert_eq!(c.gateways[0].lookup_delay_ms, 0);
    let c = Config::from_toml_str(&format!("{GATEWAY}rate_per_sec = 5\n"), None).expect("ok");
    assert_eq!(c.gateways[0].lookup_delay_ms, 0, "http-json lists at once");
    for bad in ["-1", "600001"] {
        let e = parse_err(&format!("{nhn}lookup_delay_ms = {bad}\n"));
        assert_eq!(e.key, "gateways[0].lookup_delay_ms", "{e}");
        assert!(e.message.contains("from 0 to 600000"), "{e}");
    }
    let e = parse_err(
        "[[gateways]]\nname='k'\nkind='kannel'\nurl='http://x'\nrate_per_sec=5\n\
         username='u'\npassword_env='P'\nlookup_delay_ms = 100\n",
    );
    assert_eq!(e.key, "gateways[0].lookup_delay_ms", "{e}");
    assert!(e.message.contains("not a key of kind"), "{e}");
}
