//! The client's settings.

use std::path::PathBuf;
use std::time::Duration;

use routing_core::ejection::EjectionPolicy;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// How a [`Client`](crate::Client) connects, what it follows, and how it reports.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Router addresses (`http://host:port`), tried in turn: the watch moves to the next one when
    /// its router fails. Routers of one fleet (sharing a Redis store) resume the watch where it
    /// stopped; any other router sends a fresh snapshot.
    pub endpoints: Vec<String>,
    /// Tenants to hold locally; every tenant when empty. Other tenants are routed by the server.
    pub tenant_ids: Vec<String>,
    /// Services to hold locally; every service when empty.
    pub services: Vec<String>,
    /// Longest wait for a TCP connection to a router.
    pub connect_timeout: Duration,
    /// Deadline of each unary call (`Route` for pairs not held locally, outcome reports).
    pub request_timeout: Duration,
    /// First wait before reconnecting the watch after a failure; doubles up to
    /// `reconnect_max_delay`, back to this once a router answers.
    pub reconnect_min_delay: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// HTTP/2 keep-alive pings: a router that stops answering them is left for the next one.
    pub keep_alive_interval: Duration,
    /// Send outcome reports to the routers (they feed canary analysis and outlier ejection there).
    pub report_outcomes: bool,
    /// Most reports in one `ReportOutcomes` call.
    pub report_batch_size: usize,
    /// Longest a report waits before its batch is sent.
    pub report_interval: Duration,
    /// Reports waiting to be sent; more are dropped (and counted) rather than slowing requests.
    pub report_queue: usize,
    /// When this client stops sending requests to an instance it saw failing (outlier ejection
    /// of its own, on the outcomes it was told): see [`EjectionPolicy`].
    pub ejection: EjectionPolicy,
    /// A bearer token (a JWT or an API key) sent with every call, for routers with auth on.
    pub token: Option<String>,
    /// TLS settings for `https://` endpoints (the system's roots are trusted too).
    pub tls: TlsSettings,
}

/// How a client checks the routers' certificates and proves its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// A CA bundle (PEM) the routers' certificates chain to, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for routers that take them, with its key.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name the routers' certificates must carry, when it is not the endpoint's host.
    pub domain: Option<String>,
}

impl TlsSettings {
    /// The tonic TLS configuration: the files read.
    pub fn client_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let read = |path: &PathBuf, field: &'static str| {
            std::fs::read(path).map_err(|err| ClientError::InvalidConfig {
                field,
                reason: format!("cannot read {}: {err}", path.display()),
            })
        };
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca_file {
            config = config.ca_certificate(Certificate::from_pem(read(ca, "tls.ca_file")?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert, "tls.cert_file")?,
                    read(key, "tls.key_file")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::InvalidConfig {
                    field: "tls.cert_file",
                    reason: "a client certificate needs both cert_file and key_file".to_owned(),
                });
            }
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }
}

impl ClientConfig {
    /// Returns the defaults for one router address.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoints: vec![endpoint.into()],
            tenant_ids: Vec::new(),
            services: Vec::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            report_outcomes: true,
            report_batch_size: 500,
            report_interval: Duration::from_millis(500),
            report_queue: 10_000,
            ejection: EjectionPolicy {
                consecutive_failures: 3,
                error_rate: 0.5,
                min_requests: 20,
                window_ms: 10_000,
                base_ejection_ms: 5_000,
                max_ejection_ms: 60_000,
                max_ejected_percent: 50,
            },
            token: None,
            tls: TlsSettings::default(),
        }
    }

    /// Sends `token` (a JWT or an API key) as the bearer credential of every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts `ca_file` (PEM) for the routers' certificates.
    pub fn ca_file(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(ca_file.into());
        self
    }

    /// Presents a client certificate (PEM) and its key to the routers.
    pub fn client_certificate(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.tls.cert_file = Some(cert_file.into());
        self.tls.key_file = Some(key_file.into());
        self
    }

    /// Adds another router address.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Holds only these tenants locally.
    pub fn tenants<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tenant_ids: I) -> Self {
        self.tenant_ids = tenant_ids.into_iter().map(Into::into).collect();
        self
    }

    /// Holds only these services locally.
    pub fn services<I: IntoIterator<Item = S>, S: Into<String>>(mut self, services: I) -> Self {
        self.services = services.into_iter().map(Into::into).collect();
        self
    }

    /// Checks every setting; the first bad one is named in the error.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(ClientError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.endpoints.is_empty() {
            return invalid("endpoints", "name at least one router address");
        }
        for endpoint in &self.endpoints {
            if tonic::transport::Endpoint::from_shared(endpoint.clone()).is_err()
                || !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                return Err(ClientError::InvalidConfig {
                    field: "endpoints",
                    reason: format!(
                        "'{endpoint}' is not an http://host:port or https://host:port address"
                    ),
                });
            }
        }
        if self
            .tenant_ids
            .iter()
            .chain(&self.services)
            .any(String::is_empty)
        {
            return invalid(
                "tenant_ids",
                "tenant ids and service names must not be empty",
            );
        }
        if let Some(token) = &self.token
            && (token.is_empty()
                || tonic::metadata::MetadataValue::try_from(format!("Bearer {token}")).is_err())
        {
            return invalid("token", "must be printable text, not empty");
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return invalid("request_timeout", "timeouts must be positive");
        }
        if self.reconnect_min_delay.is_zero() || self.reconnect_max_delay < self.reconnect_min_delay
        {
            return invalid(
                "reconnect_max_delay",
                "delays must be positive, the maximum at least the minimum",
            );
        }
        if self.keep_alive_interval.is_zero() {
            return invalid("keep_alive_interval", "must be positive");
        }
        if self.report_batch_size == 0 || self.report_batch_size > 10_000 {
            return invalid("report_batch_size", "must be 1-10000");
        }
        if self.report_queue == 0 {
            return invalid("report_queue", "must be positive");
        }
        if self.report_interval.is_zero() {
            return invalid("report_interval", "must be positive");
        }
        self.ejection
            .validate()
            .or_else(|reason| invalid("ejection", &reason))
    }
}
