//! Migrations against the machine's PostgreSQL: each test in a database of its own, with its
//! catalog written into a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greyrouter_test_support::PostgresDatabase;
use routing_core::Tenant;
use schema_manager::{
    Catalog, Direction, Migrator, MigratorOptions, SchemaError, StepProgress, Templates,
    TenantDatabases,
};

const SERVICE: &str = "user-service";

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

/// Writes `files` (name → text) and a manifest into `root/<service>/`.
fn write_service(root: &Path, service: &str, files: &[(&str, &str)], versions: &str) {
    let dir = root.join(service);
    std::fs::create_dir_all(&dir).expect("create the service directory");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a migration");
    }
    std::fs::write(dir.join("versions.toml"), format!("[versions]\n{versions}"))
        .expect("write the manifest");
}

/// A catalog of one service with these files, loaded from a temporary directory.
fn catalog(files: &[(&str, &str)], versions: &str) -> Arc<Catalog> {
    let dir = tempfile::tempdir().expect("tempdir");
    write_service(dir.path(), SERVICE, files, versions);
    Arc::new(Catalog::load(dir.path()).expect("a valid catalog"))
}

/// Three reversible migrations; the second has two statements.
fn three_migrations() -> Arc<Catalog> {
    catalog(
        &[
            (
                "0001_create_users.up.sql",
                "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n",
            ),
            ("0001_create_users.down.sql", "DROP TABLE users;\n"),
            (
                "0002_add_orders.up.sql",
                "ALTER TABLE users ADD COLUMN nickname text;\n\
                 CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users);\n",
            ),
            (
                "0002_add_orders.down.sql",
                "DROP TABLE orders;\nALTER TABLE users DROP COLUMN nickname;\n",
            ),
            (
                "0003_index_orders.up.sql",
                "CREATE INDEX orders_user_id ON orders (user_id);\n",
            ),
            ("0003_index_orders.down.sql", "DROP INDEX orders_user_id;\n"),
        ],
        "\"v1.0\" = 1\n\"v2.0\" = 2\n\"v3.0\" = 3\n",
    )
}

fn templates(db: &PostgresDatabase) -> Arc<dyn TenantDatabases> {
    Arc::new(Templates {
        url: db.url(),
        schema: "tenant_{tenant}".to_owned(),
    })
}

fn migrator(catalog: Arc<Catalog>, db: &PostgresDatabase, options: MigratorOptions) -> Migrator {
    Migrator::new(catalog, templates(db), options)
}

fn options() -> MigratorOptions {
    MigratorOptions {
        applied_by: "tests".to_owned(),
        ..MigratorOptions::default()
    }
}

fn ignore(_: StepProgress) {}

async fn client(db: &PostgresDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The tables of a schema, without the history table.
async fn tables(client: &tokio_postgres::Client, schema: &str) -> BTreeSet<String> {
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name <> 'grey_schema_history'",
            &[&schema],
        )
        .await
        .expect("list tables")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn columns(client: &tokio_postgres::Client, schema: &str, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &table],
        )
        .await
        .expect("list columns")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// (version, direction, success) of every history row of a schema, in order.
async fn history(client: &tokio_postgres::Client, schema: &str) -> Vec<(i32, String, bool)> {
    client
        .query(
            &format!(
                "SELECT version, direction, success FROM \"{schema}\".grey_schema_history \
                 ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("read the history")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

fn up(version: i32) -> (i32, String, bool) {
    (version, "up".to_owned(), true)
}

fn down(version: i32) -> (i32, String, bool) {
    (version, "down".to_owned(), true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tenants_upgrade_in_parallel_and_a_rerun_changes_nothing() {
    let db = PostgresDatabase::create();
    let catalog = three_migrations();
    let migrator = migrator(
        catalog.clone(),
        &db,
        MigratorOptions {
            max_concurrent: 5,
            ..options()
        },
    );
    let tenants: Vec<Tenant> = (0..20).map(|i| tenant(&format!("t-{i:02}"))).collect();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let progress = Arc::new(move |step: StepProgress| {
        sink.lock().expect("events").push(step);
    });

    let outcomes = migrator
        .migrate_many(tenants.clone(), SERVICE, 3, progress.clone())
        .await;
    assert_eq!(outcomes.len(), 20);
    for ((tenant_id, outcome), tenant) in outcomes.iter().zip(&tenants) {
        assert_eq!(tenant_id, &tenant.id, "outcomes come in the order given");
        let schema = outcome.as_ref().expect("migrated");
        assert_eq!(schema.current, 3);
        assert_eq!(schema.history.len(), 3);
        for (row, migration) in schema
            .history
            .iter()
            .zip(&catalog.service(SERVICE).expect("service").migrations)
        {
            assert!(row.success);
            assert_eq!(row.direction, "up");
            assert_eq!(row.version, migration.version);
            assert_eq!(row.name, migration.name);
            assert_eq!(row.checksum, migration.checksum);
            assert_eq!(row.applied_by, "tests");
            assert_eq!(row.error, None);
            assert!(row.applied_at_ms > 1_600_000_000_000);
        }
    }
    {
        let events = events.lock().expect("events");
        assert_eq!(
            events.len(),
            20 * 3 * 2,
            "one event before and one after each step"
        );
        assert!(events.iter().all(|event| event.error.is_none()));
        assert_eq!(events.iter().filter(|event| event.done).count(), 60);
        let first: Vec<_> = events
            .iter()
            .filter(|event| event.tenant_id == "t-07")
            .map(|event| (event.version, event.done, event.direction))
            .collect();
        assert_eq!(
            first,
            vec![
                (1, false, Direction::Up),
                (1, true, Direction::Up),
                (2, false, Direction::Up),
                (2, true, Direction::Up),
                (3, false, Direction::Up),
                (3, true, Direction::Up),
            ]
        );
    }

    let sql = client(&db).await;
    let catalog_checksums: Vec<String> = catalog
        .service(SERVICE)
        .expect("service")
        .migrations
        .iter()
        .map(|migration| migration.checksum.clone())
        .collect();
    for tenant in &tenants {
        let schema = format!("tenant_{}", tenant.id.replace('-', "_"));
        assert_eq!(history(&sql, &schema).await, vec![up(1), up(2), up(3)]);
        let checksums: Vec<String> = sql
            .query(
                &format!("SELECT checksum FROM \"{schema}\".grey_schema_history ORDER BY id"),
                &[],
            )
            .await
            .expect("checksums")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(checksums, catalog_checksums);
        assert_eq!(
            tables(&sql, &schema).await,
            BTreeSet::from(["orders".to_owned(), "users".to_owned()])
        );
    }

    // Running again finds nothing to do.
    events.lock().expect("events").clear();
    let again = migrator.migrate_many(tenants, SERVICE, 3, progress).await;
    assert!(
        again
            .iter()
            .all(|(_, outcome)| outcome.as_ref().map(|s| s.current) == Ok(3))
    );
    assert!(events.lock().expect("events").is_empty());
    let mut total = 0;
    for i in 0..20 {
        total += history(&sql, &format!("tenant_t_{i:02}")).await.len();
    }
    assert_eq!(total, 60, "a rerun adds no history row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_failing_half_way_rolls_back_that_tenant_only() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    // Tenant t-3 already has an `orders` table: the second statement of 0002 fails for it.
    sql.batch_execute(
        "CREATE SCHEMA tenant_t_3; CREATE TABLE tenant_t_3.orders (legacy text); \
         INSERT INTO tenant_t_3.orders VALUES ('keep me');",
    )
    .await
    .expect("prepare the conflicting table");
    let migrator = migrator(three_migrations(), &db, options());
    let tenants: Vec<Tenant> = (0..6).map(|i| tenant(&format!("t-{i}"))).collect();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let outcomes = migrator
        .migrate_many(
            tenants,
            SERVICE,
            2,
            Arc::new(move |step: StepProgress| sink.lock().expect("events").push(step)),
        )
        .await;

    for (tenant_id, outcome) in &outcomes {
        if tenant_id == "t-3" {
            match outcome {
                Err(SchemaError::MigrationFailed {
                    version: 2,
                    name,
                    error,
                }) => {
                    assert_eq!(name, "add_orders");
                    assert!(error.contains("\"orders\" already exists"), "{error}");
                }
                other => panic!("t-3 should fail at 0002: {other:?}"),
            }
        } else {
            assert_eq!(outcome.as_ref().map(|s| s.current), Ok(2), "{tenant_id}");
        }
    }
    let message = outcomes[3].1.as_ref().expect_err("t-3 failed").to_string();
    assert!(
        message.starts_with("migration 0002_add_orders failed: ")
            && message.ends_with("; rolled back"),
        "{message}"
    );

    // The schema of t-3 is exactly as after 0001: the first statement of 0002 is gone.
    assert_eq!(
        tables(&sql, "tenant_t_3").await,
        BTreeSet::from(["orders".to_owned(), "users".to_owned()])
    );
    assert_eq!(
        columns(&sql, "tenant_t_3", "users").await,
        vec!["id", "email"]
    );
    assert_eq!(columns(&sql, "tenant_t_3", "orders").await, vec!["legacy"]);
    let kept: String = sql
        .query_one("SELECT legacy FROM tenant_t_3.orders", &[])
        .await
        .expect("the old row")
        .get(0);
    assert_eq!(kept, "keep me");
    assert_eq!(
        history(&sql, "tenant_t_3").await,
        vec![up(1), (2, "up".to_owned(), false)]
    );
    let error: Option<String> = sql
        .query_one(
            "SELECT error FROM tenant_t_3.grey_schema_history WHERE NOT success",
            &[],
        )
        .await
        .expect("the failure row")
        .get(0);
    assert!(error.is_some_and(|e| e.contains("already exists")));
    let failed: Vec<StepProgress> = events
        .lock()
        .expect("events")
        .iter()
        .filter(|event| event.error.is_some())
        .cloned()
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].tenant_id.as_str(), failed[0].version),
        ("t-3", 2)
    );

    // The others are upgraded.
    for i in [0, 1, 2, 4, 5] {
        let schema = format!("tenant_t_{i}");
        assert_eq!(history(&sql, &schema).await, vec![up(1), up(2)]);
        assert_eq!(
            columns(&sql, &schema, "users").await,
            vec!["id", "email", "nickname"]
        );
    }

    // Once the conflict is resolved, the same migration goes through.
    sql.batch_execute("DROP TABLE tenant_t_3.orders")
        .await
        .expect("resolve the conflict");
    let schema = migrator
        .migrate(&tenant("t-3"), SERVICE, 2, &ignore)
        .await
        .expect("the retry");
    assert_eq!(schema.current, 2);
    assert_eq!(
        history(&sql, "tenant_t_3").await,
        vec![up(1), (2, "up".to_owned(), false), up(2)]
    );
}

// Gates: advisory locks with two `int4` keys, `(7777, n)`, that a test holds; a gated migration
// waits for one (`pg_advisory_xact_lock_shared`), so the test decides when it ends and sees in
// `pg_locks` that it runs.

/// One migration that waits at the gate `(7777, 1)` before creating its table.
fn gated_migration() -> Arc<Catalog> {
    catalog(
        &[(
            "0001_gated.up.sql",
            "SELECT pg_advisory_xact_lock_shared(7777, 1);\nCREATE TABLE gated (id int);\n",
        )],
        "\"v1\" = 1\n",
    )
}

/// Polls `query` (one `bigint` column) until it returns at least `at_least` rows, and returns
/// them; panics with what it last saw after the deadline. No fixed sleep: it waits for the
/// event, however slow the machine.
async fn await_rows(
    sql: &tokio_postgres::Client,
    what: &str,
    query: &str,
    at_least: usize,
) -> Vec<i64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<i64> = sql
            .query(query, &[])
            .await
            .expect("poll the server")
            .iter()
            .map(|row| row.get(0))
            .collect();
        if rows.len() >= at_least {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: saw {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until at least `at_least` migrations of this database wait at a gate; returns the
/// gates they wait at (the `n` of `(7777, n)`), in order.
async fn await_gate_waiters(sql: &tokio_postgres::Client, at_least: usize) -> Vec<i64> {
    await_rows(
        sql,
        &format!("{at_least} migration(s) waiting at a gate"),
        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = 7777 \
         AND objsubid = 2 AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY objid",
        at_least,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrators_of_one_tenant_never_both_apply() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let gate = client(&db).await;
    gate.execute("SELECT pg_advisory_lock(7777, 1)", &[])
        .await
        .expect("close the gate");

    // Waiting: the first migrator holds tenant a's lock (its migration waits at the gate) when
    // the second asks for it; the second waits, then finds nothing left to do.
    let first = migrator(gated_migration(), &db, options());
    let second = Migrator::new(
        gated_migration(),
        Arc::new(Templates {
            url: format!("{}?application_name=second-migrator", db.url()),
            schema: "tenant_{tenant}".to_owned(),
        }),
        options(),
    );
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.migrate(&tenant("a"), SERVICE, 1, &ignore).await }
    });
    assert_eq!(await_gate_waiters(&sql, 1).await, vec![1]);
    let waiting =
        tokio::spawn(async move { second.migrate(&tenant("a"), SERVICE, 1, &ignore).await });
    await_rows(
        &sql,
        "the second migrator to try tenant a's lock",
        "SELECT pid::bigint FROM pg_stat_activity WHERE application_name = 'second-migrator' \
         AND query LIKE '%pg_try_advisory_lock%' AND datname = current_database()",
        1,
    )
    .await;
    gate.execute("SELECT pg_advisory_unlock(7777, 1)", &[])
        .await
        .expect("open the gate");
    let one = running.await.expect("first task");
    let two = waiting.await.expect("second task");
    assert_eq!(one.expect("first").current, 1);
    assert_eq!(two.expect("second").current, 1);
    assert_eq!(history(&sql, "tenant_a").await, vec![up(1)]);

    // Not waiting: while the first migrator holds tenant b's lock, the second is refused.
    gate.execute("SELECT pg_advisory_lock(7777, 1)", &[])
        .await
        .expect("close the gate");
    let impatient = migrator(
        gated_migration(),
        &db,
        MigratorOptions {
            lock_timeout: Duration::ZERO,
            ..options()
        },
    );
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.migrate(&tenant("b"), SERVICE, 1, &ignore).await }
    });
    assert_eq!(await_gate_waiters(&sql, 1).await, vec![1]);
    let refused = impatient.migrate(&tenant("b"), SERVICE, 1, &ignore).await;
    assert_eq!(
        refused,
        Err(SchemaError::Busy {
            tenant_id: "b".to_owned()
        })
    );
    assert_eq!(
        refused.expect_err("busy").to_string(),
        "tenant b is being migrated by another migrator; try again later"
    );
    gate.execute("SELECT pg_advisory_unlock(7777, 1)", &[])
        .await
        .expect("open the gate");
    assert_eq!(
        running.await.expect("first task").expect("first").current,
        1
    );
    assert_eq!(history(&sql, "tenant_b").await, vec![up(1)]);

    // The lock was released: the tenant can be migrated again right away, even impatiently.
    let schema = impatient
        .migrate(&tenant("b"), SERVICE, 1, &ignore)
        .await
        .expect("the lock is free");
    assert_eq!(schema.current, 1);
    assert_eq!(history(&sql, "tenant_b").await, vec![up(1)]);
}

/// README: "At most `max_concurrent_upgrades` tenants at once". Each tenant's migration waits at
/// its own gate `(7777, n)` (n from its schema `tenant_t_n`), so the test sees from PostgreSQL
/// which tenants are migrating, and lets them finish one at a time: whenever it looks, at most
/// the limit are, and as many as the limit once enough are left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_many_never_runs_more_than_max_concurrent_tenants_at_once() {
    const TENANTS: usize = 6;
    const LIMIT: usize = 2;
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let gate = client(&db).await;
    for n in 0..TENANTS as i32 {
        gate.execute("SELECT pg_advisory_lock(7777, $1)", &[&n])
            .await
            .expect("close a gate");
    }
    let gated = catalog(
        &[(
            "0001_gated.up.sql",
            "SELECT pg_advisory_xact_lock_shared(7777, split_part(current_schema(), '_', 3)::int);\n\
             CREATE TABLE gated (id int);\n",
        )],
        "",
    );
    let migrator = migrator(
        gated,
        &db,
        MigratorOptions {
            max_concurrent: LIMIT,
            ..options()
        },
    );
    let tenants: Vec<Tenant> = (0..TENANTS).map(|n| tenant(&format!("t-{n}"))).collect();
    let run = tokio::spawn(async move {
        migrator
            .migrate_many(tenants, SERVICE, 1, Arc::new(ignore))
            .await
    });

    let mut released = BTreeSet::new();
    while released.len() < TENANTS {
        let expected = LIMIT.min(TENANTS - released.len());
        let migrating = await_gate_waiters(&sql, expected).await;
        assert!(
            migrating.len() <= LIMIT,
            "{} tenants migrate at once with max_concurrent {LIMIT}: gates {migrating:?}",
            migrating.len()
        );
        assert!(
            migrating.iter().all(|n| !released.contains(n)),
            "{migrating:?}"
        );
        let next = migrating[0];
        let opened: bool = gate
            .query_one(
                "SELECT pg_advisory_unlock(7777, $1)",
                &[&i32::try_from(next).expect("a gate")],
            )
            .await
            .expect("open a gate")
            .get(0);
        assert!(opened, "gate {next} was closed");
        released.insert(next);
    }
    let outcomes = run.await.expect("migrate_many");
    assert_eq!(outcomes.len(), TENANTS);
    for (tenant_id, outcome) in &outcomes {
        assert_eq!(outcome.as_ref().map(|s| s.current), Ok(1), "{tenant_id}");
    }
    assert_eq!(released, (0..TENANTS as i64).collect::<BTreeSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_is_refused_until_repaired() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let t = tenant("acme");
    migrator(three_migrations(), &db, options())
        .migrate(&t, SERVICE, 2, &ignore)
        .await
        .expect("apply 0001 and 0002");

    let edited = catalog(
        &[
            (
                "0001_create_users.up.sql",
                "-- users of the tenant\nCREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);\n",
            ),
            ("0001_create_users.down.sql", "DROP TABLE users;\n"),
            (
                "0002_add_orders.up.sql",
                "ALTER TABLE users ADD COLUMN nickname text;\r\n\
                 CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users);\r\n",
            ),
            (
                "0002_add_orders.down.sql",
                "DROP TABLE orders;\r\nALTER TABLE users DROP COLUMN nickname;\r\n",
            ),
            (
                "0003_index_orders.up.sql",
                "CREATE INDEX orders_user_id ON orders (user_id);\n",
            ),
        ],
        "\"v1.0\" = 1\n",
    );
    let edited_migrator = migrator(edited.clone(), &db, options());
    let refused = SchemaError::Edited {
        version: 1,
        name: "create_users".to_owned(),
    };
    assert_eq!(
        edited_migrator.plan(&t, SERVICE, 3).await,
        Err(refused.clone())
    );
    assert_eq!(
        edited_migrator.migrate(&t, SERVICE, 3, &ignore).await,
        Err(refused.clone())
    );
    assert_eq!(
        refused.to_string(),
        "migration 0001_create_users was edited after it was applied; repair it explicitly"
    );
    assert_eq!(history(&sql, "tenant_acme").await, vec![up(1), up(2)]);

    // 0002 only changed line endings: its checksum is the same. 0001 is repaired.
    assert_eq!(edited_migrator.repair(&t, SERVICE).await, Ok(1));
    assert_eq!(edited_migrator.repair(&t, SERVICE).await, Ok(0));
    let plan = edited_migrator.plan(&t, SERVICE, 3).await.expect("a plan");
    assert_eq!((plan.from, plan.to, plan.steps.len()), (2, 3, 1));
    assert_eq!(plan.tenant_id, "acme");
    let schema = edited_migrator
        .migrate(&t, SERVICE, 3, &ignore)
        .await
        .expect("migrate after the repair");
    assert_eq!(schema.current, 3);
    let checksum: String = sql
        .query_one(
            "SELECT checksum FROM tenant_acme.grey_schema_history WHERE version = 1",
            &[],
        )
        .await
        .expect("the repaired row")
        .get(0);
    assert_eq!(
        Some(checksum),
        edited
            .service(SERVICE)
            .and_then(|s| s.migration(1))
            .map(|m| m.checksum.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_migrations_go_back_to_the_target() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let migrator = migrator(three_migrations(), &db, options());
    let t = tenant("globex");
    migrator
        .migrate(&t, SERVICE, 3, &ignore)
        .await
        .expect("up to 3");

    let plan = migrator.plan(&t, SERVICE, 1).await.expect("a plan down");
    let steps: Vec<(u32, Direction)> = plan
        .steps
        .iter()
        .map(|s| (s.version, s.direction))
        .collect();
    assert_eq!(steps, vec![(3, Direction::Down), (2, Direction::Down)]);
    assert_eq!((plan.from, plan.to), (3, 1));
    assert_eq!(
        history(&sql, "tenant_globex").await.len(),
        3,
        "a plan changes nothing"
    );

    let schema = migrator
        .migrate(&t, SERVICE, 1, &ignore)
        .await
        .expect("down to 1");
    assert_eq!(schema.current, 1);
    assert_eq!(
        history(&sql, "tenant_globex").await,
        vec![up(1), up(2), up(3), down(3), down(2)]
    );
    assert_eq!(
        tables(&sql, "tenant_globex").await,
        BTreeSet::from(["users".to_owned()])
    );
    assert_eq!(
        columns(&sql, "tenant_globex", "users").await,
        vec!["id", "email"]
    );

    let schema = migrator
        .migrate(&t, SERVICE, 0, &ignore)
        .await
        .expect("down to 0");
    assert_eq!(schema.current, 0);
    assert!(tables(&sql, "tenant_globex").await.is_empty());

    let schema = migrator
        .migrate(&t, SERVICE, 3, &ignore)
        .await
        .expect("up again");
    assert_eq!(schema.current, 3);
    assert_eq!(history(&sql, "tenant_globex").await.len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_below_an_irreversible_or_contract_migration_is_refused() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let catalog = catalog(
        &[
            (
                "0001_create.up.sql",
                "CREATE TABLE a (id int, legacy text);\n",
            ),
            ("0001_create.down.sql", "DROP TABLE a;\n"),
            ("0002_backfill.up.sql", "INSERT INTO a VALUES (1, 'x');\n"),
            (
                "0003_drop_legacy.up.sql",
                "-- greyrouter: contract\nALTER TABLE a DROP COLUMN legacy;\n",
            ),
            (
                "0003_drop_legacy.down.sql",
                "ALTER TABLE a ADD COLUMN legacy text;\n",
            ),
        ],
        "\"v1\" = 1\n\"v2\" = 2\n\"v3\" = 3\n",
    );
    let migrator = migrator(catalog.clone(), &db, options());
    let t = tenant("initech");
    migrator
        .migrate(&t, SERVICE, 2, &ignore)
        .await
        .expect("up to 2");
    let irreversible = SchemaError::Irreversible {
        version: 2,
        name: "backfill".to_owned(),
    };
    assert_eq!(
        migrator.plan(&t, SERVICE, 1).await,
        Err(irreversible.clone())
    );
    assert_eq!(
        migrator.migrate(&t, SERVICE, 0, &ignore).await,
        Err(irreversible)
    );

    migrator
        .migrate(&t, SERVICE, 3, &ignore)
        .await
        .expect("up to 3");
    let contract = SchemaError::Contract {
        version: 3,
        name: "drop_legacy".to_owned(),
    };
    assert_eq!(migrator.plan(&t, SERVICE, 2).await, Err(contract.clone()));
    assert_eq!(
        migrator.migrate(&t, SERVICE, 2, &ignore).await,
        Err(contract)
    );
    assert_eq!(
        history(&sql, "tenant_initech").await,
        vec![up(1), up(2), up(3)]
    );
    assert_eq!(columns(&sql, "tenant_initech", "a").await, vec!["id"]);

    let service = catalog.service(SERVICE).expect("service");
    assert_eq!(service.contract_floor(3).map(|m| m.version), Some(3));
    assert_eq!(service.contract_floor(2), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_past_its_timeout_is_cancelled_and_recorded() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let slow = catalog(
        &[
            ("0001_quick.up.sql", "CREATE TABLE quick (id int);\n"),
            (
                "0002_slow.up.sql",
                "CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n",
            ),
        ],
        "",
    );
    let migrator = migrator(
        slow,
        &db,
        MigratorOptions {
            migration_timeout: Duration::from_millis(500),
            ..options()
        },
    );
    let started = std::time::Instant::now();
    let outcome = migrator
        .migrate(&tenant("slowpoke"), SERVICE, 2, &ignore)
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    match outcome {
        Err(SchemaError::MigrationFailed {
            version: 2, error, ..
        }) => {
            assert!(error.contains("statement timeout"), "{error}");
        }
        other => panic!("expected a timeout: {other:?}"),
    }
    assert_eq!(
        history(&sql, "tenant_slowpoke").await,
        vec![up(1), (2, "up".to_owned(), false)]
    );
    assert_eq!(
        tables(&sql, "tenant_slowpoke").await,
        BTreeSet::from(["quick".to_owned()])
    );

    // Many statements, each far under the timeout (even on a loaded machine), 20 s in all: the
    // client cancels the step past its deadline.
    let many = catalog(
        &[(
            "0001_many.up.sql",
            &format!(
                "CREATE TABLE many (id int);\n{}",
                "SELECT pg_sleep(0.05);\n".repeat(400)
            ),
        )],
        "",
    );
    let migrator = Migrator::new(
        many,
        templates(&db),
        MigratorOptions {
            migration_timeout: Duration::from_millis(500),
            ..options()
        },
    );
    let started = std::time::Instant::now();
    let outcome = migrator.migrate(&tenant("many"), SERVICE, 1, &ignore).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    match outcome {
        Err(SchemaError::MigrationFailed {
            version: 1, error, ..
        }) => {
            assert!(
                error.starts_with("timed out after 500ms and was cancelled"),
                "{error}"
            );
        }
        other => panic!("expected a timeout: {other:?}"),
    }
    assert_eq!(
        history(&sql, "tenant_many").await,
        vec![(1, "up".to_owned(), false)]
    );
    assert!(tables(&sql, "tenant_many").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_names_its_line() {
    let db = PostgresDatabase::create();
    let catalog = catalog(
        &[(
            "0001_typo.up.sql",
            "CREATE TABLE a (id int);\n\nCREATE TABEL b (id int);\n",
        )],
        "",
    );
    let outcome = migrator(catalog, &db, options())
        .migrate(&tenant("typo"), SERVICE, 1, &ignore)
        .await;
    match outcome {
        Err(SchemaError::MigrationFailed {
            version: 1,
            name,
            error,
        }) => {
            assert_eq!(name, "typo");
            assert!(error.contains("syntax error"), "{error}");
            assert!(error.contains("(sqlstate 42601) at line 3"), "{error}");
        }
        other => panic!("expected a syntax error: {other:?}"),
    }
    let sql = client(&db).await;
    assert!(tables(&sql, "tenant_typo").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_new_tenant_creates_nothing_and_the_schema_label_is_honoured() {
    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let migrator = migrator(three_migrations(), &db, options());
    let fresh = tenant("Fresh.Tenant");
    let status = migrator.status(&fresh, SERVICE).await.expect("status");
    assert_eq!((status.current, status.history.len()), (0, 0));
    let plan = migrator.plan(&fresh, SERVICE, 2).await.expect("plan");
    assert_eq!((plan.from, plan.to, plan.steps.len()), (0, 2, 2));
    let schemas: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant%'",
            &[],
        )
        .await
        .expect("count schemas")
        .get(0);
    assert_eq!(schemas, 0, "status and plan never write");

    let mut labelled = tenant("labelled");
    labelled
        .labels
        .insert("schema".to_owned(), "Custom Schema".to_owned());
    let schema = migrator
        .migrate(&labelled, SERVICE, 1, &ignore)
        .await
        .expect("migrate into the labelled schema");
    assert_eq!(schema.current, 1);
    assert_eq!(
        tables(&sql, "Custom Schema").await,
        BTreeSet::from(["users".to_owned()])
    );

    // Refused before connecting.
    assert_eq!(
        migrator.status(&fresh, "billing").await,
        Err(SchemaError::NoCatalog {
            service: "billing".to_owned()
        })
    );
    assert_eq!(
        migrator.migrate(&fresh, SERVICE, 7, &ignore).await,
        Err(SchemaError::UnknownSchemaVersion {
            service: SERVICE.to_owned(),
            version: 7
        })
    );
    assert!(matches!(
        migrator.status(&tenant("bad tenant"), SERVICE).await,
        Err(SchemaError::InvalidTenant(_))
    ));
}

#[tokio::test]
async fn connection_failures_never_show_the_password() {
    let templates = Templates {
        // Port 1 on loopback: nothing listens there.
        url: "postgres://app:hunter2@127.0.0.1:1/saas_{tenant}?connect_timeout=2".to_owned(),
        schema: "tenant_{tenant}".to_owned(),
    };
    let shown = format!("{templates:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let database = templates.database(&tenant("acme")).expect("a database");
    assert!(!format!("{database:?}").contains("hunter2"));
    assert_eq!(
        database.redacted_url(),
        "postgres://app:***@127.0.0.1:1/saas_acme?connect_timeout=2"
    );

    let migrator = Migrator::new(three_migrations(), Arc::new(templates), options());
    let err = migrator
        .status(&tenant("acme"), SERVICE)
        .await
        .expect_err("nothing listens");
    let message = err.to_string();
    assert!(matches!(err, SchemaError::Unavailable(_)), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("app:***@127.0.0.1:1"), "{message}");
    let err = migrator
        .migrate(&tenant("acme"), SERVICE, 1, &ignore)
        .await
        .expect_err("nothing listens");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_catalog_applies_up_and_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let catalog = Arc::new(Catalog::load(&root).expect("the example catalog loads"));
    let service = catalog.service(SERVICE).expect("user-service");
    assert_eq!(service.required_for("v1.0"), Some(1));
    assert_eq!(service.required_for("v2.0"), Some(2));
    assert_eq!(service.required_for("v3.0"), Some(3));
    assert_eq!(service.latest(), 3);
    assert!(
        service
            .migration(3)
            .is_some_and(|m| m.contract && m.down.is_none())
    );
    assert!(!service.migration(2).is_some_and(|m| m.contract));

    let db = PostgresDatabase::create();
    let sql = client(&db).await;
    let migrator = migrator(catalog.clone(), &db, options());
    let t = tenant("acme-corp");
    migrator
        .migrate(&t, SERVICE, 2, &ignore)
        .await
        .expect("up to 2");
    let schema = "tenant_acme_corp";
    assert!(
        columns(&sql, schema, "users")
            .await
            .contains(&"preferences".to_owned())
    );
    let index: String = sql
        .query_one(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexname = 'users_preferences_gin'",
            &[&schema],
        )
        .await
        .expect("the GIN index")
        .get(0);
    assert!(index.contains("USING gin"), "{index}");

    migrator
        .migrate(&t, SERVICE, 1, &ignore)
        .await
        .expect("down to 1");
    assert!(
        !columns(&sql, schema, "users")
            .await
            .contains(&"preferences".to_owned())
    );
    migrator
        .migrate(&t, SERVICE, 3, &ignore)
        .await
        .expect("up to 3");
    assert!(
        !columns(&sql, schema, "users")
            .await
            .contains(&"name".to_owned())
    );
    assert_eq!(
        migrator.migrate(&t, SERVICE, 2, &ignore).await,
        Err(SchemaError::Contract {
            version: 3,
            name: "drop_legacy_name".to_owned()
        })
    );
    assert_eq!(
        service.contract_floor(3).map(|m| m.label()).as_deref(),
        Some("0003_drop_legacy_name")
    );
}

#[test]
fn catalog_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_service(
        dir.path(),
        SERVICE,
        &[
            ("0001_a.up.sql", "SELECT 1;"),
            ("0002_b.down.sql", "SELECT 1;"),
        ],
        "",
    );
    let err = Catalog::load(dir.path()).expect_err("a down without up");
    let expected = dir.path().join(SERVICE).join("0002_b.down.sql");
    assert!(
        err.to_string().contains(&expected.display().to_string()),
        "{err}"
    );
}
