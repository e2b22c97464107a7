//! Where webhooks may go: `http(s)` URLs only and — unless
//! `WEBHOOK_ALLOW_PRIVATE_TARGETS=true` — never an address inside the operator's
//! network (loopback, private, link-local, unspecified, CGNAT, ULA, multicast, …),
//! the classic server-side request forgery targets such as `169.254.169.254`.
//!
//! The check runs twice, because DNS can change between registration and delivery:
//!
//! - at registration ([`check_registration`]): an IP-literal host, a `localhost` name,
//!   or a name resolving to any forbidden address is refused (422);
//! - at connection time ([`PublicOnlyResolver`]): the delivery client resolves names
//!   through a resolver that drops forbidden addresses, so the socket can only ever
//!   connect to a public one. reqwest never asks a resolver about IP-literal hosts,
//!   so the worker refuses those itself first ([`check_literal`]).
//!
//! A name that does not resolve at registration is accepted: it may simply not exist
//! yet, and it can only be reached through the resolver above.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

/// How long registration waits for DNS before accepting the name unchecked (the
/// resolver still guards every delivery).
const REGISTRATION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest URL accepted.
const MAX_URL_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("url is not a valid URL: {0}")]
    Invalid(String),
    #[error("url must be http or https, not {0}")]
    Scheme(String),
    #[error("url must name a host")]
    NoHost,
    #[error("url must not be longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error(
        "url points at {0}, a loopback, private or link-local address \
         (set WEBHOOK_ALLOW_PRIVATE_TARGETS=true to allow it)"
    )]
    Private(String),
}

/// Parses a webhook URL: absolute, `http` or `https`, with a host.
pub fn parse_url(s: &str) -> Result<Url, TargetError> {
    if s.len() > MAX_URL_LEN {
        return Err(TargetError::TooLong);
    }
    let url = Url::parse(s.trim()).map_err(|e| TargetError::Invalid(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(TargetError::Scheme(other.to_owned())),
    }
    match url.host() {
        None => Err(TargetError::NoHost),
        Some(Host::Domain("")) => Err(TargetError::NoHost),
        Some(_) => Ok(url),
    }
}

/// The registration check: refuses IP literals and names that are, or resolve to, a
/// forbidden address. Does nothing when private targets are allowed.
pub async fn check_registration(url: &Url, allow_private: bool) -> Result<(), TargetError> {
    if allow_private {
        return Ok(());
    }
    check_literal(url)?;
    let Some(Host::Domain(name)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let lookup = tokio::net::lookup_host((name, port));
    match tokio::time::timeout(REGISTRATION_LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            for addr in addrs {
                if is_forbidden(addr.ip()) {
                    return Err(TargetError::Private(format!("{name} ({})", addr.ip())));
                }
            }
            Ok(())
        }
        // Unresolvable or slow DNS: accepted, see the module docs.
        Ok(Err(_)) | Err(_) => Ok(()),
    }
}

/// What can be decided without DNS: a forbidden IP-literal host or a `localhost` name
/// (RFC 6761: always loopback, whatever a resolver says).
pub fn check_literal(url: &Url) -> Result<(), TargetError> {
    match url.host() {
        Some(Host::Ipv4(ip)) if is_forbidden(IpAddr::V4(ip)) => {
            Err(TargetError::Private(ip.to_string()))
        }
        Some(Host::Ipv6(ip)) if is_forbidden(IpAddr::V6(ip)) => {
            Err(TargetError::Private(ip.to_string()))
        }
        Some(Host::Domain(name)) if is_localhost_name(name) => {
            Err(TargetError::Private(name.to_owned()))
        }
        _ => Ok(()),
    }
}

fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether an address is one a webhook must never reach when private targets are not
/// allowed. IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are
/// judged by that address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// `(network, prefix length)` pairs.
const FORBIDDEN_V4: [(u32, u32); 15] = [
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network", incl. the unspecified address
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 carrier-grade NAT
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local (cloud metadata)
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xC000_0200, 24), // 192.0.2.0/24 documentation
    (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay anycast
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xC633_6400, 24), // 198.51.100.0/24 documentation
    (0xCB00_7100, 24), // 203.0.113.0/24 documentation
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved, incl. broadcast
];

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    FORBIDDEN_V4
        .iter()
        .any(|&(net, len)| bits >> (32 - len) == net >> (32 - len))
}

/// `(network, prefix length)` pairs judged as a whole (embedded-IPv4 forms are handled
/// separately in [`forbidden_v6`]).
const FORBIDDEN_V6: [(u128, u32); 9] = [
    (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48), // 64:ff9b:1::/48 local NAT64
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64), // 100::/64 discard
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 32), // 2001::/32 Teredo
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // 2001:db8::/32 documentation
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7),  // fc00::/7 unique local (ULA)
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10), // fe80::/10 link-local
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10), // fec0::/10 site-local (old)
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8),  // ff00::/8 multicast
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), // 3fff::/20 documentation
];

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let in_net = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    // The low 32 bits as IPv4, for the forms that embed an address there (the
    // truncating cast is the point).
    let low_v4 = Ipv4Addr::from(bits as u32);
    if in_net(0, 96) {
        // ::/96: the unspecified address, loopback (::1) and the deprecated
        // IPv4-compatible form (::a.b.c.d); all of them are judged as IPv4 would be,
        // and :: and ::1 fall in 0.0.0.0/8.
        return forbidden_v4(low_v4);
    }
    if in_net(0xffff_0000_0000, 96) {
        // ::ffff:a.b.c.d, IPv4-mapped.
        return forbidden_v4(low_v4);
    }
    if in_net(0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        // 64:ff9b::a.b.c.d, well-known NAT64 prefix.
        return forbidden_v4(low_v4);
    }
    if in_net(0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        // 2002:AABB:CCDD::/48, 6to4 embeds a.b.c.d in bits 16..48.
        let embedded = Ipv4Addr::from((bits >> 80) as u32);
        return forbidden_v4(embedded);
    }
    FORBIDDEN_V6.iter().any(|&(net, len)| in_net(net, len))
}

/// A reqwest resolver that never hands the connector a forbidden address: it resolves
/// with the system resolver (on a blocking thread, like reqwest's default) and keeps
/// only public addresses; a name with none left fails the attempt.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublicOnlyResolver;

/// Why the resolver refused a name; becomes the attempt's error.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to loopback, private or link-local addresses")]
struct PrivateName(String);

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if is_localhost_name(&host) {
                return Err(Box::new(PrivateName(host)) as _);
            }
            // Port 0: reqwest puts the URL's port on the addresses it gets back.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = resolved.filter(|a| !is_forbidden(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(PrivateName(host)) as _);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_target_refuses_internal_addresses_v4_and_v6() {
        let check = |addr: &str, forbidden: bool| {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(is_forbidden(ip), forbidden, "{addr}");
        };
        for addr in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "100.127.255.254",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ] {
            check(addr, true);
        }
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::",
        ] {
            check(addr, false);
        }
    }

    #[test]
    fn webhook_target_urls_must_be_http_or_https_with_a_host() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("http://example.com:8080").is_ok());
        assert_eq!(
            parse_url("ftp://example.com/").unwrap_err(),
            TargetError::Scheme("ftp".into())
        );
        assert!(matches!(
            parse_url("not a url").unwrap_err(),
            TargetError::Invalid(_)
        ));
        assert!(parse_url("file:///etc/passwd").is_err());
        assert!(parse_url(&format!("https://e.com/{}", "a".repeat(3000))).is_err());
    }

    #[test]
    fn webhook_target_literals_and_localhost_are_refused_without_dns() {
        let check = |url: &str, refused: bool| {
            let url = parse_url(url).unwrap();
            assert_eq!(check_literal(&url).is_err(), refused, "{url}");
        };
        check("http://127.0.0.1:9000/", true);
        check("http://[::1]/", true);
        check("http://[::ffff:a9fe:a9fe]/", true);
        check("http://169.254.169.254/latest/meta-data", true);
        // WHATWG parsing turns these spellings into 127.0.0.1.
        check("http://2130706433/", true);
        check("http://0x7f.1/", true);
        check("http://localhost:3000/", true);
        check("http://LOCALHOST./", true);
        check("http://api.localhost/", true);
        check("https://example.com/", false);
        check("https://8.8.8.8/", false);
    }

    #[tokio::test]
    async fn webhook_target_registration_resolves_names() {
        let url = parse_url("http://localhost:1/").unwrap();
        assert!(check_registration(&url, false).await.is_err());
        assert!(check_registration(&url, true).await.is_ok());
        // A name that cannot resolve (reserved TLD) is accepted; delivery re-checks.
        let url = parse_url("http://no-such-host.invalid/").unwrap();
        assert!(check_registration(&url, false).await.is_ok());
    }

    #[tokio::test]
    async fn webhook_target_resolver_drops_private_addresses() {
        use reqwest::dns::Resolve as _;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(PublicOnlyResolver.resolve(name).await.is_err());
    }
}
