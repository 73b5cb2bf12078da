//! The network side: the accept loop, one reader and one writer task per connection, graceful
//! shutdown.
//!
//! A connection's reader takes frames (4-byte length, then the request), checks the length
//! against `socket.request.max.bytes` before reading the body (a buffer of up to 2 MiB is taken
//! at once, a larger one grows only as bytes arrive; the last two are reused), parses the
//! header and does the part of each request that must happen in order (appends, topic changes).
//! The rest (an acks=all produce's wait for its fsync, a long-polling fetch) goes to the
//! writer, which finishes the requests one at a time, oldest first, and writes the responses in
//! request order; at most `requests_in_flight_max` requests are between the two. So pipelined
//! produce requests are appended, and share group commits, while an earlier one still waits. A
//! frame that cannot be taken (bad length, unknown API key, unsupported version, malformed
//! header or body) closes the connection after the responses before it, with one log line;
//! other connections never notice.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use millrace_protocol::{parse_header, FRAME_LEN_PREFIX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::handlers::{self, Chunk, Deferred};
use crate::state::Broker;

/// Bytes read from a socket at a time while a frame body arrives.
const READ_CHUNK: usize = 64 * 1024;
/// Frames up to this size get their whole buffer before the body arrives: a produce request of a
/// client's default `max.request.size` (1 MiB) with room to spare. At most this much per
/// connection is reserved on a length's word alone.
const PREALLOC_MAX: usize = 2 << 20;
/// Frame buffers a connection keeps for reuse (each at most `PREALLOC_MAX`): a producer with
/// requests in flight reads the next one into a buffer an answered request let go of, instead of
/// allocating (and page-faulting in) a new one per request.
const FRAME_POOL: usize = 2;
/// A connection that sends nothing for this long lets go of its pooled frame buffers.
const FRAME_POOL_IDLE: Duration = Duration::from_secs(1);
/// While at least this much of a frame is still to come, the socket's low-water mark is raised
/// to it (`SO_RCVLOWAT`, at most [`LOWAT_MAX`]): the kernel then wakes the reader once the rest
/// has arrived instead of at every segment, so a 1 MiB produce request costs one wake-up, not
/// one per 64 KiB. Reads themselves are unchanged (a non-blocking read returns what is there).
const LOWAT_MIN: usize = 128 * 1024;
/// The largest low-water mark set (the kernel grows the receive buffer to hold it).
const LOWAT_MAX: usize = 1 << 20;
/// The oldest kernel the low-water mark is raised on: from 5.8 TCP also wakes a reader below
/// its mark when the receive buffer is under pressure or the window nearly closed, and lowering
/// the mark signals data already queued (4.18), so a raised mark can delay a wake-up but never
/// lose one. Older kernels read as before.
const LOWAT_KERNEL_MIN: (u32, u32) = (5, 8);
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the broker until SIGTERM or SIGINT, then stops accepting, lets in-flight requests
/// finish and closes the logs cleanly.
pub(crate) async fn serve(broker: Arc<Broker>) -> std::io::Result<()> {
    let listener = TcpListener::bind(broker.args.listen).await?;
    let local = listener.local_addr()?;
    let (host, port) = broker.args.advertised();
    tracing::info!(listen = %local, advertised = %format!("{host}:{port}"), node_id = broker.node_id(), cluster_id = %broker.cluster_id, "millrace is serving Kafka clients");
    let stop_rx = broker.shutdown.subscribe();
    let mut connections = JoinSet::new();

    let retention = {
        let broker = broker.clone();
        let every = Duration::from_millis(broker.args.log_retention_check_interval_ms.max(100));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.enforce_retention()).await;
            }
        })
    };

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let max_connections = broker.args.max_connections.max(1);
    let mut at_limit = false;
    loop {
        let full = connections.len() >= max_connections;
        if full != at_limit {
            at_limit = full;
            if full {
                tracing::warn!(
                    max_connections,
                    "max.connections reached: new connections wait until one closes"
                );
            }
        }
        tokio::select! {
            accepted = listener.accept(), if !full => match accepted {
                Ok((stream, peer)) => {
                    let broker = broker.clone();
                    let stop = stop_rx.clone();
                    connections.spawn(async move { connection(broker, stream, peer, stop).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    drop(listener);
    broker.shutdown.send_replace(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    retention.abort();
    let b = broker.clone();
    let _ = tokio::task::spawn_blocking(move || b.close()).await;
    tracing::info!("logs synced and closed; bye");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// A request being answered: what is left of its handling, and its place among the
/// connection's `requests.in.flight.max`.
struct InFlight {
    rest: Deferred,
    api_key: ApiKey,
    api_version: i16,
    /// When its times are logged (see [`Timing`]).
    timing: Option<Timing>,
    _slot: OwnedSemaphorePermit,
}

/// The request log (`RUST_LOG=millrace::request=debug`), as Kafka's `kafka.request.logger`:
/// one line per answered request with where its time went.
const REQUEST_LOG: &str = "millrace::request";

/// A request's times, taken only while the request log is on.
struct Timing {
    correlation_id: i32,
    bytes: usize,
    /// Its length prefix was in: reading its body started.
    begun: Instant,
    /// Its body was in.
    received: Instant,
    /// Its local work (decode, validation, appends) was done and it was queued for its answer.
    started: Instant,
    /// It became the connection's oldest request waiting for its answer.
    oldest: Option<Instant>,
    /// Its answer was ready (durable, or the long poll over).
    ready: Option<Instant>,
}

impl Timing {
    /// Logs the request's line once its answer has been written.
    fn log(&self, api_key: ApiKey, api_version: i16) {
        let now = Instant::now();
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        let oldest = self.oldest.unwrap_or(self.started).max(self.started);
        let ready = self.ready.unwrap_or(now);
        tracing::debug!(
            target: REQUEST_LOG,
            api = ?api_key,
            version = api_version,
            correlation_id = self.correlation_id,
            bytes = self.bytes,
            // Reading the body after its length (the client sending it, the network).
            read_ms = format_args!("{:.3}", ms(self.begun, self.received)),
            // Decode, validation, appends; waiting for an in-flight slot.
            local_ms = format_args!("{:.3}", ms(self.received, self.started)),
            // Behind the connection's earlier requests.
            queue_ms = format_args!("{:.3}", ms(self.started, oldest)),
            // Waiting for its answer once the oldest: the fsync, the long poll.
            remote_ms = format_args!("{:.3}", ms(oldest, ready)),
            // Writing the answer.
            send_ms = format_args!("{:.3}", ms(ready, now)),
            // From the whole request being in to the answer written.
            total_ms = format_args!("{:.3}", ms(self.received, now)),
            "request"
        );
    }
}

async fn connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let slots = Arc::new(Semaphore::new(broker.args.requests_in_flight_max.max(1)));
    let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
    let writer = tokio::spawn(respond(wr, rx));
    let reason = tokio::select! {
        r = read_loop(&broker, &mut rd, &tx, &slots) => r,
        _ = stop.wait_for(|s| *s) => Ok(()),
        // The writer stopped (a failed write or request): read nothing more.
        _ = tx.closed() => Ok(()),
    };
    drop(tx); // the writer finishes what is queued, then closes
    if let Err(reason) = reason {
        tracing::warn!(%peer, %reason, "closing connection");
    }
    match writer.await {
        Ok(Err(e))
            if e.kind() != std::io::ErrorKind::BrokenPipe
                && e.kind() != std::io::ErrorKind::ConnectionReset =>
        {
            tracing::debug!(%peer, error = %e, "write failed")
        }
        _ => {}
    }
}

/// The connection's writer: finishes the requests in order, one at a time, and writes their
/// responses. Only the oldest request's remaining work (an fsync wait, a long poll) is driven,
/// as a Kafka broker handles a connection's requests one after another: a later answer could
/// not go out before it anyway, and appends happened in the reader already. A completion (an
/// fsync, new data) wakes this task alone; no task, channel or allocation per request.
async fn respond(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
) -> std::io::Result<()> {
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    let mut current: Option<InFlight> = None;
    let mut open = true;
    while open || current.is_some() || !queue.is_empty() {
        if current.is_none() {
            current = queue.pop_front();
            if let Some(t) = current.as_mut().and_then(|r| r.timing.as_mut()) {
                t.oldest = Some(Instant::now());
            }
        }
        let busy = current.is_some();
        let oldest = std::future::poll_fn(|cx| match current.as_mut() {
            Some(r) => r.rest.as_mut().poll(cx),
            None => Poll::Pending,
        });
        tokio::select! {
            biased;
            response = oldest, if busy => {
                // Holds the in-flight slot until the answer is written.
                let Some(mut r) = current.take() else { continue };
                if let Some(t) = r.timing.as_mut() {
                    t.ready = Some(Instant::now());
                }
                match response {
                    Ok(Some(chunks)) => write_chunks(&mut wr, &chunks).await?,
                    Ok(None) => {}
                    Err(e) => {
                        // The connection closes after the responses before this one.
                        tracing::error!(
                            api = ?r.api_key,
                            version = r.api_version,
                            error = %e,
                            "could not answer a request"
                        );
                        return Ok(());
                    }
                }
                if let Some(t) = &r.timing {
                    t.log(r.api_key, r.api_version);
                }
            }
            next = rx.recv(), if open => match next {
                Some(r) => queue.push_back(r),
                None => open = false,
            },
        }
    }
    wr.shutdown().await
}

/// Writes a response: runs of in-memory chunks with vectored writes, record data that lies in a
/// segment file with `sendfile` (no copy through user space; the memory copy is the fallback).
async fn write_chunks(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    chunks: &[Chunk],
) -> std::io::Result<()> {
    let mut i = 0;
    while i < chunks.len() {
        match &chunks[i] {
            Chunk::File { slice, bytes } => {
                if !send_file(wr, slice, bytes.len()).await? {
                    wr.write_all(bytes).await?;
                }
                i += 1;
            }
            Chunk::Mem(_) => {
                let run = chunks[i..].iter().take_while(|c| matches!(c, Chunk::Mem(_))).count();
                write_vectored_all(wr, &chunks[i..i + run]).await?;
                i += run;
            }
        }
    }
    Ok(())
}

/// Sends `len` bytes of `slice` with sendfile(2). `Ok(false)` if nothing was sent and the
/// caller should write the bytes itself (a file that cannot be spliced).
async fn send_file(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    slice: &millrace_storage::FileSlice,
    len: usize,
) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let sock: &TcpStream = wr.as_ref();
    let (out_fd, in_fd) = (sock.as_raw_fd(), slice.file.as_raw_fd());
    let mut offset = slice.position as libc::off_t;
    let end = offset + len as libc::off_t;
    while offset < end {
        sock.writable().await?;
        let want = (end - offset) as usize;
        let sent = sock.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call (the socket is
            // borrowed, the file is held by `slice`); `offset` is a valid pointer.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut offset, want) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e)
                if offset == slice.position as libc::off_t
                    && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Writes all of `chunks` (in-memory ones) with vectored writes of up to 64 slices.
async fn write_vectored_all(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    chunks: &[Chunk],
) -> std::io::Result<()> {
    fn mem(c: &Chunk) -> &[u8] {
        match c {
            Chunk::Mem(b) => b,
            Chunk::File { .. } => &[],
        }
    }
    let (mut i, mut off) = (0usize, 0usize);
    while i < chunks.len() {
        let mut slices = [std::io::IoSlice::new(&[]); 64];
        let mut k = 0;
        for (j, c) in chunks[i..].iter().enumerate().take(slices.len()) {
            slices[k] = std::io::IoSlice::new(if j == 0 { &mem(c)[off..] } else { mem(c) });
            k += 1;
        }
        let mut n = wr.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < chunks.len() {
            let left = mem(&chunks[i]).len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        while i < chunks.len() && mem(&chunks[i]).len() == off {
            i += 1;
            off = 0;
        }
    }
    Ok(())
}

/// A pooled buffer of at least `want` bytes that nothing else references any more, emptied.
fn reuse(pool: &mut Vec<Bytes>, want: usize) -> Option<BytesMut> {
    let i = pool.iter().position(|b| b.is_unique())?;
    let mut buf = pool.swap_remove(i).try_into_mut().ok()?;
    buf.clear();
    (buf.capacity() >= want).then_some(buf)
}

/// Whether this kernel is at least [`LOWAT_KERNEL_MIN`] (read once, from `uname`).
fn lowat_supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: `utsname` is plain C data, for which all-zero bytes are a valid value.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable `utsname` for the call.
        if unsafe { libc::uname(&mut u) } != 0 {
            return false;
        }
        // SAFETY: a successful `uname` leaves `release` NUL-terminated within its array.
        let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
        kernel_at_least(&release.to_string_lossy(), LOWAT_KERNEL_MIN)
    })
}

/// Whether a kernel release string (`6.18.44-fc-v669`) is at least `min` (major, minor).
fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(a), Some(b)) if (a, b) >= min)
}

/// Sets the socket's `SO_RCVLOWAT` to `bytes`; returns the value asked for, which the kernel may
/// have capped lower (at half the largest receive buffer): the caller's record is then above
/// the real mark, so it lowers the mark early, never late.
fn set_rcvlowat(rd: &tokio::net::tcp::OwnedReadHalf, bytes: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the stream's own and open while `rd` lives; `v` outlives the
    // call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            rd.as_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(bytes)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads and dispatches requests until the peer closes (`Ok`) or a frame cannot be taken (`Err`
/// with the reason to log).
async fn read_loop(
    broker: &Arc<Broker>,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    tx: &mpsc::UnboundedSender<InFlight>,
    slots: &Arc<Semaphore>,
) -> Result<(), String> {
    let max = broker.args.socket_request_max_bytes;
    let mut pool: Vec<Bytes> = Vec::with_capacity(FRAME_POOL);
    loop {
        let mut len_buf = [0u8; FRAME_LEN_PREFIX];
        let mut got = 0;
        while got < FRAME_LEN_PREFIX {
            let read = rd.read(&mut len_buf[got..]);
            let n = if pool.is_empty() {
                read.await
            } else {
                // A connection that stays idle lets go of its pooled buffers. `read` is
                // cancel-safe: a timed-out one has taken no byte.
                match tokio::time::timeout(FRAME_POOL_IDLE, read).await {
                    Ok(n) => n,
                    Err(_) => {
                        tracing::trace!(
                            buffers = pool.len(),
                            "idle connection: frame buffers released"
                        );
                        pool.clear();
                        continue;
                    }
                }
            };
            match n {
                Ok(0) => return Ok(()), // the peer closed (a partial length counts as closed)
                Ok(n) => got += n,
                // A client that closes with answers unread resets the connection: a close.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        let len = i32::from_be_bytes(len_buf);
        if len < 0 || len as usize > max {
            return Err(format!(
                "request length {len} is outside [0, socket.request.max.bytes {max}]"
            ));
        }
        let len = len as usize;
        let begun =
            tracing::enabled!(target: REQUEST_LOG, tracing::Level::DEBUG).then(Instant::now);
        // A frame of ordinary size gets its whole buffer at once, so that its bytes are never
        // moved; a larger one grows with what arrives, never by what the length claims.
        let step = if len <= PREALLOC_MAX { len } else { READ_CHUNK };
        let mut frame = reuse(&mut pool, len.min(step))
            .unwrap_or_else(|| BytesMut::with_capacity(len.min(step)));
        // The socket's low-water mark, raised at most once per frame (then lowered for its last
        // bytes, or at its end).
        let (mut lowat, mut raised) = (1, false);
        while frame.len() < len {
            let want = (len - frame.len()).min(step);
            frame.reserve(want);
            let n = rd
                .read_buf(&mut (&mut frame).limit(want))
                .await
                .map_err(|e| format!("read failed: {e}"))?;
            if n == 0 {
                return Err(format!("connection closed in the middle of a {len}-byte request"));
            }
            let rest = len - frame.len();
            if lowat > 1 && rest < lowat {
                // Never above what is still to come (nor, at the end, above the next length
                // word's 4 bytes): the reader would wait for bytes the client sends only after
                // this request's answer. A socket that cannot be set back is closed.
                lowat = set_rcvlowat(rd, 1).map_err(|e| format!("SO_RCVLOWAT: {e}"))?;
            } else if !raised && rest >= LOWAT_MIN && lowat_supported() {
                raised = true;
                lowat = set_rcvlowat(rd, rest.min(LOWAT_MAX)).unwrap_or_else(|e| {
                    tracing::trace!(error = %e, "SO_RCVLOWAT not raised");
                    1
                });
            }
        }
        let received = begun.map(|b| (b, Instant::now()));
        let mut frame: Bytes = frame.freeze();
        if len <= PREALLOC_MAX && pool.len() < FRAME_POOL {
            pool.push(frame.clone()); // a reference: reusable once the request lets go of it
        }
        let header = parse_header(&mut frame).map_err(|e| e.to_string())?;
        let request = handlers::decode(&header, frame).map_err(|e| {
            format!(
                "{:?} v{} (correlation id {}): {e}",
                header.api_key, header.api_version, header.correlation_id
            )
        })?;
        let Ok(permit) = slots.clone().acquire_owned().await else { return Ok(()) };
        if tx.is_closed() {
            // The writer is gone (its permits came free when it stopped): a request started now
            // (an append) would never be answered.
            return Ok(());
        }
        // In request order: appends and topic changes happen here, before the next request is
        // read. What may take a while (fsync waits, long polls) goes on in the writer.
        let rest = handlers::start(broker, &header, request).await;
        let timing = received.map(|(begun, received)| Timing {
            correlation_id: header.correlation_id,
            bytes: len,
            begun,
            received,
            started: Instant::now(),
            oldest: None,
            ready: None,
        });
        let r = InFlight {
            rest,
            api_key: header.api_key,
            api_version: header.api_version,
            timing,
            _slot: permit,
        };
        if tx.send(r).is_err() {
            return Ok(()); // the writer failed; its error is reported by `connection`
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_at_least("6.18.44-fc-v669", (5, 8)));
        assert!(kernel_at_least("5.8.0", (5, 8)));
        assert!(kernel_at_least("5.10.0-28-amd64", (5, 8)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 8)));
        assert!(!kernel_at_least("4.19.0", (5, 8)));
        assert!(!kernel_at_least("", (5, 8)));
        assert!(!kernel_at_least("unknown", (5, 8)));
    }
}
