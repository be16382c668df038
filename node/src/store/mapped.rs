//! Large entries held in the page cache instead of the heap, so that a connection
//! can send their bodies with `sendfile(2)`, without copying them into the socket
//! (issue 21, part 1). Off unless `sendfile_min_size` is set: on loopback, where
//! the benchmarks run, it made hits slower (the client's copy then reads pages that
//! are cold in the CPU's caches) and saved the node little CPU; see "Large bodies
//! and sendfile" in `docs/PERFORMANCE.md`.
//!
//! When it is on, each entry of at least that many bytes (encoded) gets its own
//! anonymous in-memory file (`memfd_create`), mapped into the process, and is read through
//! that mapping like any other bytes: hits decode it, HTTP/2 and HTTP/3 copy from
//! it, the disk tier writes it. A plain TCP connection that is about to write a
//! slice of one asks [`file_of`] which file and offset it is, and hands the kernel
//! the file's pages instead (`front::sendfile`).
//!
//! Why a file per entry, never reused: `sendfile` passes *references* to the file's
//! pages down to the socket, and they stay queued there after the call returns,
//! until the peer acknowledges them. Bytes rewritten in place during that time would
//! go out changed. A mapping here is written once, before anyone can read it, and
//! never again; when the entry is dropped the file is closed and its pages live on
//! only as long as a socket still holds them. So no response can carry another
//! entry's bytes.
//!
//! Each such entry holds a file descriptor: at most [`budget`] of them are mapped at
//! once (a quarter of the process's open-file limit); past it, and whenever the
//! kernel refuses, entries stay on the heap and are sent with a copy, as before.

// Maps files into memory and frees the mappings: needs `unsafe` (libc calls).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock};

use bytes::Bytes;

/// Smallest encoded entry ever kept in its own file: below it the page rounding
/// would waste more than an eighth.
pub const MAPPED_MIN: usize = 32 << 10;

const PAGE: usize = 4096;

/// Entries this large (encoded) or larger are kept in files; `usize::MAX`: none.
static THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Keeps entries of at least `min_size` bytes in files from now on (at least
/// [`MAPPED_MIN`]), or none (`None`, the default). Process-wide: set once, at
/// start-up, from `sendfile_min_size`.
pub fn keep_entries_in_files(min_size: Option<u64>) {
    let threshold = min_size.map_or(usize::MAX, |min| {
        usize::try_from(min).unwrap_or(usize::MAX).max(MAPPED_MIN)
    });
    THRESHOLD.store(threshold, Ordering::Relaxed);
}

/// Whether entries are kept in files (and connections should look for them).
pub fn in_use() -> bool {
    THRESHOLD.load(Ordering::Relaxed) != usize::MAX
}

/// `encoded` where it will stay: in a file of its own if it is large enough and
/// one can be made, otherwise where it is.
pub fn kept(encoded: Bytes) -> Bytes {
    if encoded.len() < THRESHOLD.load(Ordering::Relaxed) {
        return encoded;
    }
    copy_into_file(&encoded).unwrap_or(encoded)
}

/// Memory an entry of `len` encoded bytes takes: whole pages if it is kept in a
/// file.
pub fn footprint(len: usize) -> usize {
    rounded(len, THRESHOLD.load(Ordering::Relaxed))
}

fn rounded(len: usize, threshold: usize) -> usize {
    if len >= threshold {
        len.next_multiple_of(PAGE)
    } else {
        len
    }
}

/// Live mappings by start address: the file each one is a view of.
static REGIONS: RwLock<BTreeMap<usize, Region>> = RwLock::new(BTreeMap::new());
/// Mappings alive now (each holds a file descriptor).
static MAPPED: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy)]
struct Region {
    len: usize,
    fd: RawFd,
}

/// How many entries may be mapped at once: a quarter of the open-file limit, so
/// connections and the disk tier keep the rest.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        limit.current.map_or(usize::MAX, |soft| {
            usize::try_from(soft / 4).unwrap_or(usize::MAX)
        })
    })
}

/// Mappings alive now.
pub fn mapped_count() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// `bytes` copied into a file of their own and mapped, or `None` when that is not
/// possible (too small, the budget spent, the kernel refused): the caller keeps
/// them on the heap.
pub fn copy_into_file(bytes: &[u8]) -> Option<Bytes> {
    if bytes.len() < MAPPED_MIN {
        return None;
    }
    if MAPPED.fetch_add(1, Ordering::Relaxed) >= budget() {
        MAPPED.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    match MappedFile::new(bytes) {
        Ok(file) => Some(Bytes::from_owner(file)),
        Err(e) => {
            MAPPED.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(error = %e, len = bytes.len(), "entry kept on the heap: no file for it");
            None
        }
    }
}

/// The file `slice` is a view of, and its offset there, if it lies wholly inside a
/// mapping made by [`copy_into_file`]. The descriptor is open as long as the bytes
/// `slice` borrows from are alive.
pub fn file_of(slice: &[u8]) -> Option<(RawFd, u64)> {
    if MAPPED.load(Ordering::Relaxed) == 0 {
        return None;
    }
    file_at(slice.as_ptr() as usize, slice.len())
}

/// [`file_of`] for the `len` bytes at address `start`.
fn file_at(start: usize, len: usize) -> Option<(RawFd, u64)> {
    let regions = REGIONS.read().unwrap_or_else(|p| p.into_inner());
    let (&base, region) = regions.range(..=start).next_back()?;
    // No two live mappings overlap, so the one starting at or before `start` is the
    // only one that can hold it.
    let end = start.checked_add(len)?;
    (end <= base + region.len).then(|| (region.fd, (start - base) as u64))
}

/// One entry's file and its mapping.
struct MappedFile {
    ptr: NonNull<u8>,
    len: usize,
    /// Closed when the entry is dropped, after the mapping is gone.
    _file: OwnedFd,
}

// SAFETY: the mapping is written only in `new`, before the value is shared; after
// that it is read-only memory owned by this value.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    fn new(bytes: &[u8]) -> io::Result<Self> {
        let len = bytes.len();
        // SAFETY: the name is a NUL-terminated string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"fanz-entry".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let size = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: `file` is an open memfd.
        if unsafe { libc::ftruncate(file.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole file, which is `len` bytes.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        // SAFETY: the mapping is `len` writable bytes that nothing else sees yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), len) };
        let region = Region {
            len,
            fd: file.as_raw_fd(),
        };
        REGIONS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ptr.as_ptr() as usize, region);
        Ok(Self {
            ptr,
            len,
            _file: file,
        })
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes, mapped until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // Out of the registry before the address can be mapped again.
        REGIONS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.ptr.as_ptr() as usize));
        // SAFETY: the mapping made in `new`; no slice of it outlives this value.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        // `file` closes once this returns; pages a socket still holds stay with it.
        MAPPED.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pread(fd: RawFd, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        // SAFETY: reads into a buffer of `len` bytes.
        let n = unsafe { libc::pread(fd, out.as_mut_ptr().cast(), len, offset as libc::off_t) };
        assert_eq!(n, len as isize, "{}", io::Error::last_os_error());
        out
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_mapped_entry_reads_back_as_written_and_its_slices_name_their_place_in_the_file() {
        let written = pattern(MAPPED_MIN * 3 + 123);
        let mapped = copy_into_file(&written).expect("mapped");
        assert_eq!(&mapped[..], &written[..]);
        for (from, to) in [
            (0, written.len()),
            (100, 70_000),
            (written.len() - 1, written.len()),
        ] {
            let slice = mapped.slice(from..to);
            let (fd, offset) = file_of(&slice).expect("a slice of a mapped entry");
            assert_eq!(offset, from as u64);
            assert_eq!(pread(fd, offset, to - from), &written[from..to]);
        }
    }

    #[test]
    fn heap_bytes_and_small_entries_have_no_file_and_a_dropped_one_leaves_none() {
        let heap = Bytes::from(pattern(MAPPED_MIN * 2));
        assert!(file_of(&heap).is_none());
        assert!(copy_into_file(&pattern(MAPPED_MIN - 1)).is_none());
        let mapped = copy_into_file(&pattern(MAPPED_MIN)).expect("mapped");
        let (start, len) = (mapped.as_ptr() as usize, mapped.len());
        assert!(file_of(&mapped).is_some());
        drop(mapped);
        let regions = REGIONS.read().unwrap();
        assert!(
            regions.range(start..start + len).next().is_none(),
            "a dropped mapping left its region registered"
        );
    }

    #[test]
    fn a_slice_reaching_past_its_mapping_has_no_file() {
        let mapped = copy_into_file(&pattern(MAPPED_MIN)).expect("mapped");
        let start = mapped.as_ptr() as usize;
        assert!(file_at(start, mapped.len()).is_some());
        assert!(file_at(start, mapped.len() + 1).is_none());
        assert!(file_at(start - 1, 2).is_none());
    }

    #[test]
    fn footprint_counts_whole_pages_for_mapped_entries_only() {
        assert_eq!(rounded(100, MAPPED_MIN), 100);
        assert_eq!(rounded(MAPPED_MIN + 1, MAPPED_MIN), MAPPED_MIN + PAGE);
        assert_eq!(rounded(MAPPED_MIN, MAPPED_MIN), MAPPED_MIN);
        assert_eq!(rounded(MAPPED_MIN + 1, usize::MAX), MAPPED_MIN + 1);
    }
}
