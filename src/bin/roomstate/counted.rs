//! A file backend that counts what redb reads and writes, for `bench`: the page traffic per
//! event is exact, where times on a shared machine are not.

use redb::StorageBackend;
use redb::backends::FileBackend;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads and writes so far: calls and bytes.
#[derive(Debug, Default)]
pub struct IoCounts {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    written_bytes: AtomicU64,
}

/// The counts at one moment, to subtract one from another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IoTotals {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
}

impl IoCounts {
    pub fn totals(&self) -> IoTotals {
        IoTotals {
            reads: self.reads.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Sub for IoTotals {
    type Output = IoTotals;
    fn sub(self, earlier: IoTotals) -> IoTotals {
        IoTotals {
            reads: self.reads.saturating_sub(earlier.reads),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            writes: self.writes.saturating_sub(earlier.writes),
            written_bytes: self.written_bytes.saturating_sub(earlier.written_bytes),
        }
    }
}

impl std::ops::Add for IoTotals {
    type Output = IoTotals;
    fn add(self, more: IoTotals) -> IoTotals {
        IoTotals {
            reads: self.reads + more.reads,
            read_bytes: self.read_bytes + more.read_bytes,
            writes: self.writes + more.writes,
            written_bytes: self.written_bytes + more.written_bytes,
        }
    }
}

/// A file, counting every read and write that reaches it.
#[derive(Debug)]
pub struct CountedFile {
    file: FileBackend,
    counts: Arc<IoCounts>,
}

impl CountedFile {
    /// Opens `path` (created if missing) and counts into `counts`.
    pub fn open(path: &std::path::Path, counts: Arc<IoCounts>) -> io::Result<CountedFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(CountedFile {
            file: FileBackend::new(file).map_err(io::Error::other)?,
            counts,
        })
    }
}

fn count(counter: &AtomicU64, bytes: &AtomicU64, len: usize) {
    counter.fetch_add(1, Ordering::Relaxed);
    bytes.fetch_add(len as u64, Ordering::Relaxed);
}

impl StorageBackend for CountedFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        count(&self.counts.reads, &self.counts.read_bytes, out.len());
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        count(&self.counts.writes, &self.counts.written_bytes, data.len());
        self.file.write(offset, data)
    }
}
