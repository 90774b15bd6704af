//! Human durations on the command line: `90s`, `5m`, `1h30m`, `250ms`.

use std::time::Duration;

/// Parses one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let err = || format!("{text:?} is not a duration; write e.g. 90s, 5m, 1h or 1h30m");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = unit
            .checked_mul(u32::try_from(number).map_err(|_| err())?)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(err)?;
    }
    Ok(total)
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(ms: i64) -> String {
    format!("{} UTC", date_time(ms))
}

/// A Unix time in ms as `YYYY-MM-DD HH:MM` (UTC).
pub fn date_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date, by 400-year eras (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rest / 3600, (rest / 60) % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(super::utc(1_795_311_060_000), "2026-11-22 01:31 UTC");
    }

    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_with_an_example() {
        for bad in ["", "90", "s", "1x", "-1s", "1.5h", "99999999999s"] {
            assert!(parse(bad).unwrap_err().contains("e.g. 90s"), "{bad}");
        }
    }
}
