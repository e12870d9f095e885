//! DPDK test helpers: EAL arguments that need no hugepages and touch no shared state.

/// EAL arguments for a test process: no PCI scan (it would grab the VM's own NIC), no
/// hugepages, no shared config (private state under `prefix`), lcore 0 free to float over every CPU
/// (so parallel tests are not all pinned to CPU 0), no telemetry socket.
pub fn eal_args(prefix: &str) -> Vec<String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![
        "--no-pci".into(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        // --in-memory conflicts with --no-huge (which implies legacy memory); --no-shconf
        // keeps the state private all the same.
        "--no-shconf".into(),
        format!("--file-prefix={prefix}"),
        format!("--lcores=0@(0-{})", cpus - 1),
        "--no-telemetry".into(),
    ]
}

/// Removes DPDK's runtime directory for `prefix` on drop (EAL creates it even in memory mode).
#[derive(Debug)]
pub struct RuntimeDir {
    path: std::path::PathBuf,
}

impl RuntimeDir {
    /// Guards the runtime directory EAL uses for `prefix`.
    pub fn new(prefix: &str) -> RuntimeDir {
        RuntimeDir {
            path: dataplane::dpdk::runtime_dir(prefix),
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
