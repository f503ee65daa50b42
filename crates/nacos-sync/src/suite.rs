//! The behaviour every registry adapter passes, run against a real backing system.
//!
//! A [`Fixture`] changes the backing system the way its users do (Nacos's own API, writing the
//! file); [`run`] checks that the adapter reports each change. Registries are eventually
//! consistent, so each check reads until it holds or a deadline passes.

use std::time::Duration;

use crate::registry::{DiscoveredInstance, Registry, RegistryView};

/// How long a change may take to show.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// One instance as a test registers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Put {
    /// The service.
    pub service: String,
    /// The IP address.
    pub ip: String,
    /// The port.
    pub port: u16,
    /// The registry's weight (a float, as Nacos keeps it).
    pub weight: f64,
    /// The `version` metadata; none leaves the key out.
    pub version: Option<String>,
    /// The `region` metadata.
    pub region: String,
}

impl Put {
    /// An instance of `service` at `ip:port`, weight 1, version `version`, region `eu`.
    pub fn new(service: &str, ip: &str, port: u16, version: Option<&str>) -> Put {
        Put {
            service: service.to_owned(),
            ip: ip.to_owned(),
            port,
            weight: 1.0,
            version: version.map(str::to_owned),
            region: "eu".to_owned(),
        }
    }

    /// The id adapters give it: `ip:port@DEFAULT` (the default cluster).
    pub fn id(&self) -> String {
        format!("{}:{}@DEFAULT", self.ip, self.port)
    }
}

/// A backing system the suite can change.
#[async_trait::async_trait]
pub trait Fixture: Send {
    /// The adapter under test, reading the backing system.
    fn registry(&self) -> &dyn Registry;

    /// Registers an instance, or changes it.
    async fn put(&mut self, instance: &Put);

    /// Removes an instance.
    async fn remove(&mut self, instance: &Put);
}

/// Reads until `check` holds for the view of `services`, or panics at the deadline.
pub async fn until(
    registry: &dyn Registry,
    services: &[String],
    what: &str,
    check: impl Fn(&RegistryView) -> bool,
) -> RegistryView {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let view = registry.fetch(services).await;
        if let Ok(view) = &view
            && check(view)
        {
            return view.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: timed out waiting for {what}; last read: {view:?}",
            registry.describe()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(view: &'a RegistryView, put: &Put) -> Option<&'a DiscoveredInstance> {
    view.instances
        .iter()
        .find(|i| i.service == put.service && i.id == put.id())
}

/// Runs the suite on services named `<prefix>-...` (each fixture its own prefix, so suites run
/// in parallel on one server).
pub async fn run(fixture: &mut dyn Fixture, prefix: &str) {
    let api = format!("{prefix}-api");
    let other = format!("{prefix}-other");
    let services = vec![api.clone()];

    // A service the registry does not know: an empty answer, not an error.
    let view = fixture
        .registry()
        .fetch(&[format!("{prefix}-unknown")])
        .await
        .expect("an unknown service reads as empty");
    assert!(view.instances.is_empty(), "{view:?}");

    let a = Put::new(&api, "10.1.0.1", 8080, Some("v1"));
    let b = Put {
        weight: 2.5,
        ..Put::new(&api, "10.1.0.2", 8080, Some("v2"))
    };
    let unversioned = Put::new(&api, "10.1.0.3", 8080, None);
    let elsewhere = Put::new(&other, "10.1.0.4", 8080, Some("v1"));
    for put in [&a, &b, &unversioned, &elsewhere] {
        fixture.put(put).await;
    }
    let view = until(fixture.registry(), &services, "three instances", |v| {
        [&a, &b, &unversioned].iter().all(|p| find(v, p).is_some())
    })
    .await;
    let found_a = find(&view, &a).expect("a");
    assert_eq!(found_a.address, "10.1.0.1:8080");
    assert_eq!(found_a.version.as_deref(), Some("v1"));
    assert_eq!((found_a.weight, found_a.healthy), (100, true));
    assert_eq!(found_a.region, "eu");
    let found_b = find(&view, &b).expect("b");
    assert_eq!(
        (found_b.version.as_deref(), found_b.weight),
        (Some("v2"), 250)
    );
    assert_eq!(
        find(&view, &unversioned).map(|i| i.version.clone()),
        Some(None)
    );
    // Only the services asked about.
    assert!(view.instances.iter().all(|i| i.service == api), "{view:?}");

    // A changed weight and version.
    let a2 = Put {
        weight: 0.5,
        version: Some("v2".to_owned()),
        ..a.clone()
    };
    fixture.put(&a2).await;
    until(
        fixture.registry(),
        &services,
        "a's new weight and version",
        |v| find(v, &a2).is_some_and(|i| i.weight == 50 && i.version.as_deref() == Some("v2")),
    )
    .await;

    // A removed instance.
    fixture.remove(&b).await;
    until(fixture.registry(), &services, "b gone", |v| {
        find(v, &b).is_none() && find(v, &a2).is_some()
    })
    .await;
}
