//! Routes a tenant's requests with the SDK: decisions from the local copy, outcome reports, and
//! an idempotent call retried on another instance.
//!
//! ```sh
//! cargo run --release --bin greyrouter -- serve --seed examples/seed.toml &
//! cargo run -p greyrouter-client --example route_locally -- http://127.0.0.1:50051 globex user-service
//! ```

use std::time::Duration;

use greyrouter_client::{CallError, Client, ClientConfig, Report, RouteRequest, Status};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
    let tenant = args.next().unwrap_or_else(|| "globex".to_owned());
    let service = args.next().unwrap_or_else(|| "user-service".to_owned());
    run(&url, &tenant, &service).await?;
    Ok(())
}

/// Routes `tenant`'s requests to `service` through the router at `url`; returns the client's
/// status at the end. (The SDK's tests call it against a real router.)
pub(crate) async fn run(
    url: &str,
    tenant: &str,
    service: &str,
) -> Result<Status, Box<dyn std::error::Error>> {
    // Follow every tenant and service; `.tenants([...])` / `.services([...])` narrow the copy.
    let client = Client::connect(ClientConfig::new(url)).await?;
    let revision = client.ready(Duration::from_secs(5)).await?;
    println!(
        "local copy at revision {revision}: {} assignments",
        client.status().assignments
    );

    // A decision costs a lookup and a pick, no network call.
    let request = RouteRequest::new(tenant, service);
    for _ in 0..4 {
        let decision = client.route(&request).await?;
        println!(
            "{tenant}/{service} -> {} ({}, {}) at {} [{:?}]",
            decision.version(),
            decision.source(),
            decision.instance_id(),
            decision.address(),
            decision.origin()
        );
        // Tell the client how the call went: it ends in-flight counts, ejects instances that
        // keep failing, and reports to the routers in batches (canary analysis uses them).
        client.report(&decision, Report::success(Duration::from_millis(12)));
    }

    // An idempotent call: a failed attempt is reported and retried on another instance. Here
    // the first instance tried refuses the connection.
    let first = std::sync::Mutex::new(None::<String>);
    let answer = client
        .call_idempotent(&request, 3, |decision| {
            let mut first = first.lock().unwrap_or_else(|e| e.into_inner());
            let refused = first.get_or_insert_with(|| decision.instance_id().to_owned())
                == decision.instance_id();
            async move {
                if refused {
                    Err(format!("{} refused the connection", decision.address()))
                } else {
                    Ok(format!("answered by {}", decision.instance_id()))
                }
            }
        })
        .await;
    match answer {
        Ok(answer) => println!("idempotent call: {answer}"),
        Err(CallError::Exhausted { attempts, last }) => {
            println!("idempotent call failed {attempts} times, last: {last}")
        }
        Err(CallError::Route(err)) => return Err(err.into()),
    }

    client.flush().await?;
    let status = client.status();
    println!(
        "reports accepted by the router: {}, revision {}, connected: {}",
        status.reports_accepted, status.revision, status.connected
    );
    client.close().await;
    Ok(status)
}
