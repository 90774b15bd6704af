//! Resolution of a transfer's path, once, without following a symbolic link
//! that a user other than root or the daemon's own could have made.
//!
//! The daemon usually runs as root and writes or reads where a code holder
//! asks. Resolving a path by name at each step (check, create, rename) lets a
//! local user who owns a directory on it swap that directory for a link to
//! `/etc` in between. Here the path is walked one component at a time with
//! `O_NOFOLLOW`; a link is followed only when the directory holding it is
//! owned by root or the daemon's user and writable by nobody else (the rule
//! sshd's StrictModes applies), and the caller then works relative to the
//! directory opened, which no later rename can redirect.

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, fstat, openat, readlinkat, statat};
use rustix::io::Errno;

/// Most symbolic links followed in one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Why a path was not resolved.
#[derive(Debug)]
pub enum Refused {
    /// The path has a `..` component: what the operator approves must be the path written.
    DotDot,
    /// The path names no file (empty, or `/`).
    NoName,
    /// A symbolic link lies in a directory another user can change.
    UntrustedLink(PathBuf),
    /// More than 40 links (Linux's own limit).
    Loop,
    /// A component is missing or is not a directory, or the system refused.
    Io(std::io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DotDot => write!(f, "the path has a '..' component; name the file without '..'"),
            Self::NoName => write!(f, "the path does not name a file"),
            Self::UntrustedLink(link) => write!(
                f,
                "{} is a symbolic link in a directory a user other than root can change; \
                 aic does not follow it (name the path it points to instead)",
                link.display()
            ),
            Self::Loop => write!(f, "too many symbolic links in the path"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<Errno> for Refused {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

/// A resolved path: its directory, open, and the final name within it.
#[derive(Debug)]
pub struct Resolved {
    /// The directory holding the file, opened once; every later step is relative to it.
    pub dir: OwnedFd,
    /// The final component (not looked up: it may be absent, a file or a link).
    pub name: OsString,
}

/// Resolves `path` up to its final component. With `follow_last`, a final
/// component that is a trusted link is followed too (a pull); without, it is
/// left for the caller to refuse (a push never writes through a link).
pub fn resolve(path: &Path, follow_last: bool) -> Result<Resolved, Refused> {
    let mut todo = components(path.as_os_str())?;
    let mut dir = open_dir(CWD, if path.is_absolute() { "/" } else { "." })?;
    let mut walked = PathBuf::from(if path.is_absolute() { "/" } else { "" });
    let mut links = 0;
    loop {
        let name = todo.remove(0);
        let last = todo.is_empty();
        let kind = match statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) if last => None,
            Err(e) => return Err(e.into()),
        };
        if kind == Some(FileType::Symlink) && (!last || follow_last) {
            walked.push(&name);
            if !trusted(&dir)? {
                return Err(Refused::UntrustedLink(walked));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(Refused::Loop);
            }
            let target = readlinkat(&dir, name.as_os_str(), Vec::new())?;
            let target = OsStr::from_bytes(target.as_bytes());
            let mut expanded = link_components(target)?;
            if target.as_bytes().starts_with(b"/") {
                dir = open_dir(CWD, "/")?;
            }
            walked.pop();
            expanded.append(&mut todo);
            todo = expanded;
            continue;
        }
        if last {
            return Ok(Resolved { dir, name });
        }
        dir = open_dir(&dir, name.as_os_str())?;
        walked.push(&name);
    }
}

/// The names of a path given by a caller: `..` refused, `.` and repeated `/` dropped.
fn components(path: &OsStr) -> Result<Vec<OsString>, Refused> {
    let mut names = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => names.push(n.to_owned()),
            Component::ParentDir => return Err(Refused::DotDot),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if names.is_empty() { Err(Refused::NoName) } else { Ok(names) }
}

/// The names of a trusted link's target; `..` kept (it was written by root).
fn link_components(target: &OsStr) -> Result<Vec<OsString>, Refused> {
    let names: Vec<OsString> = Path::new(target)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    if names.is_empty() { Ok(vec![OsString::from(".")]) } else { Ok(names) }
}

/// Opens the directory `name` within `dir`, never through a link.
fn open_dir<Fd: std::os::fd::AsFd>(dir: Fd, name: impl rustix::path::Arg) -> Result<OwnedFd, Refused> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(openat(dir, name, flags, Mode::empty())?)
}

/// Whether links in `dir` are safe to follow: owned by root or this process's
/// user, writable by neither its group nor others.
fn trusted(dir: &OwnedFd) -> Result<bool, Refused> {
    Ok(changed_by(dir)?.is_none())
}

/// Who besides root and this process's user can change what `dir` holds:
/// its owner's uid when that is someone else, `Some(0)` for a root-owned
/// directory that its group or others can write; `None` when nobody can.
pub fn changed_by(dir: &OwnedFd) -> Result<Option<u32>, Refused> {
    let st = fstat(dir)?;
    let owner_ok = st.st_uid == 0 || st.st_uid == rustix::process::geteuid().as_raw();
    Ok(if !owner_ok {
        Some(st.st_uid)
    } else if st.st_mode & 0o022 != 0 {
        Some(0)
    } else {
        None
    })
}

/// Why another user could change `path` (a file the daemon obeys, such as
/// its config), if one could: the file or its directory owned by someone other
/// than root or this process's user, or writable by others, or by a group
/// other than root's or this process's (so that a umask of 002 is fine). A
/// directory with the sticky bit (like `/tmp`) lets nobody replace a file
/// they do not own.
pub fn changeable_by_others(path: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::metadata(path)?;
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::metadata(dir)?,
        None => std::fs::metadata(".")?,
    };
    let me = rustix::process::geteuid().as_raw();
    let my_group = rustix::process::getegid().as_raw();
    let writable = |meta: &std::fs::Metadata| {
        let group_ok = meta.gid() == 0 || meta.gid() == my_group;
        meta.mode() & 0o002 != 0 || (meta.mode() & 0o020 != 0 && !group_ok)
    };
    let foreign = |meta: &std::fs::Metadata| meta.uid() != 0 && meta.uid() != me;
    let shown = path.display();
    Ok(if foreign(&file) {
        Some(format!("{shown} belongs to uid {}, not to root or to this user", file.uid()))
    } else if writable(&file) {
        Some(format!("{shown} can be written by other users (mode {:04o})", file.mode() & 0o7777))
    } else if foreign(&dir) {
        Some(format!("the directory holding {shown} belongs to uid {}, who could replace it", dir.uid()))
    } else if writable(&dir) && dir.mode() & 0o1000 == 0 {
        Some(format!("the directory holding {shown} can be written by other users, who could replace it"))
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn name_of(r: &Resolved) -> &str {
        r.name.to_str().unwrap()
    }

    #[test]
    fn dot_dot_and_nameless_paths_are_refused() {
        assert!(matches!(resolve(Path::new("/tmp/../etc/passwd"), false), Err(Refused::DotDot)));
        assert!(matches!(resolve(Path::new("/"), false), Err(Refused::NoName)));
    }

    #[test]
    fn links_in_a_directory_others_can_write_are_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        let real = base.path().join("real");
        std::fs::create_dir(&open).unwrap();
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(real.join("secret"), b"s").unwrap();
        symlink(&real, open.join("dir")).unwrap();
        symlink(real.join("secret"), open.join("file")).unwrap();
        // A directory swapped for a link, as a local user racing the daemon would.
        let refused = resolve(&open.join("dir/new"), false).unwrap_err();
        assert!(matches!(&refused, Refused::UntrustedLink(p) if p == &open.join("dir")), "{refused:?}");
        assert!(matches!(resolve(&open.join("file"), true), Err(Refused::UntrustedLink(_))));
        // A push is told the final link is a link; it is not followed.
        assert_eq!(name_of(&resolve(&open.join("file"), false).unwrap()), "file");
    }

    #[test]
    fn a_file_others_can_change_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(changeable_by_others(&file).unwrap(), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(changeable_by_others(&file).unwrap().unwrap().contains("mode 0646"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(changeable_by_others(&file).unwrap().unwrap().contains("could replace it"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(changeable_by_others(&file).unwrap(), None);
    }

    #[test]
    fn links_in_a_private_directory_are_followed() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(real.join("f"), b"x").unwrap();
        symlink("real", base.path().join("via")).unwrap();
        symlink("../real/f", real.join("up")).unwrap();
        let r = resolve(&base.path().join("via/f"), false).unwrap();
        assert_eq!(name_of(&r), "f");
        let st = statat(&r.dir, "f", AtFlags::empty()).unwrap();
        assert_eq!(st.st_size, 1);
        let r = resolve(&base.path().join("via/up"), true).unwrap();
        assert_eq!(name_of(&r), "f");
        assert!(matches!(resolve(&base.path().join("none/f"), false), Err(Refused::Io(_))));
        assert_eq!(name_of(&resolve(&base.path().join("via/absent"), false).unwrap()), "absent");
    }
}
