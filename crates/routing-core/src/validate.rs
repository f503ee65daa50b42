//! Syntax of names, free text and addresses, and the fixed limits every replica applies
//! identically.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::RoutingError;

/// Longest tenant id, service name, version, instance id, region, zone or tier.
pub const MAX_NAME_LEN: usize = 128;
/// Longest free-text field (tenant name, label value, metadata value).
pub const MAX_TEXT_LEN: usize = 1024;
/// Most labels on a tenant or metadata entries on an instance.
pub const MAX_ENTRIES: usize = 64;
/// Most versions a service knows (versions are added, never removed).
pub const MAX_VERSIONS_PER_SERVICE: usize = 1_000;
/// Most instances registered for one service, over all its versions.
pub const MAX_INSTANCES_PER_SERVICE: usize = 50_000;
/// Most overrides (emergency rollbacks in force) on one service.
pub const MAX_OVERRIDES_PER_SERVICE: usize = 100;
/// Most rollouts on one service.
pub const MAX_ROLLOUTS_PER_SERVICE: usize = 100;
/// Most experiments on one service.
pub const MAX_EXPERIMENTS_PER_SERVICE: usize = 100;
/// Most variants of one experiment.
pub const MAX_VARIANTS: usize = 64;
/// Longest reason or note (why a change was made), in characters.
pub const MAX_REASON_LEN: usize = 256;
/// Longest DNS name in an address (RFC 1035, without a trailing dot).
pub const MAX_HOST_LEN: usize = 253;
/// Longest label of a DNS name.
pub const MAX_LABEL_LEN: usize = 63;

/// Checks that adding one more item to a collection of `len` keeps it within `max`.
pub fn room(field: &str, len: usize, max: usize) -> Result<(), crate::RoutingError> {
    if len >= max {
        return Err(crate::RoutingError::FailedPrecondition(format!(
            "{field}: at most {max} (remove some first)"
        )));
    }
    Ok(())
}

/// Checks a required name: 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._:+@-]`.
pub fn name(field: &str, value: &str) -> Result<(), RoutingError> {
    if value.is_empty() {
        return Err(RoutingError::invalid(field, "must not be empty"));
    }
    optional_name(field, value)
}

/// Checks a list of names (each as [`name`]), returning them as a set.
pub fn names(field: &str, values: Vec<String>) -> Result<BTreeSet<String>, RoutingError> {
    values
        .into_iter()
        .map(|value| name(field, &value).map(|()| value))
        .collect()
}

/// Checks an optional name: empty, or as [`name`].
pub fn optional_name(field: &str, value: &str) -> Result<(), RoutingError> {
    if value.len() > MAX_NAME_LEN {
        return Err(RoutingError::invalid(
            field,
            format!("longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '+' | '@' | '-')))
    {
        return Err(RoutingError::invalid(
            field,
            format!("character {bad:?} is not allowed (use letters, digits and . _ : + @ -)"),
        ));
    }
    Ok(())
}

/// Checks free text: at most [`MAX_TEXT_LEN`] bytes; no control characters (Cc), no
/// bidirectional formatting characters and no zero-width or invisible characters, which would
/// let a caller make a tenant name or a reason display as something else.
pub fn text(field: &str, value: &str) -> Result<(), RoutingError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(RoutingError::invalid(
            field,
            format!("longer than {MAX_TEXT_LEN} bytes"),
        ));
    }
    for c in value.chars() {
        if c.is_control() {
            return Err(RoutingError::invalid(
                field,
                "must not contain control characters",
            ));
        }
        if let Some(kind) = hidden(c) {
            return Err(RoutingError::invalid(
                field,
                format!(
                    "must not contain the {kind} character U+{:04X}",
                    u32::from(c)
                ),
            ));
        }
    }
    Ok(())
}

/// Returns what kind of character hides or reorders text, or `None` for a visible one.
pub fn hidden(c: char) -> Option<&'static str> {
    match c {
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => Some("bidirectional formatting"),
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' => Some("invisible"),
        _ => None,
    }
}

/// Checks a reason or note (why a change was made): [`text`] of at most [`MAX_REASON_LEN`]
/// characters. Every free-text "why" field is limited by this one rule.
pub fn reason(field: &str, value: &str) -> Result<(), RoutingError> {
    // The length first: a value too long is refused for its own limit, not the text limit.
    if value.chars().count() > MAX_REASON_LEN {
        return Err(RoutingError::invalid(
            field,
            format!("longer than {MAX_REASON_LEN} characters"),
        ));
    }
    text(field, value)
}

/// Longest name of who made a change (a user, a service account), in characters.
pub const MAX_ACTOR_LEN: usize = MAX_NAME_LEN;

/// Longest note of a rollout decision: who decided and why (`by <actor>: <reason>`).
pub const MAX_NOTE_LEN: usize = MAX_ACTOR_LEN + MAX_REASON_LEN + 8;

/// Checks who made a change: [`text`] of 1 to [`MAX_ACTOR_LEN`] characters.
pub fn actor(field: &str, value: &str) -> Result<(), RoutingError> {
    // The length first: a value too long is refused for its own limit, not the text limit.
    if value.chars().count() > MAX_ACTOR_LEN {
        return Err(RoutingError::invalid(
            field,
            format!("longer than {MAX_ACTOR_LEN} characters"),
        ));
    }
    text(field, value)
}

/// Checks a rollout decision's note: [`text`] of at most [`MAX_NOTE_LEN`] characters, room for
/// an actor and a reason.
pub fn note(field: &str, value: &str) -> Result<(), RoutingError> {
    // The length first: a value too long is refused for its own limit, not the text limit.
    if value.chars().count() > MAX_NOTE_LEN {
        return Err(RoutingError::invalid(
            field,
            format!("longer than {MAX_NOTE_LEN} characters"),
        ));
    }
    text(field, value)
}

/// Checks a map of labels or metadata: at most [`MAX_ENTRIES`] entries, keys are names.
pub fn entries(field: &str, map: &BTreeMap<String, String>) -> Result<(), RoutingError> {
    if map.len() > MAX_ENTRIES {
        return Err(RoutingError::invalid(
            field,
            format!("more than {MAX_ENTRIES} entries"),
        ));
    }
    for (key, value) in map {
        name(&format!("{field}.key"), key)?;
        text(&format!("{field}[{key}]"), value)?;
    }
    Ok(())
}

/// The host of an [`Address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A DNS name.
    Name(&'a str),
    /// An IPv4 literal.
    Ipv4(Ipv4Addr),
    /// An IPv6 literal (written in brackets).
    Ipv6(Ipv6Addr),
}

/// A parsed `host:port` address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    /// The host.
    pub host: Host<'a>,
    /// The port, 1-65535.
    pub port: u16,
}

/// Parses a `host:port` address, the one address syntax of the router.
///
/// The host is one of:
/// - an IPv4 literal, as [`Ipv4Addr`] parses it (four decimal octets, no leading zeros);
/// - an IPv6 literal in brackets, as [`Ipv6Addr`] parses it (`[fe80::1]:80`; no zone id);
///   without brackets it is refused, since its last `:` cannot be told from the port's;
/// - a DNS name of at most [`MAX_HOST_LEN`] characters: dot-separated labels of 1 to
///   [`MAX_LABEL_LEN`] letters, digits, `-` and `_`, neither starting nor ending with `-`, each
///   with at least one letter or digit. `_` is allowed because service-discovery names
///   (`_grpc._tcp.example`) and container hostnames use it; `_` alone is not a name. The last
///   label must not look like a number (all digits, or `0x` and hex digits), so a malformed IPv4
///   literal such as `999.999.999.999` is refused rather than taken as a name; no trailing dot.
///
/// The port is 1 to 65535 in plain decimal digits: no sign, no leading zeros.
pub fn parse_address<'a>(field: &str, value: &'a str) -> Result<Address<'a>, RoutingError> {
    let invalid = |reason: &str| RoutingError::invalid(field, reason);
    if let Some(bracketed) = value.strip_prefix('[') {
        let Some((host, port)) = bracketed.split_once(']') else {
            return Err(invalid(
                "an IPv6 address needs its closing bracket, as [::1]:80",
            ));
        };
        let Some(port) = port.strip_prefix(':') else {
            return Err(invalid("must be host:port"));
        };
        let host = host
            .parse::<Ipv6Addr>()
            .map_err(|_| invalid("host in brackets must be an IPv6 address, as [::1]:80"))?;
        return Ok(Address {
            host: Host::Ipv6(host),
            port: parse_port(port).ok_or_else(|| invalid(PORT_RULE))?,
        });
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(invalid("must be host:port"));
    };
    if host.contains(':') {
        return Err(invalid(
            "an IPv6 address must be in brackets, as [fe80::1]:80",
        ));
    }
    let port = parse_port(port).ok_or_else(|| invalid(PORT_RULE))?;
    if host.is_empty() {
        return Err(invalid("host must not be empty"));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Address {
            host: Host::Ipv4(ip),
            port,
        });
    }
    dns_name(host).map_err(invalid)?;
    Ok(Address {
        host: Host::Name(host),
        port,
    })
}

/// Checks a `host:port` address (see [`parse_address`]).
pub fn address(field: &str, value: &str) -> Result<(), RoutingError> {
    parse_address(field, value).map(drop)
}

const PORT_RULE: &str = "port must be 1-65535 in decimal digits, without sign or leading zeros";

/// Parses a port: 1-65535, plain decimal digits, no leading zero.
fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.starts_with('0') || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Checks a DNS name (see [`parse_address`]).
fn dns_name(host: &str) -> Result<(), &'static str> {
    if host.len() > MAX_HOST_LEN {
        return Err("host name longer than 253 characters");
    }
    let mut last = "";
    for label in host.split('.') {
        if label.is_empty() {
            return Err("host name has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("host name has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("host name has an invalid character (use letters, digits, - and _)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("host name label must not start or end with -");
        }
        if !label.bytes().any(|b| b.is_ascii_alphanumeric()) {
            return Err("host name label must have a letter or digit");
        }
        last = label;
    }
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("host is neither a valid IPv4 address nor a host name");
    }
    Ok(())
}

/// Converts shares in percent (rollout steps) to basis points: at least one, each above 0 and
/// at most 100 percent.
pub fn shares(field: &str, percents: &[f64]) -> Result<Vec<u32>, RoutingError> {
    if percents.is_empty() {
        return Err(RoutingError::invalid(field, "must not be empty"));
    }
    percents
        .iter()
        .map(|&percent| {
            if percent.is_finite() && percent > 0.0 && percent <= 100.0 {
                Ok((percent * 100.0).round() as u32)
            } else {
                Err(RoutingError::invalid(
                    field,
                    format!("{percent} is not a share above 0 and at most 100 percent"),
                ))
            }
        })
        .collect()
}

/// Checks a cohort's names (fields `cohort.tiers`, `cohort.labels`, `cohort.tenant_ids`) and
/// returns it.
pub fn cohort(
    tiers: Vec<String>,
    labels: BTreeMap<String, String>,
    tenant_ids: Vec<String>,
) -> Result<crate::Cohort, RoutingError> {
    entries("cohort.labels", &labels)?;
    Ok(crate::Cohort {
        tiers: names("cohort.tiers", tiers)?,
        labels,
        tenant_ids: names("cohort.tenant_ids", tenant_ids)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("tenant_id", "acme-corp").is_ok());
        assert!(name("version", "v1.2.0-rc.1+build").is_ok());
        let err = name("tenant_id", "").expect_err("an empty name is refused");
        assert_eq!(err.to_string(), "invalid tenant_id: must not be empty");
        assert!(name("service", "a b").is_err());
        assert!(name("service", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(optional_name("region", "").is_ok());
    }

    #[test]
    fn good_addresses_parse() {
        let cases = [
            (
                "10.0.0.1:8080",
                Host::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
                8080,
            ),
            ("api.internal:443", Host::Name("api.internal"), 443),
            ("[::1]:80", Host::Ipv6(Ipv6Addr::LOCALHOST), 80),
            (
                "[fe80::1]:1",
                Host::Ipv6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
                1,
            ),
            (
                "my-svc.ns.svc.cluster.local:65535",
                Host::Name("my-svc.ns.svc.cluster.local"),
                65535,
            ),
            ("localhost:80", Host::Name("localhost"), 80),
            ("my_service:80", Host::Name("my_service"), 80),
            (
                "_grpc._tcp.example.com:443",
                Host::Name("_grpc._tcp.example.com"),
                443,
            ),
            ("1.example:80", Host::Name("1.example"), 80),
            ("0.0.0.0:9", Host::Ipv4(Ipv4Addr::UNSPECIFIED), 9),
        ];
        for (value, host, port) in cases {
            assert_eq!(
                parse_address("address", value),
                Ok(Address { host, port }),
                "{value}"
            );
            assert!(address("address", value).is_ok(), "{value}");
        }
        let label = "a".repeat(MAX_LABEL_LEN);
        let longest = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(longest.len(), MAX_HOST_LEN);
        assert!(address("address", &format!("{longest}:80")).is_ok());
    }

    #[test]
    fn bad_addresses_are_refused() {
        let long_label = format!("{}.example:80", "a".repeat(MAX_LABEL_LEN + 1));
        let label = "a".repeat(MAX_LABEL_LEN);
        let long_host = format!("{label}.{label}.{label}.{}:80", "b".repeat(62));
        let cases: &[(&str, &str)] = &[
            ("host:+80", "port must be"),
            ("host:0080", "port must be"),
            ("host:-80", "port must be"),
            ("host: 80", "port must be"),
            ("host:0", "port must be"),
            ("host:65536", "port must be"),
            ("host:99999", "port must be"),
            ("host:", "port must be"),
            ("999.999.999.999:80", "neither a valid IPv4 address"),
            ("10.0.0:80", "neither a valid IPv4 address"),
            ("010.0.0.1:80", "neither a valid IPv4 address"),
            ("0x7f.1:80", "neither a valid IPv4 address"),
            ("example.0x1f:80", "neither a valid IPv4 address"),
            ("_:1", "letter or digit"),
            ("a._.b:1", "letter or digit"),
            ("fe80::1", "in brackets"),
            ("fe80::1:80", "in brackets"),
            ("::1:80", "in brackets"),
            ("[fe80::1]", "must be host:port"),
            ("[fe80::1]80", "must be host:port"),
            ("[fe80::1:80", "closing bracket"),
            ("[10.0.0.1]:80", "must be an IPv6 address"),
            ("[fe80::1%eth0]:80", "must be an IPv6 address"),
            ("host", "must be host:port"),
            (":80", "must not be empty"),
            ("a b:80", "invalid character"),
            ("bücher.example:80", "invalid character"),
            ("-api.internal:80", "start or end with -"),
            ("api-.internal:80", "start or end with -"),
            ("api..internal:80", "empty label"),
            ("api.internal.:80", "empty label"),
            (&long_label, "longer than 63"),
            (&long_host, "longer than 253"),
        ];
        for (value, expected) in cases {
            let err = address("instance.address", value).expect_err(value);
            let message = err.to_string();
            assert!(
                message.starts_with("invalid instance.address: ") && message.contains(expected),
                "{value}: {message}"
            );
        }
    }

    #[test]
    fn bidi_and_invisible_characters_are_refused_in_text() {
        for c in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let err = text("tenant.name", &format!("acme{c}corp")).expect_err("bidi refused");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid tenant.name: must not contain the bidirectional formatting character U+{:04X}",
                    u32::from(c)
                )
            );
        }
        for c in [
            '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00AD}',
        ] {
            let err = text("tenant.name", &format!("acme{c}corp")).expect_err("invisible refused");
            assert!(err.to_string().contains("invisible character"), "{err}");
        }
        assert!(text("tenant.name", "Ācme Çorp — 東京 🚀").is_ok());
        assert!(text("tenant.name", "tab\there").is_err());
    }

    #[test]
    fn right_to_left_override_and_zero_width_space_are_refused_in_names_and_text() {
        for value in ["acme\u{202E}proc", "acme\u{200B}corp"] {
            assert!(name("tenant_id", value).is_err(), "{value:?}");
            assert!(optional_name("region", value).is_err(), "{value:?}");
            assert!(text("tenant.name", value).is_err(), "{value:?}");
            assert!(reason("decision.note", value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn reasons_are_text_of_at_most_256_characters() {
        assert!(reason("decision.note", "").is_ok());
        // Characters, not bytes: 256 three-byte characters fit.
        assert!(reason("decision.note", &"é".repeat(MAX_REASON_LEN)).is_ok());
        assert!(reason("decision.note", &"東".repeat(MAX_REASON_LEN)).is_ok());
        let err = reason("decision.note", &"x".repeat(MAX_REASON_LEN + 1)).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "invalid decision.note: longer than 256 characters"
        );
        assert!(reason("decision.note", "bad\u{7}bell").is_err());
    }
}
