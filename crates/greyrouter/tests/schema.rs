//! Schema migrations through the API, on a real PostgreSQL database made for the test: the gate
//! on version switches, `--migrate`, upgrades with progress, the contract floor; and the README's
//! promises pinned: a database per tenant, cohort upgrades, rollout steps that hold, the
//! `max_concurrent_upgrades` limit (seen from PostgreSQL, no timing window), passwords kept out
//! of answers and logs.

mod support;

use std::path::PathBuf;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use greyrouter_test_support::{PostgresDatabase, PostgresSession};
use support::{TestServer, within};
use tonic::Code;

const SERVICE: &str = "user-service";

async fn server(db: &PostgresDatabase) -> TestServer {
    let mut config = Config::default();
    config.schema.database_url = db.url();
    config.schema.migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    let mut server = TestServer::with_config(config).await;
    server
        .service(SERVICE, "v1.0", pb::Strategy::RoundRobin)
        .await;
    for version in ["v1.0", "v2.0", "v3.0"] {
        server
            .instance(SERVICE, version, &format!("user-{version}"), "eu")
            .await;
    }
    for i in 0..5 {
        server.tenant(&format!("t{i}"), "eu").await;
    }
    server
}

fn switch(tenant: &str, version: &str, migrate: bool) -> pb::SetTenantVersionRequest {
    pb::SetTenantVersionRequest {
        tenant_id: tenant.into(),
        service: SERVICE.into(),
        version: version.into(),
        expected_version: None,
        force: false,
        migrate,
    }
}

async fn schema_of(server: &mut TestServer, tenant: &str) -> pb::ServiceSchema {
    server
        .admin
        .get_tenant_schema(pb::GetTenantSchemaRequest {
            tenant_id: tenant.into(),
            service: SERVICE.into(),
        })
        .await
        .expect("tenant schema")
        .into_inner()
        .services
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_switches_wait_for_the_schema_they_need() {
    let db = PostgresDatabase::create();
    let mut server = server(&db).await;

    let refused = server
        .admin
        .set_tenant_version(switch("t0", "v2.0", false))
        .await
        .expect_err("no schema yet");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("0001_create_users"),
        "{}",
        refused.message()
    );
    assert_eq!(
        server.route("t0", SERVICE).await.expect("route").version,
        "v1.0"
    );

    server
        .admin
        .set_tenant_version(switch("t0", "v2.0", true))
        .await
        .expect("migrate, then switch");
    assert_eq!(
        server.route("t0", SERVICE).await.expect("route").version,
        "v2.0"
    );
    let schema = schema_of(&mut server, "t0").await;
    assert_eq!((schema.current, schema.required, schema.latest), (2, 2, 3));
    assert_eq!(schema.history.iter().filter(|h| h.success).count(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_reports_progress_and_contract_migrations_block_going_back() {
    let db = PostgresDatabase::create();
    let mut server = server(&db).await;

    let plan = server
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: SERVICE.into(),
            target_version: "v3.0".into(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("plan")
        .into_inner();
    assert!(plan.upgrade_id.is_empty());
    assert_eq!(plan.target_schema, 3);
    assert_eq!(plan.plans.len(), 5);
    assert!(
        plan.plans
            .iter()
            .all(|p| p.steps.len() == 3 && p.error.is_empty())
    );

    let started = server
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: SERVICE.into(),
            target_version: "v3.0".into(),
            ..Default::default()
        })
        .await
        .expect("upgrade")
        .into_inner();
    let mut progress = within(
        server
            .admin
            .watch_schema_upgrade(pb::GetSchemaUpgradeRequest {
                upgrade_id: started.upgrade_id.clone(),
            }),
    )
    .await
    .expect("watch")
    .into_inner();
    let mut last = pb::SchemaUpgrade::default();
    while let Some(state) = within(progress.message()).await.expect("progress") {
        last = state;
    }
    assert_eq!(last.state, "finished");
    assert_eq!((last.done, last.failed, last.total), (5, 0, 5));
    assert!(
        last.tenants.iter().all(|t| t.current == 3),
        "{:?}",
        last.tenants
    );
    let fetched = server
        .admin
        .get_schema_upgrade(pb::GetSchemaUpgradeRequest {
            upgrade_id: started.upgrade_id,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.done, 5);

    // 0003 is a contract migration: no tenant may go back to v1.0 (schema 1) now.
    let refused = server
        .admin
        .set_tenant_version(switch("t1", "v1.0", true))
        .await
        .expect_err("contract floor");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("0003_drop_legacy_name"),
        "{}",
        refused.message()
    );
    server
        .admin
        .set_tenant_version(switch("t1", "v3.0", false))
        .await
        .expect("v3.0 has its schema");

    let unknown = server
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: "billing".into(),
            target_schema: Some(1),
            ..Default::default()
        })
        .await
        .expect_err("no catalog");
    assert_eq!(unknown.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn schema_calls_say_when_migrations_are_off() {
    let mut server = TestServer::start().await;
    server.populate(1).await;
    let off = server
        .admin
        .get_tenant_schema(pb::GetTenantSchemaRequest {
            tenant_id: "t0".into(),
            service: String::new(),
        })
        .await
        .expect_err("not configured");
    assert_eq!(off.code(), Code::FailedPrecondition);
    assert!(off.message().contains("database_url"), "{}", off.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_upgrades_each_moving_tenants_schema_before_routing_it() {
    let db = PostgresDatabase::create();
    let mut server = server(&db).await;
    let rollout = |id: &str, to: &str| pb::StartRolloutRequest {
        service: SERVICE.into(),
        id: id.into(),
        to_version: to.into(),
        steps: vec![100.0],
        interval_seconds: 600,
        ..Default::default()
    };
    server
        .admin
        .start_rollout(rollout("r2", "v2.0"))
        .await
        .expect("start: every tenant gets schema 2 first");
    for i in 0..5 {
        let tenant = format!("t{i}");
        let routed = server.route(&tenant, SERVICE).await.expect("route");
        assert_eq!(
            (routed.version.as_str(), routed.source.as_str()),
            ("v2.0", "rollout:r2")
        );
        assert_eq!(schema_of(&mut server, &tenant).await.current, 2, "{tenant}");
    }
    server
        .admin
        .promote_rollout(pb::RolloutActionRequest {
            service: SERVICE.into(),
            id: "r2".into(),
            ..Default::default()
        })
        .await
        .expect("promote");

    // Once a contract migration is applied to t1 (now back on the default, v2.0), a rollout to
    // v1.0 would move it below that migration: it cannot start.
    server
        .admin
        .set_tenant_version(switch("t1", "v3.0", true))
        .await
        .expect("t1 to v3.0");
    server
        .admin
        .clear_tenant_version(pb::ClearTenantVersionRequest {
            tenant_id: "t1".into(),
            service: SERVICE.into(),
        })
        .await
        .expect("t1 back to the default");
    let back = server
        .admin
        .start_rollout(rollout("back", "v1.0"))
        .await
        .expect_err("t1 cannot go back below its contract migration");
    assert_eq!(back.code(), Code::FailedPrecondition);
    assert!(
        back.message().contains("t1") && back.message().contains("0003_drop_legacy_name"),
        "{}",
        back.message()
    );
    server.stop().await;
}

/// A server like [`server`]'s, with `config` (its schema settings are kept) and tenants
/// `t0..t{tenants}` of tier `pro`.
async fn server_with(config: Config, tenants: usize) -> TestServer {
    let mut server = TestServer::with_config(config).await;
    server
        .service(SERVICE, "v1.0", pb::Strategy::RoundRobin)
        .await;
    for version in ["v1.0", "v2.0", "v3.0"] {
        server
            .instance(SERVICE, version, &format!("user-{version}"), "eu")
            .await;
    }
    for i in 0..tenants {
        server.tenant(&format!("t{i}"), "eu").await;
    }
    server
}

/// The schema settings of the example catalog over `database_url`.
fn schema_config(database_url: String) -> Config {
    let mut config = Config::default();
    config.schema.database_url = database_url;
    config.schema.migrations = migrations();
    config
}

/// Follows an upgrade to its end and returns its last state.
async fn finished_upgrade(server: &mut TestServer, upgrade_id: &str) -> pb::SchemaUpgrade {
    let mut progress = within(
        server
            .admin
            .watch_schema_upgrade(pb::GetSchemaUpgradeRequest {
                upgrade_id: upgrade_id.to_owned(),
            }),
    )
    .await
    .expect("watch")
    .into_inner();
    let mut last = pb::SchemaUpgrade::default();
    while let Some(state) = within(progress.message()).await.expect("progress") {
        last = state;
    }
    assert_eq!(last.state, "finished", "{last:?}");
    last
}

/// README: "`{tenant}` in the URL for a database per tenant", and `UpgradeSchema{cohort}`. Each
/// tenant has a database of its own; an upgrade of the `gold` cohort migrates exactly the gold
/// tenants, each in its own database, and touches no other database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_upgrade_migrates_each_cohort_tenants_own_database_only() {
    let base = PostgresDatabase::create();
    let databases: Vec<PostgresDatabase> = (0..4)
        .map(|i| PostgresDatabase::create_named(&format!("{}_t{i}", base.name())))
        .collect();
    let mut server = server_with(schema_config(format!("{}_{{tenant}}", base.url())), 4).await;
    for gold in ["t1", "t3"] {
        let mut tenant = support::tenant(gold, "eu");
        tenant.tier = "gold".into();
        server
            .admin
            .upsert_tenant(pb::UpsertTenantRequest {
                tenant: Some(tenant),
            })
            .await
            .expect("a gold tenant");
    }

    let started = server
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: SERVICE.into(),
            cohort: Some(pb::Cohort {
                tiers: vec!["gold".into()],
                ..Default::default()
            }),
            target_version: "v2.0".into(),
            ..Default::default()
        })
        .await
        .expect("upgrade the gold cohort")
        .into_inner();
    let last = finished_upgrade(&mut server, &started.upgrade_id).await;
    let mut upgraded: Vec<(String, String, u32)> = last
        .tenants
        .iter()
        .map(|t| (t.tenant_id.clone(), t.state.clone(), t.current))
        .collect();
    upgraded.sort();
    assert_eq!(
        upgraded,
        [
            ("t1".into(), "done".into(), 2),
            ("t3".into(), "done".into(), 2)
        ],
        "{last:?}"
    );
    assert_eq!((last.done, last.failed, last.total), (2, 0, 2));

    // Each gold tenant's own database holds its schema, and only its own.
    for (i, database) in databases.iter().enumerate() {
        let schemas = database
            .psql("SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname LIKE 'tenant%'");
        if i % 2 == 1 {
            assert_eq!(schemas, format!("tenant_t{i}"), "database of t{i}");
            assert_eq!(
                database.psql(&format!(
                    "SELECT string_agg(version::text, ',' ORDER BY id) \
                     FROM tenant_t{i}.grey_schema_history WHERE success AND direction = 'up'"
                )),
                "1,2",
                "database of t{i}"
            );
            assert_eq!(schema_of(&mut server, &format!("t{i}")).await.current, 2);
        } else {
            assert_eq!(
                schemas, "",
                "t{i} is not in the cohort: its database is untouched"
            );
            assert_eq!(schema_of(&mut server, &format!("t{i}")).await.current, 0);
        }
    }
    assert_eq!(
        base.psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant%'"),
        "0",
        "the database named without a tenant is untouched"
    );
    server.stop().await;
}

/// README: "a step whose tenants cannot be upgraded holds and says why". A rollout at its first
/// step; one tenant the next step would move has a schema its first migration fails on: the
/// driver holds the step (the tenant stays where it was) and the decision names the tenant and
/// the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_step_holds_when_a_tenant_cannot_be_upgraded_and_says_why() {
    const TENANTS: usize = 8;
    let db = PostgresDatabase::create();
    let mut config = schema_config(db.url());
    config.outcomes.rollout_tick_ms = 20;
    config.outcomes.rollout_lease_ms = 300;
    let mut server = server_with(config, TENANTS).await;
    server
        .admin
        .start_rollout(pb::StartRolloutRequest {
            service: SERVICE.into(),
            id: "r2".into(),
            to_version: "v2.0".into(),
            steps: vec![50.0, 100.0],
            interval_seconds: 1,
            analysis: Some(pb::AnalysisPolicy {
                min_requests: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start: the first step's tenants get schema 2");
    let mut routes = Vec::new();
    for i in 0..TENANTS {
        let tenant = format!("t{i}");
        let routed = server.route(&tenant, SERVICE).await.expect("route");
        routes.push((tenant, routed.version, routed.instance_id));
    }
    // Which tenants a step moves depends on their hash: should the first step have moved all,
    // more tenants come until one stays (as many are expected to as not).
    for i in 0..64 {
        if routes.iter().any(|(_, version, _)| version != "v2.0") {
            break;
        }
        let tenant = format!("late{i}");
        server.tenant(&tenant, "eu").await;
        let routed = server.route(&tenant, SERVICE).await.expect("route");
        routes.push((tenant, routed.version, routed.instance_id));
    }
    let canary = routes.iter().find(|(_, version, _)| version == "v2.0");
    let stuck = routes.iter().find(|(_, version, _)| version != "v2.0");
    let (Some((canary, _, instance_id)), Some((stuck, _, _))) = (canary, stuck) else {
        panic!("the first step should move some tenants and not others: {routes:?}");
    };
    let (canary, instance_id, stuck) = (canary.clone(), instance_id.clone(), stuck.clone());
    // The stuck tenant's schema already has a `users` table: 0001_create_users fails for it.
    db.psql(&format!(
        "CREATE SCHEMA tenant_{stuck}; CREATE TABLE tenant_{stuck}.users (legacy text)"
    ));

    let hold = within(async {
        loop {
            // A healthy canary: the step would advance, but for the schema.
            server
                .router
                .report_outcomes(pb::ReportOutcomesRequest {
                    outcomes: vec![pb::Outcome {
                        instance_id: instance_id.clone(),
                        tenant_id: canary.clone(),
                        service: SERVICE.into(),
                        version: "v2.0".into(),
                        success: true,
                        latency_ms: 5,
                        ..Default::default()
                    }],
                })
                .await
                .expect("report");
            let rollout = server
                .admin
                .get_rollout(pb::GetRolloutRequest {
                    service: SERVICE.into(),
                    id: "r2".into(),
                })
                .await
                .expect("get rollout")
                .into_inner()
                .rollout
                .expect("rollout");
            assert!(
                rollout.step == 0 && rollout.phase == "running",
                "the rollout went on although {stuck} cannot be upgraded: {:?}",
                rollout.decisions
            );
            if let Some(hold) = rollout
                .decisions
                .iter()
                .find(|d| d.event == "hold" && d.detail.contains("lack the schema"))
            {
                return hold.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        hold.detail.contains("1 tenant(s) lack the schema of v2.0"),
        "{}",
        hold.detail
    );
    assert!(
        hold.detail.contains(&format!("{stuck}: "))
            && hold.detail.contains("0001_create_users")
            && hold.detail.contains("already exists"),
        "{}",
        hold.detail
    );
    assert_eq!(
        server.route(&stuck, SERVICE).await.expect("route").version,
        "v1.0",
        "a tenant that cannot be upgraded is not moved"
    );
    let schema = schema_of(&mut server, &stuck).await;
    assert_eq!(schema.current, 0);
    assert!(schema.history.iter().any(|h| !h.success), "{schema:?}");
    server.stop().await;
}

/// The password of the database URLs of [`the_database_password_never_shows_in_answers_or_logs`]
/// (PostgreSQL's trust authentication never asks for it).
const PASSWORD: &str = "Sesame-0pen-4711";

/// Sets up the service and tenants `t0..t2` through `api`, then asks everything that reads or
/// migrates a tenant's schema, where the database fails for `t0` at least; returns each answer
/// and error in full (message, details, metadata) as text.
async fn schema_answers(api: &mut support::Api) -> Vec<String> {
    api.service(SERVICE, "v1.0", pb::Strategy::RoundRobin).await;
    for version in ["v1.0", "v2.0", "v3.0"] {
        api.instance(SERVICE, version, &format!("user-{version}"), "eu")
            .await;
    }
    for i in 0..3 {
        api.tenant(&format!("t{i}"), "eu").await;
    }
    let mut answers = Vec::new();
    let schema = pb::GetTenantSchemaRequest {
        tenant_id: "t0".into(),
        service: SERVICE.into(),
    };
    answers.push(format!(
        "{:?}",
        api.admin.get_tenant_schema(schema.clone()).await
    ));
    let switched = api
        .admin
        .set_tenant_version(switch("t0", "v2.0", true))
        .await;
    let refused = switched.as_ref().expect_err("the database fails for t0");
    answers.push(format!(
        "{:?} {}",
        refused,
        String::from_utf8_lossy(refused.details())
    ));
    answers.push(format!(
        "{:?}",
        api.admin
            .upgrade_schema(pb::UpgradeSchemaRequest {
                service: SERVICE.into(),
                target_version: "v3.0".into(),
                dry_run: true,
                ..Default::default()
            })
            .await
    ));
    let started = api
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: SERVICE.into(),
            target_version: "v2.0".into(),
            ..Default::default()
        })
        .await
        .expect("an upgrade starts")
        .into_inner();
    let mut progress = within(api.admin.watch_schema_upgrade(pb::GetSchemaUpgradeRequest {
        upgrade_id: started.upgrade_id.clone(),
    }))
    .await
    .expect("watch")
    .into_inner();
    let mut last = pb::SchemaUpgrade::default();
    while let Some(state) = within(progress.message()).await.expect("progress") {
        answers.push(format!("{state:?}"));
        last = state;
    }
    assert_eq!(last.state, "finished", "{last:?}");
    assert!(
        last.tenants
            .iter()
            .any(|t| t.tenant_id == "t0" && t.state == "failed" && !t.error.is_empty()),
        "{last:?}"
    );
    answers.push(format!(
        "{:?}",
        api.admin
            .get_schema_upgrade(pb::GetSchemaUpgradeRequest {
                upgrade_id: started.upgrade_id,
            })
            .await
    ));
    answers.push(format!("{:?}", api.admin.get_tenant_schema(schema).await));
    answers
}

fn assert_no_password(answers: &[String]) {
    for answer in answers {
        assert!(!answer.contains(PASSWORD), "the password shows: {answer}");
    }
}

/// README: passwords are "never in routing state, logs or API answers". With a password in the
/// database URL, a migration that fails (the database answers) and a database that cannot be
/// reached (the URL is in the message, redacted) leave it out of every answer, and out of the
/// log of a `greyrouter serve --log-level debug` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_never_shows_in_answers_or_logs() {
    // Reachable: t0's schema has a `users` table, so its first migration fails.
    let db = PostgresDatabase::create();
    db.psql("CREATE SCHEMA tenant_t0; CREATE TABLE tenant_t0.users (legacy text)");
    let with_password = db
        .url()
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    assert!(with_password.contains(PASSWORD), "{with_password}");
    let mut server = TestServer::with_config(schema_config(with_password)).await;
    let answers = schema_answers(&mut server).await;
    assert!(
        answers.iter().any(|a| a.contains("0001_create_users")),
        "{answers:#?}"
    );
    assert_no_password(&answers);
    server.stop().await;

    // Unreachable: nothing listens on port 1.
    let unreachable = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:1/{}?connect_timeout=2",
        db.name()
    );
    let mut server = TestServer::with_config(schema_config(unreachable.clone())).await;
    let answers = schema_answers(&mut server).await;
    assert_no_password(&answers);
    assert!(
        answers
            .iter()
            .any(|a| a.contains("postgres:***@127.0.0.1:1")),
        "the database is named, its password hidden: {answers:#?}"
    );
    server.stop().await;

    // The log of a server process at debug level, the URL in its configuration file.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("greyrouter.toml");
    std::fs::write(
        &file,
        format!(
            "[schema]\ndatabase_url = {:?}\nmigrations = {:?}\n",
            unreachable,
            migrations().display().to_string()
        ),
    )
    .expect("write the configuration");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_greyrouter"));
    command.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--log-level",
        "debug",
    ]);
    command.arg("--config").arg(&file);
    let mut started = support::launch(command, support::START_DEADLINE)
        .unwrap_or_else(|err| panic!("greyrouter serve: {err}"));
    let mut api = support::Api::connect(&format!("http://{}", started.addr)).await;
    let answers = schema_answers(&mut api).await;
    assert_no_password(&answers);
    assert!(
        answers
            .iter()
            .any(|a| a.contains("postgres:***@127.0.0.1:1")),
        "{answers:#?}"
    );
    let _ = started.child.kill();
    let _ = started.child.wait();
    let log = started.stderr.lock().expect("stderr").clone();
    assert!(!log.is_empty(), "the server logged nothing at debug level");
    assert!(
        !log.contains(PASSWORD),
        "the password shows in the log: {log}"
    );
}

/// The example migration catalog.
fn migrations() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations")
}

/// README: "passwords belong in `GREYROUTER_SCHEMA_DATABASE_URL`". A `greyrouter serve` given the
/// database URL and the catalog only through the environment has schema migrations on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_database_url_is_read_from_the_environment() {
    let db = PostgresDatabase::create();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_greyrouter"));
    command
        .args(["serve", "--grpc-addr", "127.0.0.1:0"])
        .env("GREYROUTER_SCHEMA_DATABASE_URL", db.url())
        .env("GREYROUTER_SCHEMA_MIGRATIONS", migrations());
    let mut started = support::launch(command, support::START_DEADLINE)
        .unwrap_or_else(|err| panic!("greyrouter serve: {err}"));
    let mut api = support::Api::connect(&format!("http://{}", started.addr)).await;
    api.service(SERVICE, "v1.0", pb::Strategy::RoundRobin).await;
    api.tenant("t0", "eu").await;
    let schema = api
        .admin
        .get_tenant_schema(pb::GetTenantSchemaRequest {
            tenant_id: "t0".into(),
            service: SERVICE.into(),
        })
        .await;
    let _ = started.child.kill();
    let _ = started.child.wait();
    let schema = schema.expect("schema migrations are on").into_inner();
    assert_eq!(schema.services.len(), 1, "{schema:?}");
    assert_eq!(schema.services[0].current, 0);
}

/// Polls `query` (one text value) in `db` until `done` accepts it, and returns it; panics with
/// what it last saw after the test deadline.
async fn await_psql(
    db: &PostgresDatabase,
    what: &str,
    query: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + support::DEADLINE;
    loop {
        let seen = db.psql(query);
        if done(&seen) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: saw {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The gates `(7777, n)` of `pg_locks` in `db`, granted or waited for: `n,n,...`.
fn gates(granted: bool) -> String {
    format!(
        "SELECT coalesce(string_agg(objid::text, ',' ORDER BY objid), '') FROM pg_locks \
         WHERE locktype = 'advisory' AND classid = 7777 AND objsubid = 2 AND granted = {granted} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
}

fn gate_list(text: &str) -> Vec<u32> {
    text.split(',')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().expect("a gate"))
        .collect()
}

/// A server with `max_concurrent_upgrades = limit`, tenants `t0..t{tenants}` and a catalog of
/// one migration (required by v2.0) that waits at the tenant's own gate `(7777, n)` (n from its
/// schema `tenant_tn`); every gate closed by the returned session.
async fn gated_server(
    db: &PostgresDatabase,
    catalog: &std::path::Path,
    tenants: usize,
    limit: usize,
) -> (TestServer, PostgresSession) {
    let dir = catalog.join(SERVICE);
    std::fs::create_dir_all(&dir).expect("the service directory");
    std::fs::write(
        dir.join("0001_gated.up.sql"),
        "SELECT pg_advisory_xact_lock_shared(7777, substr(current_schema(), 9)::int);\n\
         CREATE TABLE gated (id int);\n",
    )
    .expect("the migration");
    std::fs::write(dir.join("versions.toml"), "[versions]\n\"v2.0\" = 1\n").expect("manifest");
    let mut config = schema_config(db.url());
    config.schema.migrations = catalog.to_owned();
    config.schema.max_concurrent_upgrades = limit;
    config.outcomes.rollout_tick_ms = 20;
    config.outcomes.rollout_lease_ms = 300;
    let server = server_with(config, tenants).await;
    let mut holder = PostgresSession::open(db);
    for n in 0..tenants {
        holder.send(&format!("SELECT pg_advisory_lock(7777, {n});"));
    }
    await_psql(db, "the gates to close", &gates(true), |seen| {
        gate_list(seen).len() == tenants
    })
    .await;
    (server, holder)
}

/// Lets the `tenants` gated migrations finish one at a time, each once as many as `limit` (or
/// all that are left) wait at their gates; asserts that no more than `limit` ever do.
async fn release_gates_one_by_one(
    db: &PostgresDatabase,
    holder: &mut PostgresSession,
    tenants: usize,
    limit: usize,
) {
    let mut released = Vec::new();
    while released.len() < tenants {
        let expected = limit.min(tenants - released.len());
        let migrating = gate_list(
            &await_psql(db, "tenants migrating", &gates(false), |seen| {
                gate_list(seen).len() >= expected
            })
            .await,
        );
        assert!(
            migrating.len() <= limit,
            "{} tenants migrate at once with max_concurrent_upgrades {limit}: gates {migrating:?}",
            migrating.len()
        );
        let next = migrating[0];
        assert!(!released.contains(&next), "{migrating:?}");
        holder.send(&format!("SELECT pg_advisory_unlock(7777, {next});"));
        await_psql(db, "a gate to open", &gates(false), |seen| {
            !gate_list(seen).contains(&next)
        })
        .await;
        released.push(next);
    }
}

/// README: "At most `max_concurrent_upgrades` tenants at once". Through `UpgradeSchema`: the
/// test sees from PostgreSQL which tenants are migrating (each waits at its own gate) and lets
/// them finish one at a time: whenever it looks, at most the configured limit are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_migrates_at_most_max_concurrent_upgrades_tenants_at_once() {
    const TENANTS: usize = 6;
    const LIMIT: usize = 2;
    let db = PostgresDatabase::create();
    let catalog = tempfile::tempdir().expect("tempdir");
    let (mut server, mut holder) = gated_server(&db, catalog.path(), TENANTS, LIMIT).await;
    let started = server
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: SERVICE.into(),
            target_schema: Some(1),
            ..Default::default()
        })
        .await
        .expect("upgrade")
        .into_inner();
    release_gates_one_by_one(&db, &mut holder, TENANTS, LIMIT).await;
    let last = finished_upgrade(&mut server, &started.upgrade_id).await;
    assert_eq!((last.done, last.failed, last.total), (6, 0, 6), "{last:?}");
    server.stop().await;
}

/// The same limit when a rollout upgrades the tenants it moves: starting a rollout to 100%
/// migrates every tenant, at most `max_concurrent_upgrades` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_migrates_at_most_max_concurrent_upgrades_tenants_at_once() {
    const TENANTS: usize = 6;
    const LIMIT: usize = 2;
    let db = PostgresDatabase::create();
    let catalog = tempfile::tempdir().expect("tempdir");
    let (mut server, mut holder) = gated_server(&db, catalog.path(), TENANTS, LIMIT).await;
    let mut admin = server.admin.clone();
    let start = tokio::spawn(async move {
        admin
            .start_rollout(pb::StartRolloutRequest {
                service: SERVICE.into(),
                id: "r2".into(),
                to_version: "v2.0".into(),
                steps: vec![100.0],
                interval_seconds: 600,
                ..Default::default()
            })
            .await
    });
    release_gates_one_by_one(&db, &mut holder, TENANTS, LIMIT).await;
    within(start)
        .await
        .expect("the start task")
        .expect("start: every tenant got its schema");
    for i in 0..TENANTS {
        let tenant = format!("t{i}");
        assert_eq!(
            server.route(&tenant, SERVICE).await.expect("route").version,
            "v2.0"
        );
        assert_eq!(schema_of(&mut server, &tenant).await.current, 1, "{tenant}");
    }
    server.stop().await;
}

/// A catalog of `user-service` in MySQL's SQL: 0002 adds a table, then a unique index that
/// fails while two users share an email; 0003 is a contract migration.
fn mysql_catalog() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = dir.path().join(SERVICE);
    std::fs::create_dir_all(&service).expect("catalog directory");
    for (name, text) in [
        (
            "0001_create_users.up.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL, name TEXT);\n",
        ),
        ("0001_create_users.down.sql", "DROP TABLE users;\n"),
        (
            "0002_add_preferences.up.sql",
            "CREATE TABLE preferences (user_id BIGINT PRIMARY KEY, theme VARCHAR(20));\n\
             CREATE UNIQUE INDEX users_email ON users (email);\n",
        ),
        (
            "0002_add_preferences.down.sql",
            "DROP INDEX users_email ON users;\nDROP TABLE preferences;\n",
        ),
        (
            "0003_drop_legacy_name.up.sql",
            "-- greyrouter: contract\nALTER TABLE users DROP COLUMN name;\n",
        ),
        (
            "versions.toml",
            "[versions]\n\"v1.0\" = 1\n\"v2.0\" = 2\n\"v3.0\" = 3\n",
        ),
    ] {
        std::fs::write(service.join(name), text).expect("write the catalog");
    }
    dir
}

/// README: "MySQL 8 or MariaDB 10.11+", "half-applied", "`greyrouter schema repair`". The gate
/// works on MySQL as on PostgreSQL; a migration that stops half-way keeps the tenant on its
/// version, the schema status says what to do, switches are refused until the repair, and the
/// next switch resumes the migration and routes the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_mysql_a_half_applied_migration_holds_the_switch_until_repaired() {
    let databases = greyrouter_test_support::MysqlDatabases::create();
    let catalog = mysql_catalog();
    let mut config = Config::default();
    config.schema.database_url = databases.url();
    config.schema.schema = format!("{}_{{tenant}}", databases.prefix());
    config.schema.migrations = catalog.path().to_owned();
    let mut server = server_with(config, 2).await;

    // t0: the gate and --migrate, as on PostgreSQL.
    server
        .admin
        .set_tenant_version(switch("t0", "v2.0", true))
        .await
        .expect("migrate, then switch");
    assert_eq!(
        server.route("t0", SERVICE).await.expect("route").version,
        "v2.0"
    );
    let schema = schema_of(&mut server, "t0").await;
    assert_eq!((schema.current, schema.required, schema.latest), (2, 2, 3));
    assert!(schema.advice.is_empty());
    assert!(schema.history.iter().all(|h| h.statements_done.is_some()));

    // t1 at schema 1, with two users sharing an email: 0002 stops after its first statement.
    let upgrade = server
        .admin
        .upgrade_schema(pb::UpgradeSchemaRequest {
            service: SERVICE.into(),
            tenant_ids: vec!["t1".into()],
            target_schema: Some(1),
            ..Default::default()
        })
        .await
        .expect("upgrade t1 to 1")
        .into_inner();
    finished_upgrade(&mut server, &upgrade.upgrade_id).await;
    let t1 = format!("{}_t1", databases.prefix());
    databases.sql(&format!(
        "INSERT INTO `{t1}`.users (id, email) VALUES (1, 'a@x'), (2, 'a@x')"
    ));
    let failed = server
        .admin
        .set_tenant_version(switch("t1", "v2.0", true))
        .await
        .expect_err("0002 fails half-way");
    assert_eq!(
        failed.code(),
        Code::FailedPrecondition,
        "{}",
        failed.message()
    );
    assert_eq!(
        server.route("t1", SERVICE).await.expect("route").version,
        "v1.0"
    );
    let schema = schema_of(&mut server, "t1").await;
    assert_eq!(schema.current, 1);
    assert!(schema.advice.contains("half-applied"), "{}", schema.advice);
    assert!(
        schema.advice.contains("greyrouter schema repair"),
        "{}",
        schema.advice
    );
    let last = schema.history.last().expect("the failed attempt");
    assert_eq!(
        (last.version, last.success, last.statements_done),
        (2, false, Some(1))
    );
    assert!(last.error.contains("in statement 2"), "{}", last.error);

    // Fixing the data is not enough: the half-applied migration waits for the repair.
    databases.sql(&format!(
        "UPDATE `{t1}`.users SET email = 'b@x' WHERE id = 2"
    ));
    let refused = server
        .admin
        .set_tenant_version(switch("t1", "v2.0", true))
        .await
        .expect_err("not repaired yet");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("half-applied"),
        "{}",
        refused.message()
    );

    let repaired = server
        .admin
        .repair_tenant_schema(pb::RepairTenantSchemaRequest {
            tenant_id: "t1".into(),
            service: SERVICE.into(),
        })
        .await
        .expect("repair")
        .into_inner();
    assert_eq!(repaired.rows_changed, 1);
    let after = repaired.schema.expect("the schema after");
    assert!(
        after.advice.contains("resumes at statement 2"),
        "{}",
        after.advice
    );

    server
        .admin
        .set_tenant_version(switch("t1", "v2.0", true))
        .await
        .expect("resumed, then switched");
    assert_eq!(
        server.route("t1", SERVICE).await.expect("route").version,
        "v2.0"
    );
    let schema = schema_of(&mut server, "t1").await;
    assert_eq!(schema.current, 2);
    assert!(schema.advice.is_empty(), "{}", schema.advice);
    // The first statement ran once: its table is there and was not created twice.
    assert_eq!(
        databases.sql(&format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{t1}' \
             AND table_name = 'preferences'"
        )),
        "1"
    );
    server.stop().await;
}
