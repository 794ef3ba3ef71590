//! The emulated ACS: one XEP-0114 component connection that sends connection requests to online
//! CPEs, open-loop (fixed rate) or closed-loop (fixed number in flight), and checks every answer
//! against what it sent. Also the recovery probe of a killed cluster node ([`probe`]).

mod probe;

use crate::cpe::NS_CWMP;
use crate::report::{summarize, CrPhase};
use crate::xml::{self, Frame, Framer};
use sha1::{Digest, Sha1};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Answered,
    TimedOut,
}

struct Request {
    cpe: u32,
    sent: Instant,
    state: State,
}

/// Everything sent so far, indexed by sequence number (the id is `c<seq>`).
struct Tracker {
    requests: Vec<Request>,
    /// Pending sequence numbers in send order (answered ones are skipped lazily).
    order: VecDeque<u32>,
    in_flight: usize,
    domain: String,
    resource: String,
    timeout: Duration,
    /// When set, each completed request as (CPE, answered `result` by that CPE), for the probe.
    completions: Option<Vec<(u32, bool)>>,
}

impl Tracker {
    fn new(domain: String, resource: String, timeout: Duration) -> Tracker {
        Tracker {
            requests: Vec::new(),
            order: VecDeque::new(),
            in_flight: 0,
            domain,
            resource,
            timeout,
            completions: None,
        }
    }

    fn completed(&mut self, cpe: u32, ok: bool) {
        if let Some(completions) = &mut self.completions {
            completions.push((cpe, ok));
        }
    }

    /// Start tracking a request to `cpe`; returns its sequence number.
    fn track(&mut self, cpe: u32, now: Instant) -> u32 {
        let seq = self.requests.len() as u32;
        self.requests.push(Request {
            cpe,
            sent: now,
            state: State::Pending,
        });
        self.order.push_back(seq);
        self.in_flight += 1;
        seq
    }

    /// Account for one stanza from the server; true when it completed a pending request.
    fn on_element(&mut self, element: &str, now: Instant, tally: &mut Tally) -> bool {
        if xml::name(element) != "iq" {
            tally.unexpected += 1;
            return false;
        }
        let kind = xml::attr(element, "type").unwrap_or_default();
        if kind != "result" && kind != "error" {
            tally.unexpected += 1;
            return false;
        }
        let id = xml::attr(element, "id").unwrap_or_default();
        let seq = id.strip_prefix('c').and_then(|s| s.parse::<usize>().ok());
        let Some(request) = seq.and_then(|s| self.requests.get_mut(s)) else {
            tally.mismatch(format!("unknown id: {element}"));
            return false;
        };
        match request.state {
            State::Answered => {
                tally.duplicates += 1;
                return false;
            }
            State::TimedOut => {
                tally.late += 1;
                return false;
            }
            State::Pending => {}
        }
        request.state = State::Answered;
        self.in_flight -= 1;
        tally.last_answer = Some(now);
        let user = crate::cpe::username(request.cpe as usize);
        let bare = format!("{user}@{}", self.domain);
        let full = format!("{bare}/{}", self.resource);
        let from = xml::attr(element, "from").unwrap_or_default();
        if kind == "result" {
            if !from.eq_ignore_ascii_case(&full) {
                tally.mismatch(format!("answer for {full} came from {from:?}: {element}"));
                let cpe = request.cpe;
                self.completed(cpe, false);
                return true;
            }
            tally.ok += 1;
            let cpe = request.cpe;
            let us = now.duration_since(request.sent).as_micros();
            tally.latencies_us.push(us.min(u32::MAX as u128) as u32);
            self.completed(cpe, true);
        } else {
            let cpe = request.cpe;
            let from_ok = from.is_empty()
                || from.eq_ignore_ascii_case(&full)
                || from.eq_ignore_ascii_case(&bare)
                || from.eq_ignore_ascii_case(&self.domain);
            if !from_ok {
                tally.mismatch(format!("error for {full} came from {from:?}: {element}"));
                self.completed(cpe, false);
                return true;
            }
            let condition = xml::error_condition(element).unwrap_or("(none)");
            *tally.errors.entry(condition.to_string()).or_default() += 1;
            self.completed(cpe, false);
        }
        true
    }

    /// Mark requests older than the timeout as timed out; returns how many.
    fn sweep(&mut self, now: Instant, tally: &mut Tally, everything: bool) -> usize {
        let mut expired = 0;
        while let Some(&seq) = self.order.front() {
            let request = &mut self.requests[seq as usize];
            if request.state != State::Pending {
                self.order.pop_front();
                continue;
            }
            if !everything && now.duration_since(request.sent) < self.timeout {
                break;
            }
            request.state = State::TimedOut;
            let cpe = request.cpe;
            self.in_flight -= 1;
            self.order.pop_front();
            self.completed(cpe, false);
            tally.timeouts += 1;
            expired += 1;
        }
        expired
    }
}

/// Figures of the phase being run.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    timeouts: u64,
    duplicates: u64,
    mismatches: u64,
    late: u64,
    unexpected: u64,
    latencies_us: Vec<u32>,
    mismatch_samples: Vec<String>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn mismatch(&mut self, why: String) {
        self.mismatches += 1;
        if self.mismatch_samples.len() < 5 {
            self.mismatch_samples.push(why);
        }
    }
}

pub struct Acs {
    reader: OwnedReadHalf,
    framer: Framer,
    writer_tx: mpsc::UnboundedSender<Vec<u8>>,
    writer: JoinHandle<std::io::Result<()>>,
    component: String,
    cr_password: String,
    /// Indexes of the CPEs that are online.
    online: Vec<u32>,
    tracker: Tracker,
    rng: u64,
}

/// Where and as whom the emulated ACS attaches (`run` and `probe`).
#[derive(clap::Args)]
pub struct AcsArgs {
    /// XEP-0114 component address. Loopback only.
    #[arg(long, default_value = "127.0.0.1:15347")]
    pub component_addr: SocketAddr,
    /// The XMPP domain of the CPEs.
    #[arg(long, default_value = "example.net")]
    pub domain: String,
    #[arg(long, default_value = "acs.example.net")]
    pub component: String,
    #[arg(long, default_value = "bench-component-secret")]
    pub secret: String,
}

pub struct AcsConfig {
    pub addr: SocketAddr,
    pub component: String,
    pub secret: String,
    pub domain: String,
    pub resource: String,
    pub cr_password: String,
    pub timeout: Duration,
    pub seed: u64,
}

impl Acs {
    /// Connect and complete the XEP-0114 handshake.
    pub async fn connect(config: AcsConfig, online: Vec<u32>) -> Result<Acs, String> {
        let mut tcp = TcpStream::connect(config.addr)
            .await
            .map_err(|e| format!("component connect {}: {e}", config.addr))?;
        let _ = tcp.set_nodelay(true);
        let mut framer = Framer::new();
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
            config.component
        );
        tcp.write_all(header.as_bytes())
            .await
            .map_err(|e| format!("component write: {e}"))?;
        let mut buf = vec![0u8; 4096];
        let stream_id = match read_frame(&mut tcp, &mut framer, &mut buf).await? {
            Frame::Header(h) => xml::attr(&h, "id")
                .ok_or_else(|| format!("component stream header without id: {h}"))?
                .to_string(),
            other => return Err(format!("component: expected a header, got {other:?}")),
        };
        let digest = Sha1::digest(format!("{stream_id}{}", config.secret).as_bytes());
        let mut hex = String::with_capacity(40);
        for byte in digest {
            let _ = write!(hex, "{byte:02x}");
        }
        tcp.write_all(format!("<handshake>{hex}</handshake>").as_bytes())
            .await
            .map_err(|e| format!("component write: {e}"))?;
        match read_frame(&mut tcp, &mut framer, &mut buf).await? {
            Frame::Element(e) if xml::name(&e) == "handshake" => {}
            other => return Err(format!("component handshake refused: {other:?}")),
        }
        let (reader, mut write_half) = tcp.into_split();
        let (writer_tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                write_half.write_all(&batch).await?;
            }
            write_half.write_all(b"</stream:stream>").await?;
            write_half.shutdown().await
        });
        Ok(Acs {
            reader,
            framer,
            writer_tx,
            writer,
            component: config.component,
            cr_password: config.cr_password,
            online,
            tracker: Tracker::new(config.domain, config.resource, config.timeout),
            rng: config.seed | 1,
        })
    }

    fn random_cpe(&mut self) -> u32 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        self.online[(r % self.online.len() as u64) as usize]
    }

    /// Append one connection request to `batch` and start tracking it.
    fn add_request(&mut self, batch: &mut Vec<u8>, now: Instant, tally: &mut Tally) {
        let cpe = self.random_cpe();
        self.add_request_to(batch, cpe, now, tally);
    }

    /// Append one connection request to CPE `cpe` to `batch` and start tracking it.
    fn add_request_to(&mut self, batch: &mut Vec<u8>, cpe: u32, now: Instant, tally: &mut Tally) {
        let seq = self.tracker.track(cpe, now);
        let user = crate::cpe::username(cpe as usize);
        let _ = write!(
            Bytes(batch),
            "<iq type='get' id='c{seq}' from='{}' to='{user}@{}/{}'>\
             <connectionRequest xmlns='{NS_CWMP}'><username>{user}</username>\
             <password>{}</password></connectionRequest></iq>",
            self.component,
            self.tracker.domain,
            self.tracker.resource,
            self.cr_password
        );
        tally.sent += 1;
    }

    fn send(&self, batch: Vec<u8>) -> Result<(), String> {
        self.writer_tx
            .send(batch)
            .map_err(|_| "component writer stopped".to_string())
    }

    /// Read whatever is available and account for it; returns how many requests completed.
    async fn read_some(&mut self, buf: &mut [u8], tally: &mut Tally) -> Result<usize, String> {
        let n = self
            .reader
            .read(buf)
            .await
            .map_err(|e| format!("component read: {e}"))?;
        if n == 0 {
            return Err("component connection closed by server".into());
        }
        self.framer.push(&buf[..n]);
        let now = Instant::now();
        let mut completed = 0;
        loop {
            match self.framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Element(e))) => {
                    if xml::name(&e) == "stream:error" {
                        return Err(format!("component stream error: {e}"));
                    }
                    if self.tracker.on_element(&e, now, tally) {
                        completed += 1;
                    }
                }
                Ok(Some(Frame::Close)) => return Err("component stream closed by server".into()),
                Ok(Some(Frame::Header(_))) => return Err("component: second header".into()),
                Err(e) => return Err(format!("component: {e}")),
            }
        }
        Ok(completed)
    }

    /// Open loop: `rate` requests per second for `secs`, on a 1 ms schedule, then wait for the
    /// stragglers (at most the answer timeout).
    pub async fn open_loop(&mut self, rate: f64, secs: f64) -> Result<CrPhase, String> {
        let total = (rate * secs).round() as u64;
        let mut tally = Tally::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let start = Instant::now();
        let mut last_send = start;
        let mut max_lag = Duration::ZERO;
        let mut error = None;
        loop {
            tokio::select! {
                biased;
                _ = tick.tick() => {
                    let now = Instant::now();
                    let elapsed = now.duration_since(start).as_secs_f64();
                    let due = ((elapsed * rate) as u64).min(total);
                    if tally.sent < due {
                        let scheduled = tally.sent as f64 / rate;
                        let lag = Duration::from_secs_f64((elapsed - scheduled).max(0.0));
                        max_lag = max_lag.max(lag);
                        let mut batch = Vec::with_capacity(((due - tally.sent) * 300) as usize);
                        while tally.sent < due {
                            self.add_request(&mut batch, now, &mut tally);
                        }
                        self.send(batch)?;
                        last_send = now;
                    }
                    self.tracker.sweep(now, &mut tally, false);
                    if tally.sent == total {
                        if self.tracker.in_flight == 0 {
                            break;
                        }
                        if now.duration_since(last_send) > self.tracker.timeout {
                            self.tracker.sweep(now, &mut tally, true);
                            break;
                        }
                    }
                }
                read = self.read_some(&mut buf, &mut tally) => {
                    if let Err(e) = read {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        let send_secs = last_send.duration_since(start).as_secs_f64();
        let mut phase = finish("open", &mut tally, start, error);
        phase.target_rate = Some(rate);
        phase.achieved_send_rate = Some(if send_secs > 0.0 {
            tally.sent as f64 / send_secs
        } else {
            0.0
        });
        phase.max_send_lag_ms = Some(max_lag.as_secs_f64() * 1e3);
        phase.send_secs = send_secs;
        Ok(phase)
    }

    /// Closed loop: keep `in_flight` requests outstanding for `secs`, then let them finish.
    pub async fn closed_loop(&mut self, in_flight: usize, secs: f64) -> Result<CrPhase, String> {
        let mut tally = Tally::default();
        let mut buf = vec![0u8; 64 * 1024];
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut batch = Vec::new();
        for _ in 0..in_flight {
            self.add_request(&mut batch, start, &mut tally);
        }
        self.send(std::mem::take(&mut batch))?;
        let mut error = None;
        loop {
            let freed = tokio::select! {
                read = self.read_some(&mut buf, &mut tally) => match read {
                    Ok(n) => n,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                },
                _ = tick.tick() => self.tracker.sweep(Instant::now(), &mut tally, false),
            };
            let now = Instant::now();
            if now < end {
                for _ in 0..freed {
                    self.add_request(&mut batch, now, &mut tally);
                }
                if !batch.is_empty() {
                    self.send(std::mem::take(&mut batch))?;
                }
            } else if self.tracker.in_flight == 0 {
                break;
            } else if now > end + self.tracker.timeout {
                self.tracker.sweep(now, &mut tally, true);
                break;
            }
        }
        let mut phase = finish("closed", &mut tally, start, error);
        phase.in_flight = Some(in_flight);
        phase.send_secs = secs;
        Ok(phase)
    }

    /// Close the component stream (bounded wait for the writer).
    pub async fn close(self) {
        drop(self.writer_tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.writer).await;
    }
}

async fn read_frame(
    tcp: &mut TcpStream,
    framer: &mut Framer,
    buf: &mut [u8],
) -> Result<Frame, String> {
    loop {
        if let Some(frame) = framer.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let n = tcp
            .read(buf)
            .await
            .map_err(|e| format!("component read: {e}"))?;
        if n == 0 {
            return Err("component stream closed by server".to_string());
        }
        framer.push(&buf[..n]);
    }
}

fn finish(mode: &str, tally: &mut Tally, start: Instant, error: Option<String>) -> CrPhase {
    let end = tally.last_answer.unwrap_or(start);
    let secs = end.duration_since(start).as_secs_f64();
    let answered = tally.ok + tally.errors.values().sum::<u64>();
    CrPhase {
        mode: mode.to_string(),
        target_rate: None,
        achieved_send_rate: None,
        max_send_lag_ms: None,
        in_flight: None,
        secs,
        send_secs: 0.0,
        sent: tally.sent,
        answered_ok: tally.ok,
        answered_error: answered - tally.ok,
        errors: std::mem::take(&mut tally.errors),
        timeouts: tally.timeouts,
        duplicates: tally.duplicates,
        mismatches: tally.mismatches,
        late: tally.late,
        unexpected: tally.unexpected,
        mismatch_samples: std::mem::take(&mut tally.mismatch_samples),
        throughput_per_s: if secs > 0.0 {
            answered as f64 / secs
        } else {
            0.0
        },
        latency: summarize(std::mem::take(&mut tally.latencies_us)),
        cpu: Default::default(),
        broker_cpu_per_cr_us: None,
        tool_cpu_per_cr_us: None,
        error,
    }
}

/// `fmt::Write` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new("example.net".into(), "cwmp".into(), Duration::from_secs(5))
    }

    #[test]
    fn answers_are_checked_by_id_and_sender() {
        let mut t = tracker();
        let mut tally = Tally::default();
        let now = Instant::now();
        assert_eq!(t.track(7, now), 0);
        assert_eq!(t.track(8, now), 1);
        assert_eq!(t.track(9, now), 2);
        // Right id, right sender.
        let ok =
            "<iq type='result' id='c0' from='cpe-000007@example.net/cwmp' to='acs.example.net'/>";
        assert!(t.on_element(ok, now, &mut tally));
        assert_eq!(tally.ok, 1);
        // The same answer again is a duplicate.
        assert!(!t.on_element(ok, now, &mut tally));
        assert_eq!(tally.duplicates, 1);
        // An answer for c1 from the CPE of c2: the broker mixed up ids.
        let wrong = "<iq type='result' id='c1' from='cpe-000009@example.net/cwmp'/>";
        assert!(t.on_element(wrong, now, &mut tally));
        assert_eq!(tally.mismatches, 1);
        // An id never sent.
        assert!(!t.on_element("<iq type='result' id='c99'/>", now, &mut tally));
        assert!(!t.on_element("<iq type='result' id='zz'/>", now, &mut tally));
        assert_eq!(tally.mismatches, 3);
        // A broker error answered on the CPE's behalf.
        let err = "<iq type='error' id='c2' from='cpe-000009@example.net/cwmp'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert!(t.on_element(err, now, &mut tally));
        assert_eq!(tally.errors.get("service-unavailable"), Some(&1));
        assert_eq!(t.in_flight, 0);
        // Something that is not an answer.
        assert!(!t.on_element("<message/>", now, &mut tally));
        assert_eq!(tally.unexpected, 1);
    }

    #[test]
    fn the_probe_sees_which_cpe_answered_how() {
        let mut t = tracker();
        t.completions = Some(Vec::new());
        let mut tally = Tally::default();
        let now = Instant::now();
        t.track(7, now);
        t.track(8, now);
        t.track(9, now);
        let ok = "<iq type='result' id='c0' from='cpe-000007@example.net/cwmp'/>";
        let offline = "<iq type='error' id='c1' from='cpe-000008@example.net/cwmp'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>";
        assert!(t.on_element(ok, now, &mut tally));
        assert!(t.on_element(offline, now, &mut tally));
        // A duplicate completes nothing and reports nothing.
        assert!(!t.on_element(ok, now, &mut tally));
        assert_eq!(t.sweep(now + Duration::from_secs(6), &mut tally, false), 1);
        assert_eq!(
            t.completions.take().unwrap(),
            vec![(7, true), (8, false), (9, false)]
        );
    }

    #[test]
    fn timeouts_and_late_answers() {
        let mut t = tracker();
        let mut tally = Tally::default();
        let then = Instant::now();
        t.track(1, then);
        t.track(2, then);
        assert_eq!(t.sweep(then + Duration::from_secs(1), &mut tally, false), 0);
        assert_eq!(t.sweep(then + Duration::from_secs(6), &mut tally, false), 2);
        assert_eq!(tally.timeouts, 2);
        assert_eq!(t.in_flight, 0);
        let late = "<iq type='result' id='c1' from='cpe-000002@example.net/cwmp'/>";
        assert!(!t.on_element(late, then, &mut tally));
        assert_eq!(tally.late, 1);
        t.track(3, then);
        assert_eq!(t.sweep(then, &mut tally, true), 1);
    }
}
