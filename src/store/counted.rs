//! The writer's tables, counting their B-tree operations: each forwards to redb's table and adds
//! one to its transaction's count per get, range, first, last, insert and remove. `bench`
//! reports the count per event ([`crate::store::WriteTxn::btree_ops`]).

use redb::{
    AccessGuard, Key, Range, ReadableTable, ReadableTableMetadata, StorageError, Table, TableStats,
    Value,
};
use std::borrow::Borrow;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};

type Result<T> = std::result::Result<T, StorageError>;

/// A table of a write transaction, its operations counted in `ops`.
pub(crate) struct Counted<'t, K: Key + 'static, V: Value + 'static> {
    table: Table<'t, K, V>,
    ops: &'t AtomicU64,
}

impl<'t, K: Key + 'static, V: Value + 'static> Counted<'t, K, V> {
    pub(crate) fn new(table: Table<'t, K, V>, ops: &'t AtomicU64) -> Self {
        Counted { table, ops }
    }

    fn count(&self) {
        // Only the transaction's one writer counts: an atomic keeps the transaction `Sync`
        // without a lock.
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// [`Table::insert`].
    pub(crate) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>> {
        self.count();
        self.table.insert(key, value)
    }

    /// [`Table::remove`].
    pub(crate) fn remove<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>> {
        self.count();
        self.table.remove(key)
    }

    /// [`Table::pop_first`].
    pub(crate) fn pop_first(&mut self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.count();
        self.table.pop_first()
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadableTableMetadata for Counted<'_, K, V> {
    fn stats(&self) -> Result<TableStats> {
        self.table.stats()
    }

    fn len(&self) -> Result<u64> {
        self.table.len()
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadableTable<K, V> for Counted<'_, K, V> {
    fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<AccessGuard<'_, V>>> {
        self.count();
        self.table.get(key)
    }

    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'_, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        self.count();
        self.table.range(range)
    }

    fn first(&self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.count();
        self.table.first()
    }

    fn last(&self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.count();
        self.table.last()
    }
}
