//! Syntax of names and the fixed limits every replica applies identically.

use std::collections::BTreeMap;

use crate::RoutingError;

/// Longest tenant id, service name, version, instance id, region, zone or tier.
pub const MAX_NAME_LEN: usize = 128;
/// Longest free-text field (tenant name, label value, metadata value).
pub const MAX_TEXT_LEN: usize = 1024;
/// Most labels on a tenant or metadata entries on an instance.
pub const MAX_ENTRIES: usize = 64;

/// Checks a required name: 1 to [`MAX_NAME_LEN`] characters of `[A-Za-z0-9._:+@-]`.
pub fn name(field: &str, value: &str) -> Result<(), RoutingError> {
    if value.is_empty() {
        return Err(RoutingError::invalid(field, "must not be empty"));
    }
    optional_name(field, value)
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

/// Checks free text: at most [`MAX_TEXT_LEN`] bytes, no control characters.
pub fn text(field: &str, value: &str) -> Result<(), RoutingError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(RoutingError::invalid(
            field,
            format!("longer than {MAX_TEXT_LEN} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(RoutingError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
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

/// Checks a `host:port` address.
pub fn address(field: &str, value: &str) -> Result<(), RoutingError> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(RoutingError::invalid(field, "must be host:port"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return Err(RoutingError::invalid(
            field,
            "host must be 1-253 characters",
        ));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(RoutingError::invalid(
            field,
            "host has an invalid character",
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(RoutingError::invalid(field, "port must be 1-65535")),
    }
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
    fn addresses() {
        assert!(address("address", "10.0.0.1:8080").is_ok());
        assert!(address("address", "api.internal:443").is_ok());
        assert!(address("address", "[::1]:80").is_ok());
        assert!(address("address", "host").is_err());
        assert!(address("address", "host:0").is_err());
        assert!(address("address", "host:99999").is_err());
        assert!(address("address", ":80").is_err());
        assert!(address("address", "a b:80").is_err());
    }
}
