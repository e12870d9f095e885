//! The cleanup manifest: every namespace, daemon and directory of a run, written down
//! before it is created, so that a watcher process (or `nicproxy lab --cleanup`) can remove
//! what a lab that died left behind.
//!
//! One entry per line: `dir <path>`, `ns <name>`, `pid <pid>`. The watcher runs in its own
//! process group (a Ctrl-C at the terminal does not reach it) and waits on a pipe from the
//! lab: a `done` or `keep` line means the lab ended normally and it has nothing to do; end
//! of file without one means the lab died, and it cleans up.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::cmd;
use super::error::{LabError, Result};

/// File name of the manifest inside a run directory.
pub const FILE: &str = "manifest";
/// Run directories start with this, and cleanup refuses any other directory.
pub const DIR_PREFIX: &str = "nicproxy-lab-";
/// Namespaces of the lab start with this, and cleanup refuses any other name.
pub const NS_PREFIX: &str = "npl";

/// The manifest of the running lab, appended to as things are created.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    file: File,
}

impl Manifest {
    /// Creates `<run_dir>/manifest`, recording the run directory itself.
    pub fn create(run_dir: &Path) -> Result<Manifest> {
        let path = run_dir.join(FILE);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        let mut m = Manifest { path, file };
        m.append(&format!("dir {}", run_dir.display()))?;
        Ok(m)
    }

    /// The manifest's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a namespace (before creating it).
    pub fn namespace(&mut self, name: &str) -> Result<()> {
        self.append(&format!("ns {name}"))
    }

    /// Records a daemon's pid (right after starting it).
    pub fn pid(&mut self, pid: u32) -> Result<()> {
        self.append(&format!("pid {pid}"))
    }

    fn append(&mut self, line: &str) -> Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| LabError::io(format!("writing {}", self.path.display()), e))
    }
}

/// The watcher process; see the module doc.
#[derive(Debug)]
pub struct Watcher {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watcher {
    /// Starts `nicproxy lab-agent cleanup --manifest <path>` in its own process group.
    pub fn spawn(manifest: &Path) -> Result<Watcher> {
        let exe = std::env::current_exe()
            .map_err(|e| LabError::io("finding the nicproxy executable", e))?;
        let mut child = Command::new(&exe)
            .args(["lab-agent", "cleanup", "--manifest"])
            .arg(manifest)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn {
                what: format!("{} lab-agent cleanup", exe.display()),
                source,
            })?;
        let stdin = child.stdin.take();
        Ok(Watcher { child, stdin })
    }

    /// Tells the watcher the lab ended normally (`keep`: and left the lab up on purpose),
    /// and waits for it to go.
    pub fn finish(mut self, keep: bool) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "{}", if keep { "keep" } else { "done" });
        }
        let _ = self.child.wait();
    }
}

/// The watcher's side: blocks on stdin; cleans up from the manifest unless told the lab
/// ended normally.
pub fn watch(manifest: &Path) -> Result<()> {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("done" | "keep") => return Ok(()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let n = cleanup_manifest(manifest)?;
    eprintln!(
        "nicproxy lab: the lab ended abnormally; removed {n} item(s) listed in {}",
        manifest.display()
    );
    Ok(())
}

/// `nicproxy lab --cleanup RUN_DIR`: removes what the run directory's manifest lists.
pub fn cleanup_dir(dir: &Path) -> Result<usize> {
    cleanup_manifest(&dir.join(FILE))
}

/// One manifest entry.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir(PathBuf),
    Namespace(String),
    Pid(u32),
}

fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let (kind, value) = line.split_once(' ')?;
            match kind {
                "dir" => Some(Entry::Dir(PathBuf::from(value))),
                "ns" => Some(Entry::Namespace(value.to_string())),
                "pid" => value.parse().ok().map(Entry::Pid),
                _ => None,
            }
        })
        .collect()
}

/// Whether `path` is a lab run directory (never remove anything else, whatever a manifest
/// says).
fn is_run_dir(path: &Path) -> bool {
    path.is_absolute()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX))
}

/// Whether process `pid` is a daemon of this run: its command line names the run dir (the
/// config path), which also guards against a recycled pid.
fn is_our_process(pid: u32, run_dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = run_dir.to_string_lossy();
    String::from_utf8_lossy(&raw).contains(needle.as_ref())
}

fn cleanup_manifest(path: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
    let entries = parse(&text);
    let run_dir = entries.iter().find_map(|e| match e {
        Entry::Dir(d) if is_run_dir(d) => Some(d.clone()),
        _ => None,
    });
    let Some(run_dir) = run_dir else {
        return Err(LabError::Precondition(format!(
            "{} names no lab run directory ({DIR_PREFIX}...); not touching anything",
            path.display()
        )));
    };
    let mut removed = 0;
    let pids: Vec<u32> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Pid(p) if is_our_process(*p, &run_dir) => Some(*p),
            _ => None,
        })
        .collect();
    for &p in &pids {
        cmd::signal(p, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|p| is_our_process(*p, &run_dir)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in &pids {
        if is_our_process(p, &run_dir) {
            cmd::signal(p, "KILL");
        }
        removed += 1;
    }
    for e in &entries {
        if let Entry::Namespace(ns) = e {
            if ns.starts_with(NS_PREFIX) && cmd::run_quiet("ip", &["netns", "del", ns]) {
                removed += 1;
            }
        }
    }
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .map_err(|e| LabError::io(format!("removing {}", run_dir.display()), e))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_skips_junk() {
        let e = parse("dir /tmp/nicproxy-lab-1\nns npl1-a\npid 42\npid x\nbogus\n\nns npl1-b\n");
        assert_eq!(
            e,
            vec![
                Entry::Dir(PathBuf::from("/tmp/nicproxy-lab-1")),
                Entry::Namespace("npl1-a".into()),
                Entry::Pid(42),
                Entry::Namespace("npl1-b".into()),
            ]
        );
    }

    #[test]
    fn only_lab_run_dirs_are_removable() {
        assert!(is_run_dir(Path::new("/tmp/nicproxy-lab-123")));
        assert!(!is_run_dir(Path::new("/tmp")));
        assert!(!is_run_dir(Path::new("/")));
        assert!(!is_run_dir(Path::new("nicproxy-lab-1")));
        assert!(!is_run_dir(Path::new("/home/user")));
    }

    #[test]
    fn a_manifest_without_a_run_dir_touches_nothing() {
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}mtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.join(FILE);
        std::fs::write(&m, "dir /etc\nns npl-never-created\n").unwrap();
        assert!(matches!(
            cleanup_manifest(&m),
            Err(LabError::Precondition(_))
        ));
        assert!(dir.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cleanup_removes_the_run_dir_and_ignores_foreign_pids() {
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}ctest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Manifest::create(&dir).unwrap();
        // Our own pid: its command line does not name the run dir, so it is not signalled.
        m.pid(std::process::id()).unwrap();
        let path = m.path().to_path_buf();
        drop(m);
        let n = cleanup_manifest(&path).unwrap();
        assert!(!dir.exists());
        assert_eq!(n, 1, "only the directory was ours to remove");
    }
}
