//! The listening side, bounded: how many connections, how many per address,
//! how long a connection may say nothing, how long it may sit idle, and what
//! happens when accepting fails (file descriptors run out): a pause with
//! backoff, never a spin.
//!
//! Connections are accepted here and handed to tonic as [`Conn`]s. Each
//! carries a [`PeerInfo`] that tonic puts into every request's extensions:
//! the peer's address (for throttling and audit) and the connection's
//! [`Activity`], which [`ActivityLayer`] keeps and [`Conn`] reads to close a
//! connection that has had no call in flight for too long.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tower::{Layer, Service};

use crate::{background::Background, model::ClientCertificate};

/// Connection bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Open connections at most (also kept under the file descriptor limit).
    pub max_connections: usize,
    /// Open connections from one address at most.
    pub max_connections_per_address: usize,
    /// How long a new connection may go without its first call.
    pub handshake_timeout: Duration,
    /// How long a connection may have no call in flight.
    pub idle_timeout: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_address: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// What a connection has been doing, shared by the connection and the
/// calls on it.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    /// Calls in flight.
    active: AtomicUsize,
    /// Calls ever started.
    calls: AtomicU64,
    /// When `active` last changed, in milliseconds since `opened`.
    last_change_ms: AtomicU64,
    /// The connection's reader, woken when the last call in flight ends so
    /// it re-arms its idle timer.
    reader: Mutex<Option<Waker>>,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(0),
            reader: Mutex::new(None),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection should be closed for idleness, or `None` while a
    /// call is in flight.
    fn idle_deadline(&self, settings: &ConnectionSettings) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since =
            self.opened + Duration::from_millis(self.last_change_ms.load(Ordering::Relaxed));
        Some(if self.calls.load(Ordering::Relaxed) == 0 {
            self.opened + settings.handshake_timeout
        } else {
            since + settings.idle_timeout
        })
    }
}

/// Who is on the other end of a connection; in every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    /// The peer's address.
    pub(crate) remote_addr: SocketAddr,
    /// The certificate it presented over TLS, verified against the client CA.
    pub(crate) client_certificate: Option<Arc<ClientCertificate>>,
    activity: Arc<Activity>,
}

/// Open connections per address.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerAddress`], given back on drop.
#[derive(Debug)]
struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut counts = self.0.lock();
        let n = counts.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A connection's byte stream: in the clear, or TLS.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! io {
    ($io:expr, $inner:ident => $call:expr) => {
        match $io {
            Io::Plain($inner) => $call,
            Io::Tls($inner) => $call,
        }
    };
}

/// An accepted connection, as tonic serves it.
#[derive(Debug)]
pub(crate) struct Conn {
    io: Io,
    info: PeerInfo,
    settings: Arc<ConnectionSettings>,
    /// Wakes the reader to check for idleness.
    idle: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    _slot: AddressSlot,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let ready = io!(&mut self.io, io => Pin::new(io).poll_read(cx, buf));
        if let Poll::Ready(read) = ready {
            return Poll::Ready(read);
        }
        // Nothing to read: is the connection idle past its bound? Re-armed
        // from the connection's activity on every poll; the end of the last
        // call in flight wakes this reader to do so.
        *self.info.activity.reader.lock() = Some(cx.waker().clone());
        let deadline = match self.info.activity.idle_deadline(&self.settings) {
            Some(deadline) if deadline <= Instant::now() => {
                // End of stream: hyper closes the connection, which had no
                // call in flight.
                return Poll::Ready(Ok(()));
            }
            Some(deadline) => deadline,
            // Calls in flight: look again when the last one ends.
            None => Instant::now() + self.settings.idle_timeout,
        };
        if self.idle.deadline() != deadline {
            self.idle.as_mut().reset(deadline);
        }
        match self.idle.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                // The deadline passed while calls were in flight: check again.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io!(&mut self.io, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(&mut self.io, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(&mut self.io, io => Pin::new(io).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io!(&mut self.io, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        io!(&self.io, io => io.is_write_vectored())
    }
}

/// A bound listener and the accept task feeding its connections to tonic.
#[derive(Debug)]
pub(crate) struct Listener {
    local_addr: SocketAddr,
    accepted: mpsc::Receiver<Conn>,
    /// Stops accepting when the listener (or its stream) is dropped.
    accept: Background,
}

impl Listener {
    /// Binds `addr` and starts accepting within `settings`, speaking TLS
    /// when given an acceptor.
    pub(crate) async fn bind(
        addr: SocketAddr,
        settings: ConnectionSettings,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let max = settings.max_connections.min(fd_budget()).max(1);
        if max < settings.max_connections {
            tracing::info!(
                max_connections = max,
                "connections capped below the open-file limit (raise `ulimit -n` for more)"
            );
        }
        let (tx, accepted) = mpsc::channel(64);
        let accept = Background(tokio::spawn(accept_loop(
            listener,
            Arc::new(settings),
            max,
            tls,
            tx,
        )));
        Ok(Self {
            local_addr,
            accepted,
            accept,
        })
    }

    /// The bound address (useful with port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections, for `serve_with_incoming`. The accept task stops
    /// with the stream.
    pub(crate) fn incoming(self) -> impl tokio_stream::Stream<Item = io::Result<Conn>> {
        let Self {
            accepted, accept, ..
        } = self;
        tokio_stream::StreamExt::map(ReceiverStream::new(accepted), move |conn| {
            let _keep_accepting = &accept;
            Ok(conn)
        })
    }
}

/// Three quarters of the soft open-file limit, leaving room for the
/// database pool, log files and the process's own.
fn fd_budget() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<usize>().ok())
        .map_or(usize::MAX, |soft| soft / 4 * 3)
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<ConnectionSettings>,
    max: usize,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Conn>,
) {
    let open = Arc::new(Semaphore::new(max));
    let per_address = Arc::new(PerAddress::default());
    let mut backoff = Duration::from_millis(10);
    let mut last_warning: Option<Instant> = None;
    loop {
        // At the cap, stop accepting (new clients wait in the kernel's
        // backlog) until a connection closes.
        let Ok(permit) = Arc::clone(&open).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                // Out of file descriptors or memory: accepting again at once
                // would fail again and spin. Pause, longer each time.
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot accept connections");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Some(slot) = per_address.take(peer.ip(), settings.max_connections_per_address) else {
            // Closed at once: this address holds its share already.
            continue;
        };
        let _ = stream.set_nodelay(true);
        // TCP keepalive finds dead peers that send nothing.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let activity = Arc::new(Activity::new());
        let idle = Box::pin(tokio::time::sleep_until(
            Instant::now() + settings.handshake_timeout,
        ));
        let connection = Conn {
            io: Io::Plain(stream),
            info: PeerInfo {
                remote_addr: peer,
                client_certificate: None,
                activity,
            },
            settings: Arc::clone(&settings),
            idle,
            _permit: permit,
            _slot: slot,
        };
        match &tls {
            None => {
                if tx.send(connection).await.is_err() {
                    return;
                }
            }
            // The handshake on a task of its own, so a slow client holds up
            // no one else; bounded by the handshake timeout.
            Some(acceptor) => {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(connection) = handshake(connection, &acceptor).await {
                        let _ = tx.send(connection).await;
                    }
                });
            }
        }
    }
}

/// Completes the TLS handshake within the handshake timeout; `None` (and
/// the connection closed) when it fails or takes too long.
async fn handshake(mut connection: Conn, acceptor: &TlsAcceptor) -> Option<Conn> {
    let Io::Plain(stream) = connection.io else {
        return Some(connection);
    };
    let timeout = connection.settings.handshake_timeout;
    let peer = connection.info.remote_addr;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    connection.info.client_certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .map(|der| Arc::new(ClientCertificate::from_der(der)));
    connection.io = Io::Tls(Box::new(stream));
    Some(connection)
}

/// Counts the calls in flight on each connection, for the idle bound.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ActivityLayer;

impl<S> Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// The service [`ActivityLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct ActivityService<S> {
    inner: S,
}

/// A call in flight on a connection; counted out when dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        activity.calls.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(reader) = self.0.reader.lock().take()
        {
            reader.wake();
        }
    }
}

impl<S, B> Service<http::Request<B>> for ActivityService<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let in_flight = request
            .extensions()
            .get::<PeerInfo>()
            .map(|peer| InFlight::start(&peer.activity));
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(in_flight);
            response
        })
    }
}
