//! A real Kannel (bearerbox + smsbox + fakesmsc from Debian's kannel and kannel-extras) on free
//! loopback ports, sending with the `dlr-url` munja builds for each message: its delivery
//! reports (type 8 "SMSC accepted", then type 1 "delivered") reach the audit through
//! `munja serve`.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use super::*;
use crate::common::{Env, n};
use munja::tools::sim::SimConfig;

const BEARERBOX: &str = "/usr/sbin/bearerbox";
const SMSBOX: &str = "/usr/sbin/smsbox";
const FAKESMSC: &str = "/usr/lib/kannel/test/fakesmsc";

/// Kannel's processes, killed (SIGKILL, by their own ids) when the test ends.
struct Kannel {
    children: Vec<Child>,
    sendsms: String,
}

impl Drop for Kannel {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.out"))).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {name}: {e} (install Debian's kannel and kannel-extras)")
        })
}

async fn start_kannel(dir: &Path) -> Kannel {
    for bin in [BEARERBOX, SMSBOX, FAKESMSC] {
        assert!(
            Path::new(bin).exists(),
            "{bin} missing: apt-get install kannel kannel-extras"
        );
    }
    let (admin, boxp, smsc, sendsms) = (free_port(), free_port(), free_port(), free_port());
    let d = dir.display();
    let conf = dir.join("kannel.conf");
    std::fs::write(
        &conf,
        format!(
            "group = core\nadmin-port = {admin}\nadmin-password = adm\nsmsbox-port = {boxp}\n\
             log-level = 1\nlog-file = \"{d}/bearerbox.log\"\nbox-allow-ip = \"127.0.0.1\"\n\
             dlr-storage = internal\n\n\
             group = smsc\nsmsc = fake\nsmsc-id = fake\nhost = 127.0.0.1\nport = {smsc}\n\
             connect-allow-ip = \"127.0.0.1\"\n\n\
             group = smsbox\nbearerbox-host = 127.0.0.1\nbearerbox-port = {boxp}\n\
             sendsms-port = {sendsms}\nlog-file = \"{d}/smsbox.log\"\nlog-level = 1\n\n\
             group = sendsms-user\nusername = munja\npassword = pw\nmax-messages = 10\n"
        ),
    )
    .expect("write kannel.conf");
    let mut k = Kannel {
        children: vec![],
        sendsms: format!("http://127.0.0.1:{sendsms}/cgi-bin/sendsms"),
    };
    k.children
        .push(spawn(dir, "bearerbox", Command::new(BEARERBOX).arg(&conf)));
    eventually(30, "bearerbox's smsc port", || async {
        std::net::TcpStream::connect(("127.0.0.1", smsc))
            .ok()
            .map(|_| ())
    })
    .await;
    let port = smsc.to_string();
    let mut fake = Command::new(FAKESMSC);
    fake.args([
        "-H",
        "127.0.0.1",
        "-r",
        &port,
        "-i",
        "1",
        "-m",
        "0",
        "1 2 text x",
    ])
    .current_dir(dir);
    k.children.push(spawn(dir, "fakesmsc", &mut fake));
    k.children
        .push(spawn(dir, "smsbox", Command::new(SMSBOX).arg(&conf)));
    eventually(30, "smsbox's sendsms port", || async {
        std::net::TcpStream::connect(("127.0.0.1", sendsms))
            .ok()
            .map(|_| ())
    })
    .await;
    k
}

#[tokio::test]
async fn kannel_delivery_reports_reach_the_audit_through_munja_serve() {
    let env = Env::new(SimConfig::default()).await;
    let (id, refs) = sent_campaign(&env, 3, "http://127.0.0.1:9").await;
    let serve = Serve::start(&env);
    let kannel = start_kannel(env.dir.path()).await;
    let dlr_base = format!("{}/v1/dlr/kannel", serve.base);
    let http = reqwest::Client::new();
    for (i, r) in refs.iter().enumerate() {
        let dlr = munja::run::delivery::kannel_dlr_url(&dlr_base, Some(KANNEL_TOKEN), r);
        let to = crate::common::number(i as u64);
        let params = [
            ("username", "munja"),
            ("password", "pw"),
            ("from", "15881234"),
            ("to", to.as_str()),
            ("text", "(광고) 토스페이먼츠 안녕하세요"),
            ("charset", "UTF-8"),
            ("coding", "2"),
            ("dlr-mask", "31"),
            ("dlr-url", dlr.as_str()),
        ];
        let url = reqwest::Url::parse_with_params(&kannel.sendsms, params).expect("sendsms url");
        let (code, text) = eventually(30, "Kannel accepting sendsms", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let resp = http.get(url).send().await.ok()?;
                let code = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (code == 202).then_some((code, text))
            }
        })
        .await;
        assert_eq!(code, 202, "{text}");
    }
    let st: Value = eventually(
        60,
        "Kannel's delivery reports for every message",
        || async {
            let st = env.status(&id).await;
            (n(&st, "delivered") == 3).then_some(st)
        },
    )
    .await;
    assert_eq!(n(&st, "undelivered"), 0, "{st}");
    let rows = audit(&env, &id, Some("delivered")).await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r["delivered_at"].is_string()),
        "{rows:?}"
    );

    // Kannel's type 8 ("SMSC accepted": proof it was sent) is in the report log too.
    let url = match env.db_url.strip_prefix("sqlite://") {
        Some(rel) => format!("sqlite://{}", env.path(rel).display()),
        None => env.db_url.clone(),
    };
    let store = munja::store::open_existing(&url).await.expect("open store");
    let log = eventually(30, "the SMSC acceptance report", || {
        let (store, r) = (store.clone(), refs[0].clone());
        async move {
            let log = store.delivery_reports(&r).await.ok()?;
            log.iter()
                .any(|l| l.status == "intermediate")
                .then_some(log)
        }
    })
    .await;
    assert!(
        log.iter()
            .any(|l| l.status == "delivered" && l.effect == "applied"),
        "{log:?}"
    );
    assert!(log.iter().all(|l| l.gateway == "kannel"), "{log:?}");
    assert!(munja::run::delivery::kannel_proves_sent(&log), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.code.as_deref() == Some("type 8: ACK/")),
        "{log:?}"
    );
    drop(kannel);
    assert_eq!(serve.stop().await.0, 0);
}
