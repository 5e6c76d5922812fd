//! Sockets: binding the relay's listeners, the TCP accept loop, and a
//! plain HTTP/1.1 server (optionally TLS) that the Docker API front and
//! the metrics listener both run on, each connection on one task with
//! the work its calls hand it ([`ConnTasks`]). Nothing here knows what a
//! request means: each connection gets a service from the caller.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use tunnelgate_session::tls::Subject;

use crate::config::Limits;
use crate::metrics::{Limit, Metrics};

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}; is another relay running there? pick another address with --{what}")]
pub struct BindError {
    /// Which listener, as its flag names it.
    pub what: &'static str,
    /// Its address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds a TCP listener for the flag `what`.
pub async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// Binds QUIC (UDP) and TLS/TCP on the same port, so agents need one
/// address; QUIC's stateless resets are keyed by `reset_key`. With port 0 the UDP port is picked first and the TCP port of
/// the same number may be taken by someone else: then it tries another.
pub async fn bind_agent_listeners(
    addr: SocketAddr,
    tls: &Arc<rustls::ServerConfig>,
    heartbeat: Duration,
    reset_key: &[u8; 32],
    mtu_ceiling: u16,
) -> Result<(quinn::Endpoint, TcpListener), BindError> {
    let idle = tunnelgate_session::quic::idle_timeout(heartbeat);
    let bind_err = |addr| {
        move |source| BindError {
            what: "agent-listen",
            addr,
            source,
        }
    };
    let mut attempts = 0;
    loop {
        let endpoint = tunnelgate_session::quic::server_endpoint(
            addr,
            (**tls).clone(),
            idle,
            reset_key,
            mtu_ceiling,
        )
        .map_err(bind_err(addr))?;
        let quic_addr = endpoint.local_addr().map_err(bind_err(addr))?;
        match TcpListener::bind(quic_addr).await {
            Ok(tcp) => return Ok((endpoint, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempts < 20 =>
            {
                attempts += 1;
                endpoint.close(0u32.into(), b"");
            }
            Err(e) => return Err(bind_err(quic_addr)(e)),
        }
    }
}

/// The next TCP connection, or `None` once `stop` fires. Accept errors
/// (usually EMFILE) are logged and retried after a pause, not spun on.
///
/// Cancel-safe.
pub async fn accept_tcp(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    warn!(error = %e, addr = ?listener.local_addr().ok(),
                          "accept failed; raise the file-descriptor limit if this repeats");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stop.cancelled() => return None,
        }
    }
}

/// What the server knows of one client connection before its first request.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    /// The client's address.
    pub peer: SocketAddr,
    /// The subject of the client certificate it presented over TLS.
    pub client_cert: Option<Subject>,
    /// The server name it asked for over TLS (SNI), lowercase.
    pub server_name: Option<String>,
    /// Runs work on the connection's own task.
    pub tasks: ConnTasks,
}

/// A future [`ConnTasks`] runs.
pub type ConnFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Futures run on one client connection's own task, beside the connection.
///
/// A call's connection to its node driven here takes the request body
/// from the client connection and gives it the response body without
/// waking another task: spawned, it would be woken once per body chunk,
/// often on the other thread, which costs a chunked upload (`docker cp`
/// in, 32 KiB chunks) about a tenth of the relay's CPU.
#[derive(Debug, Clone)]
pub struct ConnTasks(tokio::sync::mpsc::UnboundedSender<ConnFuture>);

impl ConnTasks {
    /// Runs `future` on the connection's task; hands it back when that
    /// task has ended.
    pub fn run(&self, future: ConnFuture) -> Result<(), ConnFuture> {
        self.0.send(future).map_err(|unsent| unsent.0)
    }
}

/// Runs the futures `rx` brings until every [`ConnTasks`] handle is gone
/// and each has ended.
async fn run_conn_tasks(mut rx: tokio::sync::mpsc::UnboundedReceiver<ConnFuture>) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(future) => running.push(future),
                None => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

/// How one HTTP listener serves.
pub struct HttpOptions {
    /// Speak TLS first (client certificates optional).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Let handlers hijack connections (attach, exec).
    pub upgrades: bool,
    /// Request-head limits, and the metrics counting their hits.
    pub limits: Option<(Limits, Arc<Metrics>)>,
    /// Which plain (not TLS) connections run on threads of their own.
    pub placement: Option<Placement>,
}

/// Client connections that run on [`FrontThreads`] rather than on the
/// relay's shared runtime, chosen by their first bytes.
pub struct Placement {
    /// Where they run.
    pub threads: Arc<FrontThreads>,
    /// Whether a connection whose first bytes (the start of its first
    /// request) are these goes there.
    pub wants: FirstBytes,
}

/// A choice made from a connection's first bytes.
pub type FirstBytes = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Threads that each run client connections on a single-threaded runtime
/// of their own, handed out in turn.
///
/// A connection there shares its thread with the node connections its
/// calls make, from start to end: its bytes never wake another thread to
/// look for work. That suits a connection whose calls go straight to a
/// daemon over TCP; one whose calls go over an agent's session would
/// cross to the thread driving the session on every call instead.
#[derive(Debug)]
pub struct FrontThreads {
    senders: Vec<tokio::sync::mpsc::UnboundedSender<ConnFuture>>,
    next: std::sync::atomic::AtomicUsize,
}

impl FrontThreads {
    /// Starts `count` threads; each ends when the pool is dropped and the
    /// connections it runs have ended.
    pub fn start(count: usize) -> std::io::Result<Arc<Self>> {
        let mut senders = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ConnFuture>();
            std::thread::Builder::new()
                .name(format!("front-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let running = TaskTracker::new();
                        while let Some(conn) = rx.recv().await {
                            running.spawn(conn);
                        }
                        running.close();
                        running.wait().await;
                    })
                })?;
            senders.push(tx);
        }
        Ok(Arc::new(Self {
            senders,
            next: Default::default(),
        }))
    }

    /// Runs `conn` on the next thread; hands it back if that thread is gone.
    fn run(&self, conn: ConnFuture) -> Result<(), ConnFuture> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].send(conn).map_err(|unsent| unsent.0)
    }
}

/// How long a TLS handshake or request head may take where no limit is set.
const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a connection's first request [`Placement`] looks at.
const PLACEMENT_PEEK: usize = 256;

/// Accepts HTTP/1.1 connections until `stop_accepting`, serving each with
/// the service `make_service` gives for it; open connections are asked to
/// finish gracefully then, and dropped at `hard`. Every connection task is
/// tracked on `tracker`.
pub async fn serve_http<F, S, B>(
    listener: TcpListener,
    options: HttpOptions,
    (stop_accepting, hard): (CancellationToken, CancellationToken),
    tracker: TaskTracker,
    make_service: F,
) where
    F: Fn(ConnMeta) -> S + Send + Sync + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let options = Arc::new(options);
    let make_service = Arc::new(make_service);
    loop {
        let Some((tcp, peer)) = accept_tcp(&listener, &stop_accepting).await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            peer,
            options: options.clone(),
            make_service: make_service.clone(),
            stop: stop_accepting.clone(),
            hard: hard.clone(),
        };
        let placed = tracker.clone();
        tracker.spawn(async move {
            let tcp = tokio::select! {
                tcp = conn.place(tcp, &placed) => tcp,
                () = conn.hard.cancelled() => None,
            };
            if let Some(tcp) = tcp {
                conn.serve(tcp).await;
            }
        });
    }
}

/// One accepted client connection and what serving it needs.
struct Conn<F> {
    peer: SocketAddr,
    options: Arc<HttpOptions>,
    make_service: Arc<F>,
    stop: CancellationToken,
    hard: CancellationToken,
}

impl<F> Clone for Conn<F> {
    fn clone(&self) -> Self {
        Self {
            peer: self.peer,
            options: self.options.clone(),
            make_service: self.make_service.clone(),
            stop: self.stop.clone(),
            hard: self.hard.clone(),
        }
    }
}

impl<F, S, B> Conn<F>
where
    F: Fn(ConnMeta) -> S + Send + Sync + 'static,
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Hands the connection to a thread of its own if its first request
    /// asks for it (see [`Placement`]); else gives it back to be served
    /// here. `None` when it is handed on or has ended.
    async fn place(&self, tcp: TcpStream, tracker: &TaskTracker) -> Option<TcpStream> {
        let count = |runs_on: &str| {
            if let Some((_, metrics)) = &self.options.limits {
                metrics
                    .front_connections
                    .with_label_values(&[runs_on])
                    .inc();
            }
        };
        let placement = match &self.options.placement {
            Some(p) if self.options.tls.is_none() => p,
            _ => {
                count("shared_pool");
                return Some(tcp);
            }
        };
        let mut head = [0u8; PLACEMENT_PEEK];
        // A client that sends nothing is cut here at the head timeout, as
        // hyper would cut it; one that closes or fails has nothing to serve.
        // hyper's own head timeout starts after this, so a head sent a
        // byte at a time may take up to twice the timeout in all.
        let n = match tokio::time::timeout(self.head_timeout(), tcp.peek(&mut head)).await {
            Ok(Ok(n)) if n > 0 => n,
            Ok(_) => return None,
            Err(_) => {
                if let Some((_, metrics)) = &self.options.limits {
                    metrics.limit_hit(Limit::HeaderReadTimeout);
                }
                debug!(peer = %self.peer, "no request within the head timeout");
                return None;
            }
        };
        if !(placement.wants)(&head[..n]) {
            count("shared_pool");
            return Some(tcp);
        }
        // The socket moves to the thread's own reactor.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "cannot hand the connection to a front thread");
                return None;
            }
        };
        let conn = self.clone();
        let run = placement
            .threads
            .run(Box::pin(tracker.track_future(async move {
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => conn.serve(tcp).await,
                    Err(e) => {
                        debug!(peer = %conn.peer, error = %e, "cannot register the connection")
                    }
                }
            })));
        match run {
            Ok(()) => count("direct_thread"),
            Err(_) => {
                debug!(peer = %self.peer, "the front threads have stopped; connection dropped")
            }
        }
        None
    }

    fn head_timeout(&self) -> Duration {
        match &self.options.limits {
            Some((limits, _)) => limits.header_read_timeout,
            None => DEFAULT_HEAD_TIMEOUT,
        }
    }

    /// Serves the connection, and the work its calls hand it, to the end.
    async fn serve(self, tcp: TcpStream) {
        let head_timeout = self.head_timeout();
        let Self {
            peer,
            options,
            make_service,
            stop,
            hard,
        } = self;
        let (tasks, tasks_rx) = tokio::sync::mpsc::unbounded_channel();
        let serve = async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new());
            if let Some((limits, _)) = &options.limits {
                builder
                    .header_read_timeout(limits.header_read_timeout)
                    .max_header_size(limits.max_header_bytes)
                    // The front answers too many headers itself with a
                    // clear message; hyper stops only the absurd.
                    .max_headers(limits.max_headers.saturating_mul(4).max(100));
            }
            let (io, client_cert, server_name) = match &options.tls {
                None => (Either::Left(tcp), None, None),
                Some(acceptor) => {
                    match tokio::time::timeout(head_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(tunnelgate_session::tls::subject);
                            let name = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                            (Either::Right(Box::new(tls)), cert, name)
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "API TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "API TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let svc = make_service(ConnMeta {
                peer,
                client_cert,
                server_name,
                tasks: ConnTasks(tasks),
            });
            let conn = builder.serve_connection(TokioIo::new(io), svc);
            let result = if options.upgrades {
                let conn = conn.with_upgrades();
                tokio::pin!(conn);
                drive_conn(conn, &stop, |c| c.graceful_shutdown()).await
            } else {
                tokio::pin!(conn);
                drive_conn(conn, &stop, |c| c.graceful_shutdown()).await
            };
            if let Err(e) = result {
                if let Some((_, metrics)) = &options.limits {
                    if e.is_parse_too_large() {
                        metrics.limit_hit(Limit::HeaderSize);
                    } else if e.is_timeout() {
                        metrics.limit_hit(Limit::HeaderReadTimeout);
                    }
                }
                debug!(%peer, error = %e, "client connection ended with an error");
            }
        };
        // The connection's own work ends with it (the service and its
        // handles are dropped then), or at `hard` with everything, the
        // connection included.
        tokio::select! {
            ((), ()) = Eager::new(async { tokio::join!(serve, run_conn_tasks(tasks_rx)) }) => {}
            () = hard.cancelled() => {}
        }
    }
}

/// A future polled again at once when it woke itself during its poll.
///
/// A client connection and its node connections hand each other work
/// within one task: the request to the node connection, the response
/// back. A task woken during its own poll is rescheduled as a yield,
/// behind other work and with another thread woken to take it, which
/// cost small calls 1.6 times the relay's context switches; polled again
/// at once, the hand-over costs none.
struct Eager<F> {
    inner: Pin<Box<F>>,
    state: Arc<EagerWake>,
    waker: Waker,
}

/// What [`Eager`]'s wakes do: noted while it polls, passed on after.
#[derive(Default)]
struct EagerWake {
    polling: AtomicU8,
    outer: futures_util::task::AtomicWaker,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;
/// Polls in a row at most before an [`Eager`] future yields like any.
const EAGER_POLLS: usize = 16;

impl<F> Eager<F> {
    fn new(inner: F) -> Self {
        let state = Arc::new(EagerWake::default());
        Self {
            inner: Box::pin(inner),
            waker: Waker::from(state.clone()),
            state,
        }
    }
}

impl Wake for EagerWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self
            .polling
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.outer.wake();
        }
    }
}

impl<F: Future> Future for Eager<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.state.outer.register(cx.waker());
        let this = &mut *self;
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..EAGER_POLLS {
            this.state.polling.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.state.polling.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            // A wake after this point goes to the task's own waker.
            if this.state.polling.swap(IDLE, Ordering::AcqRel) != WOKEN {
                return Poll::Pending;
            }
            // Out of tokio's budget, every resource says "later" and wakes
            // at once: polling again would only spin.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Drives one connection to its end; asks it to finish gracefully at
/// `stop`. The hard stop drops it with the rest of its task.
async fn drive_conn<C, T, E>(
    mut conn: Pin<&mut C>,
    stop: &CancellationToken,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<T, E>
where
    C: Future<Output = Result<T, E>>,
{
    tokio::select! {
        r = conn.as_mut() => return r,
        () = stop.cancelled() => graceful(conn.as_mut()),
    }
    conn.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connections_tasks_run_to_their_end_after_the_connection_is_gone() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks = ConnTasks(tx);
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let (ran, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
        tasks
            .run(Box::pin(async move {
                let _ = finished.await;
                let _ = ran.send(());
            }))
            .unwrap_or_else(|_| panic!("the loop is not running yet, but its channel is open"));
        drop(tasks);
        let mut run = Box::pin(run_conn_tasks(rx));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut run)
                .await
                .is_err(),
            "the loop ended while a task was still running"
        );
        finish.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the loop ends once its last task has");
        assert!(ran_rx.try_recv().is_ok(), "the task ran to its end");
    }

    /// Counts the wakes the task gets.
    struct Counted(std::sync::atomic::AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_at_once_and_one_woken_later_wakes_the_task() {
        let outer = Arc::new(Counted(Default::default()));
        let waker = Waker::from(outer.clone());
        let mut cx = Context::from_waker(&waker);

        let mut polls = 0;
        let mut eager = Eager::new(std::future::poll_fn(move |cx| {
            polls += 1;
            if polls < 3 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(polls)
        }));
        assert_eq!(Pin::new(&mut eager).poll(&mut cx), Poll::Ready(3));
        assert_eq!(outer.0.load(Ordering::SeqCst), 0);

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut eager = Eager::new(async move { rx.recv().await });
        assert!(Pin::new(&mut eager).poll(&mut cx).is_pending());
        tx.send(()).unwrap();
        assert_eq!(
            outer.0.load(Ordering::SeqCst),
            1,
            "a wake after the poll reaches the task"
        );
        assert_eq!(Pin::new(&mut eager).poll(&mut cx), Poll::Ready(Some(())));
    }

    #[tokio::test]
    async fn work_for_a_connection_that_has_ended_comes_back() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(rx);
        assert!(ConnTasks(tx).run(Box::pin(async {})).is_err());
    }
}
