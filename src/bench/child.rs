//! Suites that start DPDK measure in a child process of this binary: DPDK allows one EAL
//! per process and pins the thread that starts it, and a bench run has several such suites.
//! The child is `nicproxy bench --suite NAME` with an environment variable naming the file
//! for its raw results; the parent reads them back and makes the figures.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::model::Progress;
use super::BenchOpts;

/// In the child (`env_key` set): runs `measure`, writes its raw results and returns `None`.
/// In the parent: runs the child for `suite` and returns its raw results.
pub(crate) fn measure_in_child(
    suite: &str,
    env_key: &str,
    opts: &BenchOpts,
    progress: &Progress,
    measure: impl FnOnce(&BenchOpts, &Progress) -> Result<Value, String>,
) -> Result<Option<Value>, String> {
    if let Some(path) = std::env::var_os(env_key) {
        let raw = measure(opts, progress)?;
        let text = serde_json::to_string(&raw).map_err(|e| format!("encoding results: {e}"))?;
        std::fs::write(&path, text)
            .map_err(|e| format!("writing results to {}: {e}", Path::new(&path).display()))?;
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding the nicproxy binary: {e}"))?;
    let dir = opts.out.join(format!("{suite}-child"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let results = dir.join("raw.json");
    let _ = std::fs::remove_file(&results);
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--suite", suite, "--out"])
        .arg(&dir)
        .env(env_key, &results)
        .stdin(Stdio::null())
        // The child's own report has no figures; its progress goes to our stderr.
        .stdout(Stdio::null());
    if opts.quick {
        cmd.arg("--quick");
    }
    progress.say("measuring in a child process (one EAL per process)");
    let status = cmd
        .status()
        .map_err(|e| format!("starting the measuring child: {e}"))?;
    let text = std::fs::read_to_string(&results);
    let _ = std::fs::remove_dir_all(&dir);
    let text = text.map_err(|e| {
        format!(
            "the measuring child ({status}) left no results in {}: {e}",
            results.display()
        )
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("reading the child's results: {e}"))
}

/// Removes the DPDK runtime directories of a measuring child's EALs (its own and testpmd's)
/// on drop: EAL makes one even without shared config.
pub(crate) struct RuntimeDirs(Vec<std::path::PathBuf>);

impl RuntimeDirs {
    /// For the EAL file prefixes `prefixes`.
    pub(crate) fn of(prefixes: &[&str]) -> RuntimeDirs {
        RuntimeDirs(
            prefixes
                .iter()
                .map(|p| dataplane::dpdk::runtime_dir(p))
                .collect(),
        )
    }
}

impl Drop for RuntimeDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts the EAL of a measuring child on 4 kB pages (`--no-huge`, 256 MB, no shared
/// config, errors only, no telemetry) with file prefix `prefix` and the `extra` arguments;
/// its runtime directory is removed when the returned guard drops.
pub(crate) fn small_eal(
    prefix: &str,
    extra: &[&str],
) -> Result<(dataplane::dpdk::Eal, RuntimeDirs), String> {
    let file_prefix = format!("--file-prefix={prefix}");
    let mut args = vec![
        "--no-pci",
        "--no-huge",
        "-m",
        "256",
        "--no-shconf",
        "--log-level=*:error",
        "--no-telemetry",
        &file_prefix,
    ];
    args.extend_from_slice(extra);
    let eal = dataplane::dpdk::Eal::init(&args).map_err(|e| e.to_string())?;
    Ok((eal, RuntimeDirs::of(&[prefix])))
}
