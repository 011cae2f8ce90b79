//! A fault proxy: a TCP proxy on 127.0.0.1 in front of a storage server that
//! misbehaves on request, as networks do: refuses connections, stalls (stops
//! answering, or stops reading an upload), resets a connection part-way
//! through a response, or throttles. A fault applies to the next `n`
//! connections, then the proxy passes traffic through again.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Closes it at once.
    Refuse,
    /// Forwards this many bytes of the server's answer, then nothing more,
    /// keeping the connection open.
    StallResponseAfter(u64),
    /// Forwards this many bytes of the client's request, then reads no more
    /// of it (the client's upload stops), keeping the connection open.
    StallRequestAfter(u64),
    /// Forwards this many bytes of the server's answer, then resets the
    /// connection (RST).
    ResetResponseAfter(u64),
    /// Passes both ways at most this many bytes per second.
    Throttle(u64),
    /// Answers a connection whose first request carries this header (lower
    /// case) with an S3 `501 NotImplemented` error, as a server without the
    /// feature does; passes other connections through.
    NotImplemented(&'static str),
    /// Answers a connection whose first request lacks this header line
    /// (`name: value`, lower case) with 401, as a store that checks
    /// credentials does (the GCS emulator checks none); passes the others.
    Unauthorized(&'static str),
    /// Answers a connection whose first request is signed for a region
    /// other than this one as AWS answers for a bucket in this region asked
    /// through another region's endpoint: `301 PermanentRedirect` with
    /// `x-amz-bucket-region` (bodiless to a HEAD). Passes requests signed for
    /// this region. (No local S3 server checks regions.)
    BucketInRegion(&'static str),
    /// Answers a connection whose first request's `x-ms-date` (or `Date`) is more than
    /// 15 minutes from the proxy's clock as Azure answers a Shared Key
    /// request from a machine whose clock is off: `403
    /// AuthenticationFailed`, with the server's `Date`. Passes the others.
    /// (Azurite does not check the date.)
    AzureDateWindow,
    /// Flips one bit of the byte at this offset of a connection's request
    /// stream (an upload's body, past its head), as a faulty NIC or
    /// middlebox would: once, on the first connection to reach it, however
    /// many connections the fault applies to; passes everything else.
    FlipRequestByte(u64),
}

type Plan = Arc<Mutex<VecDeque<(Fault, usize)>>>;

pub struct FaultProxy {
    pub port: u16,
    plan: Plan,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to the server on 127.0.0.1:`upstream`, passing traffic through.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let plan: Plan = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (plan.clone(), stop.clone());
        // Whether a `FlipRequestByte` has flipped its byte.
        let f = Arc::new(AtomicBool::new(false));
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let fault = {
                            let mut plan = p.lock().unwrap();
                            while plan.front().is_some_and(|(_, n)| *n == 0) {
                                plan.pop_front();
                            }
                            plan.front_mut().map(|(f, n)| {
                                *n -= 1;
                                *f
                            })
                        };
                        let stop = s.clone();
                        let flipped = f.clone();
                        std::thread::spawn(move || serve(client, upstream, fault, stop, flipped));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        FaultProxy {
            port,
            plan,
            stop,
            accept: Some(accept),
        }
    }

    /// Applies `fault` to the next `connections` connections (after the
    /// faults injected before it).
    pub fn inject(&self, fault: Fault, connections: usize) {
        self.plan.lock().unwrap().push_back((fault, connections));
    }

    /// Passes everything through again.
    pub fn heal(&self) {
        self.plan.lock().unwrap().clear();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    fault: Option<Fault>,
    stop: Arc<AtomicBool>,
    flipped: Arc<AtomicBool>,
) {
    if fault == Some(Fault::Refuse) {
        reset(&client);
        return;
    }
    if let Some(Fault::Unauthorized(line)) = fault
        && !first_request_head(&client).contains(&format!("\r\n{line}\r\n"))
    {
        let body = "{\"error\":{\"code\":401,\"message\":\"Invalid Credentials\"}}";
        let mut c = &client;
        let _ = write!(
            c,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    if let Some(Fault::BucketInRegion(region)) = fault {
        let head = first_request_head(&client);
        if !head.contains(&format!("/{region}/s3/aws4_request")) {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PermanentRedirect</Code>\
                 <Message>The bucket you are attempting to access must be addressed using the \
                 specified endpoint. Please send all future requests to this endpoint.</Message>\
                 <Endpoint>cairn-test.s3.{region}.amazonaws.com</Endpoint></Error>"
            );
            let body = if head.starts_with("head ") { "" } else { &body };
            let mut c = &client;
            let _ = write!(
                c,
                "HTTP/1.1 301 Moved Permanently\r\nx-amz-bucket-region: {region}\r\n\
                 Content-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
    if fault == Some(Fault::AzureDateWindow) {
        let head = first_request_head(&client);
        let sent = head
            .lines()
            .find_map(|l| l.strip_prefix("x-ms-date:").or(l.strip_prefix("date:")))
            .and_then(http_date);
        let now = time::OffsetDateTime::now_utc();
        if sent.is_some_and(|d| (d - now).abs() > time::Duration::minutes(15)) {
            let date = now
                .format(&time::format_description::well_known::Rfc2822)
                .unwrap()
                .replace("+0000", "GMT");
            let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error>\
                        <Code>AuthenticationFailed</Code><Message>Server failed to authenticate \
                        the request. Make sure the value of Authorization header is formed \
                        correctly including the signature.</Message><AuthenticationErrorDetail>\
                        Request date header too old</AuthenticationErrorDetail></Error>";
            let body = if head.starts_with("head ") { "" } else { body };
            let mut c = &client;
            let _ = write!(
                c,
                "HTTP/1.1 403 Server failed to authenticate the request.\r\n\
                 x-ms-error-code: AuthenticationFailed\r\nDate: {date}\r\n\
                 Content-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
    if let Some(Fault::NotImplemented(header)) = fault
        && first_request_head(&client).contains(&format!("\r\n{header}:"))
    {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented\
                    </Code><Message>A header you provided implies functionality that is not \
                    implemented</Message></Error>";
        let mut c = &client;
        let _ = write!(
            c,
            "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        reset(&client);
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // Either side ending ends the connection (a stalled direction included).
    let done = Arc::new(AtomicBool::new(false));
    let (stop2, done2) = (stop.clone(), done.clone());
    let up = std::thread::spawn(move || pump(c2, s2, fault, false, stop2, done2, &flipped));
    pump(
        server,
        client,
        fault,
        true,
        stop,
        done,
        &AtomicBool::new(true),
    );
    let _ = up.join();
}

/// Copies `from` to `to`, applying the fault to its direction.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    fault: Option<Fault>,
    response: bool,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    flipped: &AtomicBool,
) {
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let limit = match fault {
        Some(Fault::StallResponseAfter(n) | Fault::ResetResponseAfter(n)) if response => Some(n),
        Some(Fault::StallRequestAfter(n)) if !response => Some(n),
        _ => None,
    };
    let rate = match fault {
        Some(Fault::Throttle(r)) => Some(r.max(1)),
        _ => None,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
        let want = match (limit, rate) {
            (Some(l), _) => (l.saturating_sub(sent) as usize).min(buf.len()),
            (None, Some(r)) => (r as usize / 10).clamp(1, buf.len()),
            (None, None) => buf.len(),
        };
        if want == 0 {
            if fault == Some(Fault::ResetResponseAfter(limit.unwrap_or(0))) {
                reset(&to);
                reset(&from);
                return;
            }
            // Stalled: hold the connection open, move nothing, until the
            // peer gives up.
            let mut probe = [0u8; 1];
            match from.peek(&mut probe) {
                Ok(0) => break,
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
            continue;
        }
        match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(Fault::FlipRequestByte(at)) = fault
                    && !response
                    && (sent..sent + n as u64).contains(&at)
                    && !flipped.swap(true, Ordering::Relaxed)
                {
                    buf[(at - sent) as usize] ^= 0x10;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
                if let Some(r) = rate {
                    std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = to.shutdown(Shutdown::Write);
}

/// The head of the first request on `client`, in lower case, read without
/// taking it (empty if none comes).
/// An HTTP date in lower case (`fri, 04 dec 2026 17:00:00 gmt`, as
/// [`first_request_head`] gives it).
fn http_date(d: &str) -> Option<time::OffsetDateTime> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let f: Vec<&str> = d.trim().split([' ', ':']).collect();
    let [_, day, month, year, h, m, sec, "gmt"] = f[..] else {
        return None;
    };
    let month = MONTHS.iter().position(|n| *n == month)? as u8 + 1;
    let date = time::Date::from_calendar_date(
        year.parse().ok()?,
        time::Month::try_from(month).ok()?,
        day.parse().ok()?,
    )
    .ok()?;
    let t = time::Time::from_hms(h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc())
}

fn first_request_head(client: &TcpStream) -> String {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; 16 << 10];
    let mut seen = 0;
    for _ in 0..100 {
        match client.peek(&mut buf) {
            Ok(n) if n > seen => seen = n,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
        let head = String::from_utf8_lossy(&buf[..seen]).to_ascii_lowercase();
        if let Some(end) = head.find("\r\n\r\n") {
            return head[..end + 2].to_string();
        }
    }
    String::new()
}

/// Closes a connection with a reset (RST), as a crashed peer or a middlebox does.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}
