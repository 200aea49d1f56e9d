//! Registering database servers and placing tenants on them.

use crate::support::{Backend, TestEnv, admin_url};

#[tokio::test]
async fn servers_are_registered_checked_and_used_for_placement() {
    let env = TestEnv::new(Backend::FileLocal).await;
    assert_eq!(
        env.json(&["db-server", "list", "--json"]),
        serde_json::json!([])
    );
    let url = admin_url("postgres");
    let out = env.ok(&[
        "db-server",
        "add",
        "pg-a",
        "--url",
        &url,
        "--max-connections",
        "50",
    ]);
    assert!(out.contains("registered database server 'pg-a'"), "{out}");
    // The URL can also come from the environment, so it stays out of the process list.
    let out = crate::support::output_within(
        env.command()
            .env("PORTICO_DB_SERVER_URL", &url)
            .args(["db-server", "add", "pg-b"]),
        crate::support::COMMAND_LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.run(&["db-server", "add", "pg-a", "--url", &url])
        .assert_error("already registered");

    let servers = env.json(&["db-server", "list", "--json"]);
    let servers = servers.as_array().expect("array");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["name"], "pg-a");
    assert_eq!(servers[0]["max_connections"], 50);
    // pg-b took the server's own max_connections.
    assert!(servers[1]["max_connections"].as_i64().expect("n") > 0);
    let password = url::Url::parse(&url)
        .expect("url")
        .password()
        .expect("password")
        .to_owned();
    for s in servers {
        let shown = s["url"].as_str().expect("url");
        assert!(!shown.contains(&password), "{shown}");
        assert!(
            shown.starts_with("postgres://postgres@127.0.0.1:"),
            "{shown}"
        );
    }
    let human = env.ok(&["db-server", "list"]);
    assert!(!human.contains(&password));

    // Explicit placement, then least-loaded placement (pg-a has a tenant, so pg-b is next).
    let t = env.json(&["tenant", "create", "one", "--db-server", "pg-a", "--json"]);
    assert_eq!(t["placement"]["db_server"], "pg-a");
    let t = env.json(&["tenant", "create", "two", "--json"]);
    assert_eq!(t["placement"]["db_server"], "pg-b");
    env.assert_provisioned("one").await;
    env.assert_provisioned("two").await;
    // No implicit `default` server once servers are registered.
    let names: Vec<String> = env
        .json(&["db-server", "list", "--json"])
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["pg-a", "pg-b"]);
    env.cleanup().await;
}

#[tokio::test]
async fn the_control_plane_server_is_the_default() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let t = env.json(&["tenant", "create", "solo", "--json"]);
    assert_eq!(t["placement"]["db_server"], "default");
    let servers = env.json(&["db-server", "list", "--json"]);
    assert_eq!(servers[0]["name"], "default");
    assert_eq!(servers[0]["tenants"], 1);
    env.cleanup().await;
}
