//! Destinations a user may choose (a webhook's URL), checked against server-side request
//! forgery (OWASP API7).
//!
//! A destination is refused when any address it resolves to is loopback, private,
//! link-local (the cloud metadata endpoint, `169.254.169.254`), unspecified, multicast or
//! otherwise not routable on the internet — unless its host is allowed explicitly. With an
//! allowlist, only hosts that match it are accepted at all. The check runs on the address
//! the name *resolves* to, on every connection (as the HTTP client's resolver), so a name
//! that points somewhere else later (DNS rebinding) is refused then too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why a destination was refused. Nothing is sent to a refused destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL, or not an http(s) one.
    #[error("{url:?} is not an http:// or https:// URL: {why}")]
    Url {
        /// What was given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The host does not match the allowlist.
    #[error("{host} is not among the allowed destinations")]
    NotAllowed {
        /// The host.
        host: String,
    },
    /// The host is, or resolves to, an address that is not public.
    #[error("{host} resolves to {address}, which is not a public address")]
    Internal {
        /// The host.
        host: String,
        /// The offending address.
        address: IpAddr,
    },
    /// The host could not be resolved.
    #[error("{host} cannot be resolved: {why}")]
    Unresolved {
        /// The host.
        host: String,
        /// Why.
        why: String,
    },
}

/// One allowlist entry: a host name (`hooks.example.com`), a subdomain wildcard
/// (`*.example.com`: any name under it, not itself) or an IP address, with an optional
/// port (`127.0.0.1:8082`, `[::1]:8082`) that then must match too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl Pattern {
    fn parse(text: &str) -> Self {
        let text = text.trim().to_ascii_lowercase();
        let (host, port) = split_port(&text);
        let host = host.trim_end_matches('.');
        let host = match host.strip_prefix("*.") {
            Some(suffix) => HostPattern::Suffix(format!(".{suffix}")),
            None => HostPattern::Exact(normalize(host)),
        };
        Self { host, port }
    }

    /// Whether `host` matches, on `port` (`None`: any port the pattern allows, for the
    /// resolver, which is not told the port; the URL check is).
    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host_matches = match &self.host {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
        };
        host_matches && (self.port.is_none() || port.is_none() || self.port == port)
    }

    fn is_empty(&self) -> bool {
        matches!(&self.host, HostPattern::Exact(host) if host.is_empty())
    }
}

/// `host:port` into its parts; a bare IPv6 address has no port unless bracketed.
fn split_port(text: &str) -> (&str, Option<u16>) {
    let split = if text.starts_with('[') {
        text.rsplit_once("]:")
            .map(|(host, port)| (&text[..host.len() + 1], port))
    } else if text.matches(':').count() == 1 {
        text.split_once(':')
    } else {
        None
    };
    match split.and_then(|(host, port)| Some((host, port.parse().ok()?))) {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    }
}

/// Which destinations are allowed: any public address by default; with an allowlist, only
/// the hosts it names, which may then be internal.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allow: Vec<Pattern>,
}

impl Destinations {
    /// Only public addresses, any host.
    pub fn public() -> Self {
        Self::default()
    }

    /// Only hosts matching `patterns` (`hooks.example.com`, `*.example.com`, an IP, each
    /// with an optional `:port`), allowed whatever they resolve to. An empty list is
    /// [`Destinations::public`].
    pub fn allowing<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            allow: patterns
                .into_iter()
                .map(|p| Pattern::parse(p.as_ref()))
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// The same, with `host` (and optional `:port`) allowed too: a built-in receiver on
    /// loopback.
    pub fn also_allowing(mut self, host: &str) -> Self {
        self.allow.push(Pattern::parse(host));
        self
    }

    /// A regular expression (JSON Schema `pattern`) for the URLs these destinations can
    /// take: an http(s) URL with a host of the allowlist (and its port when the entry names
    /// one), or, without an allowlist, any host name or IP address. Whether a name resolves
    /// to a public address cannot be written in a pattern; that is checked when a URL is
    /// given and again on every connection.
    pub fn url_pattern(&self) -> String {
        const PORT: &str = "(:[0-9]{1,5})?";
        const LABEL: &str = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
        let hosts: Vec<String> = if self.allow.is_empty() {
            vec![
                format!("({LABEL}\\.)*{LABEL}{PORT}"),
                format!("\\[[0-9A-Fa-f:.]+\\]{PORT}"),
            ]
        } else {
            self.allow
                .iter()
                .map(|pattern| {
                    let host = match &pattern.host {
                        HostPattern::Exact(host) if host.contains(':') => {
                            format!("\\[{}\\]", escape(host))
                        }
                        HostPattern::Exact(host) => escape(host),
                        HostPattern::Suffix(suffix) => {
                            format!("({LABEL}\\.)+{}", escape(&suffix[1..]))
                        }
                    };
                    match pattern.port {
                        Some(port) => format!("{host}:{port}"),
                        None => format!("{host}{PORT}"),
                    }
                })
                .collect()
        };
        format!("^https?://({})(/[!-~]*)?$", hosts.join("|"))
    }

    /// Whether `host` on `port` is allowed explicitly (and so may be internal).
    fn explicitly_allowed(&self, host: &str, port: Option<u16>) -> bool {
        let host = normalize(host);
        self.allow
            .iter()
            .any(|pattern| pattern.matches(&host, port))
    }

    /// Checks what can be checked without a lookup: the URL's form, the allowlist, and an
    /// IP address given as the host.
    pub fn check_url(&self, url: &str) -> Result<Url, Refused> {
        let parsed = check_form(url)?;
        let host = normalize(parsed.host_str().unwrap_or_default());
        let port = parsed.port_or_known_default();
        if !self.allow.is_empty() && !self.explicitly_allowed(&host, port) {
            return Err(Refused::NotAllowed { host });
        }
        if let Ok(address) = host.parse::<IpAddr>()
            && !self.explicitly_allowed(&host, port)
            && !is_public(address)
        {
            return Err(Refused::Internal { host, address });
        }
        Ok(parsed)
    }

    /// Checks `url` fully: its form, then every address its host resolves to.
    pub async fn check(&self, url: &str) -> Result<Url, Refused> {
        let parsed = self.check_url(url)?;
        let host = normalize(parsed.host_str().unwrap_or_default());
        if host.parse::<IpAddr>().is_err() {
            self.resolve_checked(&host).await?;
        }
        Ok(parsed)
    }

    /// The addresses of `host`, if every one of them is allowed.
    async fn resolve_checked(&self, host: &str) -> Result<Vec<SocketAddr>, Refused> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| Refused::Unresolved {
                host: host.to_owned(),
                why: e.to_string(),
            })?
            .collect();
        if addresses.is_empty() {
            return Err(Refused::Unresolved {
                host: host.to_owned(),
                why: "no address".to_owned(),
            });
        }
        if !self.explicitly_allowed(host, None)
            && let Some(internal) = addresses.iter().find(|a| !is_public(a.ip()))
        {
            return Err(Refused::Internal {
                host: host.to_owned(),
                address: internal.ip(),
            });
        }
        Ok(addresses)
    }
}

/// `text` with the characters that mean something in a regular expression escaped.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$-".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Checks a destination's form only: an http(s) URL with a host and no credentials. Which
/// hosts are allowed depends on the deployment ([`Destinations`]).
pub fn check_form(url: &str) -> Result<Url, Refused> {
    let refuse = |why: &str| Refused::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| refuse(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse("only http and https are allowed"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refuse("credentials in the URL are not allowed"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(refuse("it has no host"));
    }
    Ok(parsed)
}

/// The client's resolver: every name is resolved and checked before a connection.
impl Resolve for Destinations {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let refused = |refused: Refused| -> Box<dyn std::error::Error + Send + Sync> {
                Box::new(refused)
            };
            if !guard.allow.is_empty() && !guard.explicitly_allowed(&host, None) {
                return Err(refused(Refused::NotAllowed { host }));
            }
            let addresses = guard.resolve_checked(&host).await.map_err(refused)?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

fn normalize(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether `address` is routable on the public internet.
pub fn is_public(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    !(v6.is_unspecified()
        || v6.is_loopback()
        || v6.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
        || v6.to_ipv4().is_some_and(|v4| !is_public_v4(v4))) // IPv4-compatible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        let open = Destinations::public();
        for refused in [
            "ftp://example.com/",
            "http://user:pass@example.com/",
            "http://127.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "not a url",
        ] {
            assert!(open.check_url(refused).is_err(), "{refused}");
        }
        assert!(open.check_url("https://hooks.example.com/x").is_ok());
        let allowed = Destinations::allowing(["*.example.com", "127.0.0.1"]);
        assert!(allowed.check_url("https://a.example.com/").is_ok());
        assert!(
            allowed.check_url("https://example.com/").is_err(),
            "the wildcard is for subdomains"
        );
        assert!(allowed.check_url("https://example.org/").is_err());
        assert!(
            allowed.check_url("http://127.0.0.1:9000/hook").is_ok(),
            "explicitly allowed"
        );
        assert!(allowed.check_url("http://10.0.0.1/").is_err());
    }

    #[test]
    fn the_url_pattern_takes_what_the_allowlist_takes() {
        let matches = |destinations: &Destinations, url: &str| {
            let pattern = regex_lite::Regex::new(&destinations.url_pattern()).unwrap();
            pattern.is_match(url)
        };
        let allowed = Destinations::allowing(["127.0.0.1:8082", "*.example.com", "[::1]"]);
        for url in [
            "http://127.0.0.1:8082/v1/webhooks",
            "https://a.example.com/x?y=1",
            "https://a.b.example.com:8443/",
            "http://[::1]:9/",
            "http://127.0.0.1:8082",
        ] {
            assert!(matches(&allowed, url), "{url}");
            assert!(allowed.check_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://127.0.0.1:8083/",
            "http://127.0.0.1/",
            "https://example.com/",
            "ftp://a.example.com/",
            "http://a.example.com/ space",
            "http://127.0.0.1:8082@evil.com/",
        ] {
            assert!(!matches(&allowed, url), "{url}");
        }
        let public = Destinations::public();
        assert!(matches(&public, "https://hooks.example.com/oncely"));
        assert!(matches(&public, "http://[2606:4700::1111]:8080/"));
        assert!(!matches(&public, "0"));
        assert!(!matches(&public, "https://user@hooks.example.com/"));
    }

    #[test]
    fn a_pattern_with_a_port_allows_that_port_only() {
        let allowed = Destinations::allowing(["127.0.0.1:8082", "[::1]:8082", "hooks.test:443"]);
        assert!(
            allowed
                .check_url("http://127.0.0.1:8082/v1/webhooks")
                .is_ok()
        );
        assert!(allowed.check_url("http://127.0.0.1:5432/").is_err());
        assert!(allowed.check_url("http://127.0.0.1/").is_err(), "port 80");
        assert!(allowed.check_url("http://[::1]:8082/").is_ok());
        assert!(allowed.check_url("http://[::1]:8083/").is_err());
        assert!(
            allowed.check_url("https://hooks.test/").is_ok(),
            "443 by default"
        );
        assert!(allowed.check_url("http://hooks.test/").is_err());
        let bare_v6 = Destinations::allowing(["::1"]);
        assert!(bare_v6.check_url("http://[::1]:9/").is_ok(), "any port");
    }
}
