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
    /// Always `Some` until [`Drop`] takes it.
    table: Option<Table<'t, K, V>>,
    ops: &'t AtomicU64,
}

impl<K: Key + 'static, V: Value + 'static> Drop for Counted<'_, K, V> {
    /// Leaks the table while unwinding: a panic inside redb's `open_table` (a damaged table
    /// tree) leaves the transaction's table lock poisoned, and closing a table takes that lock,
    /// so a table dropped then panics a second time, which aborts the process.
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.table.take());
        }
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> Counted<'t, K, V> {
    pub(crate) fn new(table: Table<'t, K, V>, ops: &'t AtomicU64) -> Self {
        Counted {
            table: Some(table),
            ops,
        }
    }

    fn table(&self) -> &Table<'t, K, V> {
        // Infallible: only `drop` takes the table out.
        self.table
            .as_ref()
            .expect("a counted table is only taken when dropped")
    }

    fn table_mut(&mut self) -> &mut Table<'t, K, V> {
        // Infallible: only `drop` takes the table out.
        self.table
            .as_mut()
            .expect("a counted table is only taken when dropped")
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
        self.table_mut().insert(key, value)
    }

    /// [`Table::remove`].
    pub(crate) fn remove<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>> {
        self.count();
        self.table_mut().remove(key)
    }

    /// [`Table::pop_first`].
    pub(crate) fn pop_first(&mut self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.count();
        self.table_mut().pop_first()
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadableTableMetadata for Counted<'_, K, V> {
    fn stats(&self) -> Result<TableStats> {
        self.table().stats()
    }

    fn len(&self) -> Result<u64> {
        self.table().len()
    }
}

impl<K: Key + 'static, V: Value + 'static> ReadableTable<K, V> for Counted<'_, K, V> {
    fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<AccessGuard<'_, V>>> {
        self.count();
        self.table().get(key)
    }

    fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'_, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        self.count();
        self.table().range(range)
    }

    fn first(&self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.count();
        self.table().first()
    }

    fn last(&self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>> {
        self.count();
        self.table().last()
    }
}
