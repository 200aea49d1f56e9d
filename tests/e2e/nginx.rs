//! `infra/nginx/` is a valid nginx configuration (`nginx -t`), and it forwards what Portico
//! relies on: Host, a replaced X-Forwarded-For, the request id.

use std::process::Command;

fn nginx() -> String {
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(String::from)
    .or_else(|| {
        Command::new("sh")
            .args(["-c", "command -v nginx"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    })
    .expect("nginx is not installed: run ./infra/install.sh (README test command does)")
}

#[test]
fn the_reverse_proxy_config_passes_nginx_t() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = repo.join("infra/nginx");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A self-signed certificate where the config expects the real one.
    let cert = d.join("wildcard.portal.example.com.crt");
    let key = d.join("wildcard.portal.example.com.key");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg("/CN=*.portal.example.com")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["portico.conf", "portico-tls.conf", "portico-proxy.conf"] {
        let text = std::fs::read_to_string(src.join(file)).expect("config");
        let text = text
            .replace("/etc/portico/tls/", &format!("{}/", d.display()))
            .replace("/etc/portico/nginx/", &format!("{}/", d.display()));
        std::fs::write(d.join(file), text).expect("write");
    }
    let proxy = std::fs::read_to_string(src.join("portico-proxy.conf")).expect("proxy");
    for line in [
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Request-Id $request_id;",
    ] {
        assert!(proxy.contains(line), "portico-proxy.conf lacks `{line}`");
    }
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  include {d}/portico.conf;\n}}\n",
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), main).expect("main config");
    let out = Command::new(nginx())
        .arg("-t")
        .arg("-p")
        .arg(d)
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .output()
        .expect("nginx -t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nginx -t failed:\n{stderr}");
    assert!(stderr.contains("test is successful"), "{stderr}");
}
