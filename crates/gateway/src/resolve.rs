//! Finding a request's tenant and service, from hyper's parsed head or from the raw head the
//! plain HTTP/1.1 path parsed itself.

use http::header::{self, HeaderName};
use http::request::Parts;

use crate::GatewaySettings;

/// What the gateway reads of a request head.
pub(crate) trait Head {
    /// The first value of header `name`.
    fn header(&self, name: &HeaderName) -> Option<&[u8]>;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query, without `?`.
    fn query(&self) -> Option<&str>;
    /// The host of an absolute target (HTTP/2's `:authority`).
    fn target_host(&self) -> Option<&str>;
}

impl Head for Parts {
    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers.get(name).map(http::HeaderValue::as_bytes)
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn target_host(&self) -> Option<&str> {
        self.uri.host()
    }
}

/// A header value as text, when it is visible ASCII (what `HeaderValue::to_str` accepts).
pub(crate) fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&byte| byte == b'\t' || (0x20..0x7f).contains(&byte))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The tenant named by the tenant header, when present and not empty.
pub(crate) fn tenant_from_header<'p, H: Head + ?Sized>(
    settings: &GatewaySettings,
    head: &'p H,
) -> Option<&'p str> {
    head.header(&settings.tenant_header)
        .and_then(text)
        .filter(|value| !value.is_empty())
}

/// The bearer token of the `Authorization` header.
pub(crate) fn bearer_token<H: Head + ?Sized>(head: &H) -> Option<&str> {
    let value = text(head.header(&header::AUTHORIZATION)?)?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The host's first label under the configured domain (`acme.example.com` → `acme`).
pub(crate) fn tenant_from_host<'p, H: Head + ?Sized>(
    settings: &GatewaySettings,
    head: &'p H,
) -> Option<&'p str> {
    let domain = settings.tenant_domain.as_deref()?;
    let host = head
        .header(&header::HOST)
        .and_then(text)
        .or_else(|| head.target_host())?;
    let host = host.split(':').next().unwrap_or(host);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// The service (the header, the longest matching route, else the first path segment) and,
/// when a route strips its prefix, the path and query to forward instead of the request's.
pub(crate) fn service_of<H: Head + ?Sized>(
    settings: &GatewaySettings,
    head: &H,
) -> Option<(String, Option<String>)> {
    if let Some(value) = head.header(&settings.service_header) {
        let service = text(value).filter(|v| !v.is_empty())?;
        return Some((service.to_owned(), None));
    }
    let path = head.path();
    let rule = settings
        .routes
        .iter()
        .filter(|rule| {
            path.strip_prefix(rule.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|rule| rule.prefix.len());
    if let Some(rule) = rule {
        let rewritten = rule.strip_prefix.then(|| {
            let rest = &path[rule.prefix.len()..];
            let mut forwarded = String::with_capacity(rest.len() + 16);
            if !rest.starts_with('/') {
                forwarded.push('/');
            }
            forwarded.push_str(rest);
            if let Some(query) = head.query() {
                forwarded.push('?');
                forwarded.push_str(query);
            }
            forwarded
        });
        return Some((rule.service.clone(), rewritten));
    }
    let first = path.trim_start_matches('/').split('/').next()?;
    (!first.is_empty()).then(|| (first.to_owned(), None))
}
