//! The greyrouter [`Store`] over Redis: standalone, Sentinel or Cluster, for fleets of routers.
//!
//! Built on [`fred`]: one async client for standalone, Sentinel and Cluster deployments behind
//! one URL (`redis://`, `redis-sentinel://`, `redis-cluster://`), with reconnection policies,
//! command timeouts, pipelining, scripts and streams, on tokio, the runtime the server already
//! uses. (`redis-rs` covers the same commands, but Sentinel and Cluster there are separate client
//! types with their own reconnection story.)
//!
//! # Model
//! Redis is the shared source of truth; every router keeps its own replica of the state and
//! routes from it, so `Route` never waits on Redis.
//! - **Layout**: readable keys, all under one hash tag (see [`keys`]), hold the state itself.
//! - **Commit**: a router validates a mutation against its replica at revision `r` (the pure
//!   [`RoutingState::apply`]), derives the writes, and runs one Lua script that applies them only
//!   if `{p}:revision` is still `r`, increments it and appends the change to the `{p}:changes`
//!   stream (capped, entry id `<revision>-0`). When another router committed first, the script
//!   refuses, the router catches up and validates again: two routers racing on the same tenant
//!   cannot both win a compare-and-set.
//! - **Follow**: routers read the stream after their revision (blocking reads on a dedicated
//!   connection). A gap (trimmed stream, or a store reset to an older revision) is reported as
//!   [`StoreError::Compacted`]; the router then loads a fresh snapshot.
//! - **Snapshot**: the keys are read with pipelined commands between two reads of the revision;
//!   if it moved, the read is retried, so a loaded snapshot is always of one revision.
//! - **Outage**: once the store knows Redis is unreachable (a connection error event, a client
//!   that is not connected, a command that failed for want of a connection), writes fail at once
//!   with [`StoreError::Unavailable`] ("redis is unreachable since ...; reconnecting") instead of
//!   each waiting for the command timeout; a watchdog pings Redis with the reconnection back-off
//!   and accepts writes again as soon as it answers. Reads keep trying (each within
//!   `command_timeout`), and following resumes from the router's revision.
//! - **Durability**: with `min_replicas_acked = n > 0`, a commit is answered only after `WAIT n`
//!   (on the master of the keys' slot) saw `n` replicas acknowledge it within
//!   `replica_ack_timeout`; otherwise it answers [`StoreError::Unavailable`] saying the change
//!   was committed on the master but may be kept or lost.
//! - **Lineage**: every change carries the history id it was committed under, its own id and its
//!   parent's; `{p}:head` holds the last change's id, and the commit script refuses a base whose
//!   last change is another one, even at the same revision (a failover that lost changes and
//!   reused their revisions). A router that finds the store behind it moves the store to a new
//!   epoch of its history ([`Store::rotate_history`]).
//!
//! Nothing has a TTL: pins and defaults never expire.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::ClusterHash;
use fred::types::streams::XReadResponse;
use greyrouter_store::{Change, ChangeMeta, Commit, Snapshot, Store, StoreError};
use routing_core::{
    Experiment, Instance, Mutation, Override, Revision, Rollout, RoutingState, Service, StateDump,
    StateLoader, Tenant,
};

mod bulk;
pub mod keys;
mod link;
mod writes;

use keys::Keys;
use link::Link;

/// Settings of a Redis store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`, `redis-sentinel://host:port/db?sentinelServiceName=name`, or
    /// `redis-cluster://host:port?node=host:port&...`.
    pub url: String,
    /// Prefix of every key (its hash tag).
    pub prefix: String,
    /// How long a command may take before it fails as unavailable.
    pub command_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// First reconnection delay; doubles up to `reconnect_max_delay`.
    pub reconnect_min_delay: Duration,
    /// Longest reconnection delay.
    pub reconnect_max_delay: Duration,
    /// Changes kept in the stream (approximately: trimmed with `MAXLEN ~`).
    pub stream_max_len: u64,
    /// Replicas that must acknowledge a change (Redis `WAIT`) before it is answered as
    /// committed; 0: answered once the master applied it.
    pub min_replicas_acked: u32,
    /// How long to wait for those acknowledgements.
    pub replica_ack_timeout: Duration,
    /// Whether a load reads tenants over a connection of its own, parsing replies in place
    /// (not in a Cluster); else through the client.
    pub bulk_load: bool,
}

/// Most replicas `min_replicas_acked` may ask for.
pub const MAX_REPLICAS_ACKED: u32 = 64;

impl RedisConfig {
    /// Returns the defaults for a URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "greyrouter".to_owned(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            stream_max_len: 100_000,
            min_replicas_acked: 0,
            replica_ack_timeout: Duration::from_secs(1),
            bulk_load: true,
        }
    }

    /// Checks the settings without connecting; returns one line per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(err) = fred::types::config::Config::from_url(&self.url) {
            problems.push(format!("store: invalid Redis URL: {err}"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) || self.prefix.len() > 64 {
            problems.push("redis.prefix: 1-64 characters without braces".to_owned());
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            problems.push("redis: timeouts must be positive".to_owned());
        }
        if self.reconnect_min_delay > self.reconnect_max_delay || self.reconnect_min_delay.is_zero()
        {
            problems.push(
                "redis: reconnect_min_delay must be positive and at most reconnect_max_delay"
                    .to_owned(),
            );
        }
        if self.stream_max_len < 100 {
            problems.push("redis.stream_max_len: at least 100".to_owned());
        }
        if self.min_replicas_acked > MAX_REPLICAS_ACKED {
            problems.push(format!(
                "redis.min_replicas_acked: at most {MAX_REPLICAS_ACKED}"
            ));
        }
        if self.min_replicas_acked > 0
            && (self.replica_ack_timeout.is_zero()
                || self.replica_ack_timeout > Duration::from_secs(60))
        {
            problems.push(
                "redis.replica_ack_timeout_ms: 1 to 60000 when min_replicas_acked is set"
                    .to_owned(),
            );
        }
        problems
    }
}

/// Routing state in Redis.
pub struct RedisStore {
    config: RedisConfig,
    keys: Keys,
    /// Reads.
    client: Client,
    /// Commits (with their `WAIT`, which must go on the connection that wrote): the same client
    /// as reads unless replicas must acknowledge, so that a `WAIT` never holds up reads.
    writer: Client,
    /// Blocking stream reads only.
    follower: Client,
    /// Whether Redis answers: writes fail at once while it does not.
    link: Arc<Link>,
    /// Connection event listeners and the watchdog; stopped with the store.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.describe())
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

/// How many commands go in one pipeline when loading.
const PIPELINE_CHUNK: usize = 1_000;
/// How many tenants one pipeline reads when loading (two keys each).
const TENANT_CHUNK: usize = 500;
/// How many of those pipelines are in flight at once: replies arrive while earlier ones are
/// being added to the state.
const TENANT_READS_IN_FLIGHT: usize = 4;
/// How often a snapshot read is retried when the store moved during it in a way it could not
/// catch up with.
const LOAD_ATTEMPTS: usize = 10;
/// Most changes made during a load that it catches up with by replaying them; more, and it
/// reads everything again.
const CATCH_UP_MAX_CHANGES: u64 = 10_000;

/// Where the store stands: its revision, the id of its last change, and its history.
type Position = (Revision, String, Option<String>);

/// Applies a change if the store is still at the expected revision and head: `KEYS` are the
/// revision, the stream, the head, the history, then the written keys; `ARGV` the expected
/// revision, the stream length, the mutation, the number of writes, the expected head (`*`: any),
/// the new change's id, a history id to start if the store has none, the writes (4 each) and
/// the audit record (5).
const COMMIT_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local head = redis.call('GET', KEYS[3]) or ''
if current ~= tonumber(ARGV[1]) or (ARGV[5] ~= '*' and head ~= ARGV[5]) then
  return {0, current}
end
redis.call('SET', KEYS[4], ARGV[7], 'NX')
local history = redis.call('GET', KEYS[4])
local count = tonumber(ARGV[4])
for i = 0, count - 1 do
  local at = 8 + i * 4
  local op = ARGV[at]
  local key = KEYS[tonumber(ARGV[at + 1])]
  if op == 'hset' then
    redis.call('HSET', key, ARGV[at + 2], ARGV[at + 3])
  elseif op == 'hdel' then
    redis.call('HDEL', key, ARGV[at + 2])
  elseif op == 'sadd' then
    redis.call('SADD', key, ARGV[at + 2])
  elseif op == 'srem' then
    redis.call('SREM', key, ARGV[at + 2])
  end
end
local revision = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[3], ARGV[6])
local audit = 8 + count * 4
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], string.format('%d-0', revision), 'mutation', ARGV[3],
  'actor', ARGV[audit], 'reason', ARGV[audit + 1], 'at_ms', ARGV[audit + 2],
  'before', ARGV[audit + 3], 'after', ARGV[audit + 4],
  'history', history, 'id', ARGV[6], 'parent', head)
return {1, revision}
";

/// Writes ARGV[2] as the history id if it is still ARGV[1]; returns the id in force (empty when
/// the store has none).
const ROTATE_SCRIPT: &str = r"
local history = redis.call('GET', KEYS[1])
if history == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return history or ''
";

/// Sets the history id unless one is set, and returns the one set.
const HISTORY_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

const LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

fn unavailable(err: &Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {err}"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl RedisStore {
    /// Connects (waiting at most the connect timeout) and checks that Redis answers.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore, StoreError> {
        if let Some(problem) = config.problems().into_iter().next() {
            return Err(StoreError::Unavailable(problem));
        }
        let client = Self::client(&config, config.command_timeout)?;
        // Blocking reads wait up to their own block time plus the command timeout.
        let follower = Self::client(&config, config.command_timeout + Duration::from_secs(60))?;
        let writer = if config.min_replicas_acked > 0 {
            Self::client(&config, config.command_timeout)?
        } else {
            client.clone()
        };
        let mut distinct = vec![&client, &follower];
        if config.min_replicas_acked > 0 {
            distinct.push(&writer);
        }
        for c in &distinct {
            let init = tokio::time::timeout(config.connect_timeout, c.init()).await;
            match init {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(unavailable(&err)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "redis: no connection to {} within {:?}",
                        redact(&config.url),
                        config.connect_timeout
                    )));
                }
            }
        }
        let link = Arc::new(Link::default());
        let mut tasks: Vec<_> = distinct
            .iter()
            .map(|c| tokio::spawn(mark_down_on_errors(c.error_rx(), Arc::clone(&link))))
            .collect();
        tasks.push(tokio::spawn(mark_up_on_reconnect(
            writer.reconnect_rx(),
            Arc::clone(&link),
        )));
        tasks.push(tokio::spawn(watchdog(
            writer.clone(),
            Arc::clone(&link),
            config.clone(),
        )));
        let keys = Keys::new(&config.prefix);
        Ok(RedisStore {
            config,
            keys,
            client,
            writer,
            follower,
            link,
            tasks,
        })
    }

    /// Returns the error of a failed command; a connection failure also takes the link down,
    /// so that the next writes fail at once.
    fn fail(&self, err: &Error) -> StoreError {
        if link::is_connection_error(err) {
            self.link.set_down(&err.to_string());
        }
        unavailable(err)
    }

    /// Answers at once while Redis is known to be unreachable.
    fn writable(&self) -> Result<(), StoreError> {
        let state = self.writer.state();
        if state != ClientState::Connected {
            self.link.set_down(&format!(
                "the connection is {}",
                state.to_string().to_lowercase()
            ));
        }
        self.link.check()
    }

    fn client(config: &RedisConfig, timeout: Duration) -> Result<Client, StoreError> {
        let redis = fred::types::config::Config::from_url(&config.url)
            .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let min = u32::try_from(config.reconnect_min_delay.as_millis()).unwrap_or(u32::MAX);
        let max = u32::try_from(config.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX);
        let mut builder = Builder::from_config(redis);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, min, max, 2));
        builder.build().map_err(|e| unavailable(&e))
    }

    /// Returns the keys this store uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let value: Option<String> = self
            .client
            .get(self.keys.revision())
            .await
            .map_err(|e| self.fail(&e))?;
        value.map_or(Ok(0), |v| {
            v.parse().map_err(|_| corrupt("revision is not a number"))
        })
    }

    /// Runs `HGETALL` on many keys, pipelined in chunks.
    async fn hgetall_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<HashMap<String, String>>, StoreError> {
        let mut all = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PIPELINE_CHUNK) {
            if let [key] = chunk {
                let reply = self
                    .client
                    .hgetall(key.as_str())
                    .await
                    .map_err(|e| self.fail(&e))?;
                all.push(reply);
                continue;
            }
            let pipeline = self.client.pipeline();
            for key in chunk {
                let () = pipeline
                    .hgetall(key.as_str())
                    .await
                    .map_err(|e| self.fail(&e))?;
            }
            let replies: Vec<HashMap<String, String>> =
                pipeline.all().await.map_err(|e| self.fail(&e))?;
            all.extend(replies);
        }
        Ok(all)
    }

    /// Reads every key once, straight into a state, starting at position `start`; returns the
    /// state and the position it is exactly at, or `None` when the store moved in a way the
    /// read cannot catch up with (see [`RedisStore::catch_up`]).
    ///
    /// Services, instances and rules are few and read first; tenants are then read a chunk at a
    /// time, a few chunks in flight, and each reply goes into the state as it arrives (its pins
    /// as numbers, the reply's strings borrowed, not copied): nothing but the state itself grows
    /// with the number of tenants.
    async fn read_state(
        &self,
        start: Position,
    ) -> Result<Option<(RoutingState, Position)>, StoreError> {
        let invalid =
            |e: routing_core::RoutingError| corrupt(format!("stored state is invalid: {e}"));
        let mut rules = StateDump::default();
        let mut names: Vec<String> = self
            .client
            .smembers(self.keys.services())
            .await
            .map_err(|e| self.fail(&e))?;
        names.sort();
        let fields = self
            .hgetall_many(
                &names
                    .iter()
                    .map(|n| self.keys.service(n))
                    .collect::<Vec<_>>(),
            )
            .await?;
        for (name, fields) in names.iter().zip(fields) {
            let service = Service {
                name: name.clone(),
                default_version: field(&fields, "default_version")?.to_owned(),
                strategy: field(&fields, "strategy")?
                    .parse()
                    .map_err(|e: String| corrupt(e))?,
                versions: parse(field(&fields, "versions")?)?,
            };
            let mut per_service = vec![
                self.keys.overrides(name),
                self.keys.rollouts(name),
                self.keys.experiments(name),
            ];
            per_service.extend(
                service
                    .versions
                    .iter()
                    .map(|v| self.keys.instances(name, v)),
            );
            let mut hashes = self.hgetall_many(&per_service).await?.into_iter();
            let records = |hash: Option<HashMap<String, String>>| hash.unwrap_or_default();
            for value in records(hashes.next()).values() {
                rules.overrides.push(parse::<Override>(value)?);
            }
            for value in records(hashes.next()).values() {
                rules.rollouts.push(parse::<Rollout>(value)?);
            }
            for value in records(hashes.next()).values() {
                rules.experiments.push(parse::<Experiment>(value)?);
            }
            for hash in hashes {
                for value in hash.values() {
                    rules.instances.push(parse::<Instance>(value)?);
                }
            }
            rules.services.push(service);
        }
        let mut loader = StateLoader::new(&rules.services, &rules.instances).map_err(invalid)?;
        let mut tenant_ids: Vec<String> = self
            .client
            .smembers(self.keys.tenants())
            .await
            .map_err(|e| self.fail(&e))?;
        tenant_ids.sort_unstable();
        let reader = match self.bulk_target() {
            Some(target) => match bulk::BulkReader::connect(&target).await {
                Ok(reader) => Some(reader),
                Err(err) => {
                    tracing::warn!(error = %err, "redis: no connection of its own for the load; reading through the client");
                    None
                }
            },
            None => None,
        };
        match reader {
            Some(mut reader) => {
                reader
                    .read_hashes(
                        &tenant_ids,
                        TENANT_CHUNK,
                        2,
                        |id| vec![self.keys.tenant_metadata(id), self.keys.tenant_services(id)],
                        |id, hashes| {
                            let [metadata, pins] = hashes else {
                                return Err(corrupt("short reply"));
                            };
                            let tenant = tenant_record(id, metadata)?;
                            loader.tenant(tenant, pins.iter().copied()).map_err(invalid)
                        },
                    )
                    .await?;
            }
            None => {
                self.read_tenants_through_client(&tenant_ids, &mut loader)
                    .await?;
            }
        }
        let Some(at) = self.catch_up(start, &mut loader).await? else {
            return Ok(None);
        };
        let state = loader
            .finish(at.0, &rules.overrides, &rules.rollouts, &rules.experiments)
            .map_err(invalid)?;
        Ok(Some((state, at)))
    }

    /// Brings what a read from `start` put into `loader` to one position of the store.
    ///
    /// Every record was read at some moment after `start`. When the store did not move, that is
    /// the state at `start`. When it moved only by changes to tenants (records written, pins set
    /// or cleared: what steady traffic is), every other record was the same throughout, and
    /// each of those changes writes a value that does not depend on what was there before: the
    /// changes made since `start`, replayed in order over what was read, give the state at the
    /// position read now, whenever each tenant was read. Anything else (a service, an instance,
    /// a rule changed, the history replaced, more changes than the stream holds or than
    /// `CATCH_UP_MAX_CHANGES`): `None`, read everything again.
    async fn catch_up(
        &self,
        start: Position,
        loader: &mut StateLoader,
    ) -> Result<Option<Position>, StoreError> {
        let now = self.position().await?;
        if now == start {
            return Ok(Some(start));
        }
        if now.2 != start.2 || now.0 <= start.0 || now.0 - start.0 > CATCH_UP_MAX_CHANGES {
            return Ok(None);
        }
        let count = usize::try_from(now.0 - start.0).unwrap_or(usize::MAX);
        let changes = match self.changes_after(start.0, count, Duration::ZERO).await {
            Ok(changes) => changes,
            Err(StoreError::Compacted { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        let history = now.2.as_deref().unwrap_or_default();
        let changes: Vec<&Change> = changes
            .iter()
            .take_while(|change| change.revision <= now.0)
            .collect();
        if changes.last().map(|change| change.revision) != Some(now.0)
            || changes
                .iter()
                .any(|change| !change.history.is_empty() && change.history != history)
        {
            return Ok(None);
        }
        for change in changes {
            // A change that is not a tenant's, or does not apply (it should), is read again.
            if !matches!(loader.replay_tenant_change(&change.mutation), Ok(true)) {
                return Ok(None);
            }
        }
        Ok(Some(now))
    }

    /// Reads the tenants through the client, a few pipelines in flight, into `loader`.
    async fn read_tenants_through_client(
        &self,
        tenant_ids: &[String],
        loader: &mut StateLoader,
    ) -> Result<(), StoreError> {
        let invalid =
            |e: routing_core::RoutingError| corrupt(format!("stored state is invalid: {e}"));
        let mut chunks = tenant_ids.chunks(TENANT_CHUNK);
        let mut in_flight = VecDeque::with_capacity(TENANT_READS_IN_FLIGHT);
        loop {
            while in_flight.len() < TENANT_READS_IN_FLIGHT
                && let Some(ids) = chunks.next()
            {
                let read = read_tenants(self.client.clone(), self.keys.clone(), ids.to_vec());
                in_flight.push_back((ids, tokio::spawn(read)));
            }
            let Some((ids, read)) = in_flight.pop_front() else {
                break;
            };
            let replies = read
                .await
                .map_err(|e| StoreError::Unavailable(format!("redis: reading tenants: {e}")))?
                .map_err(|e| self.fail(&e))?;
            if replies.len() != ids.len() * 2 {
                return Err(corrupt("short pipeline reply"));
            }
            for (id, pair) in ids.iter().zip(replies.chunks(2)) {
                let [metadata, pins] = pair else {
                    return Err(corrupt("short pipeline reply"));
                };
                let tenant = tenant_record(id, &hash_pairs(metadata)?)?;
                loader.tenant(tenant, hash_pairs(pins)?).map_err(invalid)?;
            }
        }
        Ok(())
    }

    /// Where a load reads tenants over a connection of its own: the one server the client is
    /// connected to (standalone, or the master Sentinel named); `None` in a Cluster or when
    /// turned off.
    fn bulk_target(&self) -> Option<bulk::Target> {
        if !self.config.bulk_load {
            return None;
        }
        let config = self.client.client_config();
        if config.server.is_clustered() {
            return None;
        }
        let [server] =
            <[fred::types::config::Server; 1]>::try_from(self.client.active_connections()).ok()?;
        Some(bulk::Target {
            host: server.host.to_string(),
            port: server.port,
            username: config.username.clone(),
            password: config.password.clone(),
            database: config.database,
            timeout: self.config.command_timeout.max(self.config.connect_timeout),
        })
    }

    /// Reads the revision, the head and the history at once.
    async fn position(&self) -> Result<Position, StoreError> {
        let values: Vec<Option<String>> = self
            .client
            .mget(vec![
                self.keys.revision(),
                self.keys.head(),
                self.keys.history(),
            ])
            .await
            .map_err(|e| self.fail(&e))?;
        let [revision, head, history] =
            <[Option<String>; 3]>::try_from(values).map_err(|_| corrupt("short MGET reply"))?;
        let revision = match revision {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| corrupt("revision is not a number"))?,
        };
        Ok((revision, head.unwrap_or_default(), history))
    }

    /// Applies a change unless the store moved past `base` (or, with `head`, is on another
    /// line of changes), then waits for replicas when configured.
    async fn write(
        &self,
        base: &RoutingState,
        head: Option<&str>,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.writable()?;
        let (after, outcome) = base.apply(&mutation)?;
        let writes = writes::writes(&self.keys, base, &after, &mutation);
        let mut keys = vec![
            self.keys.revision(),
            self.keys.changes(),
            self.keys.head(),
            self.keys.history(),
        ];
        let mut args: Vec<String> = vec![
            base.revision().to_string(),
            self.config.stream_max_len.to_string(),
            serde_json::to_string(&mutation).map_err(corrupt)?,
            writes.len().to_string(),
            head.unwrap_or("*").to_owned(),
            greyrouter_store::new_history_id(),
            greyrouter_store::new_history_id(),
        ];
        let audit = [
            meta.actor,
            meta.reason,
            meta.at_ms.to_string(),
            meta.before,
            meta.after,
        ];
        for write in &writes {
            let (op, key, field, value) = write.parts();
            let index = match keys.iter().position(|k| k == key) {
                Some(index) => index,
                None => {
                    keys.push(key.to_owned());
                    keys.len() - 1
                }
            };
            args.extend([
                op.to_owned(),
                (index + 1).to_string(),
                field.to_owned(),
                value.to_owned(),
            ]);
        }
        args.extend(audit);
        let fail_fast = Options {
            fail_fast: true,
            ..Options::default()
        };
        let (applied, revision): (i64, u64) = self
            .writer
            .with_options(&fail_fast)
            .eval(COMMIT_SCRIPT, keys, args)
            .await
            .map_err(|e| self.fail(&e))?;
        if applied != 1 {
            return Err(StoreError::Conflict { current: revision });
        }
        debug_assert_eq!(revision, after.revision());
        self.await_replicas(revision).await?;
        Ok(Commit { revision, outcome })
    }

    /// Waits until `min_replicas_acked` replicas acknowledged the writes made so far on the
    /// writer's connection to the master of the keys' slot.
    async fn await_replicas(&self, revision: Revision) -> Result<(), StoreError> {
        let wanted = self.config.min_replicas_acked;
        if wanted == 0 {
            return Ok(());
        }
        let timeout = self.config.replica_ack_timeout;
        let options = Options {
            timeout: Some(timeout + self.config.command_timeout),
            cluster_hash: Some(ClusterHash::Custom(fred::util::redis_keyslot(
                self.keys.revision().as_bytes(),
            ))),
            ..Options::default()
        };
        let acked: Result<i64, Error> = self
            .writer
            .with_options(&options)
            .wait(
                i64::from(wanted),
                i64::try_from(millis(timeout)).unwrap_or(i64::MAX),
            )
            .await;
        let acked = match acked {
            Ok(acked) => acked,
            Err(err) => {
                let _ = self.fail(&err);
                return Err(StoreError::Unavailable(format!(
                    "change {revision} was committed on the master but whether {wanted} \
                     replica(s) acknowledged it is unknown ({err}); the change may be kept or \
                     lost: read back before retrying (compare-and-set)"
                )));
            }
        };
        if acked < i64::from(wanted) {
            return Err(StoreError::Unavailable(format!(
                "change {revision} was committed on the master but acknowledged by {acked} of \
                 {wanted} replica(s) within {} ms; the change may be kept or lost: read back \
                 before retrying (compare-and-set)",
                millis(timeout)
            )));
        }
        Ok(())
    }

    fn parse_change(id: &str, fields: &HashMap<String, String>) -> Result<Change, StoreError> {
        let revision = id
            .split_once('-')
            .and_then(|(rev, _)| rev.parse().ok())
            .ok_or_else(|| corrupt(format!("change id {id}")))?;
        let mutation: Mutation = parse(field(fields, "mutation")?)?;
        let text = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let meta = ChangeMeta {
            actor: text("actor"),
            reason: text("reason"),
            at_ms: text("at_ms").parse().unwrap_or(0),
            before: text("before"),
            after: text("after"),
        };
        Ok(Change {
            revision,
            mutation,
            meta,
            history: text("history"),
            id: text("id"),
            parent: text("parent"),
        })
    }

    /// Checks that `changes` continue right after `after`.
    fn contiguous(after: Revision, changes: Vec<Change>) -> Result<Vec<Change>, StoreError> {
        match changes.first() {
            Some(first) if first.revision != after + 1 => Err(StoreError::Compacted {
                requested: after,
                oldest: first.revision - 1,
            }),
            _ => Ok(changes),
        }
    }
}

/// A tenant's record from its metadata hash.
fn tenant_record(id: &str, metadata: &[(&str, &str)]) -> Result<Tenant, StoreError> {
    let field = |name: &str| {
        metadata
            .iter()
            .find(|(field, _)| *field == name)
            .map(|(_, value)| *value)
            .ok_or_else(|| corrupt(format!("tenant {id}: missing field {name}")))
    };
    Ok(Tenant {
        id: id.to_owned(),
        name: field("name")?.to_owned(),
        region: field("region")?.to_owned(),
        tier: field("tier")?.to_owned(),
        labels: parse(field("labels")?)?,
        active: field("active")? == "1",
    })
}

/// Reads the metadata and pins of some tenants in one pipeline: two replies per tenant.
async fn read_tenants(client: Client, keys: Keys, ids: Vec<String>) -> Result<Vec<Value>, Error> {
    let pipeline = client.pipeline();
    for id in &ids {
        let () = pipeline.hgetall(keys.tenant_metadata(id)).await?;
        let () = pipeline.hgetall(keys.tenant_services(id)).await?;
    }
    pipeline.all().await
}

/// The field/value pairs of a `HGETALL` reply, borrowed from it.
fn hash_pairs(reply: &Value) -> Result<Vec<(&str, &str)>, StoreError> {
    fn text(value: &Value) -> Result<&str, StoreError> {
        match value {
            Value::String(text) => Ok(text),
            Value::Bytes(bytes) => {
                std::str::from_utf8(bytes).map_err(|_| corrupt("a hash field is not UTF-8"))
            }
            _ => Err(corrupt("a hash field is not a string")),
        }
    }
    match reply {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .chunks(2)
            .map(|pair| match pair {
                [field, value] => Ok((text(field)?, text(value)?)),
                _ => Err(corrupt("a hash reply of odd length")),
            })
            .collect(),
        Value::Map(map) => map
            .iter()
            .map(|(field, value)| {
                let field = field
                    .as_str()
                    .ok_or_else(|| corrupt("a hash field is not UTF-8"))?;
                Ok((field, text(value)?))
            })
            .collect(),
        _ => Err(corrupt("a hash reply is not a hash")),
    }
}

fn field<'a>(fields: &'a HashMap<String, String>, name: &str) -> Result<&'a str, StoreError> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| corrupt(format!("missing field {name}")))
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(format!("{e}: {text}")))
}

/// Drops a password from a URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn load(&self) -> Result<RoutingState, StoreError> {
        Ok(self.snapshot().await?.state)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        for _ in 0..LOAD_ATTEMPTS {
            let start = self.position().await?;
            if let Some((state, (_, head, history))) = self.read_state(start).await? {
                return Ok(Snapshot {
                    state,
                    history,
                    head,
                });
            }
        }
        Err(StoreError::Unavailable(
            "redis: the state kept changing while loading".to_owned(),
        ))
    }

    async fn commit(
        &self,
        base: &RoutingState,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.write(base, None, mutation, meta).await
    }

    async fn commit_after(
        &self,
        base: &RoutingState,
        head: &str,
        mutation: Mutation,
        meta: ChangeMeta,
    ) -> Result<Commit, StoreError> {
        self.write(base, Some(head), mutation, meta).await
    }

    async fn changes_after(
        &self,
        after: Revision,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Change>, StoreError> {
        let stream = self.keys.changes();
        // The revision is read before the stream: every change up to it is then in the stream
        // unless trimmed, so an empty range below it is a real gap, not a change that landed
        // between the two reads.
        let current = self.revision().await?;
        let entries: Vec<(String, HashMap<String, String>)> = self
            .client
            .xrange(&stream, format!("{}-0", after + 1), "+", Some(limit as u64))
            .await
            .map_err(|e| self.fail(&e))?;
        if current < after {
            // The store was reset to an older state (flushed and restored).
            return Err(StoreError::Compacted {
                requested: after,
                oldest: current,
            });
        }
        if !entries.is_empty() || current > after {
            let changes = entries
                .iter()
                .map(|(id, fields)| Self::parse_change(id, fields))
                .collect::<Result<Vec<_>, _>>()?;
            if changes.is_empty() {
                return Err(StoreError::Compacted {
                    requested: after,
                    oldest: current,
                });
            }
            return Self::contiguous(after, changes);
        }
        let block = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let reply: Value = self
            .follower
            .xread(
                Some(limit as u64),
                Some(block),
                &stream,
                format!("{after}-0"),
            )
            .await
            .map_err(|e| self.fail(&e))?;
        if reply.is_null() {
            return Ok(Vec::new());
        }
        let mut response: XReadResponse<String, String, String, String> = reply
            .into_xread_response()
            .map_err(|e| corrupt(format!("change stream reply: {e}")))?;
        let entries = response.remove(&stream).unwrap_or_default();
        let changes = entries
            .iter()
            .map(|(id, fields)| Self::parse_change(id, fields))
            .collect::<Result<Vec<_>, _>>()?;
        Self::contiguous(after, changes)
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.writable()?;
        let millis = millis(ttl).max(1);
        let held: i64 = self
            .client
            .eval(
                LEASE_SCRIPT,
                vec![self.keys.lease(name)],
                vec![holder.to_owned(), millis.to_string()],
            )
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(held == 1)
    }

    /// Checks that Redis answers and takes writes (the link is up).
    async fn ping(&self) -> Result<(), StoreError> {
        self.writable()?;
        let _: String = self.client.ping(None).await.map_err(|e| self.fail(&e))?;
        Ok(())
    }

    async fn head_revision(&self) -> Result<Revision, StoreError> {
        self.revision().await
    }

    fn describe(&self) -> String {
        redact(&self.config.url)
    }

    async fn history(&self) -> Result<String, StoreError> {
        self.client
            .eval(
                HISTORY_SCRIPT,
                vec![self.keys.history()],
                vec![greyrouter_store::new_history_id()],
            )
            .await
            .map_err(|e| self.fail(&e))
    }

    async fn current_history(&self) -> Result<Option<String>, StoreError> {
        self.client
            .get(self.keys.history())
            .await
            .map_err(|e| self.fail(&e))
    }

    async fn rotate_history(&self, from: &str, to: &str) -> Result<String, StoreError> {
        self.writable()?;
        let history: String = self
            .writer
            .eval(
                ROTATE_SCRIPT,
                vec![self.keys.history()],
                vec![from.to_owned(), to.to_owned()],
            )
            .await
            .map_err(|e| self.fail(&e))?;
        if history.is_empty() {
            return Err(StoreError::Unavailable(
                "redis: the store has no history (it was emptied)".to_owned(),
            ));
        }
        Ok(history)
    }

    async fn adopt_history(&self, retired_origin: &str, history: &str) -> Result<(), StoreError> {
        self.writable()?;
        let _: i64 = self
            .writer
            .hset(
                self.keys.adopted(),
                (retired_origin.to_owned(), history.to_owned()),
            )
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(())
    }

    async fn adopted_history(&self, retired_origin: &str) -> Result<Option<String>, StoreError> {
        self.client
            .hget(self.keys.adopted(), retired_origin)
            .await
            .map_err(|e| self.fail(&e))
    }

    fn write_timeout(&self) -> Option<Duration> {
        let wait = if self.config.min_replicas_acked > 0 {
            self.config.replica_ack_timeout
        } else {
            Duration::ZERO
        };
        Some(self.config.command_timeout + wait)
    }
}

/// Takes the link down on every connection error a client reports.
async fn mark_down_on_errors(
    mut errors: tokio::sync::broadcast::Receiver<(Error, Option<Server>)>,
    link: Arc<Link>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match errors.recv().await {
            Ok((err, server)) => {
                let at = server.map(|s| format!(" ({s})")).unwrap_or_default();
                link.set_down(&format!("{err}{at}"));
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Brings the link up when the writer has (re)connected.
async fn mark_up_on_reconnect(
    mut connections: tokio::sync::broadcast::Receiver<Server>,
    link: Arc<Link>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match connections.recv().await {
            Ok(_) => link.set_up(),
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// While the link is down, pings Redis through the writer with the reconnection back-off, and
/// brings the link up when it answers.
async fn watchdog(writer: Client, link: Arc<Link>, config: RedisConfig) {
    loop {
        link.wait_down().await;
        let mut delay = config.reconnect_min_delay;
        while link.is_down() {
            let pong: Result<String, Error> = writer.ping(None).await;
            if pong.is_ok() {
                link.set_up();
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(config.reconnect_max_delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379/0"), "redis://host:6379/0");
    }

    #[test]
    fn config_problems_are_reported() {
        let mut config = RedisConfig::new("nonsense");
        config.prefix = "{bad}".into();
        config.stream_max_len = 1;
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            RedisConfig::new("redis://127.0.0.1:6379/0")
                .problems()
                .is_empty()
        );
        assert!(
            RedisConfig::new("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001")
                .problems()
                .is_empty()
        );
        assert!(
            RedisConfig::new("redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster")
                .problems()
                .is_empty()
        );
    }
}
