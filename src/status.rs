//! `nicproxy status`: asks a running daemon for its state over its control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Reads the state from the daemon and prints it.
pub fn run(config: Option<PathBuf>, socket: Option<PathBuf>, json: bool) -> ExitCode {
    let path = match (config, socket) {
        (_, Some(s)) => s,
        (Some(c), None) => match control::config::Config::load(&c) {
            Ok(cfg) => cfg.control_socket(),
            Err(e) => {
                eprintln!("nicproxy status: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => {
            eprintln!("nicproxy status: give --config FILE or --socket PATH");
            return ExitCode::from(2);
        }
    };
    match query(&path) {
        Ok(v) if json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print_human(&v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nicproxy status: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// One status request.
pub fn query(path: &std::path::Path) -> Result<Value, String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect (is the daemon running?): {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"status\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(err.to_string());
    }
    Ok(v)
}

fn print_human(v: &Value) {
    let s = |k: &str| {
        v.get(k)
            .map(|x| x.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    println!(
        "node {}   up {:.1} s",
        s("node"),
        v["uptime_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  NIC link: {}   uplink: {}   kernel carrier: {}",
        s("nic_link"),
        s("uplink"),
        s("carrier")
    );
    println!(
        "  proxy order: {}   failovers: {}",
        s("proxy_order"),
        s("failovers_total")
    );
    println!("  sessions:");
    for p in v["sessions"].as_array().into_iter().flatten() {
        println!(
            "    {:<12} {:<10} rtt {:>8} us   peer NIC {}",
            p["peer"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["rtt_us"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.0}")),
            if p["peer_nic_usable"].as_bool() == Some(true) {
                "usable"
            } else {
                "down"
            }
        );
    }
    let clients = v["clients"].as_array().map_or(0, Vec::len);
    println!("  proxying for {clients} client(s)");
    for c in v["clients"].as_array().into_iter().flatten() {
        println!("    {} {}", c["peer"].as_str().unwrap_or("?"), c["macs"]);
    }
    println!("  steering table:");
    for e in v["steering_table"].as_array().into_iter().flatten() {
        println!(
            "    domain {:<4} {}  -> {}",
            e["domain"],
            e["mac"].as_str().unwrap_or("?"),
            e["action"].as_str().unwrap_or("?")
        );
    }
    println!("  ports:");
    for p in v["ports"].as_array().into_iter().flatten() {
        println!(
            "    {:<7} rx {:>10}  tx {:>10}  drops {:>8}",
            p["port"].as_str().unwrap_or("?"),
            p["rx_packets"],
            p["tx_packets"],
            p["drops"]
        );
    }
    if let Some(d) = v["drops"].as_object() {
        if !d.is_empty() {
            println!("  drops by reason: {}", v["drops"]);
        }
    }
    let workers = v["workers"].as_array().map_or(&[][..], Vec::as_slice);
    if workers.len() > 1 {
        println!("  per worker:");
        for w in workers {
            let ports: Vec<String> = w["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{} rx {} tx {}",
                        p["port"].as_str().unwrap_or("?"),
                        p["rx_packets"],
                        p["tx_packets"]
                    )
                })
                .collect();
            println!("    worker {}: {}", w["worker"], ports.join(", "));
        }
    }
    println!("  mempool in use: {}", s("mempool_in_use"));
}
