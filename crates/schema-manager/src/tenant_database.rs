//! Where each tenant's schema lives: a port ([`TenantDatabases`]) and its template adapter.

use std::fmt;

use routing_core::Tenant;

use crate::SchemaError;

/// The tenant label that names the tenant's schema, overriding the template.
pub const SCHEMA_LABEL: &str = "schema";

/// PostgreSQL's longest identifier, in bytes (longer ones are silently truncated by the server,
/// so they are refused here).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// The database and schema of one tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantDatabase {
    /// A `postgres://` URL or a `key=value` connection string; may hold a password.
    pub url: String,
    /// The schema the tenant's tables and its history table live in.
    pub schema: String,
}

impl TenantDatabase {
    /// Returns the URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for TenantDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantDatabase")
            .field("url", &self.redacted_url())
            .field("schema", &self.schema)
            .finish()
    }
}

/// Maps tenants to their database and schema.
///
/// Connection secrets come from the implementation (configuration), never from routing state.
pub trait TenantDatabases: Send + Sync + 'static {
    /// Returns the tenant's database and schema.
    fn database(&self, tenant: &Tenant) -> Result<TenantDatabase, SchemaError>;
}

/// Maps tenants by replacing `{tenant}` in a URL and a schema template.
///
/// Tenant ids may only hold `[A-Za-z0-9._:+@-]`; in both templates every character that is not
/// valid in an unquoted identifier becomes `_`, and the schema is lowercased. Distinct ids can
/// therefore share a schema (`a.b` and `a-b` both give `a_b`): keep ids distinct after that
/// mapping, or name schemas with the `schema` label. A tenant's `schema` label overrides the
/// schema template; the URL is never taken from labels (secrets never live in routing state).
#[derive(Clone, PartialEq, Eq)]
pub struct Templates {
    /// The database URL template, for instance `postgres://app:secret@db:5432/saas` or
    /// `postgres://app@db-{tenant}:5432/saas`.
    pub url: String,
    /// The schema template, for instance `tenant_{tenant}`.
    pub schema: String,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .finish()
    }
}

impl TenantDatabases for Templates {
    fn database(&self, tenant: &Tenant) -> Result<TenantDatabase, SchemaError> {
        let id = &tenant.id;
        if id.is_empty() {
            return Err(SchemaError::InvalidTenant(
                "the tenant id is empty".to_owned(),
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._:+@-".contains(*c)))
        {
            return Err(SchemaError::InvalidTenant(format!(
                "tenant id {id:?} holds {bad:?}; only letters, digits and . _ : + @ - are allowed"
            )));
        }
        let identifier: String = id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let schema = match tenant.labels.get(SCHEMA_LABEL) {
            Some(schema) => schema.clone(),
            None => self
                .schema
                .replace("{tenant}", &identifier.to_ascii_lowercase()),
        };
        validate_schema(id, &schema)?;
        Ok(TenantDatabase {
            url: self.url.replace("{tenant}", &identifier),
            schema,
        })
    }
}

fn validate_schema(tenant_id: &str, schema: &str) -> Result<(), SchemaError> {
    if schema.is_empty() {
        return Err(SchemaError::InvalidTenant(format!(
            "the schema of tenant {tenant_id} is empty"
        )));
    }
    if schema.len() > MAX_IDENTIFIER_BYTES {
        return Err(SchemaError::InvalidTenant(format!(
            "the schema of tenant {tenant_id} ({schema}) is longer than {MAX_IDENTIFIER_BYTES} bytes"
        )));
    }
    if schema.contains('\0') {
        return Err(SchemaError::InvalidTenant(format!(
            "the schema of tenant {tenant_id} holds a NUL character"
        )));
    }
    Ok(())
}

/// Returns the connection string with its password replaced by `***`: the password of a URL's
/// user info, a `password=` query parameter, or a `password=` key of a `key=value` string.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for (start, end) in password_ranges(url) {
        out.push_str(&url[copied..start]);
        out.push_str("***");
        copied = end;
    }
    out.push_str(&url[copied..]);
    out
}

/// Removes the URL's passwords from a message, should a driver ever repeat one.
pub(crate) fn scrub(message: &str, url: &str) -> String {
    password_ranges(url)
        .into_iter()
        .map(|(start, end)| &url[start..end])
        .filter(|secret| !secret.is_empty())
        .fold(message.to_owned(), |message, secret| {
            message.replace(secret, "***")
        })
}

/// Returns the byte ranges of the passwords in a connection string, in order.
fn password_ranges(url: &str) -> Vec<(usize, usize)> {
    let Some(scheme_end) = url.find("://") else {
        return key_value_password_ranges(url);
    };
    let mut ranges = Vec::new();
    let start = scheme_end + 3;
    let query = url[start..]
        .find('?')
        .map_or(url.len(), |index| start + index);
    // User info ends at the last '@' before the query: a password may hold '/' or '@'.
    if let Some(at) = url[start..query].rfind('@').map(|index| start + index)
        && let Some(colon) = url[start..at].find(':').map(|index| start + index)
    {
        ranges.push((colon + 1, at));
    }
    let mut offset = query + 1;
    if offset <= url.len() {
        for param in url[offset..].split('&') {
            if let Some((key, value)) = param.split_once('=')
                && key.eq_ignore_ascii_case("password")
            {
                let value_start = offset + key.len() + 1;
                ranges.push((value_start, value_start + value.len()));
            }
            offset += param.len() + 1;
        }
    }
    ranges
}

/// Returns the ranges of `password = value` values (bare or single-quoted with `\` escapes)
/// in a `key=value` connection string.
fn key_value_password_ranges(text: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let skip_spaces = |mut index: usize| {
        while text[index..].starts_with(char::is_whitespace) {
            index += text[index..].chars().next().map_or(1, char::len_utf8);
        }
        index
    };
    let mut index = skip_spaces(0);
    while index < text.len() {
        let key_end = text[index..]
            .find(|c: char| c == '=' || c.is_whitespace())
            .map_or(text.len(), |end| index + end);
        let key = &text[index..key_end];
        let eq = skip_spaces(key_end);
        if !text[eq..].starts_with('=') {
            index = skip_spaces(eq.max(key_end + 1).min(text.len()));
            continue;
        }
        let value_start = skip_spaces(eq + 1);
        let value_end = if text[value_start..].starts_with('\'') {
            let mut escaped = false;
            let mut end = text.len();
            for (offset, c) in text[value_start + 1..].char_indices() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '\'' {
                    end = value_start + 1 + offset + 1;
                    break;
                }
            }
            end
        } else {
            text[value_start..]
                .find(char::is_whitespace)
                .map_or(text.len(), |end| value_start + end)
        };
        if key.eq_ignore_ascii_case("password") {
            ranges.push((value_start, value_end));
        }
        index = skip_spaces(value_end);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn tenant(id: &str) -> Tenant {
        Tenant {
            id: id.to_owned(),
            name: String::new(),
            region: String::new(),
            tier: String::new(),
            labels: BTreeMap::new(),
            active: true,
        }
    }

    fn templates() -> Templates {
        Templates {
            url: "postgres://app:s3cret@db.internal:5432/saas_{tenant}".to_owned(),
            schema: "tenant_{tenant}".to_owned(),
        }
    }

    #[test]
    fn replaces_the_tenant_in_both_templates() {
        let db = templates()
            .database(&tenant("Acme-Corp.EU"))
            .expect("valid");
        assert_eq!(
            db.url,
            "postgres://app:s3cret@db.internal:5432/saas_Acme_Corp_EU"
        );
        assert_eq!(db.schema, "tenant_acme_corp_eu");
        let db = templates().database(&tenant("a+b@c:d")).expect("valid");
        assert_eq!(db.schema, "tenant_a_b_c_d");
    }

    #[test]
    fn the_schema_label_overrides_the_template_but_never_the_url() {
        let mut t = tenant("acme");
        t.labels
            .insert("schema".to_owned(), "Acme Schema".to_owned());
        t.labels
            .insert("database_url".to_owned(), "postgres://evil/db".to_owned());
        let db = templates().database(&t).expect("valid");
        assert_eq!(db.schema, "Acme Schema");
        assert_eq!(db.url, "postgres://app:s3cret@db.internal:5432/saas_acme");
    }

    #[test]
    fn refuses_bad_tenant_ids_and_schemas() {
        for id in ["", "a b", "a/b", "a\"b", "a;drop", "é"] {
            let err = templates().database(&tenant(id)).expect_err(id);
            assert!(matches!(err, SchemaError::InvalidTenant(_)), "{id}: {err}");
        }
        let long = "x".repeat(60);
        let err = templates().database(&tenant(&long)).expect_err("too long");
        assert!(err.to_string().contains("longer than 63 bytes"), "{err}");
        let mut t = tenant("acme");
        t.labels.insert("schema".to_owned(), String::new());
        assert!(templates().database(&t).is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let db = templates().database(&tenant("acme")).expect("valid");
        let shown = format!("{db:?} {:?}", templates());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("app:***@db.internal:5432/saas_acme"),
            "{shown}"
        );
        assert_eq!(
            db.redacted_url(),
            "postgres://app:***@db.internal:5432/saas_acme"
        );
    }

    #[test]
    fn redacts_every_form_of_password() {
        for (url, want) in [
            ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:p/w@d@h:1/db?x=1",
                "postgresql://u:***@h:1/db?x=1",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            (
                "postgres://h/db?user=u&password=pw&sslmode=disable",
                "postgres://h/db?user=u&password=***&sslmode=disable",
            ),
            (
                "postgres://h/db?password=pw",
                "postgres://h/db?password=***",
            ),
            (
                "host=h user=u password=pw dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "host=h password = 'p w\\' x' dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("password=pw", "password=***"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn scrub_removes_passwords_from_messages() {
        let url = "postgres://u:hunter2@h/db?password=other";
        let scrubbed = scrub("failed for hunter2 and other", url);
        assert!(!scrubbed.contains("hunter2"), "{scrubbed}");
        assert!(!scrubbed.contains("other"), "{scrubbed}");
        assert_eq!(scrub("nothing secret", "postgres://h/db"), "nothing secret");
    }
}
