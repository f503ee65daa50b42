//! The `greyrouter` binary as a library: configuration, start-up and the command line.
//!
//! The node ([`control`]) holds every rule; the gRPC front door ([`grpc_server`]) serves it.
//! This crate only wires them: [`config`] (every key and environment variable), [`server`]
//! (open the store, start the node, seed, serve until a signal), [`cli`] (the server command
//! and the admin client), [`log`] (log set-up). Nothing depends on it.

pub mod cli;
pub mod config;
pub mod gateway_config;
pub mod log;
pub mod security;
pub mod server;
pub mod telemetry;
