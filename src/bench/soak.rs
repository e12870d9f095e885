//! The soak suite: `nicproxy lab --scenario soak` for `--soak-minutes` (1 with `--quick`):
//! three daemons with the station's probes and TCP transfer running, a fault every 15 s
//! (NIC cut and restore, 50 NIC flaps, the proxy's fabric link down and up, SIGHUP), and
//! every daemon's RSS, open fds and mempool in use sampled every 2 s. No daemon is
//! restarted, so each node's samples are one process's. Figures: RSS at the start, at
//! the end and its largest growth, fds and mempool at the start and the end; a plot of
//! RSS over time with the faults marked. Needs root, like the lab.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::model::{Better, Figure, Marker, Plot, Progress, Series, SuiteOutcome};
use super::BenchOpts;

/// RSS may grow this much over the soak and still count as flat (allocator arenas and
/// the first use of code paths settle in the first minutes).
const FLAT_KIB: f64 = 1024.0;

pub fn run(opts: &BenchOpts, progress: &Progress) -> Result<SuiteOutcome, String> {
    let minutes = if opts.quick {
        1
    } else {
        opts.soak_minutes.max(1)
    };
    let exe = std::env::current_exe().map_err(|e| format!("finding the nicproxy binary: {e}"))?;
    let lab_out = opts.out.join("soak-lab");
    progress.say(format_args!(
        "lab soak for {minutes} min (report in {})",
        lab_out.display()
    ));
    let mut child = Command::new(exe)
        .args(["lab", "--scenario", "soak", "--json"])
        .args(["--soak-secs", &(u64::from(minutes) * 60).to_string()])
        .args(["--hold-down-ms", "1500", "--dwell-ms", "300"])
        .arg("--out")
        .arg(&lab_out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting nicproxy lab --scenario soak: {e}"))?;
    let mut last = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("soak") || line.starts_with("fault suite") {
                progress.say(line.trim());
            }
            if !line.trim().is_empty() {
                last = line;
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the soak lab: {e}"))?;
    let j: Value = serde_json::from_str(&last)
        .map_err(|_| format!("the soak lab ({status}) printed no JSON result: {last}"))?;
    if let Some(e) = j.get("error") {
        return Err(format!("the soak lab failed: {e}"));
    }
    let soak = j
        .get("soak")
        .ok_or_else(|| format!("no soak results in {j}"))?;
    outcome(soak, &j, minutes)
}

fn outcome(soak: &Value, j: &Value, minutes: u32) -> Result<SuiteOutcome, String> {
    let mut figures = Vec::new();
    let summary = soak
        .get("summary")
        .and_then(Value::as_object)
        .ok_or("no per-node summary")?;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    for (node, s) in summary {
        let (Some(start), Some(end), Some(max)) = (
            num(s, "rss_kib_start"),
            num(s, "rss_kib_end"),
            num(s, "rss_kib_max"),
        ) else {
            continue;
        };
        let note = format!("{minutes} min, sampled every 2 s; daemon of node {node}");
        figures.push(
            Figure::new(
                format!("RSS at the start, node {node}"),
                start,
                "KiB",
                Better::Lower,
            )
            .note(note.clone()),
        );
        figures.push(
            Figure::new(
                format!("RSS at the end, node {node}"),
                end,
                "KiB",
                Better::Lower,
            )
            .note(note.clone()),
        );
        figures.push(
            Figure::new(
                format!("RSS growth, end - start, node {node}"),
                end - start,
                "KiB",
                Better::Lower,
            )
            .target(format!("flat: ≤ {FLAT_KIB} KiB"), end - start <= FLAT_KIB)
            .note(note.clone()),
        );
        figures.push(
            Figure::new(
                format!("RSS largest growth, max - start, node {node}"),
                max - start,
                "KiB",
                Better::Lower,
            )
            .note(note.clone()),
        );
        if let (Some(f0), Some(f1)) = (num(s, "fds_start"), num(s, "fds_end")) {
            figures.push(
                Figure::new(
                    format!("open fds at the end, node {node}"),
                    f1,
                    "fds",
                    Better::Lower,
                )
                .baseline("open fds at the start", f0)
                .target("no growth", f1 <= f0)
                .note(note.clone()),
            );
        }
        if let (Some(m0), Some(m1)) = (num(s, "mempool_start"), num(s, "mempool_end")) {
            figures.push(
                Figure::new(
                    format!("mempool in use at the end, node {node}"),
                    m1,
                    "mbufs",
                    Better::Lower,
                )
                .baseline("mempool in use at the start", m0)
                .note(note),
            );
        }
    }
    let samples = soak
        .get("samples")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let series = summary
        .keys()
        .map(|node| Series {
            label: format!("node {node}"),
            points: samples
                .iter()
                .filter(|s| s["node"].as_str() == Some(node))
                .filter_map(|s| Some((s["t_s"].as_f64()?, s["rss_kib"].as_f64()? / 1024.0)))
                .collect(),
        })
        .collect();
    let markers = soak
        .get("faults")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|f| {
                    Some(Marker {
                        x: f["t_s"].as_f64()?,
                        label: f["what"].as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let faults = soak
        .get("faults")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let recovered = soak
        .get("faults")
        .and_then(Value::as_array)
        .map_or(0, |l| l.iter().filter(|f| f["ok"] == true).count());
    Ok(SuiteOutcome {
        figures,
        plots: vec![Plot {
            name: "soak-rss".into(),
            title: format!("Daemon RSS over a {minutes}-minute soak with faults"),
            x_label: "s".into(),
            y_label: "RSS (MiB)".into(),
            series,
            markers,
        }],
        notes: vec![
            format!("{faults} faults injected, {recovered} recovered from"),
            format!(
                "TCP transfer survived: {}; load average {}",
                j["tcp_survived"], j["load_average"]
            ),
        ],
        raw: j.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_a_soak_result() {
        let soak = serde_json::json!({
            "summary": {"a": {"rss_kib_start": 70000, "rss_kib_end": 70500, "rss_kib_max": 71000,
                              "fds_start": 25, "fds_end": 25, "mempool_start": 1055, "mempool_end": 1055}},
            "samples": [{"t_s": 0.0, "node": "a", "rss_kib": 70000}, {"t_s": 2.0, "node": "a", "rss_kib": 70500}],
            "faults": [{"t_s": 1.0, "what": "NIC cut and restore", "ok": true}],
        });
        let j = serde_json::json!({"tcp_survived": true, "load_average": {"start": 1.0}});
        let o = outcome(&soak, &j, 1).unwrap();
        let growth = o
            .figures
            .iter()
            .find(|f| f.name.starts_with("RSS growth"))
            .unwrap();
        assert_eq!(growth.value, 500.0);
        assert!(growth.target.as_ref().unwrap().met);
        assert_eq!(o.plots[0].series[0].points.len(), 2);
        assert_eq!(o.plots[0].markers.len(), 1);
        assert!(o.notes[0].contains("1 faults injected, 1 recovered"));
    }
}
