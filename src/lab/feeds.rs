//! The lab's side of the agents: their processes, and the threads that feed their event
//! lines into the shared timeline.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::daemons::tail;
use super::error::{LabError, Result};
use super::timeline::Timeline;

/// The shared timeline.
pub type Shared = Arc<Mutex<Timeline>>;

/// One running agent.
#[derive(Debug)]
pub struct Agent {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
    log: PathBuf,
}

impl Agent {
    /// Starts `nicproxy lab-agent <args>` in namespace `ns`; its events go to `timeline`,
    /// its stderr to `log`.
    pub fn spawn(
        name: &str,
        ns: &str,
        args: &[String],
        timeline: &Shared,
        log: &Path,
    ) -> Result<Agent> {
        let exe = std::env::current_exe()
            .map_err(|e| LabError::io("finding the nicproxy executable", e))?;
        let err = std::fs::File::create(log)
            .map_err(|e| LabError::io(format!("creating {}", log.display()), e))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .arg("lab-agent")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            // The lab stops its agents itself, after a Ctrl-C too; when the lab dies their
            // stdin closes and they end on their own.
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn {
                what: format!("the {name} agent in {ns}"),
                source,
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let reader = stdout.map(|out| {
            let timeline = timeline.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut t) = timeline.lock() {
                        t.apply_line(&line);
                    }
                }
            })
        });
        Ok(Agent {
            name: name.to_string(),
            child: Some(child),
            stdin,
            reader,
            log: log.to_path_buf(),
        })
    }

    /// An error if the agent has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(c) = self.child.as_mut() else {
            return Ok(());
        };
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Err(LabError::Exited {
                    what: format!("the {} agent", self.name),
                    detail: format!("{status}; {}:\n{}", self.log.display(), tail(&self.log, 10)),
                })
            }
            _ => Ok(()),
        }
    }

    /// Closes its stdin (asking it to finish) and waits for it to end, killing it after
    /// `timeout`; every event it wrote is in the timeline afterwards.
    pub fn stop(&mut self, timeout: Duration) {
        drop(self.stdin.take());
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + timeout;
            super::cmd::wait_or_kill(&mut c, deadline);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
    }
}
