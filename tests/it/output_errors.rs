//! munja's own stdout and stderr failing, on the real binary: a closed pipe
//! (`munja audit --format csv | head -1`) ends quietly with status 141, a full disk
//! (`> /dev/full`) with an error naming standard output and status 1, never a panic; and a
//! run whose stdout and stderr are closed from the start still sends and records every message.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::{Env, Gw, n};
use munja::tools::sim::SimConfig;

/// 141: 128 + SIGPIPE, what a shell reports for a Unix tool ended by a closed pipe.
const BROKEN_PIPE: i32 = 141;

/// Enough messages that a CSV export is far larger than a pipe's buffer (64 KiB).
const MESSAGES: u64 = 3000;

/// A campaign of [`MESSAGES`] messages, all sent.
async fn sent_campaign(env: &Env) -> String {
    let seg = env.segment_csv("seg.csv", 0, MESSAGES);
    let id = env.campaign(&seg, "hello", &[]).await;
    env.ok(&["campaign", "run", &id]).await;
    id
}

/// Runs `cmd` off the runtime's threads: returns (exit code, stderr).
async fn finish(mut cmd: Command) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let o = cmd.output().expect("run munja");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_an_export_quietly_with_status_141() {
    let env = Env::new(SimConfig::default()).await;
    let id = sent_campaign(&env).await;
    for format in ["csv", "json", "table"] {
        let mut cmd = env.cmd(&["audit", "--campaign", &id, "--format", format]);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let (code, first, stderr) = tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("spawn munja");
            // What `| head -1` does: read one line, then close the pipe.
            let mut first = String::new();
            BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut first)
                .expect("read the first line");
            let stderr = crate::common::read_stderr(&mut child);
            let status = child.wait().expect("wait for munja");
            (status.code(), first, stderr)
        })
        .await
        .expect("join");
        assert!(!first.is_empty(), "{format}: the first line arrived");
        assert_eq!(code, Some(BROKEN_PIPE), "{format}: stderr {stderr:?}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{format}: quiet, no panic: {stderr:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stdout_is_an_error_naming_it_never_a_panic() {
    let env = Env::new(SimConfig::default()).await;
    let id = sent_campaign(&env).await;
    let optouts = env.write("optouts.csv", "phone\n010-9999-0001\n");
    let optouts = optouts.to_str().expect("utf-8 path");
    for args in [
        vec!["audit", "--campaign", &id, "--format", "csv"],
        vec!["audit", "--campaign", &id],
        vec!["campaign", "status", &id, "--json"],
        vec!["campaign", "list"],
        vec!["template", "check", "hello"],
        vec!["optout", "import", optouts],
    ] {
        let mut cmd = env.cmd(&args);
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        cmd.stdout(full).stderr(Stdio::piped());
        let (code, stderr) = finish(cmd).await;
        assert_eq!(code, Some(1), "munja {args:?}: {stderr}");
        assert!(
            stderr.contains("error: writing to standard output: No space left on device"),
            "munja {args:?} names what failed: {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "munja {args:?}: {stderr:?}");
    }
    // The import itself was done: the number is on the list.
    let o = env.run(&["optout", "check", "010-9999-0001"]).await;
    assert_eq!(o.code, 0, "{}", o.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_changes_the_status_not_the_work() {
    let env = Env::new(SimConfig::default()).await;
    env.ok(&["init"]).await;
    // Two rejected rows, each reported on stderr while the import goes on.
    let seg = env.write(
        "seg.csv",
        "phone,name\n010-1234-0001,가\nnot-a-number,나\n02-123-4567,다\n010-1234-0002,라\n",
    );
    let mut cmd = env.cmd(&["segment", "import", "vip", seg.to_str().expect("utf-8")]);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    cmd.stdout(Stdio::null()).stderr(full);
    let (code, _) = finish(cmd).await;
    assert_eq!(code, Some(1), "stderr could not be written: not a success");
    let o = env.ok(&["segment", "list", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(list[0]["name"], "vip");
    assert_eq!(list[0]["member_count"], 2, "the import was done: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_stdout_and_stderr_are_closed_still_records_every_message() {
    // 500 messages a second: the run lasts some seconds and writes progress lines on its closed
    // stderr while it sends, then its summary on stderr and its JSON on the closed stdout.
    let gw = Gw {
        rate: 500,
        burst: 50,
        ..Gw::default()
    };
    let env = Env::with(SimConfig::default(), gw, "").await;
    let seg = env.segment_csv("seg.csv", 0, MESSAGES);
    let id = env.campaign(&seg, "hello", &[]).await;
    let mut cmd = env.cmd(&["campaign", "run", &id, "--json"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let code = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("spawn munja");
        // Closed before munja writes anything: every write gets EPIPE.
        drop(child.stdout.take());
        drop(child.stderr.take());
        child.wait().expect("wait for munja").code()
    })
    .await
    .expect("join");
    assert_eq!(code, Some(BROKEN_PIPE), "ended quietly, no panic (101)");
    let status = env.status(&id).await;
    assert_eq!(status["status"], "COMPLETED", "{status}");
    assert_eq!(n(&status, "sent"), MESSAGES as i64, "{status}");
    let audit = env.audit_json(&id).await;
    assert_eq!(audit.len(), MESSAGES as usize);
    assert!(
        audit
            .iter()
            .all(|m| m["status"] == "sent" && m["attempts"] == 1),
        "every message sent once and recorded"
    );
    let stats = env.sim.stats();
    assert_eq!(
        stats.accepted, MESSAGES,
        "the gateway got each message once"
    );
    assert_eq!(stats.numbers_accepted_twice, 0);
}
