//! Bad input to every RPC, generated from the descriptor set: no test change covers a new RPC or
//! field.
//!
//! For every method of every `greyrouter.v1` service, a request is built field by field from
//! `greyrouter_proto::FILE_DESCRIPTOR_SET` (an empty one and one with plausible values), then
//! every field of it, nested messages and map entries included, is replaced with bad values:
//! empty, long, control characters, invalid UTF-8, out-of-range numbers, unknown enum values,
//! huge repeats, wrong wire types, truncated values; plus garbage bodies. Each case goes out as
//! raw bytes through a pass-through codec. No answer may be `INTERNAL` or `UNKNOWN`, no call
//! may break the connection or hang, the server may not panic, and it keeps serving: a plain
//! `Route` and a health check succeed after every few hundred cases and at the end.
//!
//! A proptest sends arbitrary bytes (and valid requests with random bytes overwritten) to every
//! RPC with the same checks; `PROPTEST_CASES` sets how many (256 by default).
//!
//! Run with `--nocapture` to see the number of cases and the codes answered per RPC.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use greyrouter_proto::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use prost::Message as _;
use prost::bytes::{Buf, BufMut};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use support::TestServer;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The package whose services are exercised.
const PACKAGE: &str = "greyrouter.v1";
/// How deep nested messages are recursed into (the request is depth 0).
const MAX_DEPTH: usize = 3;
/// Size of the long string values.
const LONG: usize = 100 * 1024;
/// Most entries of a huge repeated field.
const HUGE: u64 = 100_000;
/// Entries of a "many" repeated field.
const MANY: u64 = 1_000;
/// Huge repeats stop before a body reaches this size: under the server's 1 MiB request limit.
const BODY_BUDGET: usize = 1_000_000;
/// A body deliberately over the server's 1 MiB request limit.
const OVER_LIMIT: usize = 1024 * 1024 + 64 * 1024;
/// Cases between two checks that the server still serves.
const CHECK_EVERY: usize = 250;
/// How long a server stream may stay silent before the case counts as answered.
const STREAM_WAIT: Duration = Duration::from_millis(150);
/// Longest a unary call may take before it counts as a hang.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
/// Fewer cases than this means the generator is broken.
const MIN_CASES: usize = 1_000;

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_every_field_of_every_rpc_is_refused_cleanly() {
    watch_server_panics();
    let schema = Schema::load();
    let mut server = TestServer::with_config(config()).await;
    fixture(&mut server).await;
    serving(&mut server)
        .await
        .expect("serving before the first case");

    // Runs only the cases whose `Service/Method field [variant]` contains this, printing every
    // answer: to reproduce a failure.
    let filter = std::env::var("BAD_INPUT_FILTER").unwrap_or_default();
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut report: Vec<(String, usize, usize, BTreeMap<String, usize>)> = Vec::new();
    let mut total = 0;
    let mut since_check = 0;
    let mut slowest: Option<(Duration, String)> = None;
    for method in &schema.methods {
        let cases = schema.cases(method);
        let fields: BTreeSet<&str> = cases.iter().map(|case| case.field.as_str()).collect();
        let field_count = fields.len();
        let mut count = 0;
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        for case in cases {
            if !filter.is_empty()
                && !format!("{} {} [{}]", method.name, case.field, case.variant).contains(&filter)
            {
                continue;
            }
            count += 1;
            let sent = Instant::now();
            let answer = call(&server.channel, method, case.body).await;
            let took = sent.elapsed();
            if slowest.as_ref().is_none_or(|(longest, _)| took > *longest) {
                let case = format!("{} {} [{}]", method.name, case.field, case.variant);
                slowest = Some((took, case));
            }
            *codes.entry(answer.label()).or_default() += 1;
            if !filter.is_empty() {
                println!(
                    "{} {} [{}]: {answer}",
                    method.name, case.field, case.variant
                );
            }
            if answer.is_failure() {
                failures.push(format!(
                    "{} field {} [{}]: {answer}",
                    method.name, case.field, case.variant
                ));
            }
            if matches!(answer, Answer::Transport(_)) {
                // The connection is gone: the next case gets a fresh one, to be judged alone.
                let url = format!("http://{}", server.addr);
                let api: &mut support::Api = &mut server;
                *api = support::Api::connect(&url).await;
            }
            since_check += 1;
            if since_check >= CHECK_EVERY {
                since_check = 0;
                if let Err(problem) = serving(&mut server).await {
                    failures.push(format!(
                        "{} after field {} [{}]: the server stopped serving: {problem}",
                        method.name, case.field, case.variant
                    ));
                }
            }
        }
        if let Err(problem) = serving(&mut server).await {
            failures.push(format!(
                "after {}: the server stopped serving: {problem}",
                method.name
            ));
        }
        total += count;
        if count == 0 {
            continue;
        }
        report.push((method.name.clone(), count, field_count, codes));
    }
    let elapsed = started.elapsed();

    println!("bad input: cases per RPC (fields covered; codes answered)");
    for (name, count, fields, codes) in &report {
        let codes: Vec<String> = codes
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        println!(
            "  {name:<32} {count:>6} cases, {fields:>3} fields; {}",
            codes.join(", ")
        );
    }
    println!(
        "bad input: {total} cases over {} RPCs in {:.1} s",
        report.len(),
        elapsed.as_secs_f64()
    );
    if let Some((took, case)) = &slowest {
        println!("bad input: slowest case {case}: {took:.1?}");
    }
    server.stop().await;

    failures.extend(server_panics());
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        total > MIN_CASES || !filter.is_empty(),
        "only {total} cases: the generator is broken"
    );
}

#[tokio::test]
async fn a_request_that_is_not_valid_protobuf_is_invalid_argument_not_internal() {
    let mut server = TestServer::start().await;
    fixture(&mut server).await;
    let route = Method {
        name: "Router/Route".into(),
        path: "/greyrouter.v1.Router/Route".into(),
        input: ".greyrouter.v1.RouteRequest".into(),
        client_streaming: false,
        server_streaming: false,
    };
    // tenant_id (field 1) with bytes that are not UTF-8, then a varint cut short.
    for body in [
        encode(&[(1, Wire::Len(vec![0xff, 0xfe, 0x80]))]),
        vec![0x08, 0xff],
    ] {
        match call(&server.channel, &route, body).await {
            Answer::Status(code, message) => {
                assert_eq!(code, Code::InvalidArgument, "{message}");
                assert!(message.contains("not a valid"), "{message}");
            }
            other => panic!("{other}"),
        }
    }
    serving(&mut server).await.expect("still serving");
    server.stop().await;
}

#[test]
fn arbitrary_bytes_to_every_rpc_are_refused_cleanly() {
    watch_server_panics();
    let schema = Schema::load();
    let bases: Vec<Vec<u8>> = schema
        .methods
        .iter()
        .map(|method| encode(&schema.base(&method.input, 0, Base::Plausible)))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = runtime.block_on(async {
        let mut server = TestServer::with_config(config()).await;
        fixture(&mut server).await;
        server
    });

    // Arbitrary bytes mostly fail to decode; valid requests with a few bytes overwritten or
    // appended reach the handlers too.
    let strategy = (
        0..schema.methods.len(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..=4096),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cases = runner.config().cases;
    let started = Instant::now();
    let result = runner.run(&strategy, |(index, mutate, bytes, edits)| {
        let method = &schema.methods[index];
        let body = if mutate {
            overwrite(&bases[index], &edits)
        } else {
            bytes
        };
        let answer = runtime.block_on(call(&server.channel, method, body.clone()));
        if answer.is_failure() {
            return Err(TestCaseError::fail(format!(
                "{} answered {answer} to {body:02x?}",
                method.name
            )));
        }
        Ok(())
    });
    let alive = runtime.block_on(serving(&mut server));
    println!(
        "arbitrary bytes: {cases} cases over {} RPCs in {:.1} s",
        schema.methods.len(),
        started.elapsed().as_secs_f64()
    );
    runtime.block_on(server.stop());
    if let Err(failure) = result {
        panic!("{failure}");
    }
    alive.expect("the server still serves after the arbitrary bytes");
    let panics = server_panics();
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

/// Returns `base` with the byte at each edit's position (modulo its length + 1) replaced, or
/// appended at the end.
fn overwrite(base: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
    let mut body = base.to_vec();
    for &(at, byte) in edits {
        let at = at % (body.len() + 1);
        match body.get_mut(at) {
            Some(slot) => *slot = byte,
            None => body.push(byte),
        }
    }
    body
}

// ---------------------------------------------------------------------------------------------
// The server under test.

/// Returns the configuration under test: the defaults, with schema migrations on (the
/// repository's catalog, a database nobody listens on), so that the schema RPCs check their
/// fields instead of answering "not configured".
fn config() -> greyrouter::config::Config {
    let mut config = greyrouter::config::Config::default();
    config.schema.migrations =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    config.schema.database_url = "postgres://greyrouter@127.0.0.1:1/tenant_{tenant}".to_owned();
    config
}

/// Sets up the names the plausible values use (service `api`, tenant `t0`, instance `a1`,
/// version `v1`, region `eu`) and a separate service `probe` that no case names, so that a
/// `Route` to it succeeds whatever the cases changed.
async fn fixture(server: &mut TestServer) {
    server.populate(2).await;
    server
        .service("probe", "v1", pb::Strategy::RoundRobin)
        .await;
    server.instance("probe", "v1", "probe-1", "eu").await;
    server.tenant("probe-t", "eu").await;
}

/// Checks that the server still serves: a health check and a plain `Route`.
async fn serving(server: &mut TestServer) -> Result<(), String> {
    let health = tokio::time::timeout(
        CALL_DEADLINE,
        HealthClient::new(server.channel.clone()).check(tonic_health::pb::HealthCheckRequest {
            service: format!("{PACKAGE}.Router"),
        }),
    )
    .await
    .map_err(|_| "the health check did not answer".to_owned())?
    .map_err(|status| format!("health check: {status}"))?
    .into_inner();
    if health.status() != ServingStatus::Serving {
        return Err(format!("health check: {:?}", health.status()));
    }
    let route = tokio::time::timeout(CALL_DEADLINE, server.route("probe-t", "probe"))
        .await
        .map_err(|_| "route did not answer".to_owned())?
        .map_err(|status| format!("route: {status}"))?;
    if route.instance_id != "probe-1" {
        return Err(format!("route answered {route:?}"));
    }
    Ok(())
}

/// Panics of server code (anywhere but this file), recorded by the panic hook.
static SERVER_PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();

/// Installs (once) a panic hook that records panics outside this file, then reports as usual.
fn watch_server_panics() {
    SERVER_PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let here = info
                .location()
                .is_some_and(|location| location.file().ends_with("bad_input.rs"));
            if !here && let Some(panics) = SERVER_PANICS.get() {
                panics
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(format!("server panic: {info}"));
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    });
}

/// Returns the server panics recorded so far.
fn server_panics() -> Vec<String> {
    SERVER_PANICS
        .get()
        .map(|panics| {
            panics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Calls with raw bytes.

/// A codec that sends the bytes it is given and returns the bytes it receives.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// How the server answered one case.
#[derive(Debug)]
enum Answer {
    /// A status the server sent (`Ok` for a reply).
    Status(Code, String),
    /// The call failed below gRPC: the connection broke, the stream was reset.
    Transport(String),
    /// A server stream was open and silent for `STREAM_WAIT`: answered, nothing to judge.
    Open,
    /// No answer within `CALL_DEADLINE`.
    Hung,
}

impl Answer {
    fn from_status(status: &tonic::Status) -> Answer {
        // Statuses a client makes up from a transport error carry that error as their source;
        // statuses the server sent do not.
        match std::error::Error::source(status) {
            Some(source) => Answer::Transport(format!("{status}: {source}")),
            None => Answer::Status(status.code(), clip(status.message())),
        }
    }

    fn is_failure(&self) -> bool {
        matches!(
            self,
            Answer::Status(Code::Internal | Code::Unknown, _) | Answer::Transport(_) | Answer::Hung
        )
    }

    /// Returns the code's name, or what happened instead of a status.
    fn label(&self) -> String {
        match self {
            Answer::Status(code, _) => format!("{code:?}"),
            Answer::Transport(_) => "transport error".to_owned(),
            Answer::Open => "stream open".to_owned(),
            Answer::Hung => "no answer".to_owned(),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Status(code, message) => write!(f, "{code:?} {message:?}"),
            Answer::Transport(error) => write!(f, "transport error: {error}"),
            Answer::Open => write!(f, "stream open"),
            Answer::Hung => write!(f, "no answer within {CALL_DEADLINE:?}"),
        }
    }
}

/// Returns the first 200 characters of `message`.
fn clip(message: &str) -> String {
    let mut clipped: String = message.chars().take(200).collect();
    if clipped.len() < message.len() {
        clipped.push('…');
    }
    clipped
}

/// Sends `body` as the request of `method` (the only item of a client stream) and returns the
/// status; of a server stream, the first item or status.
async fn call(channel: &Channel, method: &Method, body: Vec<u8>) -> Answer {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(usize::MAX);
    if let Err(error) = grpc.ready().await {
        return Answer::Transport(error.to_string());
    }
    let path = PathAndQuery::from_maybe_shared(method.path.clone()).expect("a method path");
    let request = tonic::Request::new(body);
    let streaming = method.server_streaming;
    let answer = async move {
        match (method.client_streaming, method.server_streaming) {
            (false, false) => grpc.unary(request, path, RawCodec).await.map(drop),
            (true, false) => grpc
                .client_streaming(request.map(tokio_stream::once), path, RawCodec)
                .await
                .map(drop),
            (false, true) => {
                let mut stream = grpc
                    .server_streaming(request, path, RawCodec)
                    .await?
                    .into_inner();
                stream.message().await.map(drop)
            }
            (true, true) => {
                let mut stream = grpc
                    .streaming(request.map(tokio_stream::once), path, RawCodec)
                    .await?
                    .into_inner();
                stream.message().await.map(drop)
            }
        }
    };
    let wait = if streaming {
        STREAM_WAIT
    } else {
        CALL_DEADLINE
    };
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(())) => Answer::Status(Code::Ok, String::new()),
        Ok(Err(status)) => Answer::from_status(&status),
        Err(_) if streaming => Answer::Open,
        Err(_) => Answer::Hung,
    }
}

// ---------------------------------------------------------------------------------------------
// A protobuf wire encoder: enough to write what prost would refuse to.

/// One field's value on the wire.
#[derive(Debug, Clone)]
enum Wire {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 5.
    Fixed32(u32),
    /// Wire type 2: a string (valid UTF-8 or not), bytes, a packed run.
    Len(Vec<u8>),
    /// Wire type 2: a nested message.
    Message(Fields),
    /// Bytes written as they are, tags included (the field number is ignored).
    Raw(Vec<u8>),
}

/// A message's fields: numbers and values, in the order they are written.
type Fields = Vec<(u32, Wire)>;

/// Appends the `i`th element of a repeated field to a run.
type Next<'a> = Box<dyn FnMut(&mut Vec<u8>, u64) + 'a>;

/// Returns the encoded message of `fields`, in their order.
fn encode(fields: &[(u32, Wire)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, wire) in fields {
        put_field(&mut out, *number, wire);
    }
    out
}

fn put_field(out: &mut Vec<u8>, number: u32, wire: &Wire) {
    match wire {
        Wire::Varint(_) => put_tag(out, number, 0),
        Wire::Fixed64(_) => put_tag(out, number, 1),
        Wire::Fixed32(_) => put_tag(out, number, 5),
        Wire::Len(_) | Wire::Message(_) => put_tag(out, number, 2),
        Wire::Raw(_) => {}
    }
    put_value(out, wire);
}

/// Writes a value without its tag (the values of a packed run).
fn put_value(out: &mut Vec<u8>, wire: &Wire) {
    match wire {
        Wire::Varint(value) => put_varint(out, *value),
        Wire::Fixed64(value) => out.extend_from_slice(&value.to_le_bytes()),
        Wire::Fixed32(value) => out.extend_from_slice(&value.to_le_bytes()),
        Wire::Len(bytes) | Wire::Raw(bytes) => {
            if matches!(wire, Wire::Len(_)) {
                put_varint(out, bytes.len() as u64);
            }
            out.extend_from_slice(bytes);
        }
        Wire::Message(fields) => {
            let bytes = encode(fields);
            put_varint(out, bytes.len() as u64);
            out.extend_from_slice(&bytes);
        }
    }
}

fn put_len(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_tag(out, number, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes a tag: `number << 3 | wire_type`.
fn put_tag(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(number: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    put_tag(&mut out, number, wire_type);
    out
}

// ---------------------------------------------------------------------------------------------
// The contract, read from the descriptor set, and the cases generated from it.

/// One RPC.
#[derive(Debug)]
struct Method {
    /// `Service/Method`.
    name: String,
    /// `/greyrouter.v1.Service/Method`.
    path: String,
    /// Full name of the request message, `.greyrouter.v1.X`.
    input: String,
    client_streaming: bool,
    server_streaming: bool,
}

/// Every message, enum and method of the descriptor set.
#[derive(Debug)]
struct Schema {
    messages: HashMap<String, DescriptorProto>,
    /// Values of every enum, by full name.
    enums: HashMap<String, Vec<i32>>,
    methods: Vec<Method>,
}

/// What the fields not under test hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// Nothing: every field at its default.
    Empty,
    /// Every field set to a plausible value (see `hint`).
    Plausible,
}

/// One request to send.
#[derive(Debug)]
struct Case {
    /// The field under test, e.g. `tenant.labels[0].key`, or `(request)` for the whole body.
    field: String,
    variant: String,
    body: Vec<u8>,
}

/// One replacement of a field's values.
#[derive(Debug)]
struct Variant {
    /// Appended to the field's name: `[0]` for an element, `.name` for a nested field.
    path: String,
    name: String,
    values: Vec<Wire>,
}

impl Variant {
    fn new(name: impl Into<String>, values: Vec<Wire>) -> Variant {
        Variant {
            path: String::new(),
            name: name.into(),
            values,
        }
    }
}

/// Returns a plausible value for a string field, by its name: the names the fixture has, so
/// that the cases reach past "not found"; `x1` for anything else.
fn hint(field: &str) -> &'static str {
    if field.contains("tenant") {
        "t0"
    } else if field.starts_with("to_version") {
        "v2"
    } else if field.contains("version") {
        "v1"
    } else if field.contains("service") {
        "api"
    } else if field.contains("region") {
        "eu"
    } else if field.contains("instance") {
        "a1"
    } else if field.contains("tier") {
        "pro"
    } else if field.contains("address") {
        "x1.internal:8080"
    } else {
        "x1"
    }
}

/// Returns a field's number.
fn field_number(field: &FieldDescriptorProto) -> u32 {
    u32::try_from(field.number()).expect("field numbers are positive")
}

/// Returns the wire type of a field's values (unpacked).
fn wire_type(field: &FieldDescriptorProto) -> u8 {
    match field.r#type() {
        Type::Double | Type::Fixed64 | Type::Sfixed64 => 1,
        Type::Float | Type::Fixed32 | Type::Sfixed32 => 5,
        Type::String | Type::Bytes | Type::Message => 2,
        Type::Group => 3,
        Type::Int32
        | Type::Int64
        | Type::Uint32
        | Type::Uint64
        | Type::Sint32
        | Type::Sint64
        | Type::Bool
        | Type::Enum => 0,
    }
}

/// Returns the strings to try in a string field: names, lengths, control characters, invalid
/// UTF-8 (which prost refuses to decode).
fn string_values() -> Vec<(&'static str, Vec<u8>)> {
    let text = |name, value: &str| (name, value.as_bytes().to_vec());
    vec![
        text("empty", ""),
        text("space", " "),
        text("padded", " x1 "),
        ("128 chars", vec![b'a'; 128]),
        ("129 chars", vec![b'a'; 129]),
        ("100 KiB", vec![b'a'; LONG]),
        ("100 KiB of 2-byte chars", "é".repeat(LONG / 2).into_bytes()),
        text("NUL", "\0"),
        text("embedded NUL", "x1\0y"),
        text("ESC sequence", "\x1b[31mx1\x1b[0m"),
        text("newline", "x1\nx2"),
        text("CR LF", "x1\r\n"),
        text("tab", "x1\tx2"),
        text("DEL", "x1\x7f"),
        text("C1 control", "x1\u{85}"),
        text("right-to-left override", "x1\u{202e}2x"),
        text("zero-width space", "x1\u{200b}"),
        text("byte order mark", "\u{feff}x1"),
        text("emoji", "x1\u{1f600}"),
        text("combining accent", "e\u{301}"),
        text("noncharacter", "\u{ffff}"),
        text("last code point", "\u{10ffff}"),
        text("path traversal", "../../x1"),
        text("slash and colon", "x1/y:z"),
        text("percent escapes", "%00%ff"),
        text("glob", "*"),
        text("SQL", "x1'; drop table t; --"),
        text("JSON", "{\"a\":1}"),
        text("negative number", "-1"),
        ("invalid UTF-8", vec![0xff, 0xfe]),
        ("overlong NUL", vec![0xc0, 0x80]),
        ("lone surrogate", vec![0xed, 0xa0, 0x80]),
        ("truncated sequence", vec![b'x', b'1', 0xe2, 0x82]),
        ("lone continuation byte", vec![0x80]),
    ]
}

/// Returns the varints to try in an integer, bool or enum field.
fn varint_values() -> Vec<(&'static str, u64)> {
    vec![
        ("0", 0),
        ("2", 2),
        ("1000", 1000),
        ("i32::MAX", i32::MAX as u64),
        ("u32::MAX", u64::from(u32::MAX)),
        ("2^32", 1 << 32),
        ("i64::MAX", i64::MAX as u64),
        ("-1", u64::MAX),
        ("i32::MIN", i64::from(i32::MIN) as u64),
        ("i64::MIN", i64::MIN as u64),
    ]
}

/// Returns the doubles to try in a floating-point field.
fn double_values() -> Vec<(&'static str, f64)> {
    vec![
        ("0", 0.0),
        ("-0", -0.0),
        ("-1", -1.0),
        ("0.5", 0.5),
        ("100", 100.0),
        ("100.000001", 100.000_001),
        ("1e9", 1e9),
        ("NaN", f64::NAN),
        ("+inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
        ("f64::MAX", f64::MAX),
        ("f64::MIN", f64::MIN),
        ("subnormal", 5e-324),
    ]
}

impl Schema {
    /// Reads every file of the descriptor set; the methods of the services of `PACKAGE`.
    fn load() -> Schema {
        let set = FileDescriptorSet::decode(greyrouter_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut schema = Schema {
            messages: HashMap::new(),
            enums: HashMap::new(),
            methods: Vec::new(),
        };
        for file in &set.file {
            let prefix = format!(".{}", file.package());
            for message in &file.message_type {
                schema.index(&prefix, message);
            }
            for enumeration in &file.enum_type {
                schema.index_enum(&prefix, enumeration);
            }
            if file.package() != PACKAGE {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    schema.methods.push(Method {
                        name: format!("{}/{}", service.name(), method.name()),
                        path: format!("/{PACKAGE}.{}/{}", service.name(), method.name()),
                        input: method.input_type().to_owned(),
                        client_streaming: method.client_streaming(),
                        server_streaming: method.server_streaming(),
                    });
                }
            }
        }
        let services: BTreeSet<&str> = schema
            .methods
            .iter()
            .filter_map(|method| method.name.split('/').next())
            .collect();
        assert!(
            services.contains("Router") && services.contains("Admin"),
            "services of {PACKAGE}: {services:?}"
        );
        schema
    }

    fn index(&mut self, prefix: &str, message: &DescriptorProto) {
        let name = format!("{prefix}.{}", message.name());
        for nested in &message.nested_type {
            self.index(&name, nested);
        }
        for enumeration in &message.enum_type {
            self.index_enum(&name, enumeration);
        }
        self.messages.insert(name, message.clone());
    }

    fn index_enum(&mut self, prefix: &str, enumeration: &prost_types::EnumDescriptorProto) {
        self.enums.insert(
            format!("{prefix}.{}", enumeration.name()),
            enumeration
                .value
                .iter()
                .map(|value| value.number())
                .collect(),
        );
    }

    fn message(&self, name: &str) -> &DescriptorProto {
        self.messages
            .get(name)
            .unwrap_or_else(|| panic!("message {name} is not in the descriptor set"))
    }

    fn is_map(&self, field: &FieldDescriptorProto) -> bool {
        field.r#type() == Type::Message
            && self
                .message(field.type_name())
                .options
                .as_ref()
                .is_some_and(|options| options.map_entry())
    }

    /// Returns the fields of a message of type `name` at `depth`: none, or all plausible.
    fn base(&self, name: &str, depth: usize, base: Base) -> Fields {
        if base == Base::Empty {
            return Vec::new();
        }
        let message = self.message(name);
        let mut oneofs = BTreeSet::new();
        message
            .field
            .iter()
            .filter(|field| field.r#type() != Type::Group)
            // One member of each oneof (proto3 `optional` fields are oneofs of their own).
            .filter(|field| match field.oneof_index {
                Some(index) if !field.proto3_optional() => oneofs.insert(index),
                _ => true,
            })
            .map(|field| (field_number(field), self.plausible(field, depth)))
            .collect()
    }

    /// Returns a plausible value of `field` (one element, one map entry when repeated).
    fn plausible(&self, field: &FieldDescriptorProto, depth: usize) -> Wire {
        match field.r#type() {
            Type::String => Wire::Len(hint(field.name()).as_bytes().to_vec()),
            Type::Bytes => Wire::Len(b"x1".to_vec()),
            Type::Message if depth < MAX_DEPTH => {
                Wire::Message(self.base(field.type_name(), depth + 1, Base::Plausible))
            }
            Type::Message | Type::Group => Wire::Message(Vec::new()),
            Type::Enum => {
                let values = self.enums.get(field.type_name());
                let first = values
                    .and_then(|values| values.iter().find(|value| **value != 0))
                    .copied()
                    .unwrap_or(0);
                Wire::Varint(i64::from(first) as u64)
            }
            Type::Sint32 | Type::Sint64 => Wire::Varint(2),
            Type::Double => Wire::Fixed64(1f64.to_bits()),
            Type::Float => Wire::Fixed32(1f32.to_bits()),
            Type::Fixed64 | Type::Sfixed64 => Wire::Fixed64(1),
            Type::Fixed32 | Type::Sfixed32 => Wire::Fixed32(1),
            Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Bool => Wire::Varint(1),
        }
    }

    /// Returns the `i`th element of a repeated field: distinct strings, map keys, numbers.
    fn element(&self, field: &FieldDescriptorProto, depth: usize, i: u64) -> Wire {
        match field.r#type() {
            Type::String => Wire::Len(format!("{}{i}", hint(field.name())).into_bytes()),
            Type::Bytes => Wire::Len(i.to_le_bytes().to_vec()),
            Type::Message if self.is_map(field) => {
                let entry = self.message(field.type_name());
                let key = entry
                    .field
                    .iter()
                    .find(|field| field.number() == 1)
                    .expect("a map entry has a key");
                let mut fields = self.base(field.type_name(), depth + 1, Base::Plausible);
                fields.retain(|(number, _)| *number != 1);
                fields.insert(0, (1, self.element(key, depth + 1, i)));
                Wire::Message(fields)
            }
            Type::Message | Type::Group => self.plausible(field, depth),
            Type::Double => Wire::Fixed64((i as f64).to_bits()),
            Type::Float => Wire::Fixed32((i as f32).to_bits()),
            Type::Fixed64 | Type::Sfixed64 => Wire::Fixed64(i),
            Type::Fixed32 | Type::Sfixed32 => Wire::Fixed32(i as u32),
            Type::Bool => Wire::Varint(i % 2),
            Type::Int32
            | Type::Int64
            | Type::Uint32
            | Type::Uint64
            | Type::Sint32
            | Type::Sint64
            | Type::Enum => Wire::Varint(i),
        }
    }

    /// Returns every case of `method`: each field's variants over both bases, then garbage.
    fn cases(&self, method: &Method) -> Vec<Case> {
        let mut cases = Vec::new();
        for base in [Base::Empty, Base::Plausible] {
            let fields = self.base(&method.input, 0, base);
            cases.push(Case {
                field: "(request)".to_owned(),
                variant: format!("{base:?}"),
                body: encode(&fields),
            });
            for (field, variant, fields) in self.message_variants(&method.input, 0, base) {
                cases.push(Case {
                    field,
                    variant: format!("{variant} ({base:?} base)"),
                    body: encode(&fields),
                });
            }
        }
        let plausible = encode(&self.base(&method.input, 0, Base::Plausible));
        for (variant, body) in garbage(&plausible) {
            cases.push(Case {
                field: "(request)".to_owned(),
                variant: variant.to_owned(),
                body,
            });
        }
        cases
    }

    /// Returns `(field path, variant, fields)` for every variant of every field of a message
    /// of type `name` at `depth`, the other fields as in `base`.
    fn message_variants(
        &self,
        name: &str,
        depth: usize,
        base: Base,
    ) -> Vec<(String, String, Fields)> {
        let message = self.message(name);
        let others = self.base(name, depth, base);
        let size = encode(&others).len();
        let mut out = Vec::new();
        for field in message
            .field
            .iter()
            .filter(|field| field.r#type() != Type::Group)
        {
            for variant in self.field_variants(field, depth, base, size) {
                let mut fields: Fields = others
                    .iter()
                    .filter(|(number, _)| *number != field_number(field))
                    .cloned()
                    .collect();
                // Last, so that a truncated value ends the body.
                fields.extend(
                    variant
                        .values
                        .into_iter()
                        .map(|wire| (field_number(field), wire)),
                );
                out.push((
                    format!("{}{}", field.name(), variant.path),
                    variant.name,
                    fields,
                ));
            }
        }
        out
    }

    /// Returns the variants of one field of a message at `depth` whose other fields encode to
    /// `size` bytes.
    fn field_variants(
        &self,
        field: &FieldDescriptorProto,
        depth: usize,
        base: Base,
        size: usize,
    ) -> Vec<Variant> {
        let repeated = field.label() == Label::Repeated;
        let number = field_number(field);
        let mut elements: Vec<Variant> = match field.r#type() {
            Type::Message => {
                let mut variants = vec![Variant::new(
                    "empty message",
                    vec![Wire::Message(Vec::new())],
                )];
                if depth < MAX_DEPTH {
                    variants.extend(
                        self.message_variants(field.type_name(), depth + 1, base)
                            .into_iter()
                            .map(|(path, name, fields)| Variant {
                                path: format!(".{path}"),
                                name,
                                values: vec![Wire::Message(fields)],
                            }),
                    );
                }
                variants
            }
            Type::Group => Vec::new(),
            Type::String => string_values()
                .into_iter()
                .map(|(name, value)| Variant::new(name, vec![Wire::Len(value)]))
                .collect(),
            Type::Bytes => vec![
                Variant::new("empty", vec![Wire::Len(Vec::new())]),
                Variant::new("100 KiB", vec![Wire::Len(vec![0xff; LONG])]),
                Variant::new("not UTF-8", vec![Wire::Len(vec![0xff, 0x00, 0x80])]),
            ],
            Type::Double => double_values()
                .into_iter()
                .map(|(name, value)| Variant::new(name, vec![Wire::Fixed64(value.to_bits())]))
                .collect(),
            Type::Float => double_values()
                .into_iter()
                .map(|(name, value)| {
                    Variant::new(name, vec![Wire::Fixed32((value as f32).to_bits())])
                })
                .collect(),
            Type::Fixed64 | Type::Sfixed64 => [("0", 0), ("max", u64::MAX), ("min", 1 << 63)]
                .into_iter()
                .map(|(name, value)| Variant::new(name, vec![Wire::Fixed64(value)]))
                .collect(),
            Type::Fixed32 | Type::Sfixed32 => [("0", 0), ("max", u32::MAX), ("min", 1 << 31)]
                .into_iter()
                .map(|(name, value)| Variant::new(name, vec![Wire::Fixed32(value)]))
                .collect(),
            Type::Int32
            | Type::Int64
            | Type::Uint32
            | Type::Uint64
            | Type::Sint32
            | Type::Sint64
            | Type::Bool
            | Type::Enum => {
                let mut values = varint_values();
                let mut unknown = String::new();
                if field.r#type() == Type::Enum {
                    let max = self
                        .enums
                        .get(field.type_name())
                        .and_then(|values| values.iter().max().copied())
                        .unwrap_or(0);
                    unknown = format!("unknown enum value {}", i64::from(max) + 1);
                    values.push(("", (i64::from(max) + 1) as u64));
                }
                values
                    .into_iter()
                    .map(|(name, value)| {
                        let name = if name.is_empty() {
                            unknown.clone()
                        } else {
                            name.to_owned()
                        };
                        Variant::new(name, vec![Wire::Varint(value)])
                    })
                    .collect()
            }
        };
        if repeated {
            for element in &mut elements {
                element.path = format!("[0]{}", element.path);
            }
        }

        let wire = wire_type(field);
        let mut more = Vec::new();
        if base == Base::Plausible {
            more.push(Variant::new("absent", Vec::new()));
        }
        // A value of another wire type (for a repeated scalar, LEN would be a valid packed run).
        let wrong = match wire {
            0 | 1 => [tag(number, 5), vec![1, 0, 0, 0]].concat(),
            5 => [tag(number, 1), vec![1, 0, 0, 0, 0, 0, 0, 0]].concat(),
            _ => [tag(number, 0), vec![1]].concat(),
        };
        more.push(Variant::new("wrong wire type", vec![Wire::Raw(wrong)]));
        let truncated = match wire {
            0 => vec![0x80],
            1 => vec![0, 0, 0],
            5 => vec![0],
            _ => vec![0x05, b'x'],
        };
        more.push(Variant::new(
            "truncated value",
            vec![Wire::Raw([tag(number, wire), truncated].concat())],
        ));
        if wire == 0 {
            more.push(Variant::new(
                "11-byte varint",
                vec![Wire::Raw(
                    [tag(number, 0), vec![0xff; 10], vec![0x01]].concat(),
                )],
            ));
        }
        if !repeated {
            // Twice: the last value wins, or for a message the two merge.
            let value = self.plausible(field, depth);
            more.push(Variant::new("set twice", vec![value.clone(), value]));
        } else {
            let identical = self.plausible(field, depth);
            let mut run = Vec::new();
            for _ in 0..MANY {
                put_field(&mut run, number, &identical);
            }
            more.push(Variant::new(
                format!("{MANY} identical entries"),
                vec![Wire::Raw(run)],
            ));
            let (count, run) = self.repeat(field, depth, MANY, usize::MAX);
            more.push(Variant::new(
                format!("{count} distinct entries"),
                vec![Wire::Raw(run)],
            ));
            let (count, run) = self.repeat(field, depth, HUGE, BODY_BUDGET - size);
            if !run.is_empty() {
                // The huge run again and again (repeated values, map keys), over the limit.
                let mut over = run.clone();
                let mut total = count;
                while over.len() + size <= OVER_LIMIT {
                    over.extend_from_slice(&run);
                    total += count;
                }
                more.push(Variant::new(
                    format!("{total} entries (over the request limit)"),
                    vec![Wire::Raw(over)],
                ));
            }
            more.push(Variant::new(
                format!("{count} distinct entries (huge)"),
                vec![Wire::Raw(run)],
            ));
            if wire != 2 {
                // Packed, as proto3 encodes repeated numbers.
                let mut packed = Vec::new();
                let mut count = 0;
                while count < HUGE && packed.len() + 16 < BODY_BUDGET - size {
                    // A packed run is values without tags.
                    put_value(&mut packed, &self.element(field, depth, count));
                    count += 1;
                }
                more.push(Variant::new(
                    format!("{count} packed entries"),
                    vec![Wire::Len(packed)],
                ));
            }
        }
        elements.extend(more);
        elements
    }

    /// Returns up to `count` distinct elements of a repeated field, encoded, in at most
    /// `budget` bytes; and how many.
    fn repeat(
        &self,
        field: &FieldDescriptorProto,
        depth: usize,
        count: u64,
        budget: usize,
    ) -> (u64, Vec<u8>) {
        let number = field_number(field);
        // What does not change from one element to the next is encoded once: a whole message,
        // a map entry's value.
        let mut next: Next<'_> = match field.r#type() {
            Type::Message if self.is_map(field) => {
                let entry = self.message(field.type_name());
                let key = entry
                    .field
                    .iter()
                    .find(|field| field.number() == 1)
                    .expect("a map entry has a key");
                let mut value = self.base(field.type_name(), depth + 1, Base::Plausible);
                value.retain(|(number, _)| *number != 1);
                let value = encode(&value);
                Box::new(move |run, i| {
                    let mut entry = Vec::new();
                    put_field(&mut entry, 1, &self.element(key, depth + 1, i));
                    entry.extend_from_slice(&value);
                    put_len(run, number, &entry);
                })
            }
            Type::Message | Type::Group => {
                let mut one = Vec::new();
                put_field(&mut one, number, &self.plausible(field, depth));
                Box::new(move |run, _| run.extend_from_slice(&one))
            }
            _ => Box::new(|run, i| put_field(run, number, &self.element(field, depth, i))),
        };
        let mut run = Vec::new();
        for i in 0..count {
            let before = run.len();
            next(&mut run, i);
            if run.len() > budget {
                run.truncate(before);
                return (i, run);
            }
        }
        (count, run)
    }
}

/// Returns bodies that are not protobuf, or barely: per method, after its plausible request.
fn garbage(plausible: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let unknown = 536_870_911; // the largest field number
    let mut cases = vec![
        ("truncated tag", vec![0x80]),
        ("tag without value", vec![0x08]),
        ("truncated varint", vec![0x08, 0x80]),
        ("length past the end", vec![0x0a, 0x7f, b'x']),
        ("length 2^32", vec![0x0a, 0x80, 0x80, 0x80, 0x80, 0x10]),
        ("field number 0", vec![0x00, 0x01]),
        ("wire type 6", vec![0x0e, 0x01]),
        ("wire type 7", vec![0x0f, 0x01]),
        ("unmatched group start", vec![0x0b]),
        ("unmatched group end", vec![0x0c]),
        (
            "11-byte varint",
            [vec![0x08], vec![0xff; 10], vec![0x01]].concat(),
        ),
        (
            "200 nested groups",
            [vec![0x7b; 200], vec![0x7c; 200]].concat(),
        ),
        ("unknown field 536870911", {
            let mut body = Vec::new();
            put_len(&mut body, unknown, b"abc");
            body
        }),
        ("unknown fields only", {
            let mut body = Vec::new();
            for number in 100..400 {
                put_field(&mut body, number, &Wire::Varint(u64::from(number)));
            }
            body
        }),
        ("plausible then a stray byte", [plausible, &[0xff]].concat()),
        (
            "plausible without its last byte",
            plausible[..plausible.len().saturating_sub(1)].to_vec(),
        ),
        (
            "plausible cut in half",
            plausible[..plausible.len() / 2].to_vec(),
        ),
        ("unknown field of 1,000,000 bytes", {
            let mut body = plausible.to_vec();
            put_len(
                &mut body,
                unknown,
                &vec![b'x'; BODY_BUDGET - plausible.len() - 16],
            );
            body
        }),
        ("over the request limit", {
            let mut body = plausible.to_vec();
            put_len(&mut body, unknown, &vec![b'x'; OVER_LIMIT]);
            body
        }),
    ];
    // Pseudo-random bytes (xorshift), the same on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for (name, len) in [
        ("random 16 bytes", 16),
        ("random 64 bytes", 64),
        ("random 512 bytes", 512),
        ("random 4 KiB", 4096),
    ] {
        let body = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        cases.push((name, body));
    }
    cases
}
