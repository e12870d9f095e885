//! The operations surface of a running daemon: the Prometheus endpoint, `nicproxy status`,
//! and `nicproxy check-config`.
//!
//! The live part runs a two-node `nicproxy lab --keep` (needs root, like the lab), so that
//! a's daemon has failed over once and back; it scrapes `GET /metrics` from inside a's
//! network namespace (where the daemon listens on 127.0.0.1:9469) by running this test
//! binary's `scrape_helper` there with `ip netns exec`, lints the text with
//! `promtool check metrics`, checks the series an operator relies on and every series the
//! Grafana dashboard plots, then cuts a's NIC once more and checks that status and metrics
//! follow.

mod ops_lab;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ops_lab::{nicproxy, output, texts, KeptLab, TempPath};
use serde_json::Value;

const A_MAC: &str = "02:00:00:77:00:01";

/// One sample of the exposition text.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format (enough of it for what nicproxy writes: no timestamps);
/// panics on a line it cannot read, naming it.
fn parse_samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value on {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value on {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels on {line:?}"));
                (name.to_string(), parse_labels(body, line))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(mut s: &str, line: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    while !s.is_empty() {
        let (k, rest) = s
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label on {line:?}"));
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c)) => v.push(c),
                    None => panic!("bad escape on {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
                None => panic!("unterminated label value on {line:?}"),
            }
        };
        m.insert(k.trim_start_matches(',').to_string(), v);
        s = rest[end + 1..].trim_start_matches(',');
    }
    m
}

/// The samples named `name` whose labels include every pair of `labels`.
fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The value of the one sample `name{labels}`; panics (showing the scrape) if there is
/// not exactly one.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)], text: &str) -> f64 {
    let found = find(samples, name, labels);
    assert_eq!(
        found.len(),
        1,
        "expected one sample {name}{labels:?}, found {}:\n{text}",
        found.len()
    );
    found[0].value
}

/// Not a test on its own: the live test runs this binary with `--ignored --exact
/// scrape_helper` inside a node's namespace, and it writes the HTTP answer of
/// `GET /metrics` on `NP_OPS_SCRAPE_ADDR` to the file `NP_OPS_SCRAPE_OUT`.
#[test]
#[ignore = "helper: metrics_status_and_failover_of_a_live_lab runs it inside a namespace"]
fn scrape_helper() {
    let (Ok(addr), Ok(out)) = (
        std::env::var("NP_OPS_SCRAPE_ADDR"),
        std::env::var("NP_OPS_SCRAPE_OUT"),
    ) else {
        eprintln!("scrape_helper: only meaningful when run by the live metrics test");
        return;
    };
    let mut s =
        std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One write, as scrapers do: the endpoint answers after its first read.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("reading from {addr}: {e}"));
    std::fs::write(&out, answer).unwrap_or_else(|e| panic!("writing {out}: {e}"));
}

/// `GET /metrics` of `node`'s daemon, from inside its namespace; returns the body.
fn scrape(lab: &KeptLab, node: &str) -> String {
    let out = TempPath::new(&format!("scrape-{node}"));
    let exe = std::env::current_exe().expect("the test binary's path");
    let o = output(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns(node)])
            .arg(exe)
            .args(["--ignored", "--exact", "scrape_helper", "--nocapture"])
            .env("NP_OPS_SCRAPE_ADDR", "127.0.0.1:9469")
            .env("NP_OPS_SCRAPE_OUT", out.path()),
    );
    let (so, se) = texts(&o);
    assert!(o.status.success(), "scrape in {}: {so}\n{se}", lab.ns(node));
    let answer = std::fs::read_to_string(out.path()).expect("the helper wrote no answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("text/plain; version=0.0.4"),
        "content type: {head}"
    );
    body.to_string()
}

/// How long the tests wait for the lab's daemons to settle into a state.
const SETTLE: Duration = Duration::from_secs(10);

/// The value of the one sample `name{labels}`, if there is exactly one.
fn one(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match find(samples, name, labels)[..] {
        [s] => Some(s.value),
        _ => None,
    }
}

/// Scrapes `node` until `ok` holds (at most [`SETTLE`]); panics with the last scrape if it
/// never does.
fn scrape_until(
    lab: &KeptLab,
    node: &str,
    what: &str,
    ok: impl Fn(&[Sample]) -> bool,
) -> (String, Vec<Sample>) {
    let t0 = Instant::now();
    loop {
        let text = scrape(lab, node);
        let samples = parse_samples(&text);
        if ok(&samples) {
            return (text, samples);
        }
        assert!(
            t0.elapsed() < SETTLE,
            "{node}'s metrics never showed {what} within {SETTLE:?}:\n{text}\n{}",
            lab.log(node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` on the text: no lint problem, exit 0.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus; tests/setup.sh installs it)");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let o = child.wait_with_output().expect("promtool");
    let (so, se) = texts(&o);
    assert!(
        o.status.success(),
        "promtool check metrics failed:\n{so}{se}\n--- text ---\n{text}"
    );
}

/// Every `nicproxy_*` name in the dashboard's queries.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/grafana-dashboard.json"
    );
    let j: Value = serde_json::from_str(&std::fs::read_to_string(path).expect(path))
        .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&j, &mut exprs);
    assert!(!exprs.is_empty(), "no queries in {path}");
    let mut names: Vec<String> = Vec::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("nicproxy_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    names
}

fn assert_common_series(samples: &[Sample], text: &str, node: &str) {
    for s in samples {
        assert_eq!(
            s.labels.get("node").map(String::as_str),
            Some(node),
            "series without node=\"{node}\": {s:?}"
        );
    }
    let in_use = value(samples, "nicproxy_mempool_in_use", &[], text);
    assert!(
        in_use >= 0.0 && in_use.fract() == 0.0,
        "mempool_in_use {in_use}"
    );
    assert!(
        !find(samples, "nicproxy_rx_packets_total", &[("port", "nic")]).is_empty(),
        "no per-port rx counters:\n{text}"
    );
}

#[test]
fn metrics_status_and_failover_of_a_live_lab() {
    let lab = KeptLab::start(2, "metrics");
    eprintln!(
        "lab: failover {} ms, failback {} ms",
        lab.json["failover_ms_median"], lab.json["failback_ms"]
    );

    // After the lab's cut and restore, a is back on its NIC.
    let st = lab.wait_status("a", Duration::from_secs(15), |s| {
        s["uplink"] == "nic" && s["sessions"][0]["state"] == "up"
    });
    assert_eq!(st["uplink"], "nic", "status: {st}\n{}", lab.log("a"));
    assert_eq!(st["node"], "a");
    assert_eq!(st["sessions"][0]["peer"], "b");
    assert_eq!(st["sessions"][0]["state"], "up");
    let failovers = st["failovers_total"].as_u64().expect("failovers_total");
    assert!(failovers >= 1, "the lab's cut made no failover: {st}");
    assert!(st["mempool_in_use"].is_u64());

    // The lab's daemons may still be settling (on a loaded machine its upstream probe can
    // time out and flap a path): scrape until a's metrics show the state its status showed.
    let (text, samples) = scrape_until(&lab, "a", "a on its NIC with b's session up", |s| {
        one(
            s,
            "nicproxy_active_path",
            &[("mac", A_MAC), ("path", "nic")],
        ) == Some(1.0)
            && one(s, "nicproxy_session_up", &[("peer", "b")]) == Some(1.0)
    });
    promtool_check(&text);
    assert_common_series(&samples, &text, "a");
    let scraped_failovers = value(&samples, "nicproxy_failovers_total", &[], &text);
    // Scraped after the status: a flap in between can only add.
    assert!(
        scraped_failovers >= failovers as f64,
        "metrics {scraped_failovers} < status {failovers}"
    );
    let rtt_count = value(
        &samples,
        "nicproxy_heartbeat_rtt_seconds_count",
        &[("peer", "b")],
        &text,
    );
    assert!(rtt_count > 0.0, "no heartbeat RTT samples");
    assert_eq!(
        value(
            &samples,
            "nicproxy_heartbeat_rtt_seconds_bucket",
            &[("peer", "b"), ("le", "+Inf")],
            &text
        ),
        rtt_count
    );
    assert!(
        value(
            &samples,
            "nicproxy_heartbeat_rtt_seconds_sum",
            &[("peer", "b")],
            &text
        ) > 0.0
    );
    assert!(
        value(
            &samples,
            "nicproxy_failover_duration_seconds_count",
            &[],
            &text
        ) >= 1.0,
        "the failover's duration was not observed"
    );

    let names = dashboard_metrics();
    eprintln!("the dashboard plots {} series: {names:?}", names.len());
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !samples.iter().any(|s| &s.name == *n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard plots series a's scrape lacks: {missing:?}\n{text}"
    );

    // Cut a's NIC once more: a fails over to b, and status and metrics say so.
    lab.set_nic("a", false);
    let st = lab.wait_status("a", SETTLE, |s| s["uplink"] == "proxy:b");
    assert_eq!(st["uplink"], "proxy:b", "status: {st}\n{}", lab.log("a"));
    assert_eq!(st["nic_link"], false);
    let (text, samples) = scrape_until(&lab, "a", "a on proxy b, one more failover", |s| {
        one(
            s,
            "nicproxy_active_path",
            &[("mac", A_MAC), ("path", "proxy:b")],
        ) == Some(1.0)
            && one(s, "nicproxy_failovers_total", &[]).unwrap_or(0.0) > scraped_failovers
    });
    promtool_check(&text);
    assert!(
        find(&samples, "nicproxy_active_path", &[("path", "nic")]).is_empty(),
        "the old path is still exported:\n{text}"
    );
    let (b, b_samples) = scrape_until(&lab, "b", "b proxying for a", |s| {
        one(s, "nicproxy_proxy_clients", &[]) == Some(1.0)
    });
    promtool_check(&b);
    assert_common_series(&b_samples, &b, "b");

    // The human status says the same.
    let human = || {
        let o = output(nicproxy().args(["status", "--socket"]).arg(lab.socket("a")));
        let (so, se) = texts(&o);
        assert!(o.status.success(), "{se}");
        so
    };
    let t0 = Instant::now();
    let mut so = human();
    while !so.contains("uplink: proxy:b") && t0.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(100));
        so = human();
    }
    assert!(so.contains("node a"), "{so}");
    assert!(so.contains("uplink: proxy:b"), "{so}");
    assert!(so.contains("NIC link: false"), "{so}");
    assert!(
        so.lines()
            .any(|l| l.trim_start().starts_with("b ") && l.contains(" up ")),
        "session b up: {so}"
    );

    lab.set_nic("a", true);
    let st = lab.wait_status("a", SETTLE, |s| s["uplink"] == "nic");
    assert_eq!(st["uplink"], "nic", "a fails back: {st}");
}

#[test]
fn status_refuses_bad_invocations_clearly() {
    let o = output(nicproxy().args(["status", "--bogus"]));
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unexpected argument '--bogus'"), "{err}");

    let missing = TempPath::new("no-daemon.sock");
    let o = output(nicproxy().args(["status", "--socket"]).arg(missing.path()));
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(
        err.contains(&missing.path().display().to_string())
            && err.contains("cannot connect (is the daemon running?)"),
        "{err}"
    );

    let o = output(nicproxy().arg("status"));
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("give --config FILE or --socket PATH"), "{err}");

    let o = output(nicproxy().args(["status", "--config", "/nonexistent/node.toml"]));
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/node.toml"), "{err}");
}

#[test]
fn check_config_passes_the_examples_and_names_file_and_line_of_an_error() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/configs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect(dir)
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "example configs: {files:?}");
    let o = output(nicproxy().arg("check-config").args(&files));
    let (out, err) = texts(&o);
    assert!(o.status.success(), "{out}{err}");
    for f in &files {
        assert!(
            out.contains(&format!("{}: ok (node ", f.display())),
            "{} not reported ok:\n{out}",
            f.display()
        );
    }

    // An unknown key on line 3 of a copy of a good file.
    let good = std::fs::read_to_string(format!("{dir}/node-a.toml")).expect("node-a.toml");
    let header = good
        .lines()
        .position(|l| l.trim() == "[node]")
        .expect("node-a.toml has a [node] table");
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(header + 1, "colour = \"blue\"");
    let broken = TempPath::new("broken.toml");
    std::fs::write(broken.path(), lines.join("\n")).unwrap();
    let line_no = header + 2;
    let o = output(
        nicproxy()
            .arg("check-config")
            .arg(&files[0])
            .arg(broken.path()),
    );
    let (out, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let at = format!("{}:{line_no}:", broken.path().display());
    assert!(err.contains(&at), "error does not name {at}: {err}");
    assert!(err.contains("colour"), "error does not name the key: {err}");
    assert!(
        out.contains(&format!("{}: ok", files[0].display())),
        "the good file is still checked: {out}"
    );

    let o = output(nicproxy().args(["check-config", "/nonexistent/x.toml"]));
    let (_, err) = texts(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}
