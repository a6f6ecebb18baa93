//! Durations on the command line: `250ms`, `3s`, `2m`, `12h`, `7d`.

use std::time::Duration;

/// Parses `<number><unit>` with the unit `ms`, `s`, `m`, `h` or `d`.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write 250ms, 3s, 2m, 12h or 7d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(number.saturating_mul(3_600))),
        "d" => Ok(Duration::from_secs(number.saturating_mul(86_400))),
        other => Err(format!(
            "unknown unit {other:?} in {text:?}: use ms, s, m, h or d"
        )),
    }
}

/// A duration, or `off` for none.
pub(crate) fn parse_optional(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "off" {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_number_and_a_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_optional("off"), Ok(None));
        assert_eq!(parse_optional("12h"), Ok(Some(Duration::from_secs(43_200))));
        for bad in ["3", "s", "3w", "-1s", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
