//! Requests a tenant can aim — webhook deliveries here, provider
//! credentials' base URLs later — go only where the platform allows: an
//! `https` URL whose host resolves to public addresses. Loopback, private,
//! link-local (the cloud metadata address among them), shared, multicast
//! and reserved addresses are refused.
//!
//! The check is made on the addresses the client actually connects to: the
//! client resolves names through [`GuardedResolver`], which drops every
//! refused address, so a name that resolves to a public address when the
//! URL is checked and to 127.0.0.1 when it is fetched (DNS rebinding) still
//! cannot reach 127.0.0.1. An IP literal in the URL is checked by
//! [`Policy::check_url`]. Redirects are never followed and proxies never used.
//!
//! The embedded default (no configuration file) also allows `http` to
//! loopback, so a receiver on the same machine works out of the box.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Where outbound requests may go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Allow loopback addresses (and `http` to them): a local receiver.
    pub allow_loopback: bool,
    /// Allow private and other non-public addresses too (a deployment whose
    /// receivers live on its own network). Never the default.
    pub allow_private: bool,
}

/// Why an address or URL is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not `https` (or `http` to an allowed loopback address).
    #[error("the URL must be https")]
    Scheme,
    /// No host, or credentials in the URL.
    #[error("the URL must name a host, without credentials")]
    Host,
    /// The host is an address the platform does not call.
    #[error("the URL's host is a {0} address, which webhooks may not call")]
    Address(&'static str),
}

/// What kind of non-public address `ip` is, if it is one.
#[must_use]
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xff00 == 0xff00 {
                Some("multicast")
            } else if s[0] == 0x64 && s[1] == 0xff9b {
                // NAT64: the IPv4 address inside decides.
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                non_public_v4(Ipv4Addr::new(a, b, c, d))
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        // 169.254.0.0/16: the cloud metadata service (169.254.169.254) is here.
        Some("link-local")
    } else if a == 100 && (b & 0xc0) == 64 {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else if (a == 192 && b == 0 && c == 2) || (a == 198 && b == 51 && c == 100) || (a == 203 && b == 0 && c == 113) {
        Some("documentation")
    } else if a == 198 && (b & 0xfe) == 18 {
        Some("benchmarking")
    } else if a == 192 && b == 0 && c == 0 {
        Some("protocol assignment")
    } else {
        None
    }
}

impl Policy {
    /// Whether a connection to `ip` is allowed.
    ///
    /// # Errors
    /// [`Refused::Address`] naming the kind of address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        match non_public(ip) {
            None => Ok(()),
            Some("loopback") if self.allow_loopback => Ok(()),
            Some(_) if self.allow_private => Ok(()),
            Some(kind) => Err(Refused::Address(kind)),
        }
    }

    /// Checks a URL before it is stored or called: the scheme, the host,
    /// and an IP literal's address. A name's addresses are checked when it
    /// is resolved ([`GuardedResolver`]).
    ///
    /// # Errors
    /// Why it is refused.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Host);
        }
        let ip = match url.host() {
            None => return Err(Refused::Host),
            Some(Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") => {
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            Some(Host::Domain(_)) => None,
        };
        if let Some(ip) = ip {
            self.check_ip(ip)?;
        }
        match url.scheme() {
            "https" => Ok(()),
            // Plain http only to a loopback receiver, when that is allowed.
            "http" if self.allow_loopback && ip.is_some_and(|ip| non_public(ip) == Some("loopback")) => Ok(()),
            "http" if self.allow_private && ip.is_some_and(|ip| non_public(ip).is_some()) => Ok(()),
            _ => Err(Refused::Scheme),
        }
    }

    /// A resolver for a client that may only reach what this policy allows.
    #[must_use]
    pub fn resolver(self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { policy: self })
    }
}

/// Resolves names with the system resolver and keeps only the addresses
/// the policy allows; a name with none left fails to resolve.
#[derive(Debug)]
pub struct GuardedResolver {
    policy: Policy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| policy.check_ip(a.ip()).is_ok()).collect();
            if allowed.is_empty() {
                let kind = found.first().and_then(|a| non_public(a.ip())).unwrap_or("unresolvable");
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to addresses webhooks may not call ({kind})").into();
                return Err(refused);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// A client for tenant-aimed requests: the guarded resolver, no redirects,
/// no proxies, `timeout` for the whole request.
///
/// # Errors
/// The TLS backend could not be set up.
pub fn client(policy: Policy, timeout: std::time::Duration) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .dns_resolver(policy.resolver())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .user_agent("ModelRoute-Webhooks/1")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> Url {
        Url::parse(u).unwrap()
    }

    #[test]
    fn strict_refuses_every_non_public_address_and_plain_http() {
        let strict = Policy::default();
        for (u, kind) in [
            ("https://127.0.0.1/hook", "loopback"),
            ("https://localhost/hook", "loopback"),
            ("https://[::1]/hook", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://10.0.0.5/", "private"),
            ("https://172.16.3.4/", "private"),
            ("https://192.168.1.1/", "private"),
            ("https://100.64.0.1/", "shared (carrier-grade NAT)"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://[fd00:ec2::254]/", "private (unique local)"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::ffff:127.0.0.1]/", "loopback"),
            ("https://[::ffff:169.254.169.254]/", "link-local"),
            ("https://[64:ff9b::a9fe:a9fe]/", "link-local"),
        ] {
            assert_eq!(strict.check_url(&url(u)), Err(Refused::Address(kind)), "{u}");
        }
        assert_eq!(strict.check_url(&url("http://example.com/hook")), Err(Refused::Scheme));
        assert_eq!(strict.check_url(&url("https://user:pw@example.com/")), Err(Refused::Host));
        assert_eq!(strict.check_url(&url("https://example.com/hook")), Ok(()));
        assert_eq!(strict.check_url(&url("https://93.184.216.34/hook")), Ok(()));
        assert!(strict.check_url(&url("ftp://example.com/")).is_err());
    }

    #[test]
    fn the_embedded_default_allows_loopback_only() {
        let local = Policy { allow_loopback: true, allow_private: false };
        assert_eq!(local.check_url(&url("http://127.0.0.1:9000/hook")), Ok(()));
        assert_eq!(local.check_url(&url("http://localhost:9000/hook")), Ok(()));
        assert_eq!(local.check_url(&url("https://169.254.169.254/")), Err(Refused::Address("link-local")));
        assert_eq!(local.check_url(&url("http://10.1.2.3/")), Err(Refused::Address("private")));
        assert_eq!(local.check_url(&url("http://example.com/")), Err(Refused::Scheme));
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        let strict = Policy::default().resolver();
        let name: Name = "localhost".parse().unwrap();
        let e = strict.resolve(name).await.err().unwrap();
        assert!(e.to_string().contains("may not call"), "{e}");
        let local = Policy { allow_loopback: true, allow_private: false }.resolver();
        let addrs: Vec<SocketAddr> = local.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
