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
//! - **Outage**: commands time out (`command_timeout`) and fail as
//!   [`StoreError::Unavailable`]; the client reconnects with exponential back-off in the
//!   background, and following resumes from the router's revision.
//!
//! Nothing has a TTL: pins and defaults never expire.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::streams::XReadResponse;
use greyrouter_store::{Change, ChangeMeta, Commit, Store, StoreError};
use routing_core::{
    Experiment, Instance, Mutation, Override, Pin, Revision, Rollout, RoutingState, Service,
    StateDump, Tenant,
};

pub mod keys;
mod writes;

use keys::Keys;

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
}

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
        problems
    }
}

/// Routing state in Redis.
pub struct RedisStore {
    config: RedisConfig,
    keys: Keys,
    /// Commands.
    client: Client,
    /// Blocking stream reads only.
    follower: Client,
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
/// How often a snapshot read is retried when the revision moved during it.
const LOAD_ATTEMPTS: usize = 10;

const COMMIT_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local count = tonumber(ARGV[4])
for i = 0, count - 1 do
  local at = 5 + i * 4
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
local audit = 5 + count * 4
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], string.format('%d-0', revision), 'mutation', ARGV[3],
  'actor', ARGV[audit], 'reason', ARGV[audit + 1], 'at_ms', ARGV[audit + 2],
  'before', ARGV[audit + 3], 'after', ARGV[audit + 4])
return {1, revision}
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
        for c in [&client, &follower] {
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
        let keys = Keys::new(&config.prefix);
        Ok(RedisStore {
            config,
            keys,
            client,
            follower,
        })
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
            .map_err(|e| unavailable(&e))?;
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
                    .map_err(|e| unavailable(&e))?;
                all.push(reply);
                continue;
            }
            let pipeline = self.client.pipeline();
            for key in chunk {
                let () = pipeline
                    .hgetall(key.as_str())
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            let replies: Vec<HashMap<String, String>> =
                pipeline.all().await.map_err(|e| unavailable(&e))?;
            all.extend(replies);
        }
        Ok(all)
    }

    /// Reads every key once; the caller checks that the revision did not move meanwhile.
    async fn read_dump(&self) -> Result<StateDump, StoreError> {
        let mut dump = StateDump::default();
        let mut names: Vec<String> = self
            .client
            .smembers(self.keys.services())
            .await
            .map_err(|e| unavailable(&e))?;
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
                dump.overrides.push(parse::<Override>(value)?);
            }
            for value in records(hashes.next()).values() {
                dump.rollouts.push(parse::<Rollout>(value)?);
            }
            for value in records(hashes.next()).values() {
                dump.experiments.push(parse::<Experiment>(value)?);
            }
            for hash in hashes {
                for value in hash.values() {
                    dump.instances.push(parse::<Instance>(value)?);
                }
            }
            dump.services.push(service);
        }
        let mut tenant_ids: Vec<String> = self
            .client
            .smembers(self.keys.tenants())
            .await
            .map_err(|e| unavailable(&e))?;
        tenant_ids.sort();
        let mut tenant_keys = Vec::with_capacity(tenant_ids.len() * 2);
        for id in &tenant_ids {
            tenant_keys.push(self.keys.tenant_metadata(id));
            tenant_keys.push(self.keys.tenant_services(id));
        }
        let hashes = self.hgetall_many(&tenant_keys).await?;
        for (id, pair) in tenant_ids.iter().zip(hashes.chunks(2)) {
            let [metadata, pins] = pair else {
                return Err(corrupt("short pipeline reply"));
            };
            dump.tenants.push(Tenant {
                id: id.clone(),
                name: field(metadata, "name")?.to_owned(),
                region: field(metadata, "region")?.to_owned(),
                tier: field(metadata, "tier")?.to_owned(),
                labels: parse(field(metadata, "labels")?)?,
                active: field(metadata, "active")? == "1",
            });
            for (service, version) in pins {
                dump.pins.push(Pin {
                    tenant_id: id.clone(),
                    service: service.clone(),
                    version: version.clone(),
                });
            }
        }
        Ok(dump)
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
        for _ in 0..LOAD_ATTEMPTS {
            let before = self.revision().await?;
            let mut dump = self.read_dump().await?;
            if self.revision().await? == before {
                dump.revision = before;
                return RoutingState::from_dump(&dump)
                    .map_err(|e| corrupt(format!("stored state is invalid: {e}")));
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
        let (after, outcome) = base.apply(&mutation)?;
        let writes = writes::writes(&self.keys, base, &after, &mutation);
        let mut keys = vec![self.keys.revision(), self.keys.changes()];
        let mut args: Vec<String> = vec![
            base.revision().to_string(),
            self.config.stream_max_len.to_string(),
            serde_json::to_string(&mutation).map_err(corrupt)?,
            writes.len().to_string(),
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
        let (applied, revision): (i64, u64) = self
            .client
            .eval(COMMIT_SCRIPT, keys, args)
            .await
            .map_err(|e| unavailable(&e))?;
        if applied == 1 {
            debug_assert_eq!(revision, after.revision());
            Ok(Commit { revision, outcome })
        } else {
            Err(StoreError::Conflict { current: revision })
        }
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
            .map_err(|e| unavailable(&e))?;
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
            .map_err(|e| unavailable(&e))?;
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
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let held: i64 = self
            .client
            .eval(
                LEASE_SCRIPT,
                vec![self.keys.lease(name)],
                vec![holder.to_owned(), millis.to_string()],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(held == 1)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.client.ping(None).await.map_err(|e| unavailable(&e))?;
        Ok(())
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
            .map_err(|e| unavailable(&e))
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
