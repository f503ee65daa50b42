//! The behaviour every [`Store`] shows, run against each implementation.
//!
//! An adapter's tests invoke [`store_suite!`](crate::store_suite) with an expression that
//! makes a fresh, empty, isolated store; every check becomes its own test.

use std::collections::BTreeMap;
use std::time::Duration;

use routing_core::{Entity, Instance, Mutation, Outcome, RoutingError, Service, Strategy, Tenant};

use crate::{ChangeMeta, Store, StoreError};

/// Generates one `#[tokio::test]` per behaviour, each on a store made by `$make`
/// (an `async` block returning the store).
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@tests $make;
            revisions_count_every_change,
            rejected_changes_leave_no_trace,
            compare_and_set_admits_one_winner,
            changes_are_followed_in_order,
            waiting_follower_wakes_on_commit,
            load_matches_a_follower,
            emergency_rollback_is_one_change,
            stale_copies_never_overwrite_newer_changes,
            a_lease_has_one_holder_at_a_time,
            the_history_id_is_stable_across_changes,
            changes_name_their_history_and_parent);
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let store = $make.await;
                $crate::suite::$name(&store).await;
            }
        )*
    };
}

/// Returns a mutation creating an active tenant.
pub fn tenant(id: &str) -> Mutation {
    Mutation::UpsertTenant {
        tenant: Tenant {
            id: id.to_owned(),
            name: format!("Tenant {id}"),
            region: "eu".to_owned(),
            tier: "pro".to_owned(),
            labels: BTreeMap::new(),
            active: true,
        },
    }
}

/// Returns a mutation creating service `api` with default version `v1`.
pub fn service() -> Mutation {
    Mutation::UpsertService {
        service: Service {
            name: "api".to_owned(),
            default_version: "v1".to_owned(),
            strategy: Strategy::RoundRobin,
            versions: ["v2".to_owned()].into(),
        },
        force: true,
    }
}

/// Returns a mutation registering a healthy instance of `api`.
pub fn instance(id: &str, version: &str) -> Mutation {
    Mutation::RegisterInstance {
        instance: Instance {
            id: id.to_owned(),
            address: format!("{id}.internal:8080"),
            service: "api".to_owned(),
            version: version.to_owned(),
            weight: 1,
            region: "eu".to_owned(),
            zone: String::new(),
            metadata: BTreeMap::new(),
            healthy: true,
            health_score: 100,
        },
    }
}

fn pin(tenant_id: &str, version: &str, expected: Option<&str>) -> Mutation {
    Mutation::SetTenantVersion {
        tenant_id: tenant_id.to_owned(),
        service: "api".to_owned(),
        version: version.to_owned(),
        expected_version: expected.map(str::to_owned),
        force: false,
    }
}

/// Commits like a router does: validates against a freshly loaded copy, and on a conflict
/// (another committer was first) loads again and retries.
pub async fn try_commit(
    store: &dyn Store,
    mutation: Mutation,
) -> Result<crate::Commit, StoreError> {
    loop {
        let base = store.load().await?;
        let meta = ChangeMeta {
            actor: "suite".to_owned(),
            reason: "behaviour suite".to_owned(),
            at_ms: 1_700_000_000_000,
            before: "{}".to_owned(),
            after: "{\"changed\":true}".to_owned(),
        };
        match store.commit(&base, mutation.clone(), meta).await {
            Err(StoreError::Conflict { .. }) => continue,
            other => return other,
        }
    }
}

async fn commit(store: &dyn Store, mutation: Mutation) -> crate::Commit {
    match try_commit(store, mutation.clone()).await {
        Ok(commit) => commit,
        Err(err) => panic!("commit of {mutation:?} failed: {err}"),
    }
}

/// Sets up tenants `t0..tN`, service `api` and one instance of `v1` and `v2`.
async fn populate(store: &dyn Store, tenants: usize) {
    for i in 0..tenants {
        commit(store, tenant(&format!("t{i}"))).await;
    }
    commit(store, service()).await;
    commit(store, instance("a1", "v1")).await;
    commit(store, instance("b1", "v2")).await;
}

/// Every change produces the next revision; the store starts at 0.
pub async fn revisions_count_every_change(store: &dyn Store) {
    assert_eq!(store.load().await.expect("load").revision(), 0);
    assert_eq!(store.head_revision().await.expect("head"), 0);
    for expected in 1..=3 {
        let commit = commit(store, tenant(&format!("t{expected}"))).await;
        assert_eq!(commit.revision, expected);
        assert_eq!(store.head_revision().await.expect("head"), expected);
    }
    assert_eq!(store.load().await.expect("load").revision(), 3);
    store.ping().await.expect("ping");
}

/// A refused mutation changes nothing, not even the revision.
pub async fn rejected_changes_leave_no_trace(store: &dyn Store) {
    populate(store, 1).await;
    let before = store.load().await.expect("load").dump();
    let err = try_commit(store, pin("nobody", "v2", None))
        .await
        .expect_err("unknown tenant");
    assert!(
        matches!(
            err,
            StoreError::Rejected(RoutingError::NotFound {
                kind: Entity::Tenant,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(store.load().await.expect("load").dump(), before);
    let changes = store
        .changes_after(before.revision, 10, Duration::ZERO)
        .await
        .expect("changes");
    assert!(changes.is_empty(), "{changes:?}");
}

/// Two compare-and-set changes expecting the same version: exactly one wins.
pub async fn compare_and_set_admits_one_winner(store: &dyn Store) {
    populate(store, 1).await;
    let (first, second) = tokio::join!(
        try_commit(store, pin("t0", "v2", Some("v1"))),
        try_commit(store, pin("t0", "v2", Some("v1")))
    );
    let wins = [&first, &second].iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{first:?} {second:?}");
    let loser = if first.is_err() { first } else { second };
    match loser {
        Err(StoreError::Rejected(RoutingError::VersionMismatch { current, .. })) => {
            assert_eq!(current, "v2");
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
}

/// Changes come back in revision order, each with its mutation, from any revision.
pub async fn changes_are_followed_in_order(store: &dyn Store) {
    let mutations: Vec<Mutation> = (0..5).map(|i| tenant(&format!("t{i}"))).collect();
    for mutation in &mutations {
        commit(store, mutation.clone()).await;
    }
    let all = store
        .changes_after(0, 100, Duration::ZERO)
        .await
        .expect("changes");
    assert_eq!(
        all.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        all.iter().map(|c| c.mutation.clone()).collect::<Vec<_>>(),
        mutations
    );
    // The audit record travels with the change.
    let meta = &all[0].meta;
    assert_eq!(
        (meta.actor.as_str(), meta.reason.as_str(), meta.at_ms),
        ("suite", "behaviour suite", 1_700_000_000_000)
    );
    assert_eq!(
        (meta.before.as_str(), meta.after.as_str()),
        ("{}", "{\"changed\":true}")
    );
    let page = store
        .changes_after(2, 2, Duration::ZERO)
        .await
        .expect("changes");
    assert_eq!(page.iter().map(|c| c.revision).collect::<Vec<_>>(), [3, 4]);
}

/// A follower waiting for changes wakes when one is committed.
pub async fn waiting_follower_wakes_on_commit(store: &dyn Store) {
    let waiting = store.changes_after(0, 10, Duration::from_secs(30));
    let committing = async {
        tokio::task::yield_now().await;
        commit(store, tenant("late")).await
    };
    let (changes, commit) = tokio::join!(waiting, committing);
    let changes = changes.expect("changes");
    assert_eq!(changes.first().map(|c| c.revision), Some(commit.revision));
}

/// Applying the followed changes to an empty state gives the loaded state.
pub async fn load_matches_a_follower(store: &dyn Store) {
    populate(store, 3).await;
    commit(store, pin("t1", "v2", None)).await;
    let mut follower = routing_core::RoutingState::default();
    for change in store
        .changes_after(0, 1_000, Duration::ZERO)
        .await
        .expect("changes")
    {
        let (next, _) = follower.apply(&change.mutation).expect("replay");
        assert_eq!(next.revision(), change.revision);
        follower = next;
    }
    assert_eq!(follower.dump(), store.load().await.expect("load").dump());
}

/// An emergency rollback moves every tenant in one change and reports how many moved.
pub async fn emergency_rollback_is_one_change(store: &dyn Store) {
    populate(store, 10).await;
    commit(store, pin("t0", "v2", None)).await;
    commit(
        store,
        Mutation::SetDefaultVersion {
            service: "api".to_owned(),
            version: "v2".to_owned(),
            force: false,
        },
    )
    .await;
    let before = store.load().await.expect("load").revision();
    let commit = commit(
        store,
        Mutation::EmergencyRollback {
            service: "api".to_owned(),
            from_version: "v2".to_owned(),
            to_version: "v1".to_owned(),
            tenant_ids: Default::default(),
            force: false,
        },
    )
    .await;
    assert_eq!(commit.revision, before + 1);
    assert_eq!(
        commit.outcome,
        Outcome::RolledBack {
            override_id: format!("rb-{}", before + 1),
            moved_tenants: 10,
        }
    );
    let state = store.load().await.expect("load");
    for i in 0..10 {
        let resolution = state.resolve(&format!("t{i}"), "api").expect("resolve");
        assert_eq!(resolution.version, "v1", "t{i}");
    }
}

/// A change validated against an old copy never undoes a newer one: the store either
/// validates against its latest state or refuses with a conflict.
pub async fn stale_copies_never_overwrite_newer_changes(store: &dyn Store) {
    populate(store, 1).await;
    let stale = store.load().await.expect("load");
    commit(store, pin("t0", "v2", Some("v1"))).await;
    match store
        .commit(&stale, pin("t0", "v2", Some("v1")), ChangeMeta::default())
        .await
    {
        Err(StoreError::Conflict { current }) => {
            assert_eq!(current, stale.revision() + 1);
        }
        Err(StoreError::Rejected(RoutingError::VersionMismatch { current, .. })) => {
            assert_eq!(current, "v2");
        }
        other => panic!("a stale compare-and-set must not succeed: {other:?}"),
    }
    let state = store.load().await.expect("load");
    assert_eq!(state.revision(), stale.revision() + 1);
}

/// The history id does not change with commits.
pub async fn the_history_id_is_stable_across_changes(store: &dyn Store) {
    let history = store.history().await.expect("history");
    assert_eq!(history.len(), 16, "{history}");
    populate(store, 3).await;
    assert_eq!(store.history().await.expect("history"), history);
}

/// Every change names the history it was committed under and the change before it; a snapshot
/// names the last change, so a follower can tell a continuation from another line of changes.
pub async fn changes_name_their_history_and_parent(store: &dyn Store) {
    let empty = store.snapshot().await.expect("snapshot");
    assert_eq!(empty.head, "");
    populate(store, 2).await;
    let history = store.history().await.expect("history");
    let changes = store
        .changes_after(0, 100, Duration::ZERO)
        .await
        .expect("changes");
    let mut parent = String::new();
    for change in &changes {
        assert_eq!(change.history, history, "{change:?}");
        assert_eq!(change.parent, parent, "{change:?}");
        assert!(!change.id.is_empty(), "{change:?}");
        parent = change.id.clone();
    }
    let ids: std::collections::BTreeSet<&str> = changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), changes.len(), "change ids are unique");
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.head, parent);
    assert_eq!(snapshot.history.as_deref(), Some(history.as_str()));
    assert_eq!(
        snapshot.state.dump(),
        store.load().await.expect("load").dump()
    );
    assert_eq!(
        store.current_history().await.expect("history"),
        Some(history)
    );
}

/// A lease has one holder until it lapses; the holder renews it.
pub async fn a_lease_has_one_holder_at_a_time(store: &dyn Store) {
    let long = Duration::from_secs(60);
    assert!(store.lease("driver", "a", long).await.expect("lease"));
    assert!(!store.lease("driver", "b", long).await.expect("lease"));
    assert!(store.lease("driver", "a", long).await.expect("renew"));
    assert!(
        store
            .lease("other", "b", long)
            .await
            .expect("another lease")
    );
    // A lapsed lease goes to the next taker.
    assert!(
        store
            .lease("short", "a", Duration::from_millis(1))
            .await
            .expect("lease")
    );
    let start = std::time::Instant::now();
    loop {
        if store.lease("short", "b", long).await.expect("lease") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lease never lapsed"
        );
        tokio::task::yield_now().await;
    }
    assert!(!store.lease("short", "a", long).await.expect("lease"));
}
