//! A job's output on disk, in its directory: segments `out.<offset>` named by
//! the offset of their first byte (counted from the job's start), so that
//! bytes never move and a reader needs no index. A job's spool keeps at most
//! its cap: past half of it a new segment begins, and past two segments the
//! oldest is deleted (the dropped bytes are counted, the job runs on). An
//! exec's spool has one segment and `err` for standard error, and is cut at
//! the cap instead.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::private_append;
use crate::protocol::agent::Stream;

/// Standard error of an exec.
const ERR: &str = "err";

/// Writes one job's output (the supervisor holds it).
pub struct Writer {
    dir: PathBuf,
    /// Bytes kept at most.
    cap: u64,
    /// An exec: cut at the cap, stderr apart.
    cut: bool,
    /// The segment being written, its first byte's offset and its length.
    out: std::fs::File,
    base: u64,
    len: u64,
    /// An exec's standard error.
    err: Option<std::fs::File>,
    /// Bytes written to `err`.
    err_len: u64,
    /// An exec's output passed the cap.
    pub truncated: bool,
    /// The first write that failed (a full disk), in words: output from there on is lost.
    pub lost: Option<String>,
}

impl Writer {
    /// A new spool in `dir`; `cut` for an exec.
    pub fn create(dir: &Path, cap: u64, cut: bool) -> std::io::Result<Self> {
        let out = private_append(&dir.join("out.0"))?;
        let err = if cut { Some(private_append(&dir.join(ERR))?) } else { None };
        Ok(Self {
            dir: dir.to_owned(),
            cap: cap.max(2),
            cut,
            out,
            base: 0,
            len: 0,
            err,
            err_len: 0,
            truncated: false,
            lost: None,
        })
    }

    /// Appends a chunk. False once an exec's cap is reached: the command must
    /// be stopped. The first failure is kept in [`Writer::lost`].
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<bool> {
        let at = self.base + self.len + self.err_len;
        let written = if self.cut { self.write_cut(stream, data) } else { self.write_rotating(data) };
        if let Err(e) = &written
            && self.lost.is_none()
        {
            self.lost = Some(format!("output from byte {at} on was lost, the job running on: {e}"));
        }
        written
    }

    fn write_rotating(&mut self, data: &[u8]) -> std::io::Result<bool> {
        let segment = self.cap / 2;
        let mut rest = data;
        while !rest.is_empty() {
            if self.len >= segment {
                self.rotate()?;
            }
            let n = rest.len().min((segment - self.len) as usize);
            self.out.write_all(&rest[..n])?;
            self.len += n as u64;
            rest = &rest[n..];
        }
        Ok(true)
    }

    fn write_cut(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<bool> {
        let room = self.cap.saturating_sub(self.len + self.err_len);
        let n = data.len().min(room as usize);
        match (stream, self.err.as_mut()) {
            (Stream::Stderr, Some(err)) => {
                err.write_all(&data[..n])?;
                self.err_len += n as u64;
            }
            _ => {
                self.out.write_all(&data[..n])?;
                self.len += n as u64;
            }
        }
        self.truncated |= n < data.len();
        Ok(!self.truncated)
    }

    /// Starts a new segment; of the older ones only the last is kept.
    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.base + self.len;
        self.out = private_append(&self.dir.join(format!("out.{next}")))?;
        for (base, path) in segments(&self.dir) {
            if base < self.base {
                std::fs::remove_file(path)?;
            }
        }
        self.base = next;
        self.len = 0;
        Ok(())
    }
}

/// The segments in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let base = name.to_str()?.strip_prefix("out.")?.parse().ok()?;
            Some((base, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// What a spool holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extent {
    /// Offset of the oldest byte kept (bytes before it were dropped).
    pub first: u64,
    /// Offset just past the newest byte: all the output written.
    pub end: u64,
    /// Bytes of an exec's standard error.
    pub err: u64,
}

/// The extent of the spool in `dir`.
pub fn extent(dir: &Path) -> Extent {
    let segs = segments(dir);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let first = segs.first().map_or(0, |(b, _)| *b);
    let end = segs.last().map_or(0, |(b, p)| b + size(p));
    Extent { first, end, err: size(&dir.join(ERR)) }
}

/// Up to `limit` bytes from `offset` (or from the oldest byte kept, when
/// older ones were dropped): where they start, and the bytes.
pub fn read(dir: &Path, offset: u64, limit: u64) -> (u64, Vec<u8>) {
    // A segment deleted between the listing and its read (the writer moved
    // on) is looked for again.
    for _ in 0..4 {
        if let Ok(read) = try_read(dir, offset, limit) {
            return read;
        }
    }
    (offset, Vec::new())
}

fn try_read(dir: &Path, offset: u64, limit: u64) -> std::io::Result<(u64, Vec<u8>)> {
    let segs = segments(dir);
    let start = segs.first().map_or(offset, |(first, _)| offset.max(*first));
    let mut data = Vec::new();
    let mut at = start;
    for (i, (base, path)) in segs.iter().enumerate() {
        let next = segs.get(i + 1).map_or(u64::MAX, |(b, _)| *b);
        if at >= next || (data.len() as u64) >= limit {
            continue;
        }
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(at - base))?;
        let want = limit - data.len() as u64;
        let got = file.take(want).read_to_end(&mut data)?;
        at += got as u64;
    }
    Ok((start, data))
}

/// Up to `limit` bytes of an exec's standard error from `offset`.
pub fn read_err(dir: &Path, offset: u64, limit: u64) -> Vec<u8> {
    let mut data = Vec::new();
    if let Ok(mut file) = std::fs::File::open(dir.join(ERR))
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.take(limit).read_to_end(&mut data);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_spool_keeps_the_newest_bytes_within_its_cap_and_offsets_stay_put() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 10, false).unwrap();
        for chunk in [&b"0123"[..], b"4567", b"89ab", b"cdefghij"] {
            assert!(w.write(Stream::Stdout, chunk).unwrap());
        }
        let e = extent(dir.path());
        assert_eq!((e.first, e.end), (10, 20));
        assert_eq!(read(dir.path(), 0, 100), (10, b"abcdefghij".to_vec()));
        assert_eq!(read(dir.path(), 12, 3), (12, b"cde".to_vec()));
        assert_eq!(read(dir.path(), 20, 3), (20, Vec::new()));
    }

    #[test]
    fn a_full_disk_is_kept_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 100, false).unwrap();
        assert!(w.write(Stream::Stdout, b"abc").unwrap());
        w.out = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        assert!(w.write(Stream::Stdout, b"def").is_err());
        assert!(w.write(Stream::Stdout, b"ghi").is_err());
        let lost = w.lost.unwrap();
        assert!(lost.starts_with("output from byte 3 on was lost") && lost.contains("space"), "{lost}");
    }

    #[test]
    fn an_exec_spool_keeps_stderr_apart_and_is_cut_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(dir.path(), 6, true).unwrap();
        assert!(w.write(Stream::Stdout, b"abc").unwrap());
        assert!(!w.write(Stream::Stderr, b"xyzw").unwrap());
        assert!(w.truncated);
        assert_eq!(read(dir.path(), 0, 100).1, b"abc");
        assert_eq!(read_err(dir.path(), 1, 100), b"yz");
    }
}
