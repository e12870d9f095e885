//! Config errors, each located by file, line, column and key.

use std::fmt;
use std::path::PathBuf;

use super::key::KeyError;
use super::locate::{self, Tree};
use super::validate::Problem;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading config {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, a value of the wrong type, a missing or unknown key.
    #[error("{0}")]
    Parse(Diagnostic),
    /// Valid TOML that breaks the rules of the schema; every problem found is listed.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
    /// The group key file is missing or unusable.
    #[error("group key {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: KeyError,
    },
}

impl ConfigError {
    /// The located problems, for callers that want to show or test them one by one.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Parse(d) => std::slice::from_ref(d),
            ConfigError::Invalid(list) => list,
            ConfigError::Io { .. } | ConfigError::Key { .. } => &[],
        }
    }
}

fn join_lines(list: &[Diagnostic]) -> String {
    list.iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One problem in a config file: `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to the loader.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column in characters, when the line is known.
    pub column: Option<usize>,
    /// Dotted key path (`peers[1].id`); empty for the document as a whole.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn from_toml(
        file: &str,
        text: &str,
        tree: Option<&Tree>,
        err: &toml::de::Error,
    ) -> Diagnostic {
        let (line, column, key) = match err.span() {
            Some(span) => {
                let (line, col) = locate::line_col(text, span.start);
                let key = tree
                    .map(|t| locate::display_path(&t.path_at(span.start)))
                    .unwrap_or_default();
                (Some(line), Some(col), key)
            }
            None => (None, None, String::new()),
        };
        // toml's messages can span lines ("invalid array\nexpected `]`"); keep one
        // diagnostic per line of output.
        let mut message = err.message().trim().replace('\n', ": ");
        if message.is_empty() {
            // toml gives some syntax errors no text (a control character in a comment, for
            // one), which left the user a location and no reason.
            message = unexpected_at(text, err.span().map(|s| s.start));
        }
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            key,
            message,
        }
    }

    pub(crate) fn from_problem(
        file: &str,
        text: &str,
        tree: Option<&Tree>,
        problem: Problem,
    ) -> Diagnostic {
        let (line, column) = match tree.and_then(|t| t.span_of(&problem.path)) {
            Some(span) => {
                let (l, c) = locate::line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            key: locate::display_path(&problem.path),
            message: problem.message,
        }
    }
}

/// Names what a syntax error without a message stopped at: the character at `offset`.
fn unexpected_at(text: &str, offset: Option<usize>) -> String {
    let c = offset
        .and_then(|o| text.get(o..))
        .and_then(|rest| rest.chars().next());
    match c {
        Some(c) => format!("invalid TOML: unexpected character {c:?}"),
        None if offset.is_some() => "invalid TOML: unexpected end of file".to_string(),
        None => "invalid TOML".to_string(),
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(line), Some(col)) = (self.line, self.column) {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// Found by the `config` fuzz target: toml reports a control character in a comment
    /// with an empty message, which printed as `file:3:70: ` and nothing else.
    #[test]
    fn syntax_errors_always_say_why() {
        let text = "[node]\nid = \"a\"\n# a comment with a \u{e} control character\n";
        let err = Config::from_str_named(text, "t.toml").expect_err("not valid TOML");
        let d = &err.diagnostics()[0];
        assert_eq!((d.line, d.column), (Some(3), Some(20)), "{d}");
        assert_eq!(d.message, "invalid TOML: unexpected character '\\u{e}'");
        assert_eq!(
            err.to_string(),
            "t.toml:3:20: invalid TOML: unexpected character '\\u{e}'"
        );
    }
}
