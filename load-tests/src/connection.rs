//! HTTP/2 connections to the target: one tonic [`Channel`] per connection.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::Error;

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `count` separate HTTP/2 connections to `target`, each answering a call within
/// `request_timeout` or failing it with `CANCELLED`/`DEADLINE_EXCEEDED`.
///
/// Each [`Endpoint::connect`] opens its own connection; clones of one channel share it.
pub(crate) async fn connect(
    target: &str,
    count: usize,
    request_timeout: Duration,
) -> Result<Vec<Channel>, Error> {
    let endpoint = Endpoint::from_shared(target.to_owned())
        .map_err(|source| Error::InvalidTarget {
            target: target.to_owned(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(request_timeout)
        .tcp_nodelay(true);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            target: target.to_owned(),
            source,
        })?;
        channels.push(channel);
    }
    Ok(channels)
}
