//! Sizes and durations as the reports, the progress line and the analysis's own sentences
//! write them: one way everywhere.

/// `42.0 s`, `12.5 min`, `3.2 h`, `2.1 days`.
pub fn duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else if seconds < 7200.0 {
        format!("{:.1} min", seconds / 60.0)
    } else if seconds < 172800.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.1} days", seconds / 86400.0)
    }
}

/// Bytes as a short binary-unit figure: 0, 4.0K, 1.5M, 2.0G; `signed` adds a + to growth.
pub fn bytes(value: i64, signed: bool) -> String {
    let sign = if value < 0 {
        "-"
    } else if signed && value > 0 {
        "+"
    } else {
        ""
    };
    let magnitude = value.unsigned_abs() as f64;
    let (scaled, unit) = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)]
        .into_iter()
        .find(|(_, size)| magnitude >= *size as f64)
        .map(|(unit, size)| (magnitude / size as f64, unit))
        .unwrap_or((magnitude, ""));
    if unit.is_empty() {
        format!("{sign}{}", value.unsigned_abs())
    } else {
        format!("{sign}{scaled:.1}{unit}")
    }
}

pub fn size(value: u64) -> String {
    bytes(value as i64, false)
}
