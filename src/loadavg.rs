//! The machine's load average, recorded with every lab report and bench figure: these
//! machines are shared, and a loaded one delays the daemons' timers and the measurements
//! alike.

fn fields() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg").ok()
}

/// The 1-minute load average; NaN (JSON null) when /proc is unreadable.
pub fn one_minute() -> f64 {
    fields()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The 1-, 5- and 15-minute load averages as the kernel prints them ("0.52 0.48 0.40").
pub fn all_three() -> String {
    fields()
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
