//! The bound on the text one render builds, on the real binary: `template check` on a template
//! that would build 100 MB (or write 5 MB) fails at once, naming the template and the bound,
//! and the process never holds such a text (its own peak RSS, `VmHWM`).

use std::process::Stdio;

use crate::common::Env;
use munja::tools::bench::PeakWatch;
use munja::tools::sim::SimConfig;

/// Far below the 100 MB a built `"x" * 100000000` would take, above munja's own size.
const BOUND_MIB: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_check_refuses_a_huge_text_at_once_in_little_memory() {
    let env = Env::new(SimConfig::default()).await;
    env.write(
        "templates/huge.txt",
        r#"{{ name }}님 {{ "x" * 100000000 }}"#,
    );
    env.write("templates/long.txt", r#"{{ name }}님 {{ "x" * 5000000 }}"#);
    env.write(
        "templates/loop.txt",
        r#"{{ name }}님 {% for i in range(100000) %}{{ "y" * 1000 }}{% endfor %}"#,
    );
    for (name, what) in [
        ("huge", "the template does too much work for one message"),
        ("long", "the template writes a text longer than the bound"),
        ("loop", "the template writes a text longer than the bound"),
    ] {
        let mut cmd = env.cmd(&["template", "check", name]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let report = env.path(&format!("peak-{name}"));
        let (code, stderr, peak_mib) = tokio::task::spawn_blocking(move || {
            let (mut child, watch) = PeakWatch::spawn(&mut cmd, report).expect("spawn munja");
            let stderr = crate::common::read_stderr(&mut child);
            let (status, kib) = watch.finish(child).expect("wait for munja");
            (status.code(), stderr, kib / 1024)
        })
        .await
        .expect("join");
        eprintln!("template check {name}: peak RSS {peak_mib} MiB: {stderr}");
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("template '{name}'")) && stderr.contains(what),
            "{name}: names the template and what is wrong: {stderr}"
        );
        assert!(
            stderr.contains("64 KiB"),
            "{name}: names the bound: {stderr}"
        );
        assert!(
            peak_mib < BOUND_MIB,
            "{name}: peaked at {peak_mib} MiB (bound {BOUND_MIB} MiB)"
        );
    }
}
