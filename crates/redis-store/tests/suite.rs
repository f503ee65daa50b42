//! The Store behaviour suite against real Redis: the same checks the in-memory store passes.
//! Each test runs its own `redis-server` on a free port.

use std::time::Duration;

use greyrouter_store::{Change, ChangeMeta, Commit, Snapshot, Store, StoreError};
use greyrouter_test_support::RedisServer;
use redis_store::{RedisConfig, RedisStore};
use routing_core::{Mutation, Revision, RoutingState};

/// A store and the server it talks to, stopped together.
struct Isolated {
    store: RedisStore,
    _server: RedisServer,
}

#[async_trait::async_trait]
impl Store for Isolated {
    async fn load(&self) -> Result<RoutingState, StoreError> {
        self.store.load().await
    }

    async fn commit(
        &self,
        base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.store.commit(base, mutation, meta).await
    }

    async fn changes_after(
        &self,
        after: Revision,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        self.store.changes_after(after, limit, wait).await
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.store.lease(name, holder, ttl).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        self.store.head_revision().await
    }

    fn describe(&self) -> String {
        self.store.describe()
    }

    async fn history(&self) -> Result<String, StoreError> {
        self.store.history().await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.store.snapshot().await
    }

    async fn commit_after(
        &self,
        base: &RoutingState,
        head: &str,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.store.commit_after(base, head, mutation, meta).await
    }

    async fn current_history(&self) -> Result<Option<String>, StoreError> {
        self.store.current_history().await
    }

    async fn rotate_history(&self, from: &str, to: &str) -> Result<String, StoreError> {
        self.store.rotate_history(from, to).await
    }

    async fn adopt_history(&self, retired_origin: &str, history: &str) -> Result<(), StoreError> {
        self.store.adopt_history(retired_origin, history).await
    }

    async fn adopted_history(&self, retired_origin: &str) -> Result<Option<String>, StoreError> {
        self.store.adopted_history(retired_origin).await
    }

    fn write_timeout(&self) -> Option<Duration> {
        self.store.write_timeout()
    }
}

async fn isolated() -> Isolated {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .expect("connect");
    Isolated {
        store,
        _server: server,
    }
}

greyrouter_store::store_suite!(isolated());
