//! The engine's sources over redb: the block table and the snapshot table hand out their bytes
//! in place, in redb's pages.

use crate::engine::block::BlockHash;
use crate::engine::source::{BlockSource, SnapshotSource};
use crate::error::Result;
use crate::nid::SnapshotNid;
use redb::{AccessGuard, ReadableTable};

/// A value's bytes in one of redb's pages, held for as long as the borrow of its table.
pub struct PageBytes<'a>(AccessGuard<'a, &'static [u8]>);

impl AsRef<[u8]> for PageBytes<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

impl<T: ReadableTable<u128, &'static [u8]>> BlockSource for T {
    type Bytes<'a>
        = PageBytes<'a>
    where
        T: 'a;

    fn block(&self, hash: BlockHash) -> Result<Option<PageBytes<'_>>> {
        Ok(self.get(hash.0)?.map(PageBytes))
    }
}

impl<T: ReadableTable<u64, &'static [u8]>> SnapshotSource for T {
    type Bytes<'a>
        = PageBytes<'a>
    where
        T: 'a;

    fn snapshot(&self, snapshot: SnapshotNid) -> Result<Option<PageBytes<'_>>> {
        Ok(self.get(snapshot.get())?.map(PageBytes))
    }
}
