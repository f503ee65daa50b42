//! Finding a request's tenant and service.

use http::header;
use http::request::Parts;

use crate::GatewaySettings;

/// The tenant named by the tenant header, when present and not empty.
pub(crate) fn tenant_from_header<'p>(
    settings: &GatewaySettings,
    parts: &'p Parts,
) -> Option<&'p str> {
    parts
        .headers
        .get(&settings.tenant_header)?
        .to_str()
        .ok()
        .filter(|value| !value.is_empty())
}

/// The bearer token of the `Authorization` header.
pub(crate) fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The host's first label under the configured domain (`acme.example.com` → `acme`).
pub(crate) fn tenant_from_host<'p>(
    settings: &GatewaySettings,
    parts: &'p Parts,
) -> Option<&'p str> {
    let domain = settings.tenant_domain.as_deref()?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())?;
    let host = host.split(':').next().unwrap_or(host);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some(label)
}

/// The service (the header, the longest matching route, else the first path segment) and,
/// when a route strips its prefix, the path and query to forward instead of the request's.
pub(crate) fn service_of(
    settings: &GatewaySettings,
    parts: &Parts,
) -> Option<(String, Option<String>)> {
    if let Some(value) = parts.headers.get(&settings.service_header) {
        let service = value.to_str().ok().filter(|v| !v.is_empty())?;
        return Some((service.to_owned(), None));
    }
    let path = parts.uri.path();
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
            if let Some(query) = parts.uri.query() {
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
