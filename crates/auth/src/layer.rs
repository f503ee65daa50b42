//! The tower layer in front of a front door's services: for each request it
//! 1. counts the call in flight (refused at once above the cap),
//! 2. finds the caller: [`Caller::unrestricted`] when auth is off, else from the bearer
//!    token or the client certificate (`UNAUTHENTICATED` without proof),
//! 3. checks the role the operation's [`Rule`] needs (`PERMISSION_DENIED` naming it),
//! 4. takes the call from the caller's rate budget (`RESOURCE_EXHAUSTED` with the wait),
//! 5. hands the request on with the `Arc<Caller>` in its extensions, for the tenant checks the
//!    handlers make with the decoded request.
//!
//! The front door says which rule a path has ([`Operation`]) and how a refusal is answered
//! (a gRPC status, an HTTP problem document), so one layer serves every front door.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use control::access::{Admission, Caller, Rule};
use control::{Error, ErrorKind};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::{Authenticator, Refusal};

/// What a request's path is to the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Open to anyone without credentials (health checks, reflection).
    Open,
    /// An operation under its rule.
    Governed(&'static Rule),
    /// A path no rule covers: refused when auth is on.
    Unknown,
}

/// The layer; cheap to clone.
pub struct AuthLayer<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for AuthLayer<B> {
    fn clone(&self) -> Self {
        AuthLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<B> {
    auth: Option<Arc<Authenticator>>,
    admission: Arc<Admission>,
    classify: fn(&http::Method, &str) -> Operation,
    refuse: fn(&Error) -> http::Response<B>,
}

impl<B> AuthLayer<B> {
    /// A layer checking credentials with `auth` (`None`: auth off), admitting calls with
    /// `admission`; `classify` gives a method and path's operation, `refuse` answers a
    /// refusal.
    pub fn new(
        auth: Option<Arc<Authenticator>>,
        admission: Arc<Admission>,
        classify: fn(&http::Method, &str) -> Operation,
        refuse: fn(&Error) -> http::Response<B>,
    ) -> AuthLayer<B> {
        AuthLayer {
            shared: Arc::new(Shared {
                auth,
                admission,
                classify,
                refuse,
            }),
        }
    }
}

impl<S, B> Layer<S> for AuthLayer<B> {
    type Service = AuthService<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The layer's service.
pub struct AuthService<S, B> {
    inner: S,
    shared: Arc<Shared<B>>,
}

impl<S: Clone, B> Clone for AuthService<S, B> {
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for AuthService<S, B>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<B>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The ready service handles this call; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let operation = (shared.classify)(request.method(), request.uri().path());
        if operation == Operation::Open {
            return Box::pin(async move { inner.call(request).await });
        }
        // Counted from the moment the connection hands the call over, not from when its task
        // first runs: calls queued behind a busy runtime count, so the cap sheds them at once.
        let in_flight = match shared.admission.enter() {
            Ok(in_flight) => in_flight,
            Err(err) => {
                let refusal = (shared.refuse)(&err);
                return Box::pin(async move { Ok(refusal) });
            }
        };
        Box::pin(async move {
            match admit(&shared, operation, &mut request).await {
                Ok(()) => {
                    let response = inner.call(request).await;
                    drop(in_flight);
                    response
                }
                Err(err) => Ok((shared.refuse)(&err)),
            }
        })
    }
}

async fn admit<B, ReqBody>(
    shared: &Shared<B>,
    operation: Operation,
    request: &mut http::Request<ReqBody>,
) -> Result<(), Error> {
    let credentials = Credentials::of(request);
    let caller = identify(shared.auth.as_deref(), credentials).await?;
    let rule = match operation {
        Operation::Governed(rule) => rule,
        _ if caller.is_verified() => {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "no access rule covers this operation",
            ));
        }
        _ => {
            request.extensions_mut().insert(caller);
            return Ok(());
        }
    };
    caller.check_role(rule)?;
    shared.admission.admit_caller(rule.class(), &caller)?;
    request.extensions_mut().insert(caller);
    Ok(())
}

/// What a request offers as proof of who calls.
struct Credentials {
    authorization: Option<http::HeaderValue>,
    certificates: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    peer: String,
}

impl Credentials {
    fn of<ReqBody>(request: &http::Request<ReqBody>) -> Credentials {
        let extensions = request.extensions();
        let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
        let addr = extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| tls.and_then(|info| info.get_ref().remote_addr()))
            // Front doors that are not tonic put the peer's address in as it is.
            .or_else(|| extensions.get::<std::net::SocketAddr>().copied());
        Credentials {
            authorization: request.headers().get(http::header::AUTHORIZATION).cloned(),
            certificates: tls.and_then(TlsConnectInfo::peer_certs),
            peer: addr.map_or_else(|| "unknown".to_owned(), |addr| addr.ip().to_string()),
        }
    }
}

/// Finds who calls.
async fn identify(
    auth: Option<&Authenticator>,
    credentials: Credentials,
) -> Result<Arc<Caller>, Error> {
    let Some(auth) = auth else {
        // Unauthenticated callers are told apart by address, for rate limits.
        return Ok(Arc::new(Caller::unrestricted(credentials.peer)));
    };
    let unauthenticated = |refusal: Refusal| match refusal {
        Refusal::TooManyChecks(retry_after_ms) => Error::Exhausted {
            message: refusal.to_string(),
            retry_after_ms,
        },
        _ => Error::new(ErrorKind::Unauthenticated, refusal.to_string()),
    };
    if let Some(value) = &credentials.authorization {
        let token = value
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Refusal::Invalid("authorization must be `Bearer <token>`"))
            .map_err(unauthenticated)?;
        return auth
            .bearer(token, &credentials.peer)
            .await
            .map_err(unauthenticated);
    }
    if auth.takes_certificates()
        && let Some(leaf) = credentials
            .certificates
            .as_deref()
            .and_then(|certs| certs.first())
    {
        return auth.certificate(leaf.as_ref()).map_err(unauthenticated);
    }
    Err(unauthenticated(Refusal::Missing))
}
