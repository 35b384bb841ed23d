//! The API's connection handling: a bounded number of connections, each closed when it does
//! not send a request's headers in time (idle keep-alive connections too), so idle or slow
//! clients cannot use up the process's file descriptors or starve `/health` and `/ingest`.
//!
//! ```text
//!  accept ─► slot free? ──yes──► serve (hyper http1, header-read timeout) ─► router
//!              │ no
//!              ├► evict the oldest connection that never sent a request ─► serve
//!              └► none to evict: 503 + Retry-After, close
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Limits of the API server (`sluice run --max-connections ...`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; past it, the oldest connection that never sent a request
    /// is closed for the new one, else the new one gets 503.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, counted from when it
    /// opens or its last response ends: an idle connection is closed after it.
    pub header_read_timeout: Duration,
    /// Push queries (`POST /query`) streaming at once; more get 503. Each runs on a thread
    /// of its own (the query's consumer blocks while it waits for records).
    pub max_push_queries: usize,
    /// How long a request's body may take to arrive once its headers did (408 after).
    pub body_read_timeout: Duration,
    /// How long a push query waits while its client reads none of the rows buffered for it
    /// before it stops with a final `error` event.
    pub slow_client_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            max_push_queries: 32,
            body_read_timeout: Duration::from_secs(30),
            slow_client_timeout: Duration::from_secs(30),
        }
    }
}

/// One open connection: whether it sent a request, and how to close it.
#[derive(Debug)]
struct Conn {
    used: Arc<AtomicBool>,
    close: Arc<Notify>,
}

/// The open connections, oldest first (ids grow).
#[derive(Debug, Default)]
struct Conns {
    open: Mutex<BTreeMap<u64, Conn>>,
    next: AtomicU64,
}

impl Conns {
    /// Takes a slot; at the limit, frees one held by a connection that never sent a request.
    fn admit(&self, max: usize) -> Option<(u64, Arc<AtomicBool>, Arc<Notify>)> {
        let mut open = self.open.lock();
        if open.len() >= max {
            let idle = open
                .iter()
                .find(|(_, c)| !c.used.load(Ordering::SeqCst))
                .map(|(id, _)| *id)?;
            if let Some(c) = open.remove(&idle) {
                // notify_one stores a permit, so it lands even before the task waits.
                c.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let used = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        open.insert(
            id,
            Conn {
                used: Arc::clone(&used),
                close: Arc::clone(&close),
            },
        );
        Some((id, used, close))
    }

    fn release(&self, id: u64) {
        self.open.lock().remove(&id);
    }
}

/// The answer to a connection over the limit.
fn busy() -> Vec<u8> {
    let body = "{\"error\": \"too many open connections to the API; retry shortly\"}\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` within `limits` until the future is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) {
    let conns = Arc::new(Conns::default());
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, most likely: wait for connections to close.
                tracing::warn!(error = %e, "The API could not accept a connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((id, used, close)) = conns.admit(limits.max_connections.max(1)) else {
            tokio::spawn(async move {
                let _ = stream.write_all(&busy()).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let conns = Arc::clone(&conns);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                used.store(true, Ordering::SeqCst);
                hyper::service::Service::call(&service, req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = close.notified() => {}
            }
            conns.release(id);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::future::Future as _;

    use super::*;

    #[test]
    fn at_the_limit_the_oldest_unused_connection_makes_room() {
        let conns = Conns::default();
        let (a, used_a, _) = conns.admit(2).unwrap();
        let (_, _, close_b) = conns.admit(2).unwrap();
        used_a.store(true, Ordering::SeqCst);
        // a sent a request: b, never used, is closed for c.
        let (c, used_c, _) = conns.admit(2).unwrap();
        assert!(conns.open.lock().contains_key(&a));
        assert!(conns.open.lock().contains_key(&c));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let notified = close_b.notified();
        futures::pin_mut!(notified);
        assert!(notified.poll(&mut cx).is_ready(), "b was told to close");
        used_c.store(true, Ordering::SeqCst);
        assert!(
            conns.admit(2).is_none(),
            "all in use: the new one is refused"
        );
        conns.release(a);
        assert!(conns.admit(2).is_some());
    }
}
