//! The migration catalog: every service's migrations and the schema version each service
//! version requires, loaded from a directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::SchemaError;

/// The first line that marks an up migration as a contract (destructive) migration.
pub const CONTRACT_MARKER: &str = "-- greyrouter: contract";

/// A line among the leading comments of a migration's up or down SQL that runs its
/// `ALTER TABLE` statements through the configured online schema change tool on MySQL
/// (`pt-online-schema-change`, `gh-ost`) instead of plain DDL. PostgreSQL ignores it.
pub const ONLINE_MARKER: &str = "-- greyrouter: online-schema-change";

/// Returns whether the SQL's leading comment lines hold [`ONLINE_MARKER`].
pub fn marked_online(sql: &str) -> bool {
    sql.lines()
        .map(str::trim)
        .take_while(|line| line.is_empty() || line.starts_with("--"))
        .any(|line| line == ONLINE_MARKER)
}

/// The manifest file of a service's catalog directory.
pub const MANIFEST: &str = "versions.toml";

/// Separates the up and the down text in what a checksum covers (a NUL byte, which cannot
/// appear in PostgreSQL text).
const CHECKSUM_SEPARATOR: &str = "\0";

/// One migration of a service's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Its number: unique within the service, greater than 0; applied in increasing order.
    pub version: u32,
    /// Its name (the file name between `NNNN_` and `.up.sql`).
    pub name: String,
    /// The SQL that applies it (line endings normalised to LF).
    pub up: String,
    /// The SQL that reverts it, if it can be reverted (line endings normalised to LF).
    pub down: Option<String>,
    /// Whether it is a contract (destructive) migration: its up file's first line is
    /// [`CONTRACT_MARKER`]. The schema never goes below it again.
    pub contract: bool,
    /// Hex SHA-256 of the normalised up text, followed by a separator and the down text if any.
    pub checksum: String,
}

impl Migration {
    /// Returns a migration built from its texts: line endings normalised, the contract marker
    /// read and the checksum computed.
    pub fn new(version: u32, name: &str, up: &str, down: Option<&str>) -> Migration {
        let up = normalise(up);
        let down = down.map(normalise);
        let contract = up
            .lines()
            .next()
            .is_some_and(|line| line.trim_end() == CONTRACT_MARKER);
        let checksum = checksum(&up, down.as_deref());
        Migration {
            version,
            name: name.to_owned(),
            up,
            down,
            contract,
            checksum,
        }
    }

    /// Returns `NNNN_name`, as the migration's files are named.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

/// Returns the text with CRLF and lone CR line endings turned into LF (and a leading UTF-8 byte
/// order mark removed), so that a checkout on any platform gives the same checksum.
pub fn normalise(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Returns the hex SHA-256 checksum of a migration's up text and, if any, its down text, after
/// normalising line endings.
pub fn checksum(up: &str, down: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(normalise(up).as_bytes());
    if let Some(down) = down {
        hasher.update(CHECKSUM_SEPARATOR.as_bytes());
        hasher.update(normalise(down).as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The migrations of one service and the schema version each of its versions requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCatalog {
    /// The service (the name of its catalog directory).
    pub service: String,
    /// Its migrations, sorted by version.
    pub migrations: Vec<Migration>,
    /// Service version → the schema version it requires.
    pub versions: BTreeMap<String, u32>,
}

impl ServiceCatalog {
    /// Returns the schema version a service version requires, if the manifest names it.
    pub fn required_for(&self, service_version: &str) -> Option<u32> {
        self.versions.get(service_version).copied()
    }

    /// Returns the migration with this number.
    pub fn migration(&self, version: u32) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |migration| migration.version)
            .ok()
            .map(|index| &self.migrations[index])
    }

    /// Returns the highest migration number, 0 when there is none.
    pub fn latest(&self) -> u32 {
        self.migrations
            .last()
            .map_or(0, |migration| migration.version)
    }

    /// Returns the highest contract migration at or below the applied schema version: no
    /// service version requiring less than it may be routed to any more.
    pub fn contract_floor(&self, applied: u32) -> Option<&Migration> {
        self.migrations
            .iter()
            .rev()
            .filter(|migration| migration.version <= applied)
            .find(|migration| migration.contract)
    }
}

/// Every service's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    services: BTreeMap<String, ServiceCatalog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    versions: BTreeMap<String, u32>,
}

/// Which half of a migration a file holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Half {
    Up,
    Down,
}

/// One parsed migration file name.
struct MigrationFile {
    version: u32,
    name: String,
    half: Half,
    path: PathBuf,
}

impl Catalog {
    /// Returns a catalog without any service.
    pub fn empty() -> Catalog {
        Catalog::default()
    }

    /// Returns a catalog of these services (replacing any of the same name).
    pub fn from_services(services: impl IntoIterator<Item = ServiceCatalog>) -> Catalog {
        Catalog {
            services: services
                .into_iter()
                .map(|service| (service.service.clone(), service))
                .collect(),
        }
    }

    /// Loads every service directory under `dir`: `dir/<service>/NNNN_name.up.sql`, optional
    /// `NNNN_name.down.sql` and `dir/<service>/versions.toml`.
    ///
    /// Hidden entries and files at the top of `dir` are ignored, as are files other than
    /// `.sql` files and the manifest in a service directory (a README, say). Every error names
    /// the file at fault.
    pub fn load(dir: &Path) -> Result<Catalog, SchemaError> {
        let mut services = BTreeMap::new();
        for entry in read_dir(dir)? {
            let name = file_name(&entry)?;
            if name.starts_with('.') || !entry.is_dir() {
                continue;
            }
            let service = load_service(&name, &entry)?;
            services.insert(name, service);
        }
        Ok(Catalog { services })
    }

    /// Returns the catalog of one service.
    pub fn service(&self, name: &str) -> Option<&ServiceCatalog> {
        self.services.get(name)
    }

    /// Returns every service's catalog, by name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceCatalog> {
        self.services.values()
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, SchemaError> {
    let entries = fs::read_dir(dir)
        .map_err(|err| SchemaError::Catalog(format!("{}: {err}", dir.display())))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|err| SchemaError::Catalog(format!("{}: {err}", dir.display())))?;
        paths.push(entry.path());
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> Result<String, SchemaError> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            SchemaError::Catalog(format!("{}: the name is not valid UTF-8", path.display()))
        })
}

fn read_text(path: &Path) -> Result<String, SchemaError> {
    fs::read_to_string(path)
        .map_err(|err| SchemaError::Catalog(format!("{}: {err}", path.display())))
}

/// Parses `NNNN_name.up.sql` or `NNNN_name.down.sql`.
fn parse_file_name(path: &Path, file: &str) -> Result<MigrationFile, SchemaError> {
    let bad = |why: &str| {
        SchemaError::Catalog(format!(
            "{}: {why} (expected NNNN_name.up.sql or NNNN_name.down.sql)",
            path.display()
        ))
    };
    let (stem, half) = if let Some(stem) = file.strip_suffix(".up.sql") {
        (stem, Half::Up)
    } else if let Some(stem) = file.strip_suffix(".down.sql") {
        (stem, Half::Down)
    } else {
        return Err(bad("not a migration file name"));
    };
    let (number, name) = stem
        .split_once('_')
        .ok_or_else(|| bad("no '_' between the number and the name"))?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the name does not start with a number"));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(
            "the migration name must be made of letters, digits, '_' and '-'",
        ));
    }
    let version: u32 = number
        .parse()
        .ok()
        .filter(|version| i32::try_from(*version).is_ok())
        .ok_or_else(|| bad("the number must be at most 2147483647"))?;
    if version == 0 {
        return Err(bad("migration numbers start at 1"));
    }
    Ok(MigrationFile {
        version,
        name: name.to_owned(),
        half,
        path: path.to_owned(),
    })
}

fn load_service(service: &str, dir: &Path) -> Result<ServiceCatalog, SchemaError> {
    let mut ups: BTreeMap<u32, MigrationFile> = BTreeMap::new();
    let mut downs: BTreeMap<u32, MigrationFile> = BTreeMap::new();
    let mut manifest = None;
    for path in read_dir(dir)? {
        let file = file_name(&path)?;
        if file.starts_with('.') {
            continue;
        }
        if file == MANIFEST {
            manifest = Some(path);
            continue;
        }
        if !file.ends_with(".sql") {
            continue;
        }
        if path.is_dir() {
            return Err(SchemaError::Catalog(format!(
                "{}: a directory where a migration file was expected",
                path.display()
            )));
        }
        let parsed = parse_file_name(&path, &file)?;
        let halves = match parsed.half {
            Half::Up => &mut ups,
            Half::Down => &mut downs,
        };
        if let Some(other) = halves.get(&parsed.version) {
            return Err(SchemaError::Catalog(format!(
                "{}: migration number {} is also used by {}",
                path.display(),
                parsed.version,
                other.path.display()
            )));
        }
        halves.insert(parsed.version, parsed);
    }

    for (version, down) in &downs {
        match ups.get(version) {
            None => {
                return Err(SchemaError::Catalog(format!(
                    "{}: a down migration without an up migration",
                    down.path.display()
                )));
            }
            Some(up) if up.name != down.name => {
                return Err(SchemaError::Catalog(format!(
                    "{}: its name does not match its up migration {}",
                    down.path.display(),
                    up.path.display()
                )));
            }
            Some(_) => {}
        }
    }

    let mut migrations = Vec::with_capacity(ups.len());
    for (version, up) in &ups {
        let up_text = read_text(&up.path)?;
        if up_text.trim().is_empty() {
            return Err(SchemaError::Catalog(format!(
                "{}: the migration is empty",
                up.path.display()
            )));
        }
        let down_text = match downs.get(version) {
            Some(down) => Some(read_text(&down.path)?),
            None => None,
        };
        migrations.push(Migration::new(
            *version,
            &up.name,
            &up_text,
            down_text.as_deref(),
        ));
    }

    let manifest_path = manifest.ok_or_else(|| {
        SchemaError::Catalog(format!(
            "{}: missing (a [versions] table mapping service versions to schema versions)",
            dir.join(MANIFEST).display()
        ))
    })?;
    let manifest: Manifest = toml::from_str(&read_text(&manifest_path)?).map_err(|err| {
        SchemaError::Catalog(format!(
            "{}: {}",
            manifest_path.display(),
            err.to_string().trim_end()
        ))
    })?;
    for (service_version, schema_version) in &manifest.versions {
        if *schema_version != 0 && !ups.contains_key(schema_version) {
            return Err(SchemaError::Catalog(format!(
                "{}: service version {service_version} requires schema version \
                 {schema_version}, which has no migration",
                manifest_path.display()
            )));
        }
    }

    Ok(ServiceCatalog {
        service: service.to_owned(),
        migrations,
        versions: manifest.versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, text: &str) {
        let path = dir.join(file);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create dir");
        fs::write(path, text).expect("write file");
    }

    fn load_err(dir: &Path) -> String {
        Catalog::load(dir)
            .expect_err("the catalog is invalid")
            .to_string()
    }

    #[test]
    fn checksums_ignore_line_endings() {
        let lf = "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n";
        let crlf = "CREATE TABLE a (id int);\r\nCREATE TABLE b (id int);\r\n";
        let cr = "CREATE TABLE a (id int);\rCREATE TABLE b (id int);\r";
        assert_eq!(checksum(lf, None), checksum(crlf, None));
        assert_eq!(checksum(lf, None), checksum(cr, None));
        assert_eq!(
            checksum(lf, Some("DROP TABLE a;\n")),
            checksum(crlf, Some("DROP TABLE a;\r\n"))
        );
        assert_eq!(checksum(lf, None).len(), 64);
    }

    #[test]
    fn checksums_cover_the_down_text() {
        let up = "CREATE TABLE a (id int);\n";
        assert_ne!(checksum(up, None), checksum(up, Some("DROP TABLE a;")));
        assert_ne!(
            checksum(up, Some("DROP TABLE a;")),
            checksum(up, Some("DROP TABLE a CASCADE;"))
        );
        // Moving text between up and down changes the checksum.
        assert_ne!(checksum("ab", Some("c")), checksum("a", Some("bc")));
    }

    #[test]
    fn checksum_of_known_text() {
        assert_eq!(
            checksum("", None),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_online_marker_is_read_from_the_leading_comments() {
        assert!(marked_online(
            "-- greyrouter: online-schema-change\nALTER TABLE a ADD b int;"
        ));
        assert!(marked_online(
            "-- why\n\n-- greyrouter: online-schema-change  \nALTER TABLE a;"
        ));
        assert!(!marked_online(
            "ALTER TABLE a ADD b int;\n-- greyrouter: online-schema-change"
        ));
        assert!(!marked_online("-- greyrouter: contract\nDROP TABLE a;"));
    }

    #[test]
    fn contract_marker_is_the_first_line_only() {
        assert!(Migration::new(1, "a", "-- greyrouter: contract\r\nDROP TABLE a;", None).contract);
        assert!(Migration::new(1, "a", "-- greyrouter: contract  \nDROP TABLE a;", None).contract);
        assert!(!Migration::new(1, "a", "DROP TABLE a;\n-- greyrouter: contract\n", None).contract);
        assert!(!Migration::new(1, "a", "-- greyrouter: expand\n", None).contract);
    }

    #[test]
    fn loads_a_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "README.md", "ignored");
        write(
            root,
            "billing/0001_create.up.sql",
            "CREATE TABLE a (id int);\r\n",
        );
        write(root, "billing/0001_create.down.sql", "DROP TABLE a;\n");
        write(
            root,
            "billing/0005_drop.up.sql",
            "-- greyrouter: contract\nDROP TABLE a;\n",
        );
        write(root, "billing/README.md", "ignored too");
        write(
            root,
            "billing/versions.toml",
            "[versions]\n\"v1.0\" = 1\n\"v2.0\" = 5\n\"v0.1\" = 0\n",
        );
        let catalog = Catalog::load(root).expect("a valid catalog");
        let billing = catalog.service("billing").expect("billing");
        assert_eq!(catalog.services().count(), 1);
        assert_eq!(billing.migrations.len(), 2);
        let first = billing.migration(1).expect("migration 1");
        assert_eq!(first.name, "create");
        assert_eq!(first.up, "CREATE TABLE a (id int);\n");
        assert_eq!(first.down.as_deref(), Some("DROP TABLE a;\n"));
        assert!(!first.contract);
        assert_eq!(
            first.checksum,
            checksum("CREATE TABLE a (id int);\n", Some("DROP TABLE a;\n"))
        );
        assert!(billing.migration(5).expect("migration 5").contract);
        assert_eq!(billing.migration(5).map(|m| m.down.is_none()), Some(true));
        assert_eq!(billing.migration(3), None);
        assert_eq!(billing.latest(), 5);
        assert_eq!(billing.required_for("v2.0"), Some(5));
        assert_eq!(billing.required_for("v0.1"), Some(0));
        assert_eq!(billing.required_for("v9"), None);
        assert_eq!(billing.contract_floor(4), None);
        assert_eq!(billing.contract_floor(5).map(|m| m.version), Some(5));
        assert_eq!(billing.contract_floor(9).map(|m| m.version), Some(5));
        assert!(catalog.service("nope").is_none());
    }

    #[test]
    fn an_empty_catalog_has_no_service() {
        assert_eq!(Catalog::empty().services().count(), 0);
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Catalog::load(dir.path()), Ok(Catalog::empty()));
    }

    #[test]
    fn duplicate_numbers_name_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "s/0001_a.up.sql", "SELECT 1;");
        write(dir.path(), "s/1_b.up.sql", "SELECT 1;");
        write(dir.path(), "s/versions.toml", "[versions]\n");
        let err = load_err(dir.path());
        assert!(err.contains("0001_a.up.sql"), "{err}");
        assert!(err.contains("1_b.up.sql"), "{err}");
        assert!(err.contains("also used by"), "{err}");
    }

    #[test]
    fn a_down_without_up_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "s/0001_a.up.sql", "SELECT 1;");
        write(dir.path(), "s/0002_b.down.sql", "SELECT 1;");
        write(dir.path(), "s/versions.toml", "[versions]\n");
        let err = load_err(dir.path());
        assert!(err.contains("0002_b.down.sql"), "{err}");
        assert!(err.contains("without an up"), "{err}");
    }

    #[test]
    fn a_down_with_another_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "s/0001_a.up.sql", "SELECT 1;");
        write(dir.path(), "s/0001_b.down.sql", "SELECT 1;");
        write(dir.path(), "s/versions.toml", "[versions]\n");
        let err = load_err(dir.path());
        assert!(err.contains("0001_b.down.sql"), "{err}");
    }

    #[test]
    fn number_zero_and_bad_names_are_refused() {
        for (file, why) in [
            ("0000_a.up.sql", "start at 1"),
            ("a_b.up.sql", "start with a number"),
            ("0001.up.sql", "no '_'"),
            ("0001_.up.sql", "letters, digits"),
            ("0001_a b.up.sql", "letters, digits"),
            ("0001_a.sql", "not a migration file name"),
            ("9999999999_a.up.sql", "at most"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            write(dir.path(), &format!("s/{file}"), "SELECT 1;");
            write(dir.path(), "s/versions.toml", "[versions]\n");
            let err = load_err(dir.path());
            assert!(err.contains(file), "{file}: {err}");
            assert!(err.contains(why), "{file}: {err}");
        }
    }

    #[test]
    fn manifest_errors_name_the_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "s/0001_a.up.sql", "SELECT 1;");
        write(dir.path(), "s/0003_c.up.sql", "SELECT 1;");
        write(dir.path(), "s/versions.toml", "[versions]\n\"v1\" = 2\n");
        let err = load_err(dir.path());
        assert!(err.contains("versions.toml"), "{err}");
        assert!(err.contains("v1 requires schema version 2"), "{err}");

        write(dir.path(), "s/versions.toml", "[versions]\n\"v1\" = -1\n");
        let err = load_err(dir.path());
        assert!(err.contains("versions.toml"), "{err}");

        write(dir.path(), "s/versions.toml", "[version]\n\"v1\" = 1\n");
        let err = load_err(dir.path());
        assert!(err.contains("versions.toml"), "{err}");

        fs::remove_file(dir.path().join("s/versions.toml")).expect("remove");
        let err = load_err(dir.path());
        assert!(err.contains("versions.toml: missing"), "{err}");
    }

    #[test]
    fn an_empty_migration_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "s/0001_a.up.sql", " \n\r\n");
        write(dir.path(), "s/versions.toml", "[versions]\n");
        let err = load_err(dir.path());
        assert!(
            err.contains("0001_a.up.sql: the migration is empty"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = Catalog::load(Path::new("/nonexistent/greyrouter-migrations"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/nonexistent/greyrouter-migrations"), "{err}");
    }
}
