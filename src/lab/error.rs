//! Why the lab could not run.

/// A failure of the lab itself (not a failed check of the system under test: those are
/// results, reported in the summary).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command exited with an error.
    #[error("running `{cmd}`: {status}: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// How it ended.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A program could not be started.
    #[error("starting `{what}`: {source}")]
    Spawn {
        /// The command line.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being attempted.
        action: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A generated node config did not validate.
    #[error("the generated config of node {node} is invalid: {source}")]
    Config {
        /// The node.
        node: String,
        /// What the validator said.
        #[source]
        source: Box<control::config::ConfigError>,
    },
    /// Something did not happen in time.
    #[error("timed out after {waited_ms} ms waiting for {what}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited_ms: u64,
        /// What was seen instead.
        detail: String,
    },
    /// A process of the lab ended early.
    #[error("{what} exited early: {detail}")]
    Exited {
        /// Which process.
        what: String,
        /// Its exit status and the end of its log.
        detail: String,
    },
    /// SIGINT or SIGTERM arrived.
    #[error("interrupted")]
    Interrupted,
    /// The lab cannot do this (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The lab needs something the machine lacks.
    #[error("{0}")]
    Precondition(String),
}

impl LabError {
    /// A file operation error.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            action: action.into(),
            source,
        }
    }
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
