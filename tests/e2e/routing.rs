//! The routing layer over real HTTP: host → tenant, tokens bound to their tenant, suspension
//! seen by two instances within a second, the connection budget, pool eviction, client
//! addresses behind proxies, malformed hosts, problem+json everywhere, graceful shutdown.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{Backend, OPERATOR_HOST, TestEnv, host_of, within};

/// Whether `GET /api/v1/tenant` on `host` answers `status` within a second (a catalog change
/// reaching the instance through its notifications).
async fn answers_within_a_second(
    server: &crate::support::Server,
    host: &str,
    token: &str,
    status: u16,
) -> bool {
    within(Duration::from_secs(1), || async {
        server.get(host, "/api/v1/tenant", Some(token)).await.status == status
    })
    .await
    .is_some()
}

/// Generous limits so that only notifications (never the TTL) can explain a change.
const NO_TTL: (&str, &str) = ("PORTICO_TENANT_CACHE_TTL_S", "86400");

#[tokio::test]
async fn tenant_api_answers_only_for_its_own_host() {
    tenant_api_answers_only_for_its_own_host_on(TestEnv::new(Backend::FileLocal).await).await;
}

/// The same on the pooled tier: tenants in one shared database, behind role switching.
#[tokio::test]
async fn tenant_api_answers_only_for_its_own_host_pooled() {
    tenant_api_answers_only_for_its_own_host_on(TestEnv::pooled(Backend::FileLocal).await).await;
}

async fn tenant_api_answers_only_for_its_own_host_on(env: TestEnv) {
    env.ok(&[
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme Corp",
        "--domain",
        "portal.acme.example",
    ]);
    env.ok(&["tenant", "create", "globex"]);
    let acme = env.tenant_token("acme", "ci", "admin");
    let globex = env.tenant_token("globex", "ci", "member");
    let server = env.serve(&[NO_TTL]);
    let (a, g) = (host_of("acme"), host_of("globex"));

    let r = server.get(&a, "/api/v1/tenant", Some(&acme)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["slug"], "acme");
    assert_eq!(r.body["display_name"], "Acme Corp");
    let me = server.get(&a, "/api/v1/me", Some(&acme)).await;
    assert_eq!(me.body["tenant"], "acme");
    assert_eq!(me.body["caller"]["kind"], "api_token");
    assert_eq!(me.body["caller"]["role"], "admin");
    assert_eq!(me.body["caller"]["name"], "ci");
    // Host case, port and trailing dot do not matter.
    let r = server
        .get(
            &format!("ACME.Portal.Test.:{}", server.addr.port()),
            "/api/v1/me",
            Some(&acme),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");

    // A token works on its own tenant's host only, both ways.
    server
        .get(&g, "/api/v1/tenant", Some(&acme))
        .await
        .assert_problem(401, "invalid_token");
    server
        .get(&a, "/api/v1/me", Some(&globex))
        .await
        .assert_problem(401, "invalid_token");
    assert_eq!(
        server.get(&g, "/api/v1/me", Some(&globex)).await.body["tenant"],
        "globex"
    );

    // Missing, malformed and non-bearer credentials.
    let r = server.get(&a, "/api/v1/me", None).await;
    r.assert_problem(401, "unauthenticated");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    server
        .get(&a, "/api/v1/me", Some("ptk_short"))
        .await
        .assert_problem(401, "invalid_token");
    let r = server
        .request(
            Method::GET,
            &a,
            "/api/v1/me",
            None,
            &[("authorization", "Basic YTpi")],
            None,
        )
        .await;
    r.assert_problem(401, "invalid_token");

    // Revoked and expired tokens stop working at once.
    let doomed = env.tenant_token("acme", "doomed", "member");
    assert_eq!(
        server.get(&a, "/api/v1/me", Some(&doomed)).await.status,
        200
    );
    env.ok(&["tenant", "token", "revoke", "acme", "doomed"]);
    server
        .get(&a, "/api/v1/me", Some(&doomed))
        .await
        .assert_problem(401, "invalid_token");
    let expiring = env.tenant_token("acme", "expiring", "member");
    assert_eq!(
        server.get(&a, "/api/v1/me", Some(&expiring)).await.status,
        200
    );
    let placement = env.json(&["tenant", "show", "acme", "--json"]);
    let tenant_db = env.tenant_db("acme").await;
    tenant_db
        .execute(
            "update api_tokens set expires_at = now() - interval '1 second' where name = 'expiring'",
            &[],
        )
        .await
        .expect("expire");
    server
        .get(&a, "/api/v1/me", Some(&expiring))
        .await
        .assert_problem(401, "invalid_token");
    // Only hashes are stored.
    let stored: Vec<Vec<u8>> = tenant_db
        .query("select token_hash from api_tokens", &[])
        .await
        .expect("hashes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(stored.iter().all(|h| h.len() == 32));
    let list = env.ok(&["tenant", "token", "list", "acme"]);
    assert!(list.contains("doomed") && !list.contains("ptk_"), "{list}");

    // Unknown hosts, the bare base domain, the operator host and an unverified custom domain
    // name no tenant.
    for host in [
        "nope.portal.test",
        "portal.test",
        "acme.portal.test.evil.example",
        OPERATOR_HOST,
        "portal.acme.example",
    ] {
        server
            .get(host, "/api/v1/tenant", Some(&acme))
            .await
            .assert_problem(404, "tenant_not_found");
    }
    // Verifying the domain (a catalog change) makes it resolve, without waiting for a TTL.
    env.catalog()
        .await
        .execute(
            "update tenant_domains set verified = true where hostname = 'portal.acme.example'",
            &[],
        )
        .await
        .expect("verify");
    let took = within(Duration::from_secs(1), || async {
        server
            .get("portal.acme.example", "/api/v1/me", Some(&acme))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        took.is_some(),
        "a verified domain did not resolve within a second"
    );

    // The operator API does not exist on tenant hosts; unknown paths and methods are problems.
    server
        .get(&a, "/operator/v1/tenants", None)
        .await
        .assert_problem(404, "not_found");
    server
        .get(&a, "/nothing/here", None)
        .await
        .assert_problem(404, "not_found");
    server
        .request(Method::DELETE, &a, "/api/v1/tenant", Some(&acme), &[], None)
        .await
        .assert_problem(405, "method_not_allowed");

    // Health on every host, security headers and request ids on every answer.
    for host in [a.as_str(), OPERATOR_HOST, "unknown.example.com"] {
        let h = server.get(host, "/healthz", None).await;
        assert_eq!(h.status, 200);
        let r = server.get(host, "/readyz", None).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["notifications"], "listening");
        assert_eq!(h.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(h.header("x-frame-options"), Some("DENY"));
    }
    let r = server
        .request(
            Method::GET,
            &a,
            "/api/v1/me",
            None,
            &[("x-request-id", "trace-42.a_b")],
            None,
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("trace-42.a_b"));
    assert_eq!(r.body["request_id"], "trace-42.a_b");
    let r = server
        .request(
            Method::GET,
            &a,
            "/api/v1/me",
            None,
            &[("x-request-id", "bad id;drop")],
            None,
        )
        .await;
    let rid = r.header("x-request-id").expect("request id");
    assert_ne!(rid, "bad id;drop");
    assert!(uuid::Uuid::parse_str(rid).is_ok());

    // Logs are JSON lines with the request id, route, status and tenant id. The line is
    // written as the request finishes, which may be just after the client has its answer.
    server.wait_for_stderr(
        "\"request_id\":\"trace-42.a_b\"",
        std::time::Duration::from_secs(10),
    );
    let lines = server.stderr_lines();
    let line = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["span"]["request_id"] == "trace-42.a_b"
                && v["fields"]["message"] == "request finished"
        })
        .unwrap_or_else(|| panic!("no JSON request log line:\n{}", lines.join("\n")));
    assert_eq!(line["span"]["route"], "/api/v1/me");
    assert_eq!(line["span"]["status"], 401);
    let acme_id = placement["id"].as_str().expect("id");
    assert_eq!(line["span"]["tenant_id"], acme_id);
    assert!(
        lines.iter().all(|l| !l.contains("ptk_")),
        "a token reached the logs"
    );

    // Metrics on their own address.
    let m = server.metrics_text().await;
    for needle in [
        "portico_http_requests_total{route=\"/api/v1/me\",status=\"200\"}",
        "portico_http_request_duration_seconds_bucket{route=\"/api/v1/tenant\"",
        "portico_tenant_cache_total{result=\"hit\"}",
        "portico_pool_connections{",
        "state=\"budget\"",
        "portico_pool_wait_seconds_bucket",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn suspension_reaches_two_instances_within_a_second() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let token = env.tenant_token("acme", "ci", "member");
    let one = env.serve(&[NO_TTL]);
    let two = env.serve(&[NO_TTL]);
    let host = host_of("acme");
    for s in [&one, &two] {
        assert_eq!(
            s.get(&host, "/api/v1/tenant", Some(&token)).await.status,
            200
        );
    }
    let placement = env.json(&["tenant", "show", "acme", "--json"]);
    let db = placement["placement"]["database"]
        .as_str()
        .expect("db")
        .to_owned();
    let dbs = vec![db];
    let runtime_conns = || runtime_connections(&dbs, false);
    assert!(
        runtime_conns().await >= 2,
        "both instances hold a pooled connection"
    );

    env.ok(&["tenant", "suspend", "acme"]);
    for s in [&one, &two] {
        assert!(
            answers_within_a_second(s, &host, &token, 403).await,
            "an instance still served a suspended tenant after 1 s"
        );
        s.get(&host, "/api/v1/tenant", Some(&token))
            .await
            .assert_problem(403, "tenant_suspended");
    }
    // The suspended tenant's pools were evicted: their connections are closed.
    assert!(
        within(Duration::from_secs(2), || async {
            runtime_conns().await == 0
        })
        .await
        .is_some(),
        "pooled connections of a suspended tenant stayed open"
    );

    env.ok(&["tenant", "resume", "acme"]);
    for s in [&one, &two] {
        assert!(
            answers_within_a_second(s, &host, &token, 200).await,
            "an instance did not serve a resumed tenant within 1 s"
        );
    }
    // Pools were re-created.
    assert!(runtime_conns().await >= 2);

    // A tenant still being provisioned answers 503 with Retry-After.
    crate::crash::kill_at(&env, &["tenant", "create", "beta"], "reserved");
    let r = one
        .get(&host_of("beta"), "/api/v1/tenant", Some(&token))
        .await;
    r.assert_problem(503, "tenant_unavailable");
    assert!(r.header("retry-after").is_some());
    drop((one, two));
    env.cleanup().await;
}

/// Counts the runtime's connections to the given databases (only those waiting on a lock,
/// when `blocked`).
async fn runtime_connections(dbs: &[String], blocked: bool) -> i64 {
    let admin = crate::support::connect(&crate::support::admin_url("postgres")).await;
    admin
        .query_one(
            "select count(*) from pg_stat_activity
              where datname = any($1) and application_name = 'portico-runtime'
                and (not $2 or wait_event_type = 'Lock')",
            &[&dbs, &blocked],
        )
        .await
        .expect("count")
        .get(0)
}

/// Starts `n` concurrent `GET /api/v1/tenant` on `slug`'s host.
fn spawn_gets(
    server: &std::sync::Arc<crate::support::Server>,
    slug: &'static str,
    token: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<crate::support::Answer>> {
    (0..n)
        .map(|_| {
            let (s, t) = (server.clone(), token.to_owned());
            tokio::spawn(async move { s.get(&host_of(slug), "/api/v1/tenant", Some(&t)).await })
        })
        .collect()
}

#[tokio::test]
async fn the_connection_budget_holds_and_recovers() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&[
        "db-server",
        "add",
        "small",
        "--url",
        &crate::support::admin_url("postgres"),
        "--max-connections",
        "4",
    ]);
    let slugs = ["ten1", "ten2", "ten3", "ten4", "ten5"];
    let mut tokens = Vec::new();
    let mut dbs = Vec::new();
    for s in slugs {
        let t = env.json(&["tenant", "create", s, "--db-server", "small", "--json"]);
        dbs.push(t["placement"]["database"].as_str().expect("db").to_owned());
        tokens.push(env.tenant_token(s, "ci", "member"));
    }
    let server = std::sync::Arc::new(env.serve(&[
        ("PORTICO_POOL_WAIT_MS", "2000"),
        ("PORTICO_TENANT_POOL_SIZE", "2"),
    ]));

    // Hold the profile table of t1 and t2 locked, so their requests keep their connections.
    let mut lockers = Vec::new();
    for db in &dbs[..2] {
        let c = crate::support::connect(&crate::support::admin_url(db)).await;
        c.batch_execute("begin; lock table tenant_profile in access exclusive mode")
            .await
            .expect("lock");
        lockers.push(c);
    }
    // Three requests to t1: the per-tenant cap (2) lets two in; the third waits and gets
    // 503 tenant_busy although the server's budget still has room.
    let mut held = spawn_gets(&server, "ten1", &tokens[0], 3);
    assert!(
        within(Duration::from_secs(10), || async {
            runtime_connections(&dbs, true).await == 2
        })
        .await
        .is_some(),
        "two t1 requests should be blocked on the lock"
    );
    // Meanwhile another tenant is served at once.
    assert_eq!(
        server
            .get(&host_of("ten3"), "/api/v1/tenant", Some(&tokens[2]))
            .await
            .status,
        200
    );
    // Two more blocked requests, on t2: now the whole budget (4) is in use.
    held.extend(spawn_gets(&server, "ten2", &tokens[1], 2));
    assert!(
        within(Duration::from_secs(10), || async {
            runtime_connections(&dbs, true).await == 4
        })
        .await
        .is_some(),
        "four requests should be blocked"
    );
    // The budget is exhausted: t4 waits its bound and gets 503 with Retry-After.
    let r = server
        .get(&host_of("ten4"), "/api/v1/tenant", Some(&tokens[3]))
        .await;
    r.assert_problem(503, "tenant_busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        runtime_connections(&dbs, false).await <= 4,
        "the budget was exceeded"
    );

    // Release the locks: the held requests finish, except the one that hit the tenant cap.
    drop(lockers);
    let mut statuses = Vec::new();
    for h in held {
        statuses.push(h.await.expect("request").status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 503], "{statuses:?}");
    // Recovered: everyone is served again, under concurrent load, never above the budget.
    let sampler = {
        let dbs = dbs.clone();
        tokio::spawn(async move {
            let mut max = 0;
            for _ in 0..50 {
                max = max.max(runtime_connections(&dbs, false).await);
                tokio::task::yield_now().await;
            }
            max
        })
    };
    let mut load = Vec::new();
    for i in 0..100 {
        load.extend(spawn_gets(&server, slugs[i % 5], &tokens[i % 5], 1));
    }
    let mut ok = 0;
    for h in load {
        let r = h.await.expect("request");
        match r.status {
            200 => ok += 1,
            503 => r.assert_problem(503, "tenant_busy"),
            other => panic!("unexpected status {other}: {r:?}"),
        }
    }
    assert!(ok > 0);
    assert!(
        sampler.await.expect("sampler") <= 4,
        "the budget was exceeded under load"
    );
    for (slug, t) in slugs.iter().zip(&tokens) {
        assert_eq!(
            server
                .get(&host_of(slug), "/api/v1/tenant", Some(t))
                .await
                .status,
            200
        );
    }
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let op = env.operator_token("alice");
    let spoof = [("x-forwarded-for", "203.0.113.7")];
    {
        let server = env.serve(&[]);
        let r = server
            .request(
                Method::GET,
                OPERATOR_HOST,
                "/operator/v1/tenants",
                Some(&op),
                &spoof,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    {
        let server = env.serve(&[("PORTICO_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8")]);
        let chain = [("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.2.3")];
        let r = server
            .request(
                Method::GET,
                OPERATOR_HOST,
                "/operator/v1/tenants",
                Some(&op),
                &chain,
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let audit = env.json(&["operator", "audit", "--json"]);
    let ips: Vec<&str> = audit
        .as_array()
        .expect("entries")
        .iter()
        .rev()
        .map(|e| e["client_ip"].as_str().expect("ip"))
        .collect();
    assert_eq!(ips, ["127.0.0.1", "198.51.100.4"]);

    // Per-IP limits key on the true address: a spoofed header from an untrusted peer does
    // not buy a fresh allowance.
    let server = env.serve(&[("PORTICO_RATE_LIMIT_PER_IP", "1")]);
    let mut limited = None;
    for i in 0..5 {
        let xff = format!("192.0.2.{i}");
        let r = server
            .request(
                Method::GET,
                "nope.portal.test",
                "/api/v1/me",
                None,
                &[("x-forwarded-for", &xff)],
                None,
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("five requests in a row from one address were not limited");
    r.assert_problem(429, "rate_limited");
    assert!(
        r.header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    // Health checks are never limited.
    assert_eq!(
        server
            .get("nope.portal.test", "/healthz", None)
            .await
            .status,
        200
    );
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn tenants_are_rate_limited_on_their_own() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    env.ok(&["tenant", "create", "globex"]);
    let (a, g) = (
        env.tenant_token("acme", "ci", "member"),
        env.tenant_token("globex", "ci", "member"),
    );
    let server = env.serve(&[("PORTICO_RATE_LIMIT_PER_TENANT", "1")]);
    let mut limited = None;
    for _ in 0..5 {
        let r = server.get(&host_of("acme"), "/api/v1/me", Some(&a)).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    limited
        .expect("acme was not limited")
        .assert_problem(429, "tenant_rate_limited");
    // Another tenant has its own allowance.
    assert_eq!(
        server
            .get(&host_of("globex"), "/api/v1/me", Some(&g))
            .await
            .status,
        200
    );
    drop(server);
    env.cleanup().await;
}

/// Sends raw bytes and returns the raw answer (for requests a client library will not send).
fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_hosts_get_a_problem() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let server = env.serve(&[]);
    for host in [
        "",
        "[::1]:80",
        "127.0.0.1",
        "a..b",
        "acme.portal.test:99999",
        "acme_x.portal.test",
        "localhost",
    ] {
        let req =
            format!("GET /api/v1/tenant HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(server.addr, req.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{host:?}: {answer}");
        assert!(
            answer.contains("application/problem+json"),
            "{host:?}: {answer}"
        );
        assert!(
            answer.contains("\"code\":\"invalid_host\""),
            "{host:?}: {answer}"
        );
    }
    let answer = raw_exchange(server.addr, b"GET /api/v1/tenant HTTP/1.0\r\n\r\n");
    assert!(answer.contains("\"code\":\"invalid_host\""), "{answer}");
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn operator_api_works_and_is_audited() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let op = env.operator_token("alice");
    let server = env.serve(&[]);
    let post = |path: &'static str, token: Option<String>, body: serde_json::Value| {
        let s = &server;
        async move {
            s.request(
                Method::POST,
                OPERATOR_HOST,
                path,
                token.as_deref(),
                &[],
                Some(body),
            )
            .await
        }
    };
    // Authentication.
    server
        .get(OPERATOR_HOST, "/operator/v1/tenants", None)
        .await
        .assert_problem(401, "unauthenticated");
    server
        .get(OPERATOR_HOST, "/operator/v1/tenants", Some("pot_forged"))
        .await
        .assert_problem(401, "invalid_token");
    // A tenant token is not an operator token; the operator API is only on its host.
    server
        .get(&host_of("acme"), "/operator/v1/tenants", Some(&op))
        .await
        .assert_problem(404, "not_found");

    // Create over the API: 202 with a run to poll.
    let r = post(
        "/operator/v1/tenants",
        Some(op.clone()),
        json!({"slug": "acme", "display_name": "Acme"}),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    let run = r.body["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/operator/v1/runs/{run}").as_str())
    );
    let done = within(Duration::from_secs(60), || async {
        let r = server
            .get(
                OPERATOR_HOST,
                &format!("/operator/v1/runs/{run}"),
                Some(&op),
            )
            .await;
        r.body["status"] == "succeeded"
    })
    .await;
    assert!(done.is_some(), "the create run did not succeed");
    let t = server
        .get(OPERATOR_HOST, "/operator/v1/tenants/acme", Some(&op))
        .await;
    assert_eq!(t.body["status"], "active", "{t:?}");
    // The tenant it made is served.
    let token = env.tenant_token("acme", "ci", "member");
    assert_eq!(
        server
            .get(&host_of("acme"), "/api/v1/tenant", Some(&token))
            .await
            .body["display_name"],
        "Acme"
    );

    // Bad input: problems, nothing created.
    post(
        "/operator/v1/tenants",
        Some(op.clone()),
        json!({"slug": "Bad Slug"}),
    )
    .await
    .assert_problem(422, "invalid_input");
    post(
        "/operator/v1/tenants",
        Some(op.clone()),
        json!({"slug": "acme"}),
    )
    .await
    .assert_problem(409, "slug_taken");
    post(
        "/operator/v1/tenants",
        Some(op.clone()),
        json!({"slug": "xxx", "surprise": 1}),
    )
    .await
    .assert_problem(422, "invalid_input");
    let r = server
        .request(
            Method::POST,
            OPERATOR_HOST,
            "/operator/v1/tenants",
            Some(&op),
            &[("content-type", "application/json")],
            None,
        )
        .await;
    r.assert_problem(400, "bad_request");
    post(
        "/operator/v1/tenants",
        Some(op.clone()),
        json!({"slug": "yyy", "db_server": "nowhere"}),
    )
    .await
    .assert_problem(422, "db_server_not_found");
    server
        .get(OPERATOR_HOST, "/operator/v1/tenants/ghost", Some(&op))
        .await
        .assert_problem(404, "tenant_not_found");
    server
        .get(OPERATOR_HOST, "/operator/v1/runs/not-a-uuid", Some(&op))
        .await
        .assert_problem(422, "invalid_input");
    assert_eq!(env.tenant_count().await, 1);

    // Suspend and resume over the API.
    let r = post(
        "/operator/v1/tenants/acme/suspend",
        Some(op.clone()),
        json!({}),
    )
    .await;
    assert_eq!(r.body["status"], "suspended", "{r:?}");
    let r = post(
        "/operator/v1/tenants/acme/resume",
        Some(op.clone()),
        json!({}),
    )
    .await;
    assert_eq!(r.body["status"], "active", "{r:?}");
    let servers = server
        .get(OPERATOR_HOST, "/operator/v1/db-servers", Some(&op))
        .await;
    assert_eq!(servers.body[0]["name"], "default", "{servers:?}");

    // A revoked operator token stops working.
    env.ok(&["operator", "token", "revoke", "alice"]);
    server
        .get(OPERATOR_HOST, "/operator/v1/tenants", Some(&op))
        .await
        .assert_problem(401, "invalid_token");

    // Every action is in the audit trail, with who, what, outcome, address and request id.
    let audit = env.json(&["operator", "audit", "--limit", "100", "--json"]);
    let entries = audit.as_array().expect("entries");
    let find = |action: &str, outcome: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action}/{outcome} entry in {audit:#}"))
    };
    let created = find("tenant.create", "succeeded");
    assert_eq!(created["actor"], "alice");
    assert_eq!(created["target"], "acme");
    assert_eq!(created["client_ip"], "127.0.0.1");
    assert_eq!(created["detail"]["run_id"], run);
    assert!(
        created["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    for code in ["invalid_input", "slug_taken", "db_server_not_found"] {
        assert!(
            entries.iter().any(|e| e["action"] == "tenant.create"
                && e["outcome"] == "failed"
                && e["detail"]["code"] == code),
            "no failed create with {code} in {audit:#}"
        );
    }
    find("tenant.suspend", "succeeded");
    find("tenant.resume", "succeeded");
    let denied = find("GET /operator/v1/tenants", "denied");
    assert_eq!(denied["actor"], "-");
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let env = TestEnv::new(Backend::FileLocal).await;
    let op = env.operator_token("alice");
    let server = env.serve(&[("PORTICO_LOG", "info,portico_http=debug")]);
    // A request whose body is still arriving when SIGTERM comes.
    let body = br#"{"name": "Not A Valid Name!", "url": "postgres://x@127.0.0.1/db"}"#;
    let head = format!(
        "POST /operator/v1/db-servers HTTP/1.1\r\nHost: {OPERATOR_HOST}\r\nAuthorization: Bearer {op}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(&body[..10]).expect("part of the body");
    s.flush().expect("flush");
    // The server has the request (its span has started) and waits for the rest of the body.
    server.wait_for_stderr("request started", Duration::from_secs(30));
    server.terminate();
    server.wait_for_stderr("shutting down", Duration::from_secs(30));
    s.write_all(&body[10..]).expect("rest of the body");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("\"code\":\"invalid_input\""), "{answer}");
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_lost_notification_connection_is_restored_and_catches_up() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let token = env.tenant_token("acme", "ci", "member");
    let server = env.serve(&[NO_TTL]);
    let host = host_of("acme");
    assert_eq!(
        server.get(&host, "/api/v1/me", Some(&token)).await.status,
        200
    );
    let admin = crate::support::connect(&crate::support::admin_url("postgres")).await;
    let listeners = "select pid from pg_stat_activity
                      where datname = $1 and application_name = 'portico-runtime-catalog'
                        and query ilike 'listen%'";
    let before: Vec<i32> = admin
        .query(listeners, &[&env.catalog_db])
        .await
        .expect("listeners")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(before.len(), 1, "one listening connection per instance");
    // Kill the listening connection, then change the catalog while it may be down.
    admin
        .execute("select pg_terminate_backend($1)", &[&before[0]])
        .await
        .expect("terminate");
    env.ok(&["tenant", "suspend", "acme"]);
    // The change is seen (heard, or caught up on reconnect) although the TTL is a day.
    let took = within(Duration::from_secs(5), || async {
        server.get(&host, "/api/v1/me", Some(&token)).await.status == 403
    })
    .await;
    assert!(
        took.is_some(),
        "a change made while the listener was down was never seen"
    );
    // A new listening connection exists, and readiness reports it.
    let restored = within(Duration::from_secs(5), || async {
        let now: Vec<i32> = admin
            .query(listeners, &[&env.catalog_db])
            .await
            .expect("listeners")
            .iter()
            .map(|r| r.get(0))
            .collect();
        now.len() == 1 && now[0] != before[0]
    })
    .await;
    assert!(restored.is_some(), "the listener did not reconnect");
    assert!(
        within(Duration::from_secs(5), || async {
            server.get(&host, "/readyz", None).await.status == 200
        })
        .await
        .is_some()
    );
    env.ok(&["tenant", "resume", "acme"]);
    assert!(
        within(Duration::from_secs(1), || async {
            server.get(&host, "/api/v1/me", Some(&token)).await.status == 200
        })
        .await
        .is_some(),
        "the restored listener does not hear changes"
    );
    drop(server);
    env.cleanup().await;
}

#[tokio::test]
async fn slow_requests_time_out_and_large_bodies_are_refused() {
    let env = TestEnv::new(Backend::FileLocal).await;
    env.ok(&["tenant", "create", "acme"]);
    let token = env.tenant_token("acme", "ci", "member");
    let op = env.operator_token("alice");
    let server = env.serve(&[
        ("PORTICO_REQUEST_TIMEOUT_MS", "300"),
        ("PORTICO_BODY_LIMIT_BYTES", "2048"),
    ]);
    let db = env.json(&["tenant", "show", "acme", "--json"])["placement"]["database"]
        .as_str()
        .expect("db")
        .to_owned();
    let locker = crate::support::connect(&crate::support::admin_url(&db)).await;
    locker
        .batch_execute("begin; lock table tenant_profile in access exclusive mode")
        .await
        .expect("lock");
    let r = server
        .get(&host_of("acme"), "/api/v1/tenant", Some(&token))
        .await;
    r.assert_problem(503, "request_timeout");
    // The abandoned request's query was cancelled although the lock is still held: nothing of
    // the runtime waits on it any more.
    let dbs = vec![db.clone()];
    assert!(
        within(Duration::from_secs(2), || async {
            runtime_connections(&dbs, true).await == 0
        })
        .await
        .is_some(),
        "the timed-out request's query is still running"
    );
    drop(locker);
    // The tenant is served normally afterwards.
    assert_eq!(
        server
            .get(&host_of("acme"), "/api/v1/tenant", Some(&token))
            .await
            .status,
        200
    );

    let big = json!({"slug": "x".repeat(4096)});
    let r = server
        .request(
            Method::POST,
            OPERATOR_HOST,
            "/operator/v1/tenants",
            Some(&op),
            &[],
            Some(big),
        )
        .await;
    r.assert_problem(413, "payload_too_large");
    assert_eq!(env.tenant_count().await, 1);
    drop(server);
    env.cleanup().await;
}
