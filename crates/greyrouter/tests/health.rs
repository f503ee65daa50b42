//! Health for orchestrators over HTTP (`--http-addr`): `/healthz` while the process lives,
//! `/readyz` following the store: not ready while Redis does not answer, ready again after.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use greyrouter_test_support::{RedisServer, free_port, poll_until};
use support::ServerProcess;

/// `GET path` over HTTP/1.0: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((status, body))
}

#[test]
fn readyz_follows_the_store_and_healthz_the_process() {
    let redis = RedisServer::start();
    let http = free_port(false);
    let http_addr = format!("127.0.0.1:{http}");
    let _server = ServerProcess::start(&[
        "--store",
        &redis.url(),
        "--http-addr",
        &http_addr,
        "--log-level",
        "warn",
    ]);
    let deadline = Duration::from_secs(20);
    let (status, body) = get(http, "/healthz").expect("healthz answers");
    assert_eq!(status, 200, "{body}");
    let (_, body) = poll_until(deadline, || get(http, "/readyz").filter(|(s, _)| *s == 200))
        .expect("ready with Redis up");
    assert!(body.contains("\"ready\":true"), "{body}");

    redis.pause();
    let (_, body) = poll_until(deadline, || get(http, "/readyz").filter(|(s, _)| *s == 503))
        .expect("not ready while Redis does not answer");
    assert!(body.contains("\"down\":[\"store\"]"), "{body}");
    assert!(body.contains("\"serving\":true"), "routing goes on: {body}");
    let (status, _) = get(http, "/healthz").expect("healthz answers");
    assert_eq!(status, 200, "the process is alive");

    redis.resume();
    poll_until(deadline, || get(http, "/readyz").filter(|(s, _)| *s == 200))
        .expect("ready again once Redis answers");
}
