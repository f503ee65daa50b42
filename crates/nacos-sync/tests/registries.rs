//! Every registry adapter passes the shared behaviour suite against its real backing system: a
//! file on disk, and a Nacos-compatible server (rnacos) started on free ports.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use greyrouter_test_support::{EtcdServer, NacosServer};
use nacos_sync::etcd::{EtcdRegistry, EtcdSettings};
use nacos_sync::file::FileRegistry;
use nacos_sync::nacos::{Credentials, NacosRegistry, NacosSettings};
use nacos_sync::suite::{self, Fixture, Put};
use nacos_sync::{FieldMapping, Registry};

/// A fleet file the suite writes.
struct FileFixture {
    path: PathBuf,
    registry: FileRegistry,
    instances: BTreeMap<String, Put>,
    _dir: tempfile::TempDir,
}

impl FileFixture {
    fn new() -> FileFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, "").expect("write");
        FileFixture {
            registry: FileRegistry::new(&path, FieldMapping::default()),
            path,
            instances: BTreeMap::new(),
            _dir: dir,
        }
    }

    fn write(&self) {
        let mut text = String::new();
        for put in self.instances.values() {
            text.push_str(&format!(
                "[[instances]]\nservice = {:?}\nid = {:?}\naddress = \"{}:{}\"\n\
                 weight = {}\nregion = {:?}\n",
                put.service,
                put.id(),
                put.ip,
                put.port,
                (put.weight * 100.0).round() as u32,
                put.region,
            ));
            if let Some(version) = &put.version {
                text.push_str(&format!("metadata = {{ version = {version:?} }}\n"));
            }
        }
        // Written beside and renamed, as a deploy tool would: never read half-written.
        let next = self.path.with_extension("next");
        std::fs::write(&next, text).expect("write");
        std::fs::rename(&next, &self.path).expect("rename");
    }
}

#[async_trait::async_trait]
impl Fixture for FileFixture {
    fn registry(&self) -> &dyn Registry {
        &self.registry
    }

    async fn put(&mut self, put: &Put) {
        self.instances
            .insert(format!("{}/{}", put.service, put.id()), put.clone());
        self.write();
    }

    async fn remove(&mut self, put: &Put) {
        self.instances
            .remove(&format!("{}/{}", put.service, put.id()));
        self.write();
    }
}

/// A Nacos server changed through Nacos's own v1 Open API, as services register themselves.
struct NacosFixture {
    server: NacosServer,
    registry: NacosRegistry,
}

impl NacosFixture {
    fn new(server: NacosServer) -> NacosFixture {
        let settings = NacosSettings {
            url: server.url(),
            ..NacosSettings::default()
        };
        let registry =
            NacosRegistry::new(settings, Credentials::default(), FieldMapping::default())
                .expect("registry");
        NacosFixture { server, registry }
    }
}

#[async_trait::async_trait]
impl Fixture for NacosFixture {
    fn registry(&self) -> &dyn Registry {
        &self.registry
    }

    async fn put(&mut self, put: &Put) {
        let mut metadata = BTreeMap::from([("region".to_owned(), put.region.clone())]);
        if let Some(version) = &put.version {
            metadata.insert("version".to_owned(), version.clone());
        }
        let metadata = serde_json::to_string(&metadata).expect("json");
        self.server
            .register(&put.service, &put.ip, put.port, put.weight, &metadata);
    }

    async fn remove(&mut self, put: &Put) {
        self.server.deregister(&put.service, &put.ip, put.port);
    }
}

/// An etcd cluster written through its JSON gateway, as a service registering itself would.
struct EtcdFixture {
    server: EtcdServer,
    registry: EtcdRegistry,
}

impl EtcdFixture {
    fn new(server: EtcdServer) -> EtcdFixture {
        let settings = EtcdSettings {
            endpoints: vec![server.url()],
            ..EtcdSettings::default()
        };
        let registry =
            EtcdRegistry::new(settings, None, FieldMapping::default()).expect("registry");
        EtcdFixture { server, registry }
    }

    fn key(put: &Put) -> String {
        STANDARD.encode(format!("/services/{}/{}", put.service, put.id()))
    }
}

#[async_trait::async_trait]
impl Fixture for EtcdFixture {
    fn registry(&self) -> &dyn Registry {
        &self.registry
    }

    async fn put(&mut self, put: &Put) {
        let mut value = serde_json::json!({
            "address": format!("{}:{}", put.ip, put.port),
            "weight": (put.weight * 100.0).round() as u32,
            "region": put.region,
        });
        if let Some(version) = &put.version {
            value["version"] = serde_json::json!(version);
        }
        let body = serde_json::json!({
            "key": Self::key(put),
            "value": STANDARD.encode(value.to_string()),
        });
        self.server.call("/v3/kv/put", &body.to_string());
    }

    async fn remove(&mut self, put: &Put) {
        let body = serde_json::json!({ "key": Self::key(put) });
        self.server.call("/v3/kv/deleterange", &body.to_string());
    }
}

#[tokio::test]
async fn the_etcd_registry_passes_the_suite() {
    let server = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("etcd");
    suite::run(&mut EtcdFixture::new(server), "etcd").await;
}

#[tokio::test]
async fn the_file_registry_passes_the_suite() {
    suite::run(&mut FileFixture::new(), "file").await;
}

#[tokio::test]
async fn the_nacos_registry_passes_the_suite() {
    let server = tokio::task::spawn_blocking(NacosServer::start)
        .await
        .expect("rnacos");
    suite::run(&mut NacosFixture::new(server), "nacos").await;
}

#[tokio::test]
async fn a_stopped_nacos_is_reported_unavailable_not_empty() {
    let server = tokio::task::spawn_blocking(NacosServer::start)
        .await
        .expect("rnacos");
    let mut fixture = NacosFixture::new(server);
    fixture.server.kill();
    let err = fixture
        .registry
        .fetch(&["api".to_owned()])
        .await
        .expect_err("no answer from a stopped server");
    assert!(
        matches!(err, nacos_sync::RegistryError::Unavailable(_)),
        "{err}"
    );
}

#[tokio::test]
async fn nacos_with_auth_is_read_after_a_login_and_refuses_bad_credentials() {
    let server = tokio::task::spawn_blocking(|| NacosServer::start_with_auth("admin", "s3cret-pw"))
        .await
        .expect("rnacos");
    let token = server.login();
    server.call(
        "POST",
        &format!(
            "/nacos/v1/ns/instance?serviceName=auth-api&ip=10.3.0.1&port=8080&ephemeral=false\
             &metadata={}&accessToken={token}",
            greyrouter_test_support::percent_encode(r#"{"version":"v1"}"#)
        ),
    );
    let settings = NacosSettings {
        url: server.url(),
        ..NacosSettings::default()
    };
    let registry = |credentials| {
        NacosRegistry::new(settings.clone(), credentials, FieldMapping::default())
            .expect("registry")
    };
    let services = ["auth-api".to_owned()];
    let logged_in = registry(Credentials {
        login: Some(("admin".into(), "s3cret-pw".into())),
        access_token: None,
    });
    let view = logged_in.fetch(&services).await.expect("read after login");
    assert_eq!(view.instances.len(), 1, "{view:?}");
    let with_token = registry(Credentials {
        login: None,
        access_token: Some(token),
    });
    assert_eq!(
        with_token
            .fetch(&services)
            .await
            .expect("token")
            .instances
            .len(),
        1
    );
    for credentials in [
        Credentials::default(),
        Credentials {
            login: Some(("admin".into(), "wrong".into())),
            access_token: None,
        },
    ] {
        let err = registry(credentials.clone())
            .fetch(&services)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, nacos_sync::RegistryError::Unauthorized(_)),
            "{credentials:?}: {err}"
        );
    }
}
