//! An open-loop HTTP/1.1 load generator: requests are due on a fixed schedule (request `i` at
//! `t0 + i / rate`), spread over N keep-alive connections, and each latency is measured from the
//! request's *scheduled* time, not from when it was actually written. A server (or a client) that
//! falls behind therefore shows up as latency instead of silently lowering the offered load
//! (no coordinated omission).
//!
//! Each generator thread (one per 60 000 requests/s of schedule) runs a single-threaded tokio
//! runtime of its own: a dispatcher task woken by a timerfd (microsecond precision, where tokio's
//! timers round to milliseconds) releases the thread's share of request indexes into a channel at
//! their scheduled times, and the thread's connections take the next released index as soon as
//! they are idle.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// Longest a single request may take before it counts as an error and its connection is replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Most response bytes accepted (hello world, or a static body of up to 1 MiB with `--body-bytes`).
const MAX_RESPONSE: usize = 2 * 1024 * 1024;

/// What to send.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub addr: SocketAddr,
    /// Requests per second.
    pub rate: f64,
    pub connections: usize,
    /// Requests in this leading window are sent but their latencies are not recorded.
    pub warmup: Duration,
    /// The recorded window.
    pub duration: Duration,
    /// Pin the generator's threads to this CPU.
    pub cpu: Option<usize>,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct OpenLoopResult {
    /// Requests scheduled (warm-up included).
    pub scheduled: u64,
    /// Responses received (warm-up included).
    pub completed: u64,
    /// Requests that failed or timed out (warm-up included).
    pub errors: u64,
    /// Non-200 responses (warm-up included).
    pub non_200: u64,
    /// CPU time the generator's threads used (connecting included), in nanoseconds.
    pub cpu_ns: u64,
    /// Latencies of the recorded window, in nanoseconds, sorted ascending.
    pub latencies_ns: Vec<u64>,
}

impl OpenLoopResult {
    /// The `q` quantile (0..=1) in microseconds, `None` without samples.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let n = self.latencies_ns.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.latencies_ns[rank - 1] as f64 / 1_000.0)
    }
}

#[derive(Default)]
struct WorkerStats {
    completed: u64,
    errors: u64,
    non_200: u64,
    latencies_ns: Vec<u64>,
}

/// Most requests per second one generator thread is given; faster schedules are split over
/// several threads (request `i` goes to thread `i % threads`), each with its own connections.
pub const MAX_RATE_PER_THREAD: f64 = 60_000.0;

/// The dispatcher wakes at most this often: a request is released at its scheduled time, or up
/// to this much later when requests are due closer together than this (they then go out together).
/// Each wake-up costs a timer interrupt and two context switches, which on a small VM cost more
/// than the request itself. Latency is measured from the scheduled time, so the delay counts.
pub const DISPATCH_TICK: Duration = Duration::from_micros(200);

/// One thread's share of a schedule.
#[derive(Debug, Clone, Copy)]
struct Part {
    index: u64,
    parts: u64,
    t0: Instant,
    total: u64,
    warmup_n: u64,
    period_ns: f64,
}

impl Part {
    fn due(&self, i: u64) -> Instant {
        self.t0 + Duration::from_nanos((i as f64 * self.period_ns) as u64)
    }
}

/// Runs the schedule to completion (blocking: call it from a thread of its own). Bounded: the
/// schedule is finite, each request times out after 2 s and the whole run after its length + 10 s.
pub fn run(spec: &OpenLoop) -> Result<OpenLoopResult> {
    if !(spec.rate.is_finite() && spec.rate >= 1.0) {
        bail!("open-loop rate must be at least 1 request/s, got {}", spec.rate);
    }
    if spec.connections == 0 {
        bail!("open-loop needs at least one connection");
    }
    let parts = ((spec.rate / MAX_RATE_PER_THREAD).ceil() as usize).clamp(1, spec.connections);
    // Every thread connects first, so the schedule does not start with the handshakes.
    let t0 = Instant::now() + Duration::from_millis(200);
    let total = ((spec.warmup + spec.duration).as_secs_f64() * spec.rate).round() as u64;
    let warmup_n = (spec.warmup.as_secs_f64() * spec.rate).round() as u64;
    let mut handles = Vec::with_capacity(parts);
    for index in 0..parts {
        let part = Part {
            index: index as u64,
            parts: parts as u64,
            t0,
            total,
            warmup_n,
            period_ns: 1e9 / spec.rate,
        };
        // Connections split as evenly as possible.
        let connections = spec.connections / parts + usize::from(index < spec.connections % parts);
        let addr = spec.addr;
        let cpu = spec.cpu;
        let limit = spec.warmup + spec.duration + Duration::from_secs(10);
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        crate::measure::pin_to_cpu(0, cpu)?;
                    }
                    run_part(addr, connections, part, limit)
                })
                .context("starting a load generator thread")?,
        );
    }
    let mut result = OpenLoopResult::default();
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(r)) => {
                result.scheduled += r.scheduled;
                result.completed += r.completed;
                result.errors += r.errors;
                result.non_200 += r.non_200;
                result.cpu_ns += r.cpu_ns;
                result.latencies_ns.extend(r.latencies_ns);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow::anyhow!("a load generator thread panicked"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    result.latencies_ns.sort_unstable();
    Ok(result)
}

/// One generator thread: its own single-threaded runtime, `connections` keep-alive connections and
/// the requests `i` with `i % parts == index`.
fn run_part(addr: SocketAddr, connections: usize, part: Part, limit: Duration) -> Result<OpenLoopResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the load generator's runtime")?;
    let cpu_start = crate::measure::thread_cpu_ns();
    let mut result = runtime.block_on(async move {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            conns.push(Some(connect(addr).await?));
        }
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let rx = Arc::new(Mutex::new(rx));
        let timer = PreciseTimer::new()?;
        let dispatcher = dispatch(timer, tx, part);
        let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: palisade-bench\r\n\r\n");
        let workers = futures::future::join_all(
            conns
                .into_iter()
                .map(|conn| worker(conn, addr, rx.clone(), request.as_bytes(), part)),
        );
        let (sent, stats) = tokio::time::timeout(limit, futures::future::join(dispatcher, workers))
            .await
            .with_context(|| format!("the open-loop run did not finish within {limit:?}"))?;
        let mut result = OpenLoopResult {
            scheduled: sent?,
            ..OpenLoopResult::default()
        };
        for s in stats {
            result.completed += s.completed;
            result.errors += s.errors;
            result.non_200 += s.non_200;
            result.latencies_ns.extend(s.latencies_ns);
        }
        Ok::<_, anyhow::Error>(result)
    })?;
    result.cpu_ns = crate::measure::thread_cpu_ns().saturating_sub(cpu_start);
    Ok(result)
}

/// Releases this part's request indexes at their scheduled times (several at once when the
/// generator fell behind). Dropping the sender at the end closes the channel, which ends the
/// workers. Returns how many were released.
async fn dispatch(timer: PreciseTimer, tx: mpsc::UnboundedSender<u64>, part: Part) -> Result<u64> {
    let mut i = part.index;
    let mut sent = 0;
    let mut last = Instant::now();
    while i < part.total {
        timer.sleep_until(part.due(i).max(last + DISPATCH_TICK)).await?;
        let now = Instant::now();
        last = now;
        while i < part.total && part.due(i) <= now {
            if tx.send(i).is_err() {
                return Ok(sent);
            }
            sent += 1;
            i += part.parts;
        }
    }
    Ok(sent)
}

/// A timerfd driven by the runtime's reactor: wakes within microseconds of its deadline, where
/// tokio's own timers round to milliseconds.
struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    fn new() -> Result<PreciseTimer> {
        // SAFETY: timerfd_create has no memory preconditions; a non-negative result is a new fd
        // that we own from here on.
        let raw =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        // SAFETY: `raw` is a valid, open fd owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd is moved into the AsyncFd, so the fd stays open and refers to the
        // same timer for the AsyncFd's whole lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("registering the timerfd with the reactor: {e}"))?;
        Ok(PreciseTimer { fd })
    }

    async fn sleep_until(&self, due: Instant) -> Result<()> {
        let now = Instant::now();
        if due <= now {
            return Ok(());
        }
        let wait = due - now;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos()).max(1),
            },
        };
        // SAFETY: the fd is an open timerfd; `spec` is a valid itimerspec; old value not requested.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        loop {
            let mut guard = self.fd.readable().await.context("waiting on the timerfd")?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8 bytes.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn worker(
    mut conn: Option<TcpStream>,
    addr: SocketAddr,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<u64>>>,
    request: &[u8],
    part: Part,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut buf = Vec::with_capacity(4096);
    loop {
        let next = { rx.lock().await.recv().await };
        let Some(i) = next else { break };
        let scheduled = part.due(i);
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if conn.is_none() {
                conn = Some(connect(addr).await?);
            }
            match conn.as_mut() {
                Some(stream) => exchange(stream, request, &mut buf).await,
                None => bail!("no connection"),
            }
        })
        .await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(status)) => {
                stats.completed += 1;
                if status != 200 {
                    stats.non_200 += 1;
                }
                if i >= part.warmup_n {
                    let latency = done.saturating_duration_since(scheduled);
                    stats.latencies_ns.push(latency.as_nanos() as u64);
                }
            }
            Ok(Err(_)) | Err(_) => {
                stats.errors += 1;
                conn = None;
            }
        }
    }
    stats
}

/// Writes one request and reads one whole response (headers + Content-Length body). Returns the
/// status code.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Result<u16> {
    stream.write_all(request).await?;
    buf.clear();
    // The status and the whole response's length, once the head is in.
    let mut framed: Option<(u16, usize)> = None;
    loop {
        if let Some((code, total)) = framed {
            if buf.len() >= total {
                return Ok(code);
            }
        }
        if buf.len() >= MAX_RESPONSE {
            bail!("response larger than {MAX_RESPONSE} bytes");
        }
        let want = framed.map_or(4096, |(_, total)| total - buf.len());
        buf.reserve(want.clamp(4096, MAX_RESPONSE));
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        if framed.is_some() {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = response.parse(buf)? {
            let code = response.code.unwrap_or(0);
            let body_len = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            framed = Some((code, head_len + body_len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let r = OpenLoopResult {
            latencies_ns: (1..=100).map(|v| v * 1_000).collect(),
            ..OpenLoopResult::default()
        };
        assert_eq!(r.quantile_us(0.5), Some(50.0));
        assert_eq!(r.quantile_us(0.99), Some(99.0));
        assert_eq!(r.quantile_us(1.0), Some(100.0));
        assert_eq!(OpenLoopResult::default().quantile_us(0.5), None);
    }

    #[test]
    fn open_loop_against_a_loopback_server() -> Result<()> {
        // A tiny keep-alive server on loopback: every request gets "200 hello".
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut handles = Vec::new();
            for stream in listener.incoming().take(8) {
                let Ok(mut s) = stream else { break };
                handles.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n";
                            if s.write_all(reply).is_err() {
                                return;
                            }
                        }
                    }
                }));
            }
            for h in handles {
                let _ = h.join();
            }
        });
        let result = run(&OpenLoop {
            addr,
            rate: 2_000.0,
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            cpu: None,
        })?;
        assert_eq!(result.scheduled, 1_000);
        assert_eq!(result.completed, 1_000);
        assert_eq!(result.errors, 0);
        assert_eq!(result.non_200, 0);
        assert_eq!(result.latencies_ns.len(), 800);
        // Faster than one thread is given: two threads, two connections each, one schedule.
        let result = run(&OpenLoop {
            addr,
            rate: 2.0 * MAX_RATE_PER_THREAD,
            connections: 4,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
            cpu: None,
        })?;
        let total = (0.25 * 2.0 * MAX_RATE_PER_THREAD).round() as u64;
        assert_eq!(result.scheduled, total);
        assert_eq!(result.completed + result.errors, total);
        drop(server);
        Ok(())
    }
}
