//! Event JSON at rest, compressed with zstd and a dictionary trained from the store's own events.
//!
//! Event JSON is most of a store's bytes, and it repeats itself across events: the same keys,
//! room ID, senders, and shapes of hashes and signatures. One event is too short for zstd to find
//! that repetition inside it; a dictionary of what events have in common supplies it.
//!
//! A row of `event_json` is one of two things, told apart by its first bytes:
//! - a zstd frame, starting with zstd's magic number `28 b5 2f fd`. Its header names the
//!   dictionary it was compressed with (zstd's dictionary ID, derived from the dictionary's
//!   content) and the JSON's length;
//! - the JSON itself, as received. JSON text starts with `{` or white space, never with `0x28`
//!   followed by the magic's other bytes: `(` is not JSON. Rows that would not shrink, rows of a
//!   store too small to have trained a dictionary, and rows of a store from before compression
//!   are kept this way. The first training compresses the rows it learnt from, when it learnt
//!   from every row (up to [`MAX_SAMPLES`]).
//!
//! `json_dictionaries` keeps every dictionary ever trained, by ID, so a row stays readable when a
//! newer dictionary takes over for new rows. Meta [`CURRENT_DICTIONARY_KEY`] names the one new
//! rows use. A dictionary is trained when the table first holds [`TRAIN_AT`]`[0]` rows, from
//! those rows, and again at each later threshold from rows spread over the whole table.
//!
//! Architecture invariant: this module treats JSON as bytes. It never parses it; readers get
//! back exactly the bytes that were written.

use crate::error::{Error, Result};
use crate::nid::EventNid;
use crate::store::check::CheckReport;
use crate::store::read::Tables;
use crate::store::writer::Writer;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use zstd::zstd_safe::{self, CCtx, CDict, DCtx, DDict};

/// zstd dictionary ID to the dictionary's bytes, as `zstd::dict::from_samples` trained them.
pub(crate) const JSON_DICTIONARIES: TableDefinition<u32, &[u8]> =
    TableDefinition::new("json_dictionaries");
/// The [`crate::store::tables::META`] key of the dictionary new rows are compressed with;
/// absent until the first is trained.
pub(crate) const CURRENT_DICTIONARY_KEY: &str = "json_dictionary";
/// The [`crate::store::tables::META`] key of the row count of `event_json` when the current
/// dictionary was trained.
pub(crate) const TRAINED_AT_KEY: &str = "json_dictionary_trained_at";

/// The row counts of `event_json` at which a dictionary is trained, unless the store was opened
/// with others. The first comes early, so that little is stored raw; the second sees more kinds
/// of event than a room's first ones.
pub(crate) const TRAIN_AT: [u64; 2] = [2_000, 100_000];
/// The dictionary's size. Tried at 16, 32, 64 and 110 KiB on generated `hq` events, all came
/// within 1% of each other at level 3; 32 KiB was the smallest of the best.
const DICTIONARY_BYTES: usize = 32 << 10;
/// At most this many rows are sampled to train a dictionary.
const MAX_SAMPLES: u64 = 4_000;
/// zstd's compression level: its default, fast enough to compress every event as it arrives.
const LEVEL: i32 = 3;
/// The longest JSON a frame may claim to hold. Matrix caps a PDU at 65,536 bytes; a larger claim
/// is damage, refused before anything is allocated for it.
const MAX_JSON_BYTES: u64 = 1 << 20;
/// zstd's frame magic number, as it starts a frame.
const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A trained dictionary, prepared both ways.
#[doc(hidden)]
pub struct Dictionary {
    id: u32,
    compress: CDict<'static>,
    decompress: DDict<'static>,
}

impl Dictionary {
    /// A dictionary trained from `samples`, as a store trains one; `None` when zstd finds too
    /// little in common to make one. For tools and fuzzing.
    pub fn train(samples: &[&[u8]]) -> Option<Dictionary> {
        let bytes = zstd::dict::from_samples(samples, DICTIONARY_BYTES).ok()?;
        let id = zstd_safe::get_dict_id(&bytes)?;
        Dictionary::prepare(id.get(), &bytes).ok()
    }

    fn prepare(id: u32, bytes: &[u8]) -> Result<Dictionary> {
        let bad = || Error::corrupt("json_dictionaries", id, "not a zstd dictionary");
        if zstd_safe::get_dict_id(bytes).map(|d| d.get()) != Some(id) {
            return Err(bad());
        }
        Ok(Dictionary {
            id,
            compress: CDict::try_create(bytes, LEVEL).ok_or_else(bad)?,
            decompress: DDict::try_create(bytes).ok_or_else(bad)?,
        })
    }
}

/// The store's dictionaries, prepared once and shared by every transaction. zstd derives a
/// dictionary's ID from its content, and a store never keeps two dictionaries under one ID
/// (training refuses the second), so an entry stays right even when the transaction that
/// trained it aborted.
pub struct JsonDictionaries {
    prepared: RwLock<HashMap<u32, Arc<Dictionary>>>,
    /// The dictionary a writer last found current or trained: what
    /// [`compress_ahead`](Self::compress_ahead) guesses new rows will use.
    latest: RwLock<Option<Arc<Dictionary>>>,
    /// Row counts at which to train, ascending.
    train_at: Vec<u64>,
}

impl JsonDictionaries {
    pub(crate) fn new(train_at: Vec<u64>) -> JsonDictionaries {
        JsonDictionaries {
            prepared: RwLock::default(),
            latest: RwLock::default(),
            train_at,
        }
    }

    /// The first training threshold above `rows`.
    fn next_training(&self, rows: Option<u64>) -> Option<u64> {
        self.train_at
            .iter()
            .copied()
            .find(|&at| rows.is_none_or(|r| at > r))
    }

    /// Dictionary `id`, read through `tx` the first time it is asked for.
    fn get<T: Tables>(&self, tx: &T, id: u32) -> Result<Arc<Dictionary>> {
        // The map is only ever inserted into whole entries, so a panic elsewhere while it was
        // locked cannot have left it inconsistent.
        let known = self.prepared.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = known.get(&id) {
            return Ok(Arc::clone(d));
        }
        drop(known);
        let table = tx.open(JSON_DICTIONARIES)?;
        let row = table.get(id)?.ok_or_else(|| {
            Error::corrupt(
                "json_dictionaries",
                id,
                "a row names this dictionary; it is missing",
            )
        })?;
        let prepared = Arc::new(Dictionary::prepare(id, row.value())?);
        self.remember(&prepared);
        Ok(prepared)
    }

    /// `json` compressed with the dictionary writers used last, on the caller's thread; `None`
    /// before any is known, or when zstd fails (the writer then compresses, and reports it).
    pub(crate) fn compress_ahead(&self, json: &[u8]) -> Option<CompressedJson> {
        let latest = self.latest.read().unwrap_or_else(PoisonError::into_inner);
        let dictionary = Arc::clone(latest.as_ref()?);
        drop(latest);
        let mut frame = compress(json, &dictionary).ok()?;
        // Held in a queue until the writer takes it: not with room for the JSON uncompressed.
        if let Some(frame) = &mut frame {
            frame.shrink_to_fit();
        }
        Some(CompressedJson { dictionary, frame })
    }

    fn set_latest(&self, dictionary: &Option<Arc<Dictionary>>) {
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = dictionary.clone();
    }

    fn remember(&self, dictionary: &Arc<Dictionary>) {
        self.prepared
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dictionary.id, Arc::clone(dictionary));
    }
}

thread_local! {
    // Contexts hold zstd's working memory (a few hundred KiB to compress): one per thread,
    // reused by every row, rather than one per row.
    static COMPRESSOR: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// A row's JSON: borrowed when it is stored raw.
pub(crate) fn decode<'a, T: Tables>(
    tx: &T,
    dictionaries: &JsonDictionaries,
    event: EventNid,
    row: &'a [u8],
) -> Result<Cow<'a, [u8]>> {
    decode_with(row, event, |id| dictionaries.get(tx, id))
}

/// A row's JSON, with `find` giving the dictionary a frame names.
fn decode_with<'a>(
    row: &'a [u8],
    event: impl std::fmt::Display + Copy,
    find: impl FnOnce(u32) -> Result<Arc<Dictionary>>,
) -> Result<Cow<'a, [u8]>> {
    if !row.starts_with(&FRAME_MAGIC) {
        return Ok(Cow::Borrowed(row));
    }
    let corrupt = |what: &str| Error::corrupt("event_json", event, what);
    let id = zstd_safe::get_dict_id_from_frame(row)
        .ok_or_else(|| corrupt("a frame without a dictionary"))?;
    let dictionary = find(id.get())?;
    let len = match zstd_safe::get_frame_content_size(row) {
        Ok(Some(len)) if len <= MAX_JSON_BYTES => len as usize,
        _ => return Err(corrupt("a frame without a length")),
    };
    let mut json = Vec::with_capacity(len);
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let dctx = match slot {
            Some(dctx) => dctx,
            None => slot.insert(DCtx::try_create().ok_or_else(out_of_memory)?),
        };
        dctx.decompress_using_ddict(&mut json, row, &dictionary.decompress)
            .map_err(|code| corrupt(zstd_safe::get_error_name(code)))
    })?;
    if json.len() != len {
        return Err(corrupt("a frame shorter than it says"));
    }
    Ok(Cow::Owned(json))
}

/// A row as the store would write it with `dictionary`: a frame, or `json` itself when the frame
/// would be no shorter. For tools and fuzzing; the store writes rows itself.
#[doc(hidden)]
pub fn encode_row(json: &[u8], dictionary: &Dictionary) -> Result<Vec<u8>> {
    Ok(compress(json, dictionary)?.unwrap_or_else(|| json.to_vec()))
}

/// A row's JSON, as the store reads it, given the dictionaries the store holds. For tools and
/// fuzzing.
#[doc(hidden)]
pub fn decode_row<'a>(row: &'a [u8], dictionaries: &[Arc<Dictionary>]) -> Result<Cow<'a, [u8]>> {
    decode_with(row, "(a row)", |id| {
        dictionaries
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| Error::corrupt("json_dictionaries", id, "no such dictionary"))
    })
}

/// A row's JSON as text.
pub(crate) fn decode_text<T: Tables>(
    tx: &T,
    dictionaries: &JsonDictionaries,
    event: EventNid,
    row: &[u8],
) -> Result<String> {
    let json = decode(tx, dictionaries, event, row)?.into_owned();
    String::from_utf8(json).map_err(|e| Error::corrupt("event_json", event, e))
}

fn out_of_memory() -> Error {
    Error::Io(std::io::Error::from(std::io::ErrorKind::OutOfMemory))
}

/// `json` as a frame, if the frame is shorter.
fn compress(json: &[u8], dictionary: &Dictionary) -> Result<Option<Vec<u8>>> {
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(json.len()));
    COMPRESSOR.with_borrow_mut(|slot| {
        let cctx = match slot {
            Some(cctx) => cctx,
            None => slot.insert(CCtx::try_create().ok_or_else(out_of_memory)?),
        };
        cctx.compress_using_cdict(&mut frame, json, &dictionary.compress)
            .map_err(|code| {
                Error::InvalidState(format!(
                    "zstd failed to compress: {}",
                    zstd_safe::get_error_name(code)
                ))
            })
    })?;
    Ok((frame.len() < json.len()).then_some(frame))
}

/// An event's JSON compressed before its write, on any thread, with the dictionary the store's
/// writers used last ([`JsonDictionaries::compress_ahead`]). A writer takes it only when that
/// dictionary is still its current one, and compresses the JSON itself otherwise: zstd turns the
/// same bytes and dictionary into the same frame, so the row is the same either way.
pub struct CompressedJson {
    /// The dictionary itself, not its ID: zstd derives an ID from part of a dictionary only, so
    /// two trainings (one in a transaction that aborted) could share an ID.
    dictionary: Arc<Dictionary>,
    /// `None`: the frame would be no shorter than the JSON, which is stored as it is.
    frame: Option<Vec<u8>>,
}

impl std::fmt::Debug for CompressedJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedJson")
            .field("dictionary", &self.dictionary.id)
            .field("frame_bytes", &self.frame.as_ref().map(Vec::len))
            .finish()
    }
}

/// Rows' JSON to train from, and which of them are raw rows (their event, their index).
type Samples = (Vec<Vec<u8>>, Vec<(EventNid, usize)>);

/// What a writer knows of the dictionaries, once read.
#[derive(Default)]
pub(super) struct WriterJson {
    /// The current dictionary; `Some(None)` when there is none yet.
    current: Option<Option<Arc<Dictionary>>>,
    /// Rows to write before the next training; `None` when no threshold is left.
    until_training: Option<u64>,
}

impl Writer<'_> {
    /// Stores an event's JSON, compressed when a dictionary has been trained: the frame
    /// compressed `ahead`, when it was with the current dictionary.
    pub(crate) fn put_event_json(
        &mut self,
        event: EventNid,
        json: &[u8],
        ahead: Option<CompressedJson>,
    ) -> Result<()> {
        let dictionary = self.current_dictionary()?;
        let frame = match (&dictionary, ahead) {
            (Some(d), Some(ahead)) if Arc::ptr_eq(&ahead.dictionary, d) => ahead.frame,
            (Some(d), _) => compress(json, d)?,
            (None, _) => None,
        };
        self.event_json()?
            .insert(event.get(), frame.as_deref().unwrap_or(json))?;
        if let Some(left) = &mut self.cache.json.until_training {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.train()?;
            }
        }
        Ok(())
    }

    /// The event's JSON as text, if stored.
    pub fn event_json_text(&mut self, event: EventNid) -> Result<Option<String>> {
        let (tx, dictionaries) = (self.tx, self.json_dictionaries);
        let Some(row) = self.event_json()?.get(event.get())? else {
            return Ok(None);
        };
        decode_text(tx, dictionaries, event, row.value()).map(Some)
    }

    fn current_dictionary(&mut self) -> Result<Option<Arc<Dictionary>>> {
        if let Some(current) = &self.cache.json.current {
            return Ok(current.clone());
        }
        let meta = self.meta()?;
        let id = meta
            .get(CURRENT_DICTIONARY_KEY.as_bytes())?
            .map(|v| v.value());
        let trained_at = meta.get(TRAINED_AT_KEY.as_bytes())?.map(|v| v.value());
        let current = match id {
            Some(id) => {
                let id = u32::try_from(id)
                    .map_err(|_| Error::corrupt("meta", CURRENT_DICTIONARY_KEY, "not a u32"))?;
                Some(self.json_dictionaries.get(self.tx, id)?)
            }
            None => None,
        };
        let rows = self.event_json()?.len()?;
        self.cache.json.until_training = self
            .json_dictionaries
            .next_training(trained_at)
            .map(|at| at.saturating_sub(rows).max(1));
        self.json_dictionaries.set_latest(&current);
        self.cache.json.current = Some(current.clone());
        Ok(current)
    }

    /// Trains a dictionary from rows spread over `event_json`, and makes it current.
    fn train(&mut self) -> Result<()> {
        let rows = self.event_json()?.len()?;
        let (samples, raw) = self.sample_rows(rows)?;
        self.meta()?.insert(TRAINED_AT_KEY.as_bytes(), rows)?;
        // Too few or too uniform samples give no dictionary: new rows stay as they are, and the
        // next threshold tries again.
        if let Ok(bytes) = zstd::dict::from_samples(&samples, DICTIONARY_BYTES)
            && let Some(dictionary) = self.keep_dictionary(&bytes)?
        {
            let table = self.event_json()?;
            for (event, sample) in raw {
                if let Some(frame) = compress(&samples[sample], &dictionary)? {
                    table.insert(event.get(), frame.as_slice())?;
                }
            }
            let current = Some(dictionary);
            self.json_dictionaries.set_latest(&current);
            self.cache.json.current = Some(current);
        }
        self.cache.json.until_training = self
            .json_dictionaries
            .next_training(Some(rows))
            .map(|at| at - rows);
        Ok(())
    }

    /// Up to [`MAX_SAMPLES`] rows' JSON, spread evenly over the table; and, when every row is a
    /// sample, the raw ones (by event and index into the samples), so that training can compress
    /// them: a store then holds raw rows only until its first training.
    fn sample_rows(&mut self, rows: u64) -> Result<Samples> {
        let (tx, dictionaries) = (self.tx, self.json_dictionaries);
        let step = rows.div_ceil(MAX_SAMPLES).max(1) as usize;
        let (mut samples, mut raw) = (Vec::new(), Vec::new());
        for row in self.event_json()?.iter()?.step_by(step) {
            let (event, json) = row?;
            let event = EventNid::new(event.value())
                .ok_or_else(|| Error::corrupt("event_json", 0, "event NID 0"))?;
            let json = decode(tx, dictionaries, event, json.value())?;
            if step == 1 && matches!(json, Cow::Borrowed(_)) {
                raw.push((event, samples.len()));
            }
            samples.push(json.into_owned());
        }
        Ok((samples, raw))
    }

    /// Stores a newly trained dictionary and makes it current; `None`, changing nothing, if the
    /// store already keeps another dictionary under its ID.
    fn keep_dictionary(&mut self, bytes: &[u8]) -> Result<Option<Arc<Dictionary>>> {
        let Some(id) = zstd_safe::get_dict_id(bytes).map(|id| id.get()) else {
            return Ok(None);
        };
        let mut table = self.tx.open_table(JSON_DICTIONARIES)?;
        if table.get(id)?.is_some_and(|d| d.value() != bytes) {
            return Ok(None);
        }
        table.insert(id, bytes)?;
        let dictionary = Arc::new(Dictionary::prepare(id, bytes)?);
        self.meta()?
            .insert(CURRENT_DICTIONARY_KEY.as_bytes(), u64::from(id))?;
        self.json_dictionaries.remember(&dictionary);
        Ok(Some(dictionary))
    }
}

/// Every dictionary prepares under its own ID, the current one exists, and every JSON row
/// decodes to UTF-8 text.
pub(crate) fn check_json<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<()> {
    let dictionaries = JsonDictionaries::new(Vec::new());
    for row in tx.open(JSON_DICTIONARIES)?.range::<u32>(..)? {
        let (id, bytes) = row?;
        report.rows += 1;
        match Dictionary::prepare(id.value(), bytes.value()) {
            Ok(d) => dictionaries.remember(&Arc::new(d)),
            Err(e) => report.problem("json_dictionaries", id.value(), e),
        }
    }
    let meta = tx.open(crate::store::tables::META)?;
    if let Some(id) = meta
        .get(CURRENT_DICTIONARY_KEY.as_bytes())?
        .map(|v| v.value())
    {
        let known = u32::try_from(id).is_ok_and(|id| {
            let prepared = dictionaries.prepared.read();
            prepared.is_ok_and(|p| p.contains_key(&id))
        });
        if !known {
            report.problem(
                "meta",
                CURRENT_DICTIONARY_KEY,
                format!("no dictionary {id}"),
            );
        }
    }
    for row in tx
        .open(crate::store::tables::EVENT_JSON)?
        .range::<u64>(..)?
    {
        let (nid, json) = row?;
        report.rows += 1;
        let Some(event) = EventNid::new(nid.value()) else {
            report.problem("event_json", 0, "event NID 0");
            continue;
        };
        if let Err(e) = decode_text(tx, &dictionaries, event, json.value()) {
            report.problem("event_json", event, e);
        }
    }
    Ok(())
}
