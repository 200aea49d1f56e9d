//! Real identity providers for the SSO tests, and a minimal browser.
//!
//! The IdPs are the npm packages `oidc-provider` (a certified OpenID Provider) and `samlify`
//! (used as a SAML IdP), started from `infra/idp/` on loopback; every instance makes its own
//! keys. The browser keeps cookies per host and follows nothing by itself, so each step of a
//! flow (and each cookie attribute) can be checked.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::{Server, Watchdog};

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/idp")
}

/// One IdP process; killed when dropped.
pub struct IdpProcess {
    child: Child,
    pub info: Value,
    _watchdog: Watchdog,
}

impl IdpProcess {
    fn spawn(script: &str, env: &[(&str, String)]) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = idp_dir();
        assert!(
            dir.join("node_modules").is_dir(),
            "infra/idp/node_modules is missing: run infra/install.sh"
        );
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(&dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning node (Node.js 20+ is needed)");
        let watchdog = Watchdog::arm(child.id(), Duration::from_secs(600));
        // Both pipes are drained from the start (an IdP blocked writing to a full stderr pipe
        // would never print its start line), and what stderr said is kept for the failure.
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let tag = script.to_owned();
        let log = said.clone();
        std::thread::spawn(move || {
            let mut l = String::new();
            while err.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
                if !l.contains("WARNING") && !l.contains("missing endpoint of SingleLogoutService")
                {
                    eprint!("[{tag}] {l}");
                }
                if let Ok(mut log) = log.lock()
                    && log.len() < 64 * 1024
                {
                    log.push_str(&l);
                }
                l.clear();
            }
        });
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (first, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = first.send(line);
            // Keep stdout drained: a write to a closed pipe would kill the IdP.
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        // A failure, not a wait: the IdPs print their start line within a second or two.
        let line = started
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "{script} printed no start line within 60 s; its stderr:\n{}",
                    said.lock().map(|s| s.clone()).unwrap_or_default()
                )
            });
        let info: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("{script} did not start: {line:?}"));
        Self {
            child,
            info,
            _watchdog: watchdog,
        }
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for IdpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `oidc-provider` instance with its clients.
pub struct OidcIdp {
    pub process: IdpProcess,
    pub issuer: String,
    /// Where this instance listens (differs from the issuer for an impostor).
    pub base: String,
    pub port: u16,
    pub kid: String,
}

pub struct OidcClient<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    pub redirect_uri: String,
}

impl OidcIdp {
    pub fn start(clients: &[OidcClient<'_>]) -> Self {
        Self::start_with(clients, &[])
    }

    /// `extra`: OIDC_IDP_PORT, OIDC_IDP_ISSUER, OIDC_IDP_KID, OIDC_IDP_ALG…
    pub fn start_with(clients: &[OidcClient<'_>], extra: &[(&str, String)]) -> Self {
        let clients: Vec<Value> = clients
            .iter()
            .map(|c| json!({"client_id": c.id, "client_secret": c.secret, "redirect_uris": [c.redirect_uri]}))
            .collect();
        let mut env = vec![("OIDC_IDP_CLIENTS", Value::from(clients).to_string())];
        env.extend(extra.iter().cloned());
        let process = IdpProcess::spawn("oidc-idp.mjs", &env);
        let issuer = process.info["issuer"].as_str().expect("issuer").to_owned();
        let port = process.info["port"].as_u64().expect("port") as u16;
        let kid = process.info["kid"].as_str().expect("kid").to_owned();
        Self {
            process,
            issuer,
            base: format!("http://127.0.0.1:{port}"),
            port,
            kid,
        }
    }

    /// Sets an account's groups in the IdP's directory.
    pub async fn set_groups(&self, account: &str, groups: &[&str]) {
        let r = reqwest::Client::new()
            .post(format!("{}/admin/groups", self.base))
            .json(&json!({"account": account, "groups": groups}))
            .send()
            .await
            .expect("set groups");
        assert!(r.status().is_success());
    }

    /// Follows the IdP's redirects from an authorization URL, signing in as `login`, until it
    /// sends the browser back to the relying party; returns that URL.
    pub async fn sign_in(&self, authorize_url: &str, login: &str) -> String {
        oidc_sign_in(&self.issuer, &self.base, authorize_url, login).await
    }

    /// Runs the code flow as `client` itself (PKCE, nonce) and returns the ID token the IdP
    /// issued, for tests of token validation.
    pub async fn id_token_for(&self, client: &OidcClient<'_>, login: &str, nonce: &str) -> String {
        let verifier = "a-test-verifier-of-enough-length-0123456789abcdef";
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
        );
        let mut auth = url::Url::parse(&format!("{}/auth", self.base)).expect("url");
        auth.query_pairs_mut()
            .append_pair("client_id", client.id)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid email")
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("state", "s")
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let back = self.sign_in(auth.as_str(), login).await;
        let code = url::Url::parse(&back)
            .expect("callback")
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .expect("code");
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/token", self.base))
            .basic_auth(client.id, Some(client.secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &client.redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token response");
        resp["id_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no id_token: {resp}"))
            .to_owned()
    }
}

/// Follows an `oidc-provider`'s redirects from an authorization URL, signing in as `login`,
/// until it sends the browser back to the relying party; returns that URL.
pub async fn oidc_sign_in(issuer: &str, base: &str, authorize_url: &str, login: &str) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut url = authorize_url.replacen(issuer, base, 1);
    for _ in 0..10 {
        if !url.starts_with(base) {
            return url;
        }
        let mut target = url::Url::parse(&url).expect("IdP URL");
        if target.path().starts_with("/interaction/") {
            target.query_pairs_mut().append_pair("login", login);
        }
        let resp = http.get(target).send().await.expect("IdP request");
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(location) = location else {
            let status = resp.status();
            panic!(
                "the IdP stopped at {url} with {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        };
        url = if location.starts_with('/') {
            format!("{}{location}", base)
        } else {
            location.replacen(issuer, base, 1)
        };
    }
    panic!("too many IdP redirects");
}

/// A `samlify` SAML IdP instance.
pub struct SamlIdp {
    _process: IdpProcess,
    pub base: String,
    http: reqwest::Client,
}

impl SamlIdp {
    pub fn start() -> Self {
        let process = IdpProcess::spawn("saml-idp.mjs", &[]);
        let port = process.info["port"].as_u64().expect("port");
        Self {
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    pub fn metadata_url(&self) -> String {
        format!("{}/metadata", self.base)
    }

    /// Tells the IdP about a service provider (its SP metadata document).
    pub async fn register_sp(&self, metadata_xml: &str) {
        let r = self
            .http
            .post(format!("{}/sp", self.base))
            .body(metadata_xml.to_owned())
            .send()
            .await
            .expect("register SP");
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }

    /// Answers an AuthnRequest (the redirect URL our SP sent the browser to), as `login`, with
    /// optional overrides; returns (ACS URL, SAMLResponse, RelayState).
    pub async fn answer(
        &self,
        redirect_url: &str,
        login: &str,
        extra: &[(&str, &str)],
    ) -> (String, String, Option<String>) {
        let mut url = url::Url::parse(redirect_url).expect("IdP URL");
        assert!(
            redirect_url.starts_with(&self.base),
            "{redirect_url} is not this IdP"
        );
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("login", login);
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        let html = self
            .http
            .get(url)
            .send()
            .await
            .expect("IdP")
            .text()
            .await
            .expect("html");
        let action = attr_after(&html, "<form method=\"post\" action=\"")
            .unwrap_or_else(|| panic!("no form: {html}"));
        let response = attr_after(&html, "name=\"SAMLResponse\" value=\"").expect("SAMLResponse");
        let relay = attr_after(&html, "name=\"RelayState\" value=\"");
        (
            unescape(&action),
            unescape(&response),
            relay.map(|r| unescape(&r)),
        )
    }

    /// An IdP-built response on request (IdP-initiated logins and deliberately wrong ones).
    pub async fn issue(&self, params: Value) -> String {
        let r: Value = self
            .http
            .post(format!("{}/issue", self.base))
            .json(&params)
            .send()
            .await
            .expect("issue")
            .json()
            .await
            .expect("issue JSON");
        r["SAMLResponse"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    }
}

fn attr_after(html: &str, marker: &str) -> Option<String> {
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub fn decode(saml_response: &str) -> String {
    String::from_utf8(STANDARD.decode(saml_response).expect("base64")).expect("utf-8")
}

pub fn encode(xml: &str) -> String {
    STANDARD.encode(xml)
}

/// A browser: cookies per host (as the server set them), no automatic redirects.
pub struct Browser<'a> {
    addr: std::net::SocketAddr,
    _server: std::marker::PhantomData<&'a Server>,
    http: reqwest::Client,
    /// host -> name -> (value, full Set-Cookie line)
    pub jar: HashMap<String, HashMap<String, (String, String)>>,
}

#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

impl Page {
    /// A hidden form field's value (`csrf`, …).
    pub fn field(&self, name: &str) -> Option<String> {
        attr_after(&self.body, &format!("name=\"{name}\" value=\"")).map(|v| unescape(&v))
    }

    /// Whether this is the generic sign-in failure page; returns its request id.
    pub fn failure_reference(&self) -> Option<String> {
        (self.status == 400 && self.body.contains("Sign-in failed"))
            .then(|| attr_after(&self.body, "<code id=\"request-id\">").map(|_| ()))
            .flatten()
            .map(|_| {
                let start = self.body.find("<code id=\"request-id\">").unwrap_or(0) + 22;
                let end = self.body[start..].find('<').unwrap_or(0) + start;
                self.body[start..end].to_owned()
            })
    }
}

impl<'a> Browser<'a> {
    pub fn new(server: &'a Server) -> Self {
        Self::at(server.addr)
    }

    /// A browser for a server at `addr` (the demo's).
    pub fn at(addr: std::net::SocketAddr) -> Self {
        Self {
            addr,
            _server: std::marker::PhantomData,
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            jar: HashMap::new(),
        }
    }

    /// `GET /sso/<connection>/start?return_to=…`: the IdP URL it sends the browser to.
    pub async fn start_sso(&mut self, host: &str, connection: &str, return_to: &str) -> String {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("return_to", return_to)
            .finish();
        let p = self
            .get(host, &format!("/sso/{connection}/start?{q}"))
            .await;
        assert_eq!(p.status, 303, "{p:?}");
        p.location.expect("IdP URL")
    }

    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar
            .get(host)
            .and_then(|c| c.get(name))
            .map(|(v, _)| v.clone())
    }

    pub fn set_cookie_line(&self, host: &str, name: &str) -> Option<String> {
        self.jar
            .get(host)
            .and_then(|c| c.get(name))
            .map(|(_, l)| l.clone())
    }

    /// Copies a cookie to another host, as a broken or malicious client would.
    pub fn plant(&mut self, host: &str, name: &str, value: &str) {
        self.jar
            .entry(host.to_owned())
            .or_default()
            .insert(name.to_owned(), (value.to_owned(), String::new()));
    }

    pub async fn send(
        &mut self,
        method: reqwest::Method,
        host: &str,
        path_and_query: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let mut req = self
            .http
            .request(method, format!("http://{}{path_and_query}", self.addr))
            .header("host", host);
        if let Some(cookies) = self.jar.get(host) {
            let line: Vec<String> = cookies
                .iter()
                .map(|(k, (v, _))| format!("{k}={v}"))
                .collect();
            if !line.is_empty() {
                req = req.header("cookie", line.join("; "));
            }
        }
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        for line in &set_cookies {
            let pair = line.split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                let jar = self.jar.entry(host.to_owned()).or_default();
                if v.is_empty() || line.contains("Max-Age=0") {
                    jar.remove(k);
                } else {
                    jar.insert(k.to_owned(), (v.to_owned(), line.clone()));
                }
            }
        }
        let body = resp.text().await.expect("body");
        Page {
            status,
            location,
            set_cookies,
            body,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Page {
        self.send(reqwest::Method::GET, host, path, None).await
    }

    pub async fn post(&mut self, host: &str, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(reqwest::Method::POST, host, path, Some(form))
            .await
    }

    /// Follows a URL of one of our tenant hosts (`https://host/path`).
    pub async fn follow(&mut self, url: &str) -> Page {
        let u = url::Url::parse(url).expect("URL");
        let path = match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_owned(),
        };
        self.get(u.host_str().expect("host"), &path).await
    }

    /// The signed-in user's e-mail on `host` (from `/api/v1/me` with the session cookie).
    pub async fn whoami(&mut self, host: &str) -> Option<Value> {
        let p = self.get(host, "/api/v1/me").await;
        (p.status == 200).then(|| serde_json::from_str(&p.body).expect("me JSON"))
    }
}
