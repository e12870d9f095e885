//! `nicproxy capture`: records the frames of one MAC or one peer session, as a running
//! daemon's worker steers them, into a pcapng file that tcpdump and Wireshark read.
//!
//! The daemon does the filtering and the copying (see `control::daemon::capture`); this
//! command sends the request over the control socket, turns the stream of records into
//! pcapng (one interface per port the worker receives on: nic, kernel, fabric; each frame
//! marked inbound on the port it arrived on, with its path as a comment, e.g.
//! `in=nic out=kernel`), and stops after `--count` frames, after `--duration`, or on
//! Ctrl-C, always leaving a complete file.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use control::daemon::capture::{next_item, Request, RequestFilter, StreamItem, DEFAULT_SNAPLEN};
use dataplane::sys::signal;
use dataplane::wire::pcapng::{Direction, PcapngWriter};
use dataplane::wire::MacAddr;

/// Options of `nicproxy capture`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("filter").required(true).args(["mac", "session"])))]
#[command(group(clap::ArgGroup::new("target").required(true).args(["config", "socket"])))]
pub struct CaptureArgs {
    /// Capture frames from or to this MAC (aa:bb:cc:dd:ee:ff).
    #[arg(long, value_name = "MAC")]
    mac: Option<MacAddr>,
    /// Capture frames from or to the fabric session with this peer (its node id).
    #[arg(long, value_name = "PEER")]
    session: Option<String>,
    /// The pcapng file to write (replaced if it exists).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    file: PathBuf,
    /// Stop after this many frames.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Bytes kept of each frame.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SNAPLEN,
          value_parser = clap::value_parser!(u16).range(64..=16384))]
    snaplen: u16,
    /// The node's config (to find its control socket).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(short, long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s} s is outside (0, 86400]"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
enum CaptureError {
    #[error(transparent)]
    Config(#[from] control::config::ConfigError),
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {path} (is the daemon running?): {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon refused the capture: {0}")]
    Refused(String),
    #[error("{0}")]
    Protocol(String),
    #[error("the daemon closed the capture without ending it (stopped?); {0} frame(s) written")]
    Cut(u64),
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> CaptureError {
    let action = action.into();
    move |source| CaptureError::Io { action, source }
}

/// What a finished capture reports.
struct Summary {
    frames: u64,
    tail: serde_json::Value,
}

/// Runs `nicproxy capture`.
pub fn run(args: CaptureArgs) -> ExitCode {
    match capture(&args) {
        Ok(s) => {
            let dropped = s.tail["dropped"].as_u64().unwrap_or(0);
            eprintln!(
                "nicproxy capture: {} frame(s) written to {} ({}; {dropped} dropped by the daemon's capture ring)",
                s.frames,
                args.file.display(),
                s.tail["ended"].as_str().unwrap_or("ended"),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nicproxy capture: {e}");
            ExitCode::FAILURE
        }
    }
}

fn socket_path(args: &CaptureArgs) -> Result<PathBuf, CaptureError> {
    match (&args.socket, &args.config) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(c)) => Ok(control::config::Config::load(c)?.control_socket()),
        // clap requires one of the two.
        (None, None) => Err(CaptureError::Protocol(
            "give --config FILE or --socket PATH".into(),
        )),
    }
}

fn capture(args: &CaptureArgs) -> Result<Summary, CaptureError> {
    let socket = socket_path(args)?;
    let request = Request {
        filter: match (&args.mac, &args.session) {
            (Some(m), _) => RequestFilter::Mac(*m),
            (None, Some(p)) => RequestFilter::Session(p.clone()),
            (None, None) => {
                return Err(CaptureError::Protocol(
                    "give --mac MAC or --session PEER".into(),
                ))
            }
        },
        count: args.count,
        snaplen: args.snaplen,
    };
    let file = File::create(&args.file).map_err(|source| CaptureError::Create {
        path: args.file.display().to_string(),
        source,
    })?;
    let result = connect_and_capture(args, &socket, &request, file);
    if matches!(
        result,
        Err(CaptureError::Connect { .. } | CaptureError::Refused(_))
    ) {
        // Nothing was captured: leave no empty file behind.
        let _ = std::fs::remove_file(&args.file);
    }
    result
}

fn connect_and_capture(
    args: &CaptureArgs,
    socket: &Path,
    request: &Request,
    file: File,
) -> Result<Summary, CaptureError> {
    let mut conn = UnixStream::connect(socket).map_err(|source| CaptureError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(io("setting the socket's timeout"))?;
    writeln!(conn, "{}", request.to_line()).map_err(io("sending the capture request"))?;
    let mut reader = BufReader::new(conn.try_clone().map_err(io("cloning the socket"))?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(io("reading the daemon's answer"))?;
    let head: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| CaptureError::Protocol(format!("bad answer from the daemon: {e}")))?;
    if let Some(e) = head.get("error") {
        return Err(CaptureError::Refused(
            e.as_str().unwrap_or_default().to_string(),
        ));
    }
    let node = head["node"].as_str().unwrap_or("?").to_string();
    let mut pcap = PcapngWriter::new(
        BufWriter::new(file),
        &format!("nicproxy {} capture", env!("CARGO_PKG_VERSION")),
        u32::from(args.snaplen),
    )
    .map_err(io(format!("writing {}", args.file.display())))?;
    let ports: Vec<String> = head["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for p in &ports {
        pcap.add_interface(
            &format!("{node}:{p}"),
            &format!("nicproxy node {node}, frames the worker received on its {p} port"),
        )
        .map_err(io(format!("writing {}", args.file.display())))?;
    }
    pcap.flush()
        .map_err(io(format!("writing {}", args.file.display())))?;
    eprintln!(
        "nicproxy capture: node {node}, {}, writing {}",
        head["filter"].as_str().unwrap_or("?"),
        args.file.display()
    );
    // Ctrl-C ends the capture cleanly (the file stays complete) rather than killing it.
    signal::install().map_err(io("installing the SIGINT/SIGTERM handlers"))?;
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(io("setting the socket's timeout"))?;
    let started = Instant::now();
    let mut stop_sent: Option<Instant> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    // Bytes the header line's reader had already buffered belong to the stream.
    buf.extend_from_slice(reader.buffer());
    drop(reader);
    let mut frames: u64 = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Every whole item in the buffer.
        let mut used = 0;
        let mut ended = false;
        while let Some((item, n)) = next_item(&buf[used..]).map_err(CaptureError::Protocol)? {
            used += n;
            match item {
                StreamItem::Frame {
                    time,
                    orig_len,
                    interface,
                    note,
                    data,
                } => {
                    pcap.write_packet(
                        u32::from(interface),
                        time,
                        orig_len,
                        data,
                        Some(Direction::Inbound),
                        Some(note),
                    )
                    .map_err(io(format!("writing {}", args.file.display())))?;
                    frames += 1;
                }
                StreamItem::End => {
                    ended = true;
                    break;
                }
            }
        }
        buf.drain(..used);
        if ended {
            pcap.into_inner()
                .map_err(io(format!("writing {}", args.file.display())))?;
            let tail = read_tail(&mut conn, buf)?;
            return Ok(Summary { frames, tail });
        }
        let due = args.duration.is_some_and(|d| started.elapsed() >= d);
        if stop_sent.is_none() && (due || signal::stop_requested()) {
            // Closing our side asks the daemon to end the stream.
            conn.shutdown(Shutdown::Write)
                .map_err(io("asking the daemon to stop"))?;
            stop_sent = Some(Instant::now());
        }
        if stop_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            let _ = pcap.into_inner();
            return Err(CaptureError::Protocol(format!(
                "the daemon did not end the capture within 5 s of being asked; {frames} frame(s) written"
            )));
        }
        match conn.read(&mut chunk) {
            Ok(0) => {
                let _ = pcap.into_inner();
                return Err(CaptureError::Cut(frames));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                // A quiet moment: keep the file current for whoever reads it meanwhile.
                pcap.flush()
                    .map_err(io(format!("writing {}", args.file.display())))?;
            }
            Err(e) => {
                let _ = pcap.into_inner();
                return Err(io("reading the capture stream")(e));
            }
        }
    }
}

/// The totals line after the end of the stream.
fn read_tail(conn: &mut UnixStream, mut buf: Vec<u8>) -> Result<serde_json::Value, CaptureError> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && Instant::now() < deadline {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io("reading the capture's totals")(e)),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    serde_json::from_str(text.lines().next().unwrap_or("").trim())
        .map_err(|e| CaptureError::Protocol(format!("bad totals line from the daemon: {e}")))
}
