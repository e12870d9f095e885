//! What a benchmark suite reports: figures paired with the baseline measured in the same
//! run, plots, and the machine's state while it ran. `nicproxy bench` collects these from
//! every suite and writes them as JSON, a Markdown table and SVG plots.

use serde::Serialize;

/// Which direction is better for a figure, so the report can say "ratio" the right way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One measured figure, with its baseline from the same run when there is one.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// What was measured, e.g. "forwarding, 64 B, 1 worker".
    pub name: String,
    pub value: f64,
    /// e.g. "Mpps", "cycles/frame", "µs", "ms".
    pub unit: String,
    pub better: Better,
    pub baseline: Option<Baseline>,
    /// The target the issue sets, in words ("≥ 0.90× testpmd"), and whether it was met.
    pub target: Option<Target>,
    /// How it was measured, in one line (workload, best-of-N, sample count...).
    pub note: String,
}

/// The same quantity measured for the reference implementation in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Baseline {
    /// e.g. "dpdk-testpmd io-fwd", "rte_hash_lookup_bulk_data", "ibv_rc_pingpong".
    pub name: String,
    pub value: f64,
}

/// A target and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

impl Figure {
    /// A figure without a baseline or target.
    pub fn new(
        name: impl Into<String>,
        value: f64,
        unit: impl Into<String>,
        better: Better,
    ) -> Self {
        Self {
            name: name.into(),
            value,
            unit: unit.into(),
            better,
            baseline: None,
            target: None,
            note: String::new(),
        }
    }

    pub fn baseline(mut self, name: impl Into<String>, value: f64) -> Self {
        self.baseline = Some(Baseline {
            name: name.into(),
            value,
        });
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// value / baseline: above 1 is faster for `Higher` figures and slower for `Lower` ones.
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?;
        (b.value != 0.0).then(|| self.value / b.value)
    }
}

/// A line plot: named series of (x, y) points, with optional vertical markers (a cut, a
/// restore).
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    /// File stem of the SVG, e.g. "failover-cdf".
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Marker {
    pub x: f64,
    pub label: String,
}

/// What one suite returns.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SuiteOutcome {
    pub figures: Vec<Figure>,
    pub plots: Vec<Plot>,
    /// Free-form lines worth keeping with the figures (versions, devices, caveats).
    pub notes: Vec<String>,
    /// Raw results as the suite measured them, kept in the JSON as they are.
    pub raw: serde_json::Value,
}

/// Progress lines for long runs, on stderr, so stdout stays the report.
pub struct Progress {
    suite: &'static str,
}

impl Progress {
    pub fn new(suite: &'static str) -> Self {
        Self { suite }
    }

    /// One line: `[bench forwarding 12.3s] message`.
    pub fn say(&self, msg: impl std::fmt::Display) {
        eprintln!("[bench {}] {msg}", self.suite);
    }
}
