//! Times for people: ISO-8601 UTC from epoch milliseconds, "in 42 min" / "3 h ago", and
//! notes whose epoch-millisecond numbers become both. A civil-from-days conversion (Howard
//! Hinnant's algorithm) instead of a date crate: this is all the CLI needs.

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// (year, month, day) of the day `z` days after 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days from 1970-01-01 to the civil date (y, m, d) (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC time in ms since the epoch from `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM`,
/// `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DDTHH:MM:SS.fff`, each with an optional trailing `Z`
/// (what [`iso`] prints parses back to the same millisecond).
pub fn parse_iso(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let num = |t: &str, len: usize| -> Option<i64> {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, mo, da) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    let (mo, da) = (mo as u32, da as u32);
    let days = days_from_civil(y, mo, da);
    if civil_from_days(days) != (y, mo, da) {
        return None; // e.g. February 30
    }
    let mut ms = days * 86_400_000;
    if let Some(t) = time {
        let (hms, frac) = match t.split_once('.') {
            Some((h, f)) => (h, Some(f)),
            None => (t, None),
        };
        let mut p = hms.split(':');
        let h = num(p.next()?, 2)?;
        let mi = num(p.next()?, 2)?;
        let sec = match p.next() {
            Some(x) => num(x, 2)?,
            None if frac.is_none() => 0,
            None => return None,
        };
        if p.next().is_some() || h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        let milli = match frac {
            Some(f) if (1..=3).contains(&f.len()) => {
                num(f, f.len())? * 10_i64.pow(3 - f.len() as u32)
            }
            Some(_) => return None,
            None => 0,
        };
        ms += ((h * 60 + mi) * 60 + sec) * 1000 + milli;
    }
    Some(ms)
}

/// A point in time (ms since the epoch) from an age before `now` (`2h`, `30m`, `7d`, as
/// `gc --older-than` takes) or an ISO-8601 UTC time ([`parse_iso`]).
pub fn parse_point(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    let looks_like_age = s.len() < 10 && s.starts_with(|c: char| c.is_ascii_digit());
    if looks_like_age {
        if let Ok(age) = super::admin::parse_age(s) {
            return Ok(now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        }
    }
    parse_iso(s).ok_or_else(|| {
        format!(
            "bad time '{s}': expected an age (30s, 15m, 2h, 7d) or an ISO-8601 UTC time \
             (2026-11-30, 2026-11-30T12:00:00Z, 2026-11-30T12:00:00.000Z)"
        )
    })
}

/// A span of milliseconds, roughly: "850 ms", "12 s", "42 min", "5 h", "3 d".
pub fn span(ms: i64) -> String {
    let ms = ms.unsigned_abs();
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=5_399_999 => format!("{} min", ms / 60_000),
        5_400_000..=172_799_999 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// "in 42 min" or "42 min ago", from `now` to `at`.
pub fn relative(at: i64, now: i64) -> String {
    if at >= now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// ISO time and the relative form: "2026-11-30T12:00:00.000Z (in 42 min)".
pub fn both(at: i64, now: i64) -> String {
    format!("{} ({})", iso(at), relative(at, now))
}

/// Epoch milliseconds this text could hold: 13 digits between 2001 and 2100.
fn plausible_ms(n: i64) -> bool {
    (1_000_000_000_000..4_102_444_800_000).contains(&n)
}

/// `note` with every epoch-millisecond number replaced by its ISO time and relative form
/// ("sleeping until 1795991620161" -> "sleeping until 2026-11-30T... (in 42 min)").
pub fn humanize_note(note: &str, now: i64) -> String {
    let mut out = String::with_capacity(note.len() + 32);
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        match digits.parse::<i64>() {
            Ok(n) if digits.len() == 13 && plausible_ms(n) => out.push_str(&both(n, now)),
            _ => out.push_str(digits),
        }
        digits.clear();
    };
    for c in note.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_and_relative_times() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_795_991_620_161), "2026-11-29T22:33:40.161Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(relative(42 * 60_000 + 5, 0), "in 42 min");
        assert_eq!(relative(0, 3 * 3_600_000), "3 h ago");
        assert_eq!(
            humanize_note(
                "sleeping until 1795991620161",
                1_795_991_620_161 - 42 * 60_000
            ),
            "sleeping until 2026-11-29T22:33:40.161Z (in 42 min)"
        );
        for ms in [0, 951_782_400_000, 1_795_991_620_161, 4_102_444_799_999] {
            assert_eq!(parse_iso(&iso(ms)), Some(ms), "{}", iso(ms));
        }
        assert_eq!(parse_iso("2026-11-29T22:33"), Some(1_795_991_580_000));
        assert_eq!(parse_iso("1970-01-02"), Some(86_400_000));
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-11-29T24:00",
            "26-11-29",
            "yesterday",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
        assert_eq!(parse_point("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert!(parse_point("2x", 0).unwrap_err().contains("ISO-8601"));
        assert_eq!(
            humanize_note("waiting for child 17", 0),
            "waiting for child 17"
        );
    }
}
