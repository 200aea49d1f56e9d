//! README command one: `portico demo` provisions two tenants on embedded defaults, serves
//! them (the `curl` line it prints works), and cleans up on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A demo run (cluster start, two tenants, shutdown) takes seconds; past this it is killed.
const DEMO_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

fn spawn_demo(home: &std::path::Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico-under-test"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTICO_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("demo")
        .env("HOME", home)
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the demo")
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
}

/// The path printed after `label` on a line like `  PostgreSQL: …, cluster in /tmp/x`.
fn path_after<'a>(output: &'a str, line_start: &str, marker: &str) -> &'a str {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(line_start))
        .unwrap_or_else(|| panic!("no '{line_start}' line in:\n{output}"));
    line.split(marker).nth(1).expect("path").trim()
}

/// Runs the demo, sends it SIGINT once it prints a line starting with `interrupt_at`, and
/// checks a clean end: exit 0, "demo stopped cleanly", and its cluster and data directories,
/// which existed when the signal was sent, gone. Returns everything it printed.
fn demo_interrupted_at(interrupt_at: &str, while_running: impl FnOnce(&str)) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_demo(home.path());
    let _watchdog = crate::support::Watchdog::arm(child.id(), DEMO_LIMIT);
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = String::new();
    let reached = lines.by_ref().any(|line| {
        let line = line.expect("stdout");
        seen.push_str(&line);
        seen.push('\n');
        line.starts_with(interrupt_at)
    });
    if !reached {
        let out = child.wait_with_output().expect("wait");
        panic!(
            "the demo never printed '{interrupt_at}':\n{seen}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cluster_dir = path_after(&seen, "PostgreSQL:", "cluster in ").to_owned();
    let demo_dir = path_after(&seen, "storage:", "file://")
        .trim_end_matches("/storage")
        .to_owned();
    for dir in [&cluster_dir, &demo_dir] {
        assert!(
            std::path::Path::new(dir).exists(),
            "{dir} missing while running"
        );
    }

    while_running(&seen);
    interrupt(&child);
    for line in lines {
        seen.push_str(&line.expect("stdout"));
        seen.push('\n');
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "demo exited with {:?}:\n{seen}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen.contains("demo stopped cleanly"), "{seen}");
    for dir in [&cluster_dir, &demo_dir] {
        assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    }
    seen
}

#[test]
fn demo_provisions_two_tenants_and_stops_cleanly_on_ctrl_c() {
    let seen = demo_interrupted_at("demo ready", |out| {
        // The printed curl line works: the tenant API answers with the printed token.
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("try:"))
            .unwrap_or_else(|| panic!("no 'try:' line in:\n{out}"));
        let token = line
            .split("Bearer ")
            .nth(1)
            .and_then(|t| t.split('\'').next())
            .expect("token");
        let url = line.split_whitespace().last().expect("url");
        let rest = url.strip_prefix("http://").expect("http URL");
        let (authority, path) = rest.split_once('/').expect("path");
        let (host, port) = authority.rsplit_once(':').expect("port");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port")))
            .expect("connect to the demo");
        use std::io::{Read, Write};
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"slug\":\"acme\""), "{answer}");
        // The printed upload line works too (file storage, local key, no scanner).
        let upload = out
            .lines()
            .find(|l| l.trim_start().starts_with("upload:"))
            .unwrap_or_else(|| panic!("no 'upload:' line in:\n{out}"));
        let url = upload.rsplit('\'').nth(1).expect("quoted URL");
        let path = url
            .strip_prefix(&format!("http://{authority}"))
            .expect("same host");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("port")))
            .expect("connect to the demo");
        let body = b"%PDF-1.4 demo invoice";
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/pdf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("request");
        s.write_all(body).expect("body");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(sign_in_as_printed(out, addr));
    });
    for needle in [
        "acme",
        "globex",
        "Acme Corporation",
        "portal.globex.example",
        "active",
    ] {
        assert!(seen.contains(needle), "demo output lacks {needle}:\n{seen}");
    }
}

/// The printed sign-ins work: the local admin of acme with the printed password, and (the test
/// machine has Node.js) a user of globex through the demo OpenID Connect IdP.
async fn sign_in_as_printed(out: &str, addr: std::net::SocketAddr) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("sign in (local account):"))
        .unwrap_or_else(|| panic!("no local sign-in line in:\n{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let (url, email, password) = (words[4], words[6], words[8]);
    let login = url::Url::parse(url).expect("login URL");
    let host = login.host_str().expect("host").to_owned();
    let mut b = crate::idp::Browser::at(addr);
    let page = b.get(&host, "/login").await;
    let csrf = page.field("csrf").expect("login form");
    let done = b
        .post(
            &host,
            "/login",
            &[("csrf", &csrf), ("email", email), ("password", password)],
        )
        .await;
    assert_eq!(done.status, 303, "{done:?}");
    let me = b.whoami(&host).await.expect("signed in");
    assert_eq!(me["caller"]["role"], "admin");

    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("sign in (OpenID Connect):"))
        .unwrap_or_else(|| panic!("no OIDC sign-in line (Node.js is installed here):\n{out}"));
    let url = line.split_whitespace().nth(4).expect("url");
    let issuer = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("demo IdP:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("IdP line");
    let host = url::Url::parse(url)
        .expect("url")
        .host_str()
        .expect("host")
        .to_owned();
    let start = b.get(&host, "/sso/demo-idp/start").await;
    let auth = start.location.expect("to the IdP");
    let back = crate::idp::oidc_sign_in(issuer, issuer, &auth, "grace").await;
    let done = b.follow(&back).await;
    assert_eq!(done.status, 303, "{done:?}");
    let me = b.whoami(&host).await.expect("signed in");
    assert_eq!(me["caller"]["email"], "grace@globex.example");
}

/// Ctrl-C while tenants are still being provisioned ends the demo cleanly too (before the
/// signal handlers were installed up front, it killed the process and left PostgreSQL
/// running).
#[test]
fn demo_interrupted_during_setup_cleans_up() {
    let seen = demo_interrupted_at("provisioning tenant", |_| {});
    assert!(seen.contains("interrupted during setup"), "{seen}");
}
