//! The floor under Rampart's data plane: a proxy with no features at all, on the same
//! hyper, hyper-util and tokio, to measure against (`bench/floor.sh`).
//!
//! `bare_proxy LISTEN UPSTREAM [pooled|direct]` — one runtime worker, HTTP/1.1 both ways,
//! every request forwarded as it came to `UPSTREAM` (a `host:port`). `pooled` (the default)
//! goes through hyper-util's pooled client (checkout, then a channel to the connection's
//! task); `direct` gives each client connection one upstream connection of its own, with
//! hyper's `client::conn` and no pool (its connection still runs in a task of its own).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare_proxy LISTEN UPSTREAM [pooled|direct]".into());
    };
    let direct = args.next().as_deref() == Some("direct");
    let listen: SocketAddr = listen.parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream, direct))
}

async fn serve(listen: SocketAddr, upstream: String, direct: bool) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    let pooled: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstream = Arc::<str>::from(upstream);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pooled = pooled.clone();
        let upstream = Arc::clone(&upstream);
        tokio::spawn(async move {
            // `direct`: this client connection's own upstream connection, opened lazily.
            let own = Arc::new(Mutex::new(None));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let pooled = pooled.clone();
                let upstream = Arc::clone(&upstream);
                let own = Arc::clone(&own);
                async move {
                    let response = if direct {
                        forward_direct(request, &upstream, &own).await
                    } else {
                        forward_pooled(request, &upstream, &pooled).await
                    };
                    Ok::<_, Infallible>(response.unwrap_or_else(|_| {
                        let mut response = Response::new(http_body_util::Either::Right(
                            http_body_util::Empty::new(),
                        ));
                        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                        response
                    }))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Answer = Response<http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>>;

async fn forward_pooled(
    mut request: Request<Incoming>,
    upstream: &str,
    client: &Client<HttpConnector, Incoming>,
) -> Result<Answer, Error> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = format!("http://{upstream}{path}").parse::<Uri>()?;
    let response = client.request(request).await?;
    Ok(response.map(http_body_util::Either::Left))
}

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

async fn forward_direct(
    request: Request<Incoming>,
    upstream: &str,
    own: &Mutex<Option<Sender>>,
) -> Result<Answer, Error> {
    let mut own = own.lock().await;
    if own.as_ref().is_none_or(|sender| sender.is_closed()) {
        let stream = TcpStream::connect(upstream).await?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        *own = Some(sender);
    }
    let Some(sender) = own.as_mut() else {
        return Err("no connection".into());
    };
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    Ok(response.map(http_body_util::Either::Left))
}
