//! `doctor` for the binaries: what an operator would check by hand, printed
//! one check a line as `ok` or `problem`, each problem with what to do. The
//! relay's and the daemon's own checks build on the helpers here.

use std::fmt::Display;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A failed check: what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl Problem {
    /// A problem saying `what` is wrong and `fix` what to do.
    pub fn new(what: impl Display, fix: impl Display) -> Self {
        Self { what: what.to_string(), fix: fix.to_string() }
    }
}

/// What a check found: `Ok` with a detail for the reader, or a problem.
pub type Check = Result<String, Problem>;

/// The lines printed so far and how many were problems.
pub struct Report<W: Write> {
    /// Where the lines go (stdout for the binaries).
    out: W,
    /// Problems found; non-zero makes the exit code non-zero.
    problems: usize,
}

impl<W: Write> Report<W> {
    /// A report writing to `out`.
    pub fn new(out: W) -> Self {
        Self { out, problems: 0 }
    }

    /// Prints one check's line: `ok       NAME: detail` or `problem  NAME: what; fix: what to do`.
    pub fn add(&mut self, name: &str, check: Check) {
        let line = match check {
            Ok(detail) => format!("ok       {name}: {detail}"),
            Err(problem) => {
                self.problems += 1;
                format!("problem  {name}: {}; fix: {}", problem.what, problem.fix)
            }
        };
        let _ = writeln!(self.out, "{line}");
    }

    /// How many checks failed.
    pub fn problems(&self) -> usize {
        self.problems
    }
}

/// `path` belongs to this user (or root) and others cannot read or write it
/// (mode `0600` for a file, `0700` for a directory, group bits allowed when
/// `group_ok`). `Ok(None)` when it does not exist.
pub fn private(path: &Path, group_ok: bool) -> Result<Option<String>, Problem> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Problem::new(format!("{} cannot be read: {e}", path.display()), "check its permissions")),
    };
    let mode = meta.mode() & 0o7777;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        let what = format!("{} belongs to uid {}, not to you (uid {me})", path.display(), meta.uid());
        return Err(Problem::new(what, "run doctor as the service's user, or chown the file to it"));
    }
    let (want, allowed) = match (meta.is_dir(), group_ok) {
        (true, false) => ("700", 0o700),
        (true, true) => ("750", 0o750),
        (false, false) => ("600", 0o600),
        (false, true) => ("660", 0o660),
    };
    if mode & !allowed & 0o777 != 0 {
        let what = format!("{} has mode {mode:o}: others can reach it", path.display());
        return Err(Problem::new(what, format!("chmod {want} {}", path.display())));
    }
    Ok(Some(format!("{} (mode {mode:o})", path.display())))
}

/// The earliest time a correct clock can show: before this build existed.
const EARLIEST: Duration = Duration::from_secs(1_764_547_200); // 2025-12-01

/// The local clock is past this build's time; with the time a peer reported
/// (e.g. an HTTP `Date`), also within `max_skew` of it.
pub fn clock(peer: Option<SystemTime>, max_skew: Duration) -> Check {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let shown = crate::duration::utc(since.as_millis() as i64);
    if since < EARLIEST {
        return Err(Problem::new(
            format!("the clock says {shown}, before this build"),
            "set it: timedatectl set-ntp true",
        ));
    }
    let Some(peer) = peer else { return Ok(shown) };
    let skew = now.duration_since(peer).unwrap_or_else(|e| e.duration());
    if skew > max_skew {
        let what = format!("the clock differs from the relay's by {} s", skew.as_secs());
        return Err(Problem::new(what, "sync it: timedatectl set-ntp true"));
    }
    Ok(format!("{shown}, within {} s of the relay's", skew.as_secs().max(1)))
}

/// Reads an HTTP `Date` value (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else { return None };
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = months.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time.split(':').map(str::parse).collect::<Result<_, _>>().ok()?;
    let [h, m, s] = hms[..] else { return None };
    // Days from 1970-01-01 to the civil date (proleptic Gregorian, by 400-year eras).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let at = |text| http_date(text).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(at("Mon, 30 Nov 2026 05:43:28 GMT"), Some(1_796_017_408));
        assert_eq!(at("yesterday"), None);
    }

    #[test]
    fn lines_say_ok_or_problem_with_a_fix() {
        let mut out = Vec::new();
        let mut report = Report::new(&mut out);
        report.add("clock", Ok("fine".into()));
        report.add("data dir", Err(Problem::new("/d has mode 755: others can reach it", "chmod 700 /d")));
        assert_eq!(report.problems(), 1);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ok       clock: fine\nproblem  data dir: /d has mode 755: others can reach it; fix: chmod 700 /d\n"
        );
    }
}
