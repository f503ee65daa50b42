//! The behaviour every engine shares, run against the machine's PostgreSQL and its MySQL or
//! MariaDB: each test on fresh databases of its own. What differs (a failed step rolled back
//! on PostgreSQL, left half-applied on MySQL) is asserted per engine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use greyrouter_test_support::{MysqlDatabases, PostgresDatabase};
use routing_core::Tenant;
use schema_manager::{
    Catalog, Migrator, MigratorOptions, SchemaError, StepProgress, Templates, TenantDatabases,
};

const SERVICE: &str = "user-service";

/// Fresh databases on one engine.
enum Backend {
    Postgres(PostgresDatabase),
    MySql(MysqlDatabases),
}

impl Backend {
    fn postgres() -> Backend {
        Backend::Postgres(PostgresDatabase::create())
    }

    fn mysql() -> Backend {
        Backend::MySql(MysqlDatabases::create())
    }

    fn is_mysql(&self) -> bool {
        matches!(self, Backend::MySql(_))
    }

    fn templates(&self) -> Arc<dyn TenantDatabases> {
        let (url, schema) = match self {
            Backend::Postgres(db) => (db.url(), "tenant_{tenant}".to_owned()),
            Backend::MySql(dbs) => (dbs.url(), format!("{}_{{tenant}}", dbs.prefix())),
        };
        Arc::new(Templates { url, schema })
    }

    /// The schema (MySQL: database) of a tenant, as the templates name it.
    fn schema(&self, tenant_id: &str) -> String {
        let id = tenant_id.replace(['-', '.'], "_").to_ascii_lowercase();
        match self {
            Backend::Postgres(_) => format!("tenant_{id}"),
            Backend::MySql(dbs) => format!("{}_{id}", dbs.prefix()),
        }
    }

    /// Runs SQL through the engine's command-line client; returns rows, `|`-separated columns.
    fn sql(&self, sql: &str) -> String {
        match self {
            Backend::Postgres(db) => db.psql(sql),
            Backend::MySql(dbs) => dbs.sql(sql).replace('\t', "|"),
        }
    }

    /// Runs SQL in the tenant's schema.
    fn sql_in(&self, tenant_id: &str, sql: &str) -> String {
        let schema = self.schema(tenant_id);
        match self {
            Backend::Postgres(_) => self.sql(&format!("SET search_path TO \"{schema}\"; {sql}")),
            Backend::MySql(_) => self.sql(&format!("USE `{schema}`; {sql}")),
        }
    }

    /// The tables of a tenant's schema, without the history table, sorted.
    fn tables(&self, tenant_id: &str) -> Vec<String> {
        let schema = self.schema(tenant_id);
        let rows = self.sql(&format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' \
             AND table_name <> 'grey_schema_history' ORDER BY table_name"
        ));
        // Sorted here: the servers' collations order `_` differently.
        let mut tables: Vec<String> = rows.lines().map(str::to_owned).collect();
        tables.sort();
        tables
    }

    /// Ends, from the server's side, every session of this test's tenant schemas but the
    /// client's own (as a restart or `wait_timeout` would); returns how many were ended.
    fn end_sessions(&self) -> usize {
        match self {
            Backend::Postgres(db) => db
                .psql(
                    "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .lines()
                .filter(|ended| *ended == "t")
                .count(),
            Backend::MySql(dbs) => {
                let ids = dbs.sql(&format!(
                    "SELECT id FROM information_schema.processlist \
                     WHERE db LIKE '{}\\_%' AND id <> CONNECTION_ID()",
                    dbs.prefix()
                ));
                let ids: Vec<&str> = ids.lines().collect();
                for id in &ids {
                    dbs.sql(&format!("KILL {id}"));
                }
                ids.len()
            }
        }
    }

    /// `version direction success` of each history row of a tenant, in order.
    fn history(&self, tenant_id: &str) -> Vec<String> {
        let success = match self {
            Backend::Postgres(_) => "CASE WHEN success THEN 'ok' ELSE 'failed' END",
            Backend::MySql(_) => "IF(success, 'ok', 'failed')",
        };
        self.sql_in(
            tenant_id,
            &format!("SELECT version, direction, {success} FROM grey_schema_history ORDER BY id"),
        )
        .lines()
        .map(|line| line.replace('|', " "))
        .collect()
    }
}

/// Generates one test per engine from an `async fn(Backend)`.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::postgres()).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::mysql()).await;
                }
            )*
        }
    };
}

on_every_engine!(
    tenants_upgrade_in_parallel_rerun_as_no_op_and_go_back_down,
    an_edited_migration_is_refused_until_repaired,
    eight_migrators_of_one_tenant_apply_each_migration_exactly_once,
    a_statement_failing_in_the_middle_of_a_migration,
    a_migration_past_its_timeout_is_stopped_and_recorded,
    connection_failures_never_show_the_password,
    a_migration_marked_online_alters_its_tables_through_the_tool,
    going_below_a_contract_or_irreversible_migration_is_refused,
    a_syntax_error_names_its_line,
    a_kept_session_the_server_ended_is_replaced,
);

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

fn write_catalog(root: &Path, files: &[(&str, &str)], versions: &str) {
    let dir = root.join(SERVICE);
    std::fs::create_dir_all(&dir).expect("create the service directory");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a migration");
    }
    std::fs::write(dir.join("versions.toml"), format!("[versions]\n{versions}"))
        .expect("write the manifest");
}

fn catalog(files: &[(&str, &str)]) -> Arc<Catalog> {
    let dir = tempfile::tempdir().expect("tempdir");
    write_catalog(dir.path(), files, "\"v1\" = 1\n");
    Arc::new(Catalog::load(dir.path()).expect("a valid catalog"))
}

/// Three reversible migrations in SQL both engines take; the second has three statements.
fn three_migrations() -> Arc<Catalog> {
    catalog(&[
        (
            "0001_create_users.up.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL);\n",
        ),
        ("0001_create_users.down.sql", "DROP TABLE users;\n"),
        (
            "0002_add_orders.up.sql",
            "-- orders; and a nickname\n\
             CREATE TABLE orders (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL);\n\
             CREATE INDEX orders_user_id ON orders (user_id);\n\
             ALTER TABLE users ADD COLUMN nickname VARCHAR(50);\n",
        ),
        (
            "0002_add_orders.down.sql",
            "ALTER TABLE users DROP COLUMN nickname;\nDROP TABLE orders;\n",
        ),
        (
            "0003_add_notes.up.sql",
            "CREATE TABLE notes (id BIGINT PRIMARY KEY, body VARCHAR(100) DEFAULT 'a; b');\n",
        ),
        ("0003_add_notes.down.sql", "DROP TABLE notes;\n"),
    ])
}

fn migrator(catalog: Arc<Catalog>, backend: &Backend) -> Migrator {
    Migrator::new(
        catalog,
        backend.templates(),
        MigratorOptions {
            applied_by: "tests".to_owned(),
            ..MigratorOptions::default()
        },
    )
}

fn ignore(_: StepProgress) {}

fn ups(versions: &[u32]) -> Vec<String> {
    versions.iter().map(|v| format!("{v} up ok")).collect()
}

async fn tenants_upgrade_in_parallel_rerun_as_no_op_and_go_back_down(backend: Backend) {
    let catalog = three_migrations();
    let migrator = migrator(catalog.clone(), &backend);
    let tenants: Vec<Tenant> = (0..12).map(|i| tenant(&format!("t-{i:02}"))).collect();
    let outcomes = migrator
        .migrate_many(tenants.clone(), SERVICE, 3, Arc::new(ignore))
        .await;
    let checksums: Vec<String> = catalog
        .service(SERVICE)
        .expect("service")
        .migrations
        .iter()
        .map(|migration| migration.checksum.clone())
        .collect();
    for ((tenant_id, outcome), tenant) in outcomes.iter().zip(&tenants) {
        assert_eq!(tenant_id, &tenant.id, "outcomes come in the order given");
        let schema = outcome.as_ref().expect("migrated");
        assert_eq!(schema.current, 3);
        let recorded: Vec<&str> = schema.history.iter().map(|r| r.checksum.as_str()).collect();
        assert_eq!(recorded, checksums);
        assert!(schema.history.iter().all(|row| row.success
            && row.error.is_none()
            && row.applied_by == "tests"
            && row.applied_at_ms > 1_600_000_000_000));
        assert_eq!(backend.history(tenant_id), ups(&[1, 2, 3]));
        assert_eq!(backend.tables(tenant_id), ["notes", "orders", "users"]);
    }
    // A quoted `;` stays in its statement.
    backend.sql_in("t-03", "INSERT INTO notes (id) VALUES (1)");
    assert_eq!(backend.sql_in("t-03", "SELECT body FROM notes"), "a; b");

    // Again: nothing to do, no history row added.
    let again = migrator
        .migrate_many(tenants.clone(), SERVICE, 3, Arc::new(ignore))
        .await;
    assert!(
        again
            .iter()
            .all(|(_, o)| o.as_ref().map(|s| s.current) == Ok(3))
    );
    assert_eq!(backend.history("t-05"), ups(&[1, 2, 3]));

    // Down to 1: the down migrations run in reverse.
    let schema = migrator
        .migrate(&tenants[5], SERVICE, 1, &ignore)
        .await
        .expect("down");
    assert_eq!(schema.current, 1);
    let mut expected = ups(&[1, 2, 3]);
    expected.extend(["3 down ok".to_owned(), "2 down ok".to_owned()]);
    assert_eq!(backend.history("t-05"), expected);
    assert_eq!(backend.tables("t-05"), ["users"]);
    // And a status reads what the history says.
    let status = migrator.status(&tenants[5], SERVICE).await.expect("status");
    assert_eq!(status.current, 1);
    assert_eq!(status.history.len(), 5);
    assert_eq!(status.advice("t-05"), None);
    // Reading a tenant never seen creates nothing.
    let fresh = migrator
        .status(&tenant("never-migrated"), SERVICE)
        .await
        .expect("status");
    assert_eq!((fresh.current, fresh.history.len()), (0, 0));
    let schemas = backend.sql(&format!(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{}'",
        backend.schema("never-migrated")
    ));
    assert_eq!(schemas, "0");
}

async fn an_edited_migration_is_refused_until_repaired(backend: Backend) {
    let migrator_v1 = migrator(three_migrations(), &backend);
    let acme = tenant("acme");
    migrator_v1
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect("up to 2");
    // The same catalog with a comment added to 0001.
    let dir = tempfile::tempdir().expect("tempdir");
    let original = three_migrations();
    let files: Vec<(String, String)> = original
        .service(SERVICE)
        .expect("service")
        .migrations
        .iter()
        .flat_map(|m| {
            let up = if m.version == 1 {
                format!("-- edited\n{}", m.up)
            } else {
                m.up.clone()
            };
            let mut files = vec![(format!("{:04}_{}.up.sql", m.version, m.name), up)];
            if let Some(down) = &m.down {
                files.push((
                    format!("{:04}_{}.down.sql", m.version, m.name),
                    down.clone(),
                ));
            }
            files
        })
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    write_catalog(dir.path(), &borrowed, "\"v1\" = 1\n");
    let edited = Arc::new(Catalog::load(dir.path()).expect("catalog"));
    let migrator_v2 = migrator(edited, &backend);
    let err = migrator_v2
        .migrate(&acme, SERVICE, 3, &ignore)
        .await
        .expect_err("edited");
    assert!(
        matches!(err, SchemaError::Edited { version: 1, .. }),
        "{err}"
    );
    assert_eq!(backend.history("acme"), ups(&[1, 2]), "nothing ran");
    assert_eq!(migrator_v2.repair(&acme, SERVICE).await, Ok(1));
    assert_eq!(
        migrator_v2.repair(&acme, SERVICE).await,
        Ok(0),
        "repaired once"
    );
    let schema = migrator_v2
        .migrate(&acme, SERVICE, 3, &ignore)
        .await
        .expect("after repair");
    assert_eq!(schema.current, 3);
    assert_eq!(
        backend.history("acme"),
        ups(&[1, 2, 3]),
        "0001 did not run again"
    );
}

async fn eight_migrators_of_one_tenant_apply_each_migration_exactly_once(backend: Backend) {
    let catalog = three_migrations();
    let acme = tenant("acme");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        // Separate migrators: separate connections, as separate routers would have.
        let migrator = migrator(catalog.clone(), &backend);
        let acme = acme.clone();
        tasks.spawn(async move { migrator.migrate(&acme, SERVICE, 3, &ignore).await });
    }
    while let Some(outcome) = tasks.join_next().await {
        let schema = outcome.expect("joined").expect("migrated or found done");
        assert_eq!(schema.current, 3);
    }
    assert_eq!(backend.history("acme"), ups(&[1, 2, 3]));
    assert_eq!(backend.tables("acme"), ["notes", "orders", "users"]);
}

async fn a_statement_failing_in_the_middle_of_a_migration(backend: Backend) {
    // 0002's second statement fails for a tenant whose data breaks the unique index.
    let catalog = catalog(&[
        (
            "0001_create_users.up.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL);\n",
        ),
        (
            "0002_unique_email.up.sql",
            "CREATE TABLE audit (id BIGINT PRIMARY KEY);\n\
             \n\
             CREATE UNIQUE INDEX users_email ON users (email);\n\
             INSERT INTO audit (id) VALUES (2);\n",
        ),
    ]);
    let migrator = migrator(catalog, &backend);
    let acme = tenant("acme");
    migrator
        .migrate(&acme, SERVICE, 1, &ignore)
        .await
        .expect("0001");
    backend.sql_in(
        "acme",
        "INSERT INTO users (id, email) VALUES (1, 'a@x'), (2, 'a@x')",
    );
    let err = migrator
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect_err("duplicate emails");
    let SchemaError::MigrationFailed {
        version: 2, error, ..
    } = &err
    else {
        panic!("0002 should fail: {err}");
    };
    let status = migrator.status(&acme, SERVICE).await.expect("status");
    let failed = status.history.last().expect("the failed attempt");
    assert!(!failed.success);
    assert_eq!(status.current, 1);

    if !backend.is_mysql() {
        // PostgreSQL: rolled back whole, the first statement included; a rerun after the fix
        // simply runs it again.
        assert!(error.contains("sqlstate 23505"), "{error}");
        assert!(error.ends_with("; rolled back"), "{error}");
        assert_eq!(backend.tables("acme"), ["users"]);
        assert_eq!(status.half_applied(), None);
        backend.sql_in("acme", "UPDATE users SET email = 'b@x' WHERE id = 2");
        let schema = migrator
            .migrate(&acme, SERVICE, 2, &ignore)
            .await
            .expect("rerun");
        assert_eq!(schema.current, 2);
        return;
    }

    // MySQL: the first statement is committed; the history says where it stopped.
    assert!(error.contains("in statement 2 (line 3)"), "{error}");
    assert!(error.ends_with("; statements 1-1 stay applied"), "{error}");
    assert!(error.contains("error 1062"), "{error}");
    assert_eq!(failed.statements_done, Some(1));
    assert_eq!(backend.tables("acme"), ["audit", "users"]);
    let advice = status.advice("acme").expect("what to do");
    assert!(advice.contains("half-applied"), "{advice}");
    assert!(advice.contains("greyrouter schema repair"), "{advice}");
    // Refused until repaired, even after the cause is fixed; nothing recorded for it.
    backend.sql_in("acme", "UPDATE users SET email = 'b@x' WHERE id = 2");
    let refused = migrator
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect_err("half-applied");
    assert!(
        matches!(
            refused,
            SchemaError::HalfApplied {
                version: 2,
                statement: 2,
                repaired: false,
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(backend.history("acme"), ["1 up ok", "2 up failed"]);
    // Repaired: the next run resumes at statement 2; statement 1 does not run again.
    assert_eq!(migrator.repair(&acme, SERVICE).await, Ok(1));
    let repaired = migrator.status(&acme, SERVICE).await.expect("status");
    assert!(
        repaired
            .advice("acme")
            .expect("advice")
            .contains("resumes at statement 2")
    );
    let schema = migrator
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect("resumed");
    assert_eq!(schema.current, 2);
    assert_eq!(
        schema.history.last().and_then(|r| r.statements_done),
        Some(3)
    );
    assert_eq!(
        backend.history("acme"),
        ["1 up ok", "2 up failed", "2 up ok"]
    );
    assert_eq!(backend.sql_in("acme", "SELECT id FROM audit"), "2");
    assert_eq!(
        migrator
            .status(&acme, SERVICE)
            .await
            .expect("status")
            .advice("acme"),
        None
    );
}

async fn a_migration_past_its_timeout_is_stopped_and_recorded(backend: Backend) {
    let slow = if backend.is_mysql() {
        "SELECT BENCHMARK(4000000000, SHA2('greyrouter', 256));\n"
    } else {
        "SELECT pg_sleep(30);\n"
    };
    let catalog = catalog(&[
        (
            "0001_create_users.up.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY);\n",
        ),
        ("0002_slow.up.sql", slow),
    ]);
    let migrator = Migrator::new(
        catalog,
        backend.templates(),
        MigratorOptions {
            migration_timeout: Duration::from_millis(500),
            ..MigratorOptions::default()
        },
    );
    let acme = tenant("acme");
    let err = migrator
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect_err("too slow");
    let SchemaError::MigrationFailed {
        version: 2, error, ..
    } = &err
    else {
        panic!("0002 should time out: {err}");
    };
    assert!(
        error.contains("timed out")
            || error.contains("canceling statement due to statement timeout"),
        "{error}"
    );
    assert_eq!(backend.history("acme"), ["1 up ok", "2 up failed"]);
    // The tenant is not left locked: the next attempt runs (and stops) again.
    let again = migrator
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect_err("still slow");
    assert!(
        matches!(again, SchemaError::MigrationFailed { version: 2, .. }),
        "{again}"
    );
}

async fn connection_failures_never_show_the_password(backend: Backend) {
    let url = if backend.is_mysql() {
        "mysql://root:hunter2@127.0.0.1:1/app"
    } else {
        "postgres://postgres:hunter2@127.0.0.1:1/app"
    };
    let migrator = Migrator::new(
        three_migrations(),
        Arc::new(Templates {
            url: url.to_owned(),
            schema: "tenant_{tenant}".to_owned(),
        }),
        MigratorOptions::default(),
    );
    let err = migrator
        .migrate(&tenant("acme"), SERVICE, 1, &ignore)
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, SchemaError::Unavailable(_)), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("***"), "{text}");
}

/// The online schema change tool the tests run: Debian's percona-toolkit, which `scripts/test`
/// installs. `--no-drop-old-table` leaves `_<table>_old` behind, the tool's own trace.
const PT_ONLINE_SCHEMA_CHANGE: &str = "pt-online-schema-change --alter {alter} \
    h={host},P={port},u={user},D={database},t={table} --execute --recursion-method=none \
    --no-drop-old-table";

async fn a_migration_marked_online_alters_its_tables_through_the_tool(backend: Backend) {
    let catalog = catalog(&[
        (
            "0001_create_users.up.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL);\n",
        ),
        (
            "0002_add_nick.up.sql",
            "-- A large table: no lock while it is copied.\n\
             -- greyrouter: online-schema-change\n\
             ALTER TABLE users ADD COLUMN nick VARCHAR(20) DEFAULT 'x; y';\n\
             CREATE TABLE extra (id BIGINT PRIMARY KEY);\n",
        ),
    ]);
    let options = |tool: &str| MigratorOptions {
        online_schema_change: tool.to_owned(),
        ..MigratorOptions::default()
    };
    let migrator = Migrator::new(
        catalog.clone(),
        backend.templates(),
        options(PT_ONLINE_SCHEMA_CHANGE),
    );
    let acme = tenant("acme");
    migrator
        .migrate(&acme, SERVICE, 1, &ignore)
        .await
        .expect("0001");
    backend.sql_in(
        "acme",
        "INSERT INTO users (id, email) VALUES (1, 'a@x'), (2, 'b@x')",
    );
    let schema = migrator
        .migrate(&acme, SERVICE, 2, &ignore)
        .await
        .expect("0002 through the tool");
    assert_eq!(schema.current, 2);
    assert_eq!(
        backend.sql_in("acme", "SELECT id, email, nick FROM users ORDER BY id"),
        "1|a@x|x; y\n2|b@x|x; y"
    );
    let tables = backend.tables("acme");
    if backend.is_mysql() {
        assert_eq!(tables, ["_users_old", "extra", "users"], "the tool ran");
    } else {
        // PostgreSQL ignores the marker: plain DDL in the step's transaction.
        assert_eq!(tables, ["extra", "users"]);
    }

    // A tool that cannot run fails the step, saying why; on MySQL nothing was applied yet.
    let other = tenant("globex");
    let broken = Migrator::new(
        catalog,
        backend.templates(),
        options("/nonexistent/osc-tool --alter {alter}"),
    );
    let outcome = broken.migrate(&other, SERVICE, 2, &ignore).await;
    if backend.is_mysql() {
        let err = outcome.expect_err("no such tool");
        assert!(
            err.to_string().contains("cannot run /nonexistent/osc-tool"),
            "{err}"
        );
        assert!(err.to_string().contains("in statement 1 (line 3)"), "{err}");
        let status = broken.status(&other, SERVICE).await.expect("status");
        assert_eq!(status.current, 1);
        assert_eq!(
            status.half_applied(),
            None,
            "its first statement failed: retry freely"
        );
    } else {
        assert_eq!(outcome.map(|s| s.current), Ok(2));
    }
}

async fn going_below_a_contract_or_irreversible_migration_is_refused(backend: Backend) {
    let catalog = catalog(&[
        ("0001_a.up.sql", "CREATE TABLE a (id INT);\n"),
        ("0001_a.down.sql", "DROP TABLE a;\n"),
        ("0002_b.up.sql", "CREATE TABLE b (id INT);\n"),
        (
            "0003_drop_a.up.sql",
            "-- greyrouter: contract\nDROP TABLE a;\n",
        ),
        ("0004_c.up.sql", "CREATE TABLE c (id INT);\n"),
        ("0004_c.down.sql", "DROP TABLE c;\n"),
    ]);
    let migrator = migrator(catalog, &backend);
    let acme = tenant("acme");
    migrator
        .migrate(&acme, SERVICE, 4, &ignore)
        .await
        .expect("up to 4");
    let err = migrator
        .migrate(&acme, SERVICE, 1, &ignore)
        .await
        .expect_err("below the contract");
    assert!(
        matches!(err, SchemaError::Contract { version: 3, .. }),
        "{err}"
    );
    let plan = migrator.plan(&acme, SERVICE, 1).await;
    assert!(
        matches!(plan, Err(SchemaError::Contract { version: 3, .. })),
        "{plan:?}"
    );
    // Refused before anything ran: 0004 is still applied.
    assert_eq!(backend.history("acme"), ups(&[1, 2, 3, 4]));
    assert_eq!(backend.tables("acme"), ["b", "c"]);
    // Down to 3 is allowed; 0002 has no down migration.
    let schema = migrator
        .migrate(&acme, SERVICE, 3, &ignore)
        .await
        .expect("down to 3");
    assert_eq!(schema.current, 3);
    assert_eq!(backend.tables("acme"), ["b"]);

    let reversible = catalog_without_contract();
    let migrator = self::migrator(reversible, &backend);
    let globex = tenant("globex");
    migrator
        .migrate(&globex, SERVICE, 2, &ignore)
        .await
        .expect("up to 2");
    let err = migrator
        .migrate(&globex, SERVICE, 0, &ignore)
        .await
        .expect_err("0002 has no down");
    assert!(
        matches!(err, SchemaError::Irreversible { version: 2, .. }),
        "{err}"
    );
    assert_eq!(backend.history("globex"), ups(&[1, 2]));
}

fn catalog_without_contract() -> Arc<Catalog> {
    catalog(&[
        ("0001_a.up.sql", "CREATE TABLE a (id INT);\n"),
        ("0001_a.down.sql", "DROP TABLE a;\n"),
        ("0002_b.up.sql", "CREATE TABLE b (id INT);\n"),
    ])
}

async fn a_syntax_error_names_its_line(backend: Backend) {
    let catalog = catalog(&[(
        "0001_broken.up.sql",
        "CREATE TABLE a (id INT);\n\n-- the next line is wrong\nCREATE TABLEX b (id INT);\n",
    )]);
    let migrator = migrator(catalog, &backend);
    let err = migrator
        .migrate(&tenant("acme"), SERVICE, 1, &ignore)
        .await
        .expect_err("a syntax error");
    let SchemaError::MigrationFailed { error, .. } = &err else {
        panic!("0001 should fail: {err}");
    };
    if backend.is_mysql() {
        assert!(error.contains("in statement 2 (line 4)"), "{error}");
        assert!(error.contains("error 1064"), "{error}");
    } else {
        assert!(error.contains("at line 4"), "{error}");
        assert!(error.contains("sqlstate 42601"), "{error}");
    }
}

async fn a_kept_session_the_server_ended_is_replaced(backend: Backend) {
    let migrator = migrator(three_migrations(), &backend);
    let acme = tenant("acme");
    // One migration: its session is kept for the next tenant of the same server.
    migrator
        .migrate(&acme, SERVICE, 1, &ignore)
        .await
        .expect("first migration");
    assert!(
        backend.end_sessions() >= 1,
        "the kept session was open on the server"
    );
    // The next migration does not fail on the dead session: it opens another.
    let schema = migrator
        .migrate(&acme, SERVICE, 3, &ignore)
        .await
        .expect("migration after the session ended");
    assert_eq!(schema.current, 3);
    assert_eq!(backend.history("acme"), ups(&[1, 2, 3]));
    let globex = migrator
        .migrate(&tenant("globex"), SERVICE, 3, &ignore)
        .await
        .expect("another tenant");
    assert_eq!(globex.current, 3);
}
