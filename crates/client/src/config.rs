//! The client's settings.

use std::time::Duration;

use routing_core::ejection::EjectionPolicy;

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
        }
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
                || !endpoint.starts_with("http://")
            {
                return Err(ClientError::InvalidConfig {
                    field: "endpoints",
                    reason: format!(
                        "'{endpoint}' is not an http://host:port address (routers serve \
                         plaintext gRPC; put TLS in front of them)"
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
