//! greyrouter-load: a load generator for the greyrouter gRPC services, in the spirit of `ghz`.
//!
//! It seeds a running server through `greyrouter.v1.Admin` ([`seed::seed`]), then drives
//! `greyrouter.v1.Router/Route` or `RouteBatch` with a fixed number of workers ([`run::run`])
//! and reports throughput in calls and decisions, error codes and latency percentiles
//! ([`summary::Summary`]), as text or JSON.
//! [`propagation::propagation`] measures how long a change made through one router of a fleet
//! takes to reach a watcher of another.
//! [`memory::memory`] reads a server's resident memory while it is fed hostile input (thousands
//! of instances, huge reasons, watchers that stop reading, long runs of changes).
//! `main.rs` only parses the command line ([`cli`]); tests call these functions directly.
//!
//! Layout:
//! - [`cli`]: flags → [`run::RunConfig`] / [`seed::SeedConfig`] /
//!   [`propagation::PropagationConfig`] / [`memory::MemoryConfig`], output, exit status;
//! - [`seed`]: services, instances and tenants created with bounded concurrency;
//! - [`run`]: the closed-loop workers; [`tally`]: what one worker records;
//!   [`summary`]: merged figures and the `--max-p99-ms` / `--fail-on-error` checks;
//! - [`propagation`]: `SetTenantVersion` on one router, `WatchAssignments` on another, and the
//!   delay between them;
//! - [`memory`]: four scenarios against a running server, its `VmRSS` read from `/proc`;
//! - [`keyspace`]: the tenant and service names both sides use;
//! - [`distribution`]: uniform and Zipf key choice; [`rng`]: SplitMix64;
//! - [`servers`]: the reference servers `compare.sh` measures greyrouter against (a no-op
//!   `floor-server`, and `seed-design-server` running the original design's Lua script);
//! - [`duration`]: `10s` / `500ms` / `2m` parsing; [`cpu`]: the generator's own CPU time.
//!
//! # Keeping the generator cheap
//!
//! Each worker owns its RNG, its HDR histogram (microseconds, 3 significant digits) and its
//! error counts; they are merged once, after the run. Tenant ids and service names are built
//! once; a request clones two of them. Nothing on the hot path takes a lock: the only shared
//! write is one relaxed atomic increment per call in `--requests` mode. The load is a closed
//! loop (a worker sends its next request when the previous one answers), so latency is that of
//! a client with `--concurrency` requests in flight, not of an open arrival rate.
//!
//! # Checking that the generator is not the bottleneck
//!
//! Figures describe the server only while the generator has CPU to spare:
//! - the report's `generator` line (JSON `generator_cpu`) gives the CPU the generator used while
//!   recording, in cores; if it is close to the cores it may use, it is a bottleneck;
//! - compare with the server's CPU: `pidstat -u -p $(pgrep -d, -x greyrouter) 1` during the run,
//!   or `time greyrouter-load run ...` (user + sys over real);
//! - pin both to separate cores so they do not compete, e.g. `taskset -c 0 greyrouter serve` and
//!   `taskset -c 1 greyrouter-load run --threads 1 ...`; if throughput rises when the generator
//!   gets a second core (`taskset -c 1,2 ... --threads 2`) while the server's stays the same,
//!   the generator was limiting it;
//! - raise `--concurrency`: when the server is the limit, throughput stays flat and latency grows.

pub mod cli;
pub mod cpu;
pub mod discovery;
pub mod distribution;
pub mod duration;
pub mod error;
pub mod fanout;
pub mod fixture;
pub mod keyspace;
pub mod memory;
pub mod propagation;
pub mod rng;
pub mod run;
pub mod seed;
pub mod servers;
pub mod summary;
pub mod tally;
pub mod writes;

mod connection;

pub use error::Error;
