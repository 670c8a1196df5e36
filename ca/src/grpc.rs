//! Serving one gRPC method without generated code: the one piece of tonic
//! plumbing that Istio's CA API and the xDS server share. A request for the
//! method's path goes to the handler; any other path is answered
//! UNIMPLEMENTED, naming what is served.

use std::convert::Infallible;

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;

/// One method of one gRPC service.
pub trait Method: Clone + Send + 'static {
    /// The fully qualified service name (`istio.v1.auth.IstioCertificateService`).
    const SERVICE: &'static str;
    /// The HTTP/2 path of the method.
    const PATH: &'static str;
    /// Answers a request for [`Method::PATH`].
    fn call(self, request: http::Request<Body>) -> BoxFuture<http::Response<Body>, Infallible>;
}

/// tonic's view of a [`Method`].
#[derive(Clone)]
pub struct OneMethod<M>(pub M);

impl<M: Method> NamedService for OneMethod<M> {
    const NAME: &'static str = M::SERVICE;
}

impl<M: Method> Service<http::Request<Body>> for OneMethod<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == M::PATH {
            return self.0.clone().call(request);
        }
        let status = Status::unimplemented(format!(
            "{} is not served here (only {})",
            request.uri().path(),
            M::PATH
        ));
        Box::pin(async move { Ok(status.into_http()) })
    }
}
