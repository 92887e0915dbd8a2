//! Durations as the CRDs write them: Go's `time.ParseDuration` syntax without signs, such as
//! `30s`, `10m`, `1h30m`, `1.5h` or `250ms` (what the `ttl` fields' CEL `duration()` accepts).

/// Parses a duration into nanoseconds.
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let bad = || format!("{text:?} is not a duration such as 30s, 10m, 1h30m or 250ms");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)")),
        };
        total += value * scale;
        rest = tail;
    }
    if !total.is_finite() || total >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse_duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration_ns("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration_ns("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration_ns("250ms"), Ok(250_000_000));
        for bad in ["", "s", "10", "10d", "-5s", "1..2s"] {
            assert!(parse_duration_ns(bad).is_err(), "{bad}");
        }
    }
}
