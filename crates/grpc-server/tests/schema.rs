//! Schema migrations through the API, on a real PostgreSQL database made for the test: the gate
//! on version switches, `--migrate`, upgrades with progress, the contract floor.

mod support;

use std::path::PathBuf;

use greyrouter::config::Config;
use greyrouter_proto::v1 as pb;
use greyrouter_test_support::PostgresDatabase;
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
