//! Health for orchestrators over HTTP (`--http-addr`): `/healthz` while the process lives,
//! `/readyz` following the store: not ready while Redis does not answer, ready again after.

mod support;

use std::time::Duration;

use greyrouter_test_support::{RedisServer, free_port, poll_until};
use support::{ServerProcess, http_get as get};

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
