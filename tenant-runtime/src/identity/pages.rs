//! The sign-in pages, as minijinja templates compiled into the binary (auto-escaped HTML).

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

const LAYOUT: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Portal{% endblock %}</title>
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}
form{margin:1rem 0}label{display:block;margin:.5rem 0}input{width:100%;padding:.4rem}
button,.button{padding:.5rem 1rem;margin:.25rem 0}code{word-break:break-all}</style>
</head><body>{% block body %}{% endblock %}</body></html>"#;

const LOGIN: &str = r#"{% extends "layout.html" %}{% block title %}Sign in — {{ tenant }}{% endblock %}
{% block body %}<h1>Sign in to {{ tenant }}</h1>
{% for c in connections %}<p><a class="button" id="sso-{{ c.name }}" href="/sso/{{ c.name }}/start">Sign in with {{ c.name }} ({{ c.kind }})</a></p>{% endfor %}
{% if local %}<form method="post" action="/login" id="local-login">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label>E-mail <input type="email" name="email" autocomplete="username" required></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form>{% endif %}
{% if not connections and not local %}<p>No sign-in method is set up for this portal yet.</p>{% endif %}
{% endblock %}"#;

const TOTP: &str = r#"{% extends "layout.html" %}{% block title %}Verification code{% endblock %}
{% block body %}<h1>Verification code</h1>
<form method="post" action="{{ action }}" id="totp">
<input type="hidden" name="csrf" value="{{ csrf }}">
{% if error %}<p id="error"><strong>{{ error }}</strong></p>{% endif %}
{% if secret %}<p>Add this key to your authenticator app, then enter the code it shows.</p>
<p><code id="totp-secret">{{ secret }}</code></p><p><code id="totp-uri">{{ uri }}</code></p>{% endif %}
<label>Code <input name="code" inputmode="numeric" autocomplete="one-time-code" required></label>
<button type="submit">Verify</button></form>{% endblock %}"#;

const MFA: &str = r#"{% extends "layout.html" %}{% block title %}Two-factor authentication{% endblock %}
{% block body %}<h1>Two-factor authentication</h1>
{% if error %}<p id="error"><strong>{{ error }}</strong></p>{% endif %}
{% if secret %}<p>Add this key to your authenticator app, then enter the code it shows.</p>
<p><code id="totp-secret">{{ secret }}</code></p><p><code id="totp-uri">{{ uri }}</code></p>
<form method="post" action="/account/mfa" id="totp"><input type="hidden" name="csrf" value="{{ csrf }}">
<label>Code <input name="code" inputmode="numeric" autocomplete="one-time-code" required></label>
<button type="submit">Verify</button></form>{% endif %}
{% if enabled %}<p id="mfa-state">Two-factor authentication is on.</p>
<form method="post" action="/account/mfa/start" id="mfa-replace"><input type="hidden" name="csrf" value="{{ csrf }}">
<label>Current code <input name="current_code" inputmode="numeric" autocomplete="one-time-code"></label>
<label>or password <input type="password" name="password" autocomplete="current-password"></label>
<button type="submit">Use a new authenticator</button></form>
<form method="post" action="/account/mfa/remove" id="mfa-remove"><input type="hidden" name="csrf" value="{{ csrf }}">
<label>Current code <input name="current_code" inputmode="numeric" autocomplete="one-time-code"></label>
<label>or password <input type="password" name="password" autocomplete="current-password"></label>
<button type="submit">Turn off</button></form>
{% elif not secret %}<p id="mfa-state">Two-factor authentication is off.</p>
<form method="post" action="/account/mfa/start" id="mfa-start"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">Set up</button></form>{% endif %}
{% endblock %}"#;

const HOME: &str = r#"{% extends "layout.html" %}{% block title %}{{ tenant }}{% endblock %}
{% block body %}<h1>{{ tenant }}</h1>
<p>Signed in as <strong id="user-email">{{ email }}</strong> (<span id="user-role">{{ role }}</span>).</p>
{% if local and not mfa %}<p><a href="/account/mfa">Set up two-factor authentication</a></p>{% endif %}
<form method="post" action="/logout" id="logout"><input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">Sign out</button></form>{% endblock %}"#;

const INVITE: &str = r#"{% extends "layout.html" %}{% block title %}Accept invitation{% endblock %}
{% block body %}<h1>Welcome to {{ tenant }}</h1><p>Choose a password for <strong>{{ email }}</strong> (at least {{ min_len }} characters).</p>
{% if error %}<p id="error"><strong>{{ error }}</strong></p>{% endif %}
<form method="post" id="invite"><input type="hidden" name="csrf" value="{{ csrf }}">
<label>Password <input type="password" name="password" autocomplete="new-password" required></label>
<button type="submit">Create account</button></form>{% endblock %}"#;

const DISCOVER: &str = r#"{% extends "layout.html" %}{% block title %}Sign in{% endblock %}
{% block body %}<h1>Sign in</h1>
{% if neutral %}<p id="neutral">If single sign-on is set up for this address, you are sent to your organization's sign-in.
Otherwise, open your organization's portal address directly.</p>{% endif %}
<form method="post" action="/" id="discover"><label>Work e-mail <input type="email" name="email" required></label>
<button type="submit">Continue</button></form>{% endblock %}"#;

const ERROR: &str = r#"{% extends "layout.html" %}{% block title %}{{ title }}{% endblock %}
{% block body %}<h1>{{ title }}</h1><p>{{ message }}</p>
<p>Reference: <code id="request-id">{{ request_id }}</code></p><p><a href="/login">Back to sign-in</a></p>{% endblock %}"#;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, src) in [
            ("layout.html", LAYOUT),
            ("login.html", LOGIN),
            ("totp.html", TOTP),
            ("mfa.html", MFA),
            ("home.html", HOME),
            ("invite.html", INVITE),
            ("discover.html", DISCOVER),
            ("error.html", ERROR),
        ] {
            if let Err(e) = env.add_template(name, src) {
                tracing::error!(template = name, error = %e, "template does not compile");
            }
        }
        env
    })
}

/// Renders a page. Pages are never cached and never framed.
pub fn render(status: StatusCode, name: &str, ctx: impl Serialize) -> Response {
    let body = env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| {
            tracing::error!(template = name, error = %e, "template failed");
            "<!doctype html><title>Error</title><p>Something went wrong.</p>".to_owned()
        });
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; frame-ancestors 'none'",
        ),
    );
    resp
}

/// The one page every failed sign-in shows: no reason, only the request id to quote.
pub fn sign_in_failed(request_id: &str) -> Response {
    render(
        StatusCode::BAD_REQUEST,
        "error.html",
        minijinja::context! {
            title => "Sign-in failed",
            message => "We could not sign you in. Try again, or contact your administrator and quote the reference below.",
            request_id => request_id,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_escapes() {
        for name in [
            "layout.html",
            "login.html",
            "totp.html",
            "mfa.html",
            "home.html",
            "invite.html",
            "discover.html",
            "error.html",
        ] {
            assert!(env().get_template(name).is_ok(), "{name}");
        }
        let html = env()
            .get_template("error.html")
            .unwrap()
            .render(minijinja::context! { title => "t", message => "<script>", request_id => "r" })
            .unwrap();
        assert!(html.contains("&lt;script&gt;"));
    }
}
