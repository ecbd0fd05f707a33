//! Event JSON at rest, compressed with zstd and a dictionary trained from the store's own events.
//!
//! Event JSON is most of a store's bytes, and it repeats itself across events: the same keys,
//! room ID, senders, and shapes of hashes and signatures. One event is too short for zstd to find
//! that repetition inside it; a dictionary of what events have in common supplies it.
//!
//! A row of `event_json` is one of three things, told apart by its first bytes:
//! - a templated row, starting with `01`: the JSON with the event IDs it quotes taken out and
//!   named by NID ([`template`]). Its body, the JSON so templated, is stored as a whole JSON is
//!   in the other two kinds;
//! - a zstd frame, starting with zstd's magic number `28 b5 2f fd`. Its header names the
//!   dictionary it was compressed with (zstd's dictionary ID, derived from the dictionary's
//!   content) and the JSON's length;
//! - the JSON itself, as received. JSON text starts with `{` or white space, never with `0x01`
//!   or with `0x28` followed by the magic's other bytes: `(` is not JSON. Rows that would not
//!   shrink, rows of a store too small to have trained a dictionary, and rows of a store from
//!   before compression are kept this way. The first training compresses the rows it learnt
//!   from, when it learnt from every row (up to [`MAX_SAMPLES`]).
//!
//! `json_dictionaries` keeps every dictionary ever trained, by ID, so a row stays readable when a
//! newer dictionary takes over for new rows. Meta [`CURRENT_DICTIONARY_KEY`] names the one new
//! rows use. A dictionary is trained when the table first holds [`TRAIN_AT`]`[0]` rows, from
//! those rows, and again at each later threshold from rows spread over the whole table.
//!
//! Architecture invariant: this module treats JSON as bytes. It never parses it; readers get
//! back exactly the bytes that were written.

mod template;

use crate::error::{Error, Result};
use crate::nid::EventNid;
use crate::store::check::CheckReport;
use crate::store::intern;
use crate::store::read::Tables;
use crate::store::writer::Writer;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, PoisonError, RwLock};
use template::{Reference, Template};
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
    /// [`prepare`](Self::prepare) guesses new rows will use.
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

    /// `json` prepared for its row on the caller's thread: the IDs at `ids` taken out, and the
    /// rest compressed with the dictionary writers used last, if any (when zstd fails, the writer
    /// compresses, and reports it).
    pub(crate) fn prepare(&self, json: &[u8], ids: &[Range<usize>]) -> PreparedJson {
        let mut prepared = PreparedJson::new(json, ids);
        let latest = self.latest.read().unwrap_or_else(PoisonError::into_inner);
        let Some(dictionary) = latest.as_ref().map(Arc::clone) else {
            return prepared;
        };
        drop(latest);
        let body = prepared.template.as_ref().map_or(json, Template::body);
        if let Ok(mut frame) = compress(body, &dictionary) {
            // Held in a queue until the writer takes it: not with room for the JSON uncompressed.
            if let Some(frame) = &mut frame {
                frame.shrink_to_fit();
            }
            prepared.ahead = Some((dictionary, frame));
        }
        prepared
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
    let mut reverse = None;
    let id_of = |nid| {
        let table = match &reverse {
            Some(table) => table,
            None => reverse.insert(tx.open(intern::EVENT.reverse)?),
        };
        intern::resolve(table, intern::EVENT, nid)
    };
    decode_with(row, event, |id| dictionaries.get(tx, id), id_of)
}

/// A row's JSON, with `find` giving the dictionary a frame names and `id_of` the ID of an event
/// a templated row names.
fn decode_with<'a>(
    row: &'a [u8],
    event: EventNid,
    find: impl FnOnce(u32) -> Result<Arc<Dictionary>>,
    mut id_of: impl FnMut(u64) -> Result<String>,
) -> Result<Cow<'a, [u8]>> {
    let corrupt = |what: &str| Error::corrupt("event_json", event, what);
    let Some((references, body)) = template::split(row, event).map_err(corrupt)? else {
        return decode_body(row, event, find);
    };
    let body = decode_body(body, event, find)?;
    let ids = references
        .into_iter()
        .map(|r| match r {
            Reference::Event(nid) => id_of(nid).map(|id| Cow::Owned(id.into_bytes())),
            Reference::Literal(id) => Ok(Cow::Borrowed(id)),
        })
        .collect::<Result<Vec<_>>>()?;
    template::restore(&body, &ids)
        .map(Cow::Owned)
        .map_err(corrupt)
}

/// The references of a row, as bytes, and its body: JSON or a template, raw or a frame.
fn split_body(row: &[u8], event: EventNid) -> Result<(&[u8], &[u8])> {
    match template::split(row, event) {
        Ok(Some((_, body))) => Ok(row.split_at(row.len() - body.len())),
        Ok(None) => Ok((&[], row)),
        Err(what) => Err(Error::corrupt("event_json", event, what)),
    }
}

/// A row's body, decompressed when it is a frame.
fn decode_body<'a>(
    row: &'a [u8],
    event: EventNid,
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

/// The row the store would write for event `own` with `dictionary`: the IDs at `ids` named by
/// the NIDs `nids` gives them (in the order of the distinct IDs), the rest compressed when that
/// is shorter. For tools and fuzzing; the store writes rows itself.
#[doc(hidden)]
pub fn encode_row(
    json: &[u8],
    own: EventNid,
    ids: &[Range<usize>],
    nids: &[Option<EventNid>],
    dictionary: &Dictionary,
) -> Result<Vec<u8>> {
    // As the writer does: a template that names no event by NID is not kept.
    let template = Template::new(json, ids).filter(|_| nids.iter().any(Option::is_some));
    let body = template.as_ref().map_or(json, Template::body);
    let frame = compress(body, dictionary)?;
    Ok(row(own, json, template.as_ref(), nids, frame.as_deref()).into_owned())
}

/// A row of event `own`'s JSON, as the store reads it, given the dictionaries the store holds
/// and the IDs of event NIDs. For tools and fuzzing.
#[doc(hidden)]
pub fn decode_row<'a>(
    row: &'a [u8],
    own: EventNid,
    dictionaries: &[Arc<Dictionary>],
    mut id_of: impl FnMut(u64) -> Option<String>,
) -> Result<Cow<'a, [u8]>> {
    let find = |id| {
        dictionaries
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| Error::corrupt("json_dictionaries", id, "no such dictionary"))
    };
    let id_of = |nid| {
        id_of(nid).ok_or(Error::UnknownNid {
            kind: intern::EVENT.nid,
            nid,
        })
    };
    decode_with(row, own, find, id_of)
}

/// A row as stored: the template's references, if it is templated, then the body's `frame`, or
/// the body itself when it is stored raw.
fn row<'a>(
    own: EventNid,
    json: &'a [u8],
    template: Option<&'a Template>,
    nids: &[Option<EventNid>],
    frame: Option<&'a [u8]>,
) -> Cow<'a, [u8]> {
    let body = frame.unwrap_or(template.map_or(json, Template::body));
    match template {
        Some(t) => {
            let mut row = template::references(own, json, t, nids);
            row.extend_from_slice(body);
            Cow::Owned(row)
        }
        None => Cow::Borrowed(body),
    }
}

/// A row's JSON as text.
pub(crate) fn decode_text<T: Tables>(
    tx: &T,
    dictionaries: &JsonDictionaries,
    event: EventNid,
    row: &[u8],
) -> Result<String> {
    text(event, decode(tx, dictionaries, event, row)?.into_owned())
}

fn text(event: EventNid, json: Vec<u8>) -> Result<String> {
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

/// An event's JSON prepared for its row before the write, on any thread
/// ([`JsonDictionaries::prepare`]): the IDs it quotes taken out, and the rest compressed with the
/// dictionary the store's writers used last. A writer takes the frame only when that dictionary
/// is still its current one, and compresses the body itself otherwise: zstd turns the same bytes
/// and dictionary into the same frame, so the row is the same either way.
#[derive(Default)]
pub struct PreparedJson {
    /// `None` when the JSON quotes no ID to take out.
    template: Option<Template>,
    /// The dictionary the body was compressed with, and the frame (`None`: no shorter than the
    /// body). The dictionary itself, not its ID: zstd derives an ID from part of a dictionary
    /// only, so two trainings (one in a transaction that aborted) could share an ID.
    ahead: Option<(Arc<Dictionary>, Option<Vec<u8>>)>,
}

impl PreparedJson {
    /// `json` with the IDs at byte ranges `ids` (ascending) to be taken out, not compressed yet.
    pub(crate) fn new(json: &[u8], ids: &[Range<usize>]) -> PreparedJson {
        PreparedJson {
            template: Template::new(json, ids),
            ahead: None,
        }
    }

    /// The distinct IDs taken out of `json`, the JSON this was prepared from; the writer names
    /// each by NID where it can.
    pub(crate) fn ids<'j>(&self, json: &'j [u8]) -> impl Iterator<Item = &'j [u8]> {
        self.template.iter().flat_map(move |t| t.ids(json))
    }
}

impl std::fmt::Debug for PreparedJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let frame = self
            .ahead
            .as_ref()
            .map(|(d, f)| (d.id, f.as_ref().map(Vec::len)));
        f.debug_struct("PreparedJson")
            .field("template", &self.template.as_ref().map(|t| t.body().len()))
            .field("dictionary_and_frame_bytes", &frame)
            .finish()
    }
}

/// Rows' bodies (JSON or templates) to train from, and which of them are raw (their event,
/// their index, and the references that come before the body in their row).
type Samples = (Vec<Vec<u8>>, Vec<(EventNid, usize, Vec<u8>)>);

/// What a writer knows of the dictionaries, once read.
#[derive(Default)]
pub(super) struct WriterJson {
    /// The current dictionary; `Some(None)` when there is none yet.
    current: Option<Option<Arc<Dictionary>>>,
    /// Rows to write before the next training; `None` when no threshold is left.
    until_training: Option<u64>,
}

impl Writer<'_> {
    /// Stores an event's JSON, compressed when a dictionary has been trained (with the frame
    /// `prepared` ahead, when it was with the current dictionary). `nids` names the IDs taken
    /// out, in [`PreparedJson::ids`]'s order: only the event itself and stored events of its
    /// room (the architecture invariant of [`template`]); the others stay in the row as they are.
    pub(crate) fn put_event_json(
        &mut self,
        event: EventNid,
        json: &[u8],
        prepared: PreparedJson,
        nids: &[Option<EventNid>],
    ) -> Result<()> {
        let dictionary = self.current_dictionary()?;
        let prepared_template = prepared.template.is_some();
        // A template that names no event by NID would only add its references' bytes.
        let template = prepared
            .template
            .filter(|_| nids.iter().any(Option::is_some));
        let body = template.as_ref().map_or(json, Template::body);
        let frame = match (&dictionary, prepared.ahead) {
            (Some(d), Some((ahead, frame)))
                if Arc::ptr_eq(&ahead, d) && template.is_some() == prepared_template =>
            {
                frame
            }
            (Some(d), _) => compress(body, d)?,
            (None, _) => None,
        };
        let row = row(event, json, template.as_ref(), nids, frame.as_deref());
        self.event_json()?.insert(event.get(), &*row)?;
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
        // Copied: naming the IDs a row quotes reads another of the writer's tables.
        let Some(row) = self
            .event_json()?
            .get(event.get())?
            .map(|r| r.value().to_vec())
        else {
            return Ok(None);
        };
        let find = |id| dictionaries.get(tx, id);
        let json = decode_with(&row, event, find, |nid| self.string(intern::EVENT, nid))?;
        text(event, json.into_owned()).map(Some)
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
            for (event, sample, mut row) in raw {
                if let Some(frame) = compress(&samples[sample], &dictionary)? {
                    row.extend_from_slice(&frame);
                    table.insert(event.get(), row.as_slice())?;
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

    /// Up to [`MAX_SAMPLES`] rows' bodies, spread evenly over the table; and, when every row is a
    /// sample, the raw ones (by event and index into the samples), so that training can compress
    /// them: a store then holds raw rows only until its first training.
    fn sample_rows(&mut self, rows: u64) -> Result<Samples> {
        let (tx, dictionaries) = (self.tx, self.json_dictionaries);
        let step = rows.div_ceil(MAX_SAMPLES).max(1) as usize;
        let (mut samples, mut raw) = (Vec::new(), Vec::new());
        for row in self.event_json()?.iter()?.step_by(step) {
            let (event, row) = row?;
            let event = EventNid::new(event.value())
                .ok_or_else(|| Error::corrupt("event_json", 0, "event NID 0"))?;
            let (references, body) = split_body(row.value(), event)?;
            let body = decode_body(body, event, |id| dictionaries.get(tx, id))?;
            if step == 1 && matches!(body, Cow::Borrowed(_)) {
                raw.push((event, samples.len(), references.to_vec()));
            }
            samples.push(body.into_owned());
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
    // Opened once for every row, where a reader opens it per row.
    let reverse = tx.open(intern::EVENT.reverse)?;
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
        let find = |id| dictionaries.get(tx, id);
        let id_of = |nid| intern::resolve(&reverse, intern::EVENT, nid);
        let decoded = decode_with(json.value(), event, find, id_of);
        if let Err(e) = decoded.and_then(|json| text(event, json.into_owned())) {
            report.problem("event_json", event, e);
        }
    }
    Ok(())
}
