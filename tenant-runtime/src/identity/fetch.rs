//! Outbound HTTP to identity providers (SAML metadata URLs, OIDC discovery, JWKS, token
//! endpoints), with the rules a multi-tenant server needs when tenant admins choose the URLs:
//!
//! - HTTPS only; plain HTTP only to loopback, and only when loopback is explicitly allowed
//!   (`PORTICO_SSO_ALLOW_LOOPBACK`, for tests and the demo).
//! - Never to private, link-local, CGNAT, multicast or unspecified addresses, nor to loopback
//!   unless allowed. Names are checked *after* resolution, inside the resolver reqwest uses, so
//!   a DNS answer cannot smuggle a private address past the check.
//! - No redirects, a time limit, and a size limit on every body.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("'{0}' is not an allowed URL: {1}")]
    Url(String, &'static str),
    #[error("fetching {0} failed: {1}")]
    Http(String, String),
    #[error("{0} answered more than {1} bytes")]
    TooLarge(String, usize),
}

/// Whether `ip` may be contacted.
pub fn ip_allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    if ip.is_loopback() {
        return allow_loopback;
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                // IETF protocol assignments, benchmarking, and the reserved 240/4.
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_allowed(IpAddr::V4(v4), allow_loopback);
            }
            let seg = v6.segments();
            // Forms that carry or reach an IPv4 address (and so could reach a private one
            // through a translator or tunnel) are refused whole: IPv4-compatible `::/96`,
            // NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo
            // `2001::/32`; then unique-local `fc00::/7`, link-local `fe80::/10`, site-local
            // `fec0::/10`, and documentation `2001:db8::/32`.
            let v4_compatible = seg[..6].iter().all(|s| *s == 0);
            let nat64 = seg[0] == 0x64
                && seg[1] == 0xff9b
                && (seg[2] == 1 || seg[2..6].iter().all(|s| *s == 0));
            !(v4_compatible
                || nat64
                || seg[0] == 0x2002
                || (seg[0] == 0x2001 && seg[1] == 0)
                || (seg[0] == 0x2001 && seg[1] == 0xdb8)
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0)
        }
    }
}

struct CheckedResolver {
    allow_loopback: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_loopback;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| ip_allowed(a.ip(), allow))
                .collect();
            if addrs.is_empty() {
                return Err(format!("'{host}' resolves to no allowed address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    allow_loopback: bool,
}

impl Fetcher {
    pub fn new(allow_loopback: bool) -> Self {
        // reqwest is built without a default crypto provider; the binary installs aws-lc at
        // start-up, and library users (tests) get the same here if they have not.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .dns_resolver(Arc::new(CheckedResolver { allow_loopback }))
            .user_agent("portico-sso/1")
            .build()
            .unwrap_or_default();
        Self {
            client,
            allow_loopback,
        }
    }

    /// The client for libraries that take one (openidconnect). Only use it with URLs that
    /// passed [`Fetcher::check_url`].
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn allow_loopback(&self) -> bool {
        self.allow_loopback
    }

    /// Checks scheme and literal addresses; names are checked again after resolution.
    pub fn check_url(&self, raw: &str) -> Result<Url, FetchError> {
        let bad = |why| FetchError::Url(raw.to_owned(), why);
        let url = Url::parse(raw).map_err(|_| bad("not a URL"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in URLs are not allowed"));
        }
        let host = url.host().ok_or_else(|| bad("no host"))?;
        let loopback = match host {
            url::Host::Ipv4(ip) => {
                if !ip_allowed(IpAddr::V4(ip), self.allow_loopback) {
                    return Err(bad("address not allowed"));
                }
                ip.is_loopback()
            }
            url::Host::Ipv6(ip) => {
                if !ip_allowed(IpAddr::V6(ip), self.allow_loopback) {
                    return Err(bad("address not allowed"));
                }
                ip.is_loopback()
            }
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback && self.allow_loopback => {}
            "http" => return Err(bad("only https is allowed")),
            _ => return Err(bad("only https is allowed")),
        }
        Ok(url)
    }

    /// GETs a URL with the size limit.
    pub async fn get(&self, raw: &str, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
        self.get_with(raw, None, max_bytes).await
    }

    /// GETs a URL with a bearer token (OIDC UserInfo) and the size limit.
    pub async fn get_bearer(
        &self,
        raw: &str,
        token: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, FetchError> {
        self.get_with(raw, Some(token), max_bytes).await
    }

    async fn get_with(
        &self,
        raw: &str,
        bearer: Option<&str>,
        max_bytes: usize,
    ) -> Result<Vec<u8>, FetchError> {
        let url = self.check_url(raw)?;
        let http =
            |e: reqwest::Error| FetchError::Http(raw.to_owned(), e.without_url().to_string());
        let mut req = self.client.get(url);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(http)?;
        if !resp.status().is_success() {
            return Err(FetchError::Http(
                raw.to_owned(),
                format!("status {}", resp.status()),
            ));
        }
        if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
            return Err(FetchError::TooLarge(raw.to_owned(), max_bytes));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge(raw.to_owned(), max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_link_local_addresses_are_refused() {
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "febf::1",
            "fec0::1",
            "::ffff:10.0.0.1",
            // Every blocked IPv4 range in IPv4-mapped form too.
            "::ffff:172.16.0.1",
            "::ffff:192.168.0.1",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::ffff:192.0.2.1",
            "::ffff:198.18.0.1",
            "::ffff:240.0.0.1",
            // Translated and tunnelled forms of IPv4 addresses, whatever they embed.
            "64:ff9b::a00:1",
            "64:ff9b::5db8:d822",
            "64:ff9b:1::a00:1",
            "2002:a00:1::1",
            "2002:5db8:d822::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "::10.0.0.1",
            "::169.254.169.254",
            "::93.184.216.34",
            "2001:db8::1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
        ] {
            assert!(!ip_allowed(ip.parse().unwrap(), true), "{ip}");
        }
        assert!(!ip_allowed("::ffff:127.0.0.1".parse().unwrap(), false));
        assert!(ip_allowed("2606:4700::1111".parse().unwrap(), false));
        assert!(ip_allowed("::ffff:93.184.216.34".parse().unwrap(), false));
        assert!(!ip_allowed("127.0.0.1".parse().unwrap(), false));
        assert!(ip_allowed("127.0.0.1".parse().unwrap(), true));
        assert!(ip_allowed("93.184.216.34".parse().unwrap(), false));
    }

    #[test]
    fn only_https_except_allowed_loopback() {
        let strict = Fetcher::new(false);
        assert!(strict.check_url("https://idp.example.com/md").is_ok());
        assert!(strict.check_url("http://idp.example.com/md").is_err());
        assert!(strict.check_url("http://127.0.0.1:8080/md").is_err());
        assert!(strict.check_url("https://169.254.169.254/").is_err());
        assert!(
            strict
                .check_url("https://user:pw@idp.example.com/")
                .is_err()
        );
        let tests = Fetcher::new(true);
        assert!(tests.check_url("http://127.0.0.1:8080/md").is_ok());
        assert!(tests.check_url("http://idp.example.com/md").is_err());
    }
}
