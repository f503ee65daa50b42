//! `WatchAssignments` written as frames shared by every stream that sends them.
//!
//! tonic encodes each message of a stream into a buffer of that stream, so a snapshot encoded
//! once for 1,000 watchers would still be copied 1,000 times, into buffers each stream then
//! keeps. [`RouterFront`] serves the `Router` service's generated server for every method but
//! `WatchAssignments`, whose response body hands each queued frame's bytes (prefix included,
//! see [`greyrouter_proto::GrpcFrame`]) to HTTP/2 as they are: what a stream holds while it
//! sends is references to the shared messages, and an idle stream holds no buffer at all.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use greyrouter_proto::codec::Codec;
use greyrouter_proto::shared::router_server::RouterServer;
use greyrouter_proto::v1 as pb;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::Streaming;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use crate::router::{RouterService, UpdateStream};

/// The path of `WatchAssignments`.
const WATCH_PATH: &str = "/greyrouter.v1.Router/WatchAssignments";

/// The `Router` service as a server mounts it: `WatchAssignments` answered with shared frames,
/// every other method by the generated server.
#[derive(Debug, Clone)]
pub struct RouterFront {
    generated: RouterServer<RouterService>,
    router: RouterService,
    max_request_bytes: usize,
}

impl RouterFront {
    /// Serves `router`, refusing requests over `max_request_bytes`.
    pub fn new(router: RouterService, max_request_bytes: usize) -> Self {
        RouterFront {
            generated: RouterServer::new(router.clone())
                .max_decoding_message_size(max_request_bytes),
            router,
            max_request_bytes,
        }
    }
}

impl NamedService for RouterFront {
    const NAME: &'static str = <RouterServer<RouterService> as NamedService>::NAME;
}

impl Service<Request<Body>> for RouterFront {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<Body>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.uri().path() != WATCH_PATH {
            return self.generated.call(request);
        }
        let router = self.router.clone();
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            Ok(match open(&router, request, max_request_bytes).await {
                Ok(stream) => {
                    let mut response = Response::new(Body::new(WatchBody {
                        stream,
                        ended: false,
                    }));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                    response
                }
                // Headers only, as tonic answers a call refused before its first message.
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads the request's one message and opens the watch.
async fn open(
    router: &RouterService,
    request: Request<Body>,
    max_request_bytes: usize,
) -> Result<UpdateStream, Status> {
    // No request compression is accepted (as the generated server is configured).
    if let Some(encoding) = request.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let (parts, body) = request.into_parts();
    let decoder = tonic::codec::Codec::decoder(&mut Codec::<
        pb::WatchAssignmentsRequest,
        pb::WatchAssignmentsRequest,
    >::default());
    let mut messages = Streaming::new_request(decoder, body, None, Some(max_request_bytes));
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    router.open_watch(tonic::Request::from_http(Request::from_parts(
        parts, message,
    )))
}

/// The body of a watch: each message's frame as it was built, then the status as trailers.
struct WatchBody {
    stream: UpdateStream,
    ended: bool,
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(Pin::new(&mut self.stream).poll_next(cx)) {
            Some(Ok(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame.frame())))),
            Some(Err(status)) => status,
            // The stream ends with its status first; were it ever to end without one, the
            // client must still not take the watch for complete.
            None => Status::unavailable("the watch ended; resume on another router"),
        };
        self.ended = true;
        let mut trailers = HeaderMap::new();
        status.add_header(&mut trailers)?;
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use control::access::Caller;
    use control::{Actor, Node, NodeSettings};
    use greyrouter_store::{MemoryStore, Store, suite};
    use http_body_util::{BodyExt, Full};
    use prost::Message;

    use super::*;

    /// A `WatchAssignments` call of service `api` as a client sends it.
    fn watch_request(encoding: Option<&str>) -> Request<Body> {
        let message = pb::WatchAssignmentsRequest {
            services: vec!["api".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        let mut request = Request::builder()
            .method("POST")
            .uri(format!("http://router{WATCH_PATH}"))
            .header(CONTENT_TYPE, "application/grpc");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        request
            .extension(Arc::new(Caller::unrestricted("test")))
            .body(Body::new(Full::new(Bytes::from(body))))
            .expect("request")
    }

    async fn next_frame(body: &mut Body) -> Frame<Bytes> {
        tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("in time")
            .expect("a frame")
            .expect("not an error")
    }

    /// A node over the embedded store holding service `api` (one instance of `v1`) and
    /// `tenants`; and a switch that tells its watch streams the server is closing.
    async fn node_with(tenants: &[&str]) -> (Arc<Node>, tokio::sync::watch::Sender<bool>) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let node = Node::start(store, None, NodeSettings::default())
            .await
            .expect("node");
        let mutations = [suite::service(), suite::instance("a1", "v1")]
            .into_iter()
            .chain(tenants.iter().map(|tenant| suite::tenant(tenant)));
        for mutation in mutations {
            node.replica()
                .commit(mutation, &Actor::system("test", ""))
                .await
                .expect("commit");
        }
        (node, tokio::sync::watch::channel(false).0)
    }

    #[tokio::test]
    async fn every_stream_sends_the_bytes_of_the_one_shared_message() {
        let (node, closing) = node_with(&["acme", "globex"]).await;
        let mut front = RouterFront::new(
            RouterService::new(Arc::clone(&node), closing.subscribe()),
            1 << 20,
        );

        let mut bodies = Vec::new();
        for _ in 0..2 {
            let response = front.call(watch_request(None)).await.expect("infallible");
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert!(response.headers().get("grpc-status").is_none());
            bodies.push(response.into_body());
        }
        let mut frames = Vec::new();
        for body in &mut bodies {
            frames.push(next_frame(body).await.into_data().expect("a message"));
        }
        // The same bytes, not a copy per stream ...
        assert_eq!(frames[0].as_ptr(), frames[1].as_ptr());
        // ... and they are one gRPC message: the prefix, then the snapshot.
        let frame = &frames[0];
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5);
        let snapshot = pb::AssignmentUpdate::decode(&frame[5..]).expect("decodes");
        assert!(snapshot.snapshot);
        let mut tenants: Vec<&str> = snapshot
            .upserts
            .iter()
            .map(|a| a.tenant_id.as_str())
            .collect();
        tenants.sort_unstable();
        assert_eq!(tenants, ["acme", "globex"]);

        // A change reaches both, again as one message; the end of a stream is its status, as
        // trailers.
        node.replica()
            .commit(suite::tenant("initech"), &Actor::system("test", ""))
            .await
            .expect("commit");
        let mut changes = Vec::new();
        for body in &mut bodies {
            changes.push(next_frame(body).await.into_data().expect("a message"));
        }
        assert_eq!(changes[0].as_ptr(), changes[1].as_ptr());
        let change = pb::AssignmentUpdate::decode(&changes[0][5..]).expect("decodes");
        assert_eq!(change.upserts[0].tenant_id, "initech");
        closing.send_replace(true);
        for body in &mut bodies {
            let trailers = next_frame(body).await.into_trailers().expect("trailers");
            assert_eq!(trailers["grpc-status"], "14", "UNAVAILABLE");
            assert!(body.frame().await.is_none(), "nothing after the status");
        }
    }

    #[tokio::test]
    async fn a_call_refused_before_it_opens_is_answered_in_the_headers() {
        let (node, closing) = node_with(&[]).await;
        let mut front = RouterFront::new(
            RouterService::new(Arc::clone(&node), closing.subscribe()),
            1 << 20,
        );
        // A compressed request: no compression is accepted.
        let response = front
            .call(watch_request(Some("gzip")))
            .await
            .expect("infallible");
        assert_eq!(response.headers()["grpc-status"], "12", "UNIMPLEMENTED");
        // A request over the size limit: OUT_OF_RANGE, as tonic answers for the other methods.
        let mut small = RouterFront::new(
            RouterService::new(Arc::clone(&node), closing.subscribe()),
            4,
        );
        let response = small.call(watch_request(None)).await.expect("infallible");
        assert_eq!(response.headers()["grpc-status"], "11", "OUT_OF_RANGE");
        // No caller (the auth layer missing): refused, not served.
        let mut request = watch_request(None);
        request.extensions_mut().clear();
        let response = front.call(request).await.expect("infallible");
        assert_eq!(response.headers()["grpc-status"], "16", "UNAUTHENTICATED");
    }
}
