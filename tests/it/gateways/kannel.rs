//! A real Kannel on loopback: bearerbox with a fake SMSC, smsbox with a `sendsms-user`, and
//! Debian's `fakesmsc` (kannel-extras) connected as the SMSC, printing every message it gets.
//! Checks that a Korean campaign arrives once per recipient with its Hangul intact (UCS-2), and
//! that a run killed mid-way resends nothing it cannot prove unsent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use munja::tools::bench::kannel::Children;
use munja::tools::sim::SimConfig;

use super::{add_gateway, create, free_port, run_with, wait_until};
use crate::common::{Env, Gw, n, number};

const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";
const PASSWORD: &str = "kannel-pw-1";
const PW_VAR: &str = "MUNJA_TEST_KANNEL_PASSWORD";

/// The three Kannel processes of one test, killed when dropped.
struct Kannel {
    // Fields drop in order: the processes are killed before their directory goes.
    children: Children,
    dir: tempfile::TempDir,
    sendsms_port: u16,
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Kannel {
    async fn start() -> Kannel {
        for bin in [BEARERBOX, SMSBOX, FAKESMSC] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: apt-get install kannel kannel-extras (.ci/run does)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (admin, boxes, smsc, sendsms) = (free_port(), free_port(), free_port(), free_port());
        let ports = munja::tools::bench::kannel::Ports {
            admin,
            boxes,
            smsc,
            sendsms,
        };
        let conf = munja::tools::bench::kannel::conf(dir.path(), ports, 1, PASSWORD);
        let conf_path = dir.path().join("kannel.conf");
        std::fs::write(&conf_path, conf).expect("kannel.conf");
        let quiet = |bin: &str, args: &[&str], err: Stdio| {
            Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
        };
        let conf_arg = conf_path.to_str().expect("utf-8 path").to_string();
        let mut k = Kannel {
            dir,
            children: Children::default(),
            sendsms_port: sendsms,
        };
        k.children
            .0
            .push(quiet(BEARERBOX, &[&conf_arg], Stdio::null()));
        wait_until("bearerbox", 20, || port_open(boxes) && port_open(smsc)).await;
        k.children
            .0
            .push(quiet(SMSBOX, &[&conf_arg], Stdio::null()));
        let log = std::fs::File::create(k.fake_log()).expect("fakesmsc log");
        let smsc_port = smsc.to_string();
        k.children.0.push(quiet(
            FAKESMSC,
            &["-H", "127.0.0.1", "-r", &smsc_port, "-m", "0", "1 2 text x"],
            Stdio::from(log),
        ));
        wait_until("smsbox", 20, || port_open(sendsms)).await;
        let status = format!("http://127.0.0.1:{admin}/status.txt?password=adm");
        let client = reqwest::Client::new();
        let t0 = std::time::Instant::now();
        loop {
            let body = match client.get(&status).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if body.contains("online") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "fake SMSC never online: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        k
    }

    fn fake_log(&self) -> PathBuf {
        self.dir.path().join("fakesmsc.log")
    }

    /// Every message fakesmsc received: (receiver, text).
    fn received(&self) -> Vec<(String, String)> {
        let log = std::fs::read_to_string(self.fake_log()).unwrap_or_default();
        log.lines().filter_map(parse_fake_line).collect()
    }

    /// How many times each receiver got a message.
    fn per_receiver(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (to, _) in self.received() {
            *m.entry(to).or_insert(0) += 1;
        }
        m
    }

    fn gateway_entry(&self, extra: &str) -> String {
        format!(
            "name = \"kannel\"\nkind = \"kannel\"\nurl = \"http://127.0.0.1:{}\"\n\
             username = \"munja\"\npassword_env = \"{PW_VAR}\"\n{extra}",
            self.sendsms_port
        )
    }
}

/// `... Got message 1: <15881234 01012345678 ucs-2 %00(%AD%11...>`: receiver and text (the
/// UCS-2 big-endian bytes, URL-encoded with `+` for 0x20).
fn parse_fake_line(line: &str) -> Option<(String, String)> {
    let inner = line.split_once("Got message ")?.1.split_once(": <")?.1;
    let inner = inner.strip_suffix('>')?;
    let mut parts = inner.splitn(4, ' ');
    let (_from, to, coding, data) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let bytes = url_decode(data);
    let text = if coding == "ucs-2" {
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((to.to_string(), text))
}

fn url_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    out
}

/// A test environment whose munja.toml also has Kannel `k` as gateway `kannel`.
async fn kannel_env(k: &Kannel, policy: &str, extra: &str) -> Env {
    let env = Env::with(SimConfig::default(), Gw::default(), policy).await;
    add_gateway(&env, &k.gateway_entry(extra));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_korean_campaign_reaches_fakesmsc_once_per_recipient_with_its_text_intact() {
    let k = Kannel::start().await;
    let env = kannel_env(&k, "", "rate_per_sec = 200\nbatch_size = 10\n").await;
    let vars = [(PW_VAR, PASSWORD)];
    let seg = env.segment_csv("seg.csv", 0, 25);
    let seg = seg.to_str().expect("utf-8");
    // Personalised: one request per recipient.
    let id = create(
        &env,
        &vars,
        seg,
        &["--template", "hello", "--gateway", "kannel"],
    )
    .await;
    let o = run_with(&env, &vars, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    wait_until("25 messages at fakesmsc", 30, || k.received().len() >= 25).await;
    let got = k.received();
    assert_eq!(got.len(), 25, "{got:?}");
    for i in 0..25 {
        let to = number(i);
        let texts: Vec<&String> = got
            .iter()
            .filter(|(r, _)| *r == to)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(texts.len(), 1, "{to}: {texts:?}");
        let t = texts[0];
        assert!(
            t.starts_with("(광고)토스페이먼츠") || t.starts_with("(광고) 토스페이먼츠"),
            "{t}"
        );
        assert!(t.contains(&format!("고객{i}님 안녕하세요")), "{t}");
        assert!(t.contains("무료수신거부"), "{t}");
    }
    let st = env.status(&id).await;
    assert_eq!(n(&st, "sent"), 25, "{st}");

    // Identical texts share requests (one text, several `to`): still once each.
    // Through the query-string form of sendsms this time.
    let env2 = kannel_env(
        &k,
        "",
        "rate_per_sec = 200\nbatch_size = 10\nmethod = \"get\"\n",
    )
    .await;
    env2.write("templates/same.txt", "봄맞이 특가 안내");
    let seg2 = env2.segment_csv("seg.csv", 100, 23);
    let id2 = create(
        &env2,
        &vars,
        seg2.to_str().expect("utf-8"),
        &["--template", "same", "--gateway", "kannel"],
    )
    .await;
    let o = run_with(&env2, &vars, &["campaign", "run", &id2]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    wait_until("48 messages at fakesmsc", 30, || k.received().len() >= 48).await;
    let per = k.per_receiver();
    for i in 100..123 {
        assert_eq!(per.get(&number(i)), Some(&1), "{}", number(i));
    }
    assert!(
        k.received()
            .iter()
            .all(|(to, t)| to < &number(100) || t.contains("봄맞이 특가 안내"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_resends_nothing_without_proof() {
    let k = Kannel::start().await;
    let env = kannel_env(
        &k,
        "chunk_size = 20",
        "rate_per_sec = 20\nburst = 5\nconcurrency = 2\n",
    )
    .await;
    let vars = [(PW_VAR, PASSWORD)];
    let seg = env.segment_csv("seg.csv", 0, 120);
    let id = create(
        &env,
        &vars,
        seg.to_str().expect("utf-8"),
        &["--template", "hello", "--gateway", "kannel"],
    )
    .await;
    let mut cmd = env.cmd(&["campaign", "run", &id]);
    cmd.env(PW_VAR, PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn munja");
    wait_until("30 messages at fakesmsc", 60, || k.received().len() >= 30).await;
    // SIGKILL: no chance to commit what is in flight.
    child.kill().expect("kill munja");
    child.wait().expect("reap munja");
    let st = env.status(&id).await;
    let committed_sent = n(&st, "sent");

    let o = run_with(&env, &vars, &["campaign", "run", &id]).await;
    assert_eq!(
        o.code,
        2,
        "ends STOPPED with messages in doubt:\n{}",
        o.all()
    );
    assert!(o.stderr.contains("in doubt"), "{}", o.all());
    let st = env.status(&id).await;
    let (sent, in_doubt) = (n(&st, "sent"), n(&st, "in_doubt"));
    wait_until("Kannel to deliver every sent message", 30, || {
        k.received().len() as i64 >= sent
    })
    .await;
    assert!(in_doubt > 0, "the killed run had requests in flight: {st}");
    assert_eq!(sent + in_doubt, 120, "{st}");
    assert!(sent >= committed_sent);
    // Nothing was sent twice, and nothing in doubt was sent again: every message `sent` reached
    // fakesmsc exactly once, every one in doubt at most once (it may have been in flight).
    let per = k.per_receiver();
    let audit = env.audit_json(&id).await;
    for r in &audit {
        let phone = r["phone"].as_str().expect("phone");
        let got = per.get(phone).copied().unwrap_or(0);
        match r["status"].as_str() {
            Some("sent") => assert_eq!(got, 1, "{r}"),
            Some("in_doubt") => assert!(got <= 1, "{r}"),
            _ => panic!("unexpected row {r}"),
        }
    }
    let doubt = audit.iter().filter(|r| r["status"] == "in_doubt").count();
    assert_eq!(doubt as i64, in_doubt);
    // Each was recorded in doubt once; runs that can learn nothing new add nothing to it.
    let db = env.db().await;
    let doubt_attempts = format!(
        "SELECT COUNT(*) FROM attempts a JOIN messages m ON m.id = a.message_id \
         WHERE m.campaign_id = {id} AND m.state = 'in_doubt'"
    );
    let unavailable_per_message = format!(
        "SELECT COALESCE(MAX(k), 0) FROM (SELECT COUNT(*) AS k FROM attempts \
         WHERE campaign_id = {id} AND outcome = 'lookup_unavailable' GROUP BY message_id) t"
    );
    let attempts_before = db.scalar(&doubt_attempts).await;
    let o = run_with(&env, &vars, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "{}", o.all());
    assert!(
        o.stderr.contains("cannot be asked") && o.stderr.contains("--resend-in-doubt"),
        "says why it stops and what settles them:\n{}",
        o.all()
    );
    assert_eq!(
        db.scalar(&doubt_attempts).await,
        attempts_before,
        "a run with nothing new to learn records nothing"
    );
    assert!(db.scalar(&unavailable_per_message).await <= 1);
    assert_eq!(n(&env.status(&id).await, "in_doubt"), in_doubt);

    // A delivery report proves one of them sent: the next run settles it as sent, resends
    // nothing, and leaves the others in doubt.
    // One that reached fakesmsc if there is one: a report about a message whose request the
    // kill cut off is believed all the same (munja cannot tell), and that number would then
    // never be reached.
    let reached = k.per_receiver();
    let proved = audit
        .iter()
        .filter(|r| r["status"] == "in_doubt")
        .max_by_key(|r| reached.get(r["phone"].as_str().unwrap_or("")).copied())
        .expect("a message in doubt");
    let proved_reached = reached.contains_key(proved["phone"].as_str().unwrap_or(""));
    let (proved_ref, proved_phone) = (
        proved["ref"].as_str().expect("ref").to_string(),
        proved["phone"].as_str().expect("phone").to_string(),
    );
    let url = match &env.pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", env.path("munja.db").display()),
    };
    let store = munja::store::open_existing(&url)
        .await
        .expect("open the store");
    store
        .record_delivery(&munja::domain::model::DeliveryReport {
            gateway: "kannel".into(),
            msg_ref: proved_ref.clone(),
            status: munja::domain::model::ReportStatus::Final(
                munja::domain::model::DeliveryState::Delivered,
            ),
            code: Some("type 1".into()),
            at: chrono::Utc::now(),
        })
        .await
        .expect("record the report");
    let before = k.per_receiver().get(&proved_phone).copied().unwrap_or(0);
    let o = run_with(&env, &vars, &["campaign", "run", &id]).await;
    assert_eq!(o.code, 2, "the rest stay in doubt:\n{}", o.all());
    let st = env.status(&id).await;
    assert_eq!(
        (n(&st, "sent"), n(&st, "in_doubt")),
        (sent + 1, in_doubt - 1),
        "{st}"
    );
    let row = env
        .audit_json(&id)
        .await
        .into_iter()
        .find(|r| r["ref"] == proved_ref.as_str())
        .expect("the proved row");
    assert_eq!(row["status"], "sent", "{row}");
    assert_eq!(
        k.per_receiver().get(&proved_phone).copied().unwrap_or(0),
        before,
        "proved by its report, not resent"
    );
    let proved_attempts = format!(
        "SELECT COUNT(*) FROM attempts a JOIN messages m ON m.id = a.message_id \
         WHERE m.campaign_id = {id} AND m.ref = '{proved_ref}'"
    );
    assert!(db.scalar(&proved_attempts).await >= 1);
    assert_eq!(
        db.scalar(&doubt_attempts).await + db.scalar(&proved_attempts).await,
        attempts_before + 1,
        "only the proved message got an attempt (its lookup_found)"
    );
    assert!(db.scalar(&unavailable_per_message).await <= 1);

    // Only the operator's explicit word resends them.
    let o = run_with(&env, &vars, &["campaign", "run", &id, "--resend-in-doubt"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
    let st = env.status(&id).await;
    assert_eq!((n(&st, "sent"), n(&st, "in_doubt")), (120, 0), "{st}");
    // Kannel delivers to fakesmsc after it accepted: under a loaded test run that queue can
    // take a while (a full PostgreSQL pass once needed more than 30 s).
    // (The proved message counts once it arrives, late or not at all: see above.)
    wait_until("every number reached", 90, || {
        let per = k.per_receiver();
        (0..120).all(|i| {
            let phone = audit[i]["phone"].as_str().unwrap_or("");
            per.contains_key(phone) || (phone == proved_phone && !proved_reached)
        })
    })
    .await;
}
