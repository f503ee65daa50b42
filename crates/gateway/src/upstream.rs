//! Connections to instances: HTTP/1.1 connections kept alive and reused (per instance address),
//! and one multiplexed HTTP/2 connection per instance for gRPC.
//!
//! An HTTP/1.1 connection goes back to its instance's list as soon as a request is handed to
//! it; the next request takes a connection that is ready again (its last response fully read),
//! so there is no lock held across a request and no task per checkout. Lists are bounded
//! (`max_idle_per_instance`) and connections unused for `idle_timeout` are closed.
//!
//! Requests the gateway relays itself (plain HTTP/1.1, see `plain`) use kept connections of
//! their own: a bare socket and its unread bytes, taken by one request at a time.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::Body;

/// Why a request did not get a response.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection within the connect timeout, or refused.
    Connect(String),
    /// The connection failed while the request was on it.
    Request(hyper::Error),
    /// The instance did not answer a relayed request with a response head.
    Relay(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(reason) => write!(f, "cannot connect: {reason}"),
            UpstreamError::Request(err) => write!(f, "{err}"),
            UpstreamError::Relay(reason) => write!(f, "{reason}"),
        }
    }
}

/// A kept-alive connection to an instance for relayed requests, with its unread bytes.
pub(crate) struct PlainConnection {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    last_used: Instant,
}

impl PlainConnection {
    /// Reads more of the instance's bytes; `Ok(0)` when it closed.
    pub(crate) async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 2048 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Whether the instance may still take a request on it: nothing to read (a kept
    /// connection has no unread bytes; a closed one reads as the end). Uses the readiness the
    /// runtime already has, so a connection seen idle costs no system call.
    fn usable(&self) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut context) {
            Poll::Pending => true,
            Poll::Ready(Ok(())) => {
                let mut byte = [0_u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => false,
        }
    }
}

struct Kept {
    sender: http1::SendRequest<Body>,
    last_used: Instant,
}

/// The connections of the gateway to instances.
pub(crate) struct Upstream {
    plain: Mutex<HashMap<String, Vec<PlainConnection>>>,
    http1: Mutex<HashMap<String, Vec<Kept>>>,
    http2: Mutex<HashMap<String, http2::SendRequest<Body>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_instance: usize,
    max_response_header_bytes: usize,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle_per_instance", &self.max_idle_per_instance)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle_per_instance: usize,
        max_response_header_bytes: usize,
    ) -> Upstream {
        Upstream {
            plain: Mutex::new(HashMap::new()),
            http1: Mutex::new(HashMap::new()),
            http2: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout,
            max_idle_per_instance,
            max_response_header_bytes,
        }
    }

    /// A kept connection to `address` for a relayed request, the one used last first; closed
    /// and stale ones met are dropped.
    pub(crate) fn take_plain(&self, address: &str) -> Option<PlainConnection> {
        let mut lists = self.plain.lock().unwrap_or_else(PoisonError::into_inner);
        let list = lists.get_mut(address)?;
        let now = Instant::now();
        while let Some(connection) = list.pop() {
            if now.duration_since(connection.last_used) < self.idle_timeout && connection.usable() {
                return Some(connection);
            }
        }
        None
    }

    /// Opens a connection to `address` for relayed requests.
    pub(crate) async fn connect_plain(
        &self,
        address: &str,
    ) -> Result<PlainConnection, UpstreamError> {
        Ok(PlainConnection {
            stream: self.connect(address).await?,
            buf: BytesMut::with_capacity(8 * 1024),
            last_used: Instant::now(),
        })
    }

    /// Keeps a connection whose response was read whole (dropped when the instance's list is
    /// full).
    pub(crate) fn keep_plain(&self, address: &str, mut connection: PlainConnection) {
        if connection.buf.capacity() > 64 * 1024 {
            connection.buf = BytesMut::with_capacity(8 * 1024);
        }
        connection.last_used = Instant::now();
        let mut lists = self.plain.lock().unwrap_or_else(PoisonError::into_inner);
        match lists.get_mut(address) {
            Some(list) if list.len() < self.max_idle_per_instance => list.push(connection),
            Some(_) => {}
            None => {
                lists.insert(address.to_owned(), vec![connection]);
            }
        }
    }

    /// Sends `request` (origin-form URI) over HTTP/1.1 to `address`. A kept connection that
    /// turns out closed before the request was written is replaced by a new one, so a server
    /// closing an idle connection never fails a request.
    pub(crate) async fn send_http1(
        &self,
        address: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut fresh = false;
        let mut sender = match self.take_ready(address) {
            Some(sender) => sender,
            None => {
                fresh = true;
                self.connect_http1(address).await?
            }
        };
        loop {
            let sent = sender.try_send_request(request);
            self.keep(address, sender);
            match sent.await {
                Ok(response) => return Ok(response),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !fresh => {
                        request = unsent;
                        fresh = true;
                        sender = self.connect_http1(address).await?;
                    }
                    _ => return Err(UpstreamError::Request(err.into_error())),
                },
            }
        }
    }

    /// Sends `request` (absolute URI) over the instance's HTTP/2 connection (prior knowledge,
    /// `h2c`), opening it when there is none.
    pub(crate) async fn send_http2(
        &self,
        address: &str,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let existing = self
            .http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(address)
            .filter(|sender| !sender.is_closed())
            .cloned();
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let stream = self.connect(address).await?;
                let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|err| UpstreamError::Connect(err.to_string()))?;
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%err, "gateway: HTTP/2 connection to an instance ended");
                    }
                });
                self.http2
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(address.to_owned(), sender.clone());
                sender
            }
        };
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)
    }

    /// Opens an HTTP/1.1 connection that passes upgrades (WebSocket) through; it is not kept.
    pub(crate) async fn send_upgrade(
        &self,
        address: &str,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let stream = self.connect(address).await?;
        let (mut sender, connection) = http1::Builder::new()
            .max_buf_size(self.max_response_header_bytes.max(8192))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| UpstreamError::Connect(err.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, "gateway: upgraded connection to an instance ended");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)
    }

    /// Closes connections unused for the idle timeout (and dead ones) of every instance.
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        let mut plain = self.plain.lock().unwrap_or_else(PoisonError::into_inner);
        for list in plain.values_mut() {
            list.retain(|kept| {
                now.duration_since(kept.last_used) < self.idle_timeout && kept.usable()
            });
        }
        plain.retain(|_, list| !list.is_empty());
        drop(plain);
        let mut lists = self.http1.lock().unwrap_or_else(PoisonError::into_inner);
        for list in lists.values_mut() {
            list.retain(|kept| {
                !kept.sender.is_closed() && now.duration_since(kept.last_used) < self.idle_timeout
            });
        }
        lists.retain(|_, list| !list.is_empty());
        drop(lists);
        self.http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, sender| !sender.is_closed());
    }

    /// Connections kept now (HTTP/1.1 and HTTP/2).
    pub(crate) fn kept(&self) -> usize {
        let plain: usize = self
            .plain
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum();
        let http1: usize = self
            .http1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum();
        plain
            + http1
            + self
                .http2
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }

    /// A kept connection to `address` ready for a request, dropping dead and stale ones met.
    fn take_ready(&self, address: &str) -> Option<http1::SendRequest<Body>> {
        let mut lists = self.http1.lock().unwrap_or_else(PoisonError::into_inner);
        let list = lists.get_mut(address)?;
        let now = Instant::now();
        let mut index = list.len();
        while index > 0 {
            index -= 1;
            let kept = &list[index];
            if kept.sender.is_closed() || now.duration_since(kept.last_used) >= self.idle_timeout {
                list.swap_remove(index);
            } else if kept.sender.is_ready() {
                return Some(list.swap_remove(index).sender);
            }
        }
        None
    }

    /// Puts a connection that carries a request back in its instance's list (dropped when the
    /// list is full: the connection closes after its response).
    fn keep(&self, address: &str, sender: http1::SendRequest<Body>) {
        let mut lists = self.http1.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = Kept {
            sender,
            last_used: Instant::now(),
        };
        match lists.get_mut(address) {
            Some(list) if list.len() < self.max_idle_per_instance => list.push(kept),
            Some(_) => {}
            None => {
                lists.insert(address.to_owned(), vec![kept]);
            }
        }
    }

    async fn connect_http1(
        &self,
        address: &str,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let stream = self.connect(address).await?;
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(self.max_response_header_bytes.max(8192))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| UpstreamError::Connect(err.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "gateway: connection to an instance ended");
            }
        });
        Ok(sender)
    }

    async fn connect(&self, address: &str) -> Result<TcpStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!(
                    "no connection within {} ms",
                    self.connect_timeout.as_millis()
                ))
            })?
            .map_err(|err| UpstreamError::Connect(err.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}
