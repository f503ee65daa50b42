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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_connection_is_its_own_http2_connection() {
        // A bare HTTP/2 server that counts the connections it accepts.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (count, mut accepted) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    if let Ok(mut connection) = h2::server::handshake(socket).await {
                        while let Some(Ok(_)) = connection.accept().await {}
                    }
                });
            }
        });
        let channels = connect(&format!("http://{addr}"), 3, Duration::from_secs(5))
            .await
            .expect("connect");
        let clones: Vec<Channel> = channels.to_vec();
        assert_eq!(clones.len(), 3);
        // A last connection of our own: connections are accepted in the order they were made,
        // so once it is accepted, every connection `connect` made has been counted.
        let _marker = tokio::net::TcpStream::connect(addr).await.expect("marker");
        let counted = tokio::time::timeout(Duration::from_secs(10), accepted.wait_for(|n| *n >= 4))
            .await
            .expect("in time")
            .map(|n| *n)
            .expect("counting");
        assert_eq!(
            counted, 4,
            "three connections and the marker, clones shared theirs"
        );
    }
}
