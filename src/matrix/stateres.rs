//! Matrix state resolution through `ruma-state-res`, the implementation Rust homeservers use.
//!
//! [`MatrixResolver`] is the [`StateResolver`] that ingest uses by default. The store feeds it:
//! the states to settle, converted from NIDs to strings; the auth chains of those states, cut
//! to the auth difference by the store's auth-chain index where it is complete, by one ordered
//! walk where auth events are always older than their events (`auth_difference.rs`), and
//! otherwise from chains memoised per event; events parsed from their
//! stored JSON; and, for room version 12 (state resolution v2.1), the conflicted state subgraph.
//!
//! **Conflicted-only maps.** `ruma-state-res` wants one full state map per fork, and its split
//! into conflicted and unconflicted keys is private. But a key every fork holds with the same
//! event stays unconflicted whichever subset of such keys each map carries, as long as every map
//! carries the same subset. So, by default, each map carries only the conflicted keys plus the
//! unconflicted keys authorization can read (create, power levels, join rules, third-party
//! invites, and the membership of every user whose event is being sorted), and the rest of the
//! unconflicted state is added back afterwards without passing through the crate's hash maps.
//! The auth chains given to the crate are cut to the events that can differ between forks,
//! which leaves the auth difference it computes unchanged. [`MatrixResolver::whole_maps`] turns
//! this off, for comparison.

use crate::engine::block::StateEntry;
use crate::engine::resolve::StateMap;
use crate::error::{Error, Result};
use crate::matrix::auth_difference::{AuthEvents, auth_difference, conflicted_subgraph};
use crate::matrix::event::{FirstError, Pdu, stored_pdu};
use crate::matrix::resolver::{ResolveRequest, StateResolver, StateSource};
use crate::nid::{EventNid, NidSet, StateKey, StateKeyNid, TypeNid};
use crate::store::{ChainKeys, indexed_auth_difference};
use ruma_common::room_version_rules::{AuthorizationRules, StateResolutionV2Rules};
use ruma_common::{EventId, OwnedEventId, RoomVersionId};
use ruma_events::{StateEventType, TimelineEventType};
use ruma_state_res::utils::event_id_set::EventIdSet;
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Memoised auth chains are dropped wholesale once they hold this many event NIDs (8 bytes
/// each), which bounds the cache at 64 MiB.
pub const AUTH_CHAIN_CACHE_NIDS: usize = 8 << 20;

/// The type and state-key strings kept between resolutions are dropped once this many state
/// keys are held.
const NAMES_HELD: usize = 1 << 20;

/// Settles conflicted state by Matrix state resolution (v2 for room versions 2–11, v2.1 for
/// room version 12), as implemented by `ruma-state-res`.
///
/// Room version 1 uses state resolution v1, which `ruma-state-res` does not implement: such a
/// room, and a version the crate does not know, gets [`Error::UnsupportedRoomVersion`], which
/// ingest reports as a bad line.
///
/// ```
/// use roomstate::ingest::{IngestOptions, MatrixResolver, ingest};
/// let store = roomstate::Store::in_memory()?;
/// let history = roomstate::workload::Generator::new(roomstate::workload::GenConfig {
///     members: 20,
///     state_events: 60,
///     ..roomstate::workload::GenConfig::new(roomstate::workload::Workload::Forky)
/// })
/// .map(|e| e.to_json_line() + "\n")
/// .collect::<String>();
/// let mut resolver = MatrixResolver::default();
/// let report = ingest(&store, history.as_bytes(), IngestOptions::default(), &mut resolver)?;
/// assert_eq!(report.bad_lines, 0);
/// # Ok::<(), roomstate::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct MatrixResolver {
    whole_maps: bool,
    chains: AuthChains,
    auth_events: AuthEvents,
    chain_keys: ChainKeys,
    names: Names,
    timings: Vec<Duration>,
}

impl MatrixResolver {
    /// A resolver that hands `ruma-state-res` every fork's whole state, as a plain integration
    /// would: slower, and the same result. For measuring the conflicted-only optimisation.
    pub fn whole_maps() -> Self {
        MatrixResolver {
            whole_maps: true,
            ..MatrixResolver::default()
        }
    }

    /// How long each resolution took, in order: one entry per conflicted merge settled.
    pub fn timings(&self) -> &[Duration] {
        &self.timings
    }
}

impl StateResolver for MatrixResolver {
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        let started = Instant::now();
        let (auth, rules) = rules_for(request.room_version)?;
        let resolved = self.settle(request, source, &auth, &rules)?;
        self.timings.push(started.elapsed());
        Ok(Some(resolved))
    }

    fn rolled_back(&mut self) {
        self.chains = AuthChains::default();
        self.auth_events.clear();
        self.chain_keys.clear();
        self.names = Names::default();
    }
}

/// The rules of a room version; v1 and unknown versions are refused.
fn rules_for(version: &str) -> Result<(AuthorizationRules, StateResolutionV2Rules)> {
    let unsupported = |reason: &'static str| Error::UnsupportedRoomVersion {
        version: version.to_owned(),
        reason,
    };
    let rules = RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| unsupported("not a room version ruma-state-res knows"))?;
    let v2 = rules
        .state_res
        .v2_rules()
        .ok_or_else(|| unsupported("state resolution v1 is not implemented by ruma-state-res"))?;
    Ok((rules.authorization, *v2))
}

impl MatrixResolver {
    /// The forks' chains cut to the auth difference, from the index or by the ordered walk;
    /// `None` when the store has neither, or for [`whole_maps`](Self::whole_maps).
    fn difference(
        &mut self,
        source: &mut dyn StateSource,
        states: &[StateMap],
        conflicted: &HashSet<StateKey>,
        combined: &crate::engine::resolve::Combined,
    ) -> Result<Option<Vec<NidSet<EventNid>>>> {
        if self.whole_maps {
            return Ok(None);
        }
        if let Some(index) = source.auth_index()? {
            let keys = &mut self.chain_keys;
            let found =
                indexed_auth_difference(index, keys, states, conflicted, &combined.unconflicted)?;
            if found.is_some() {
                return Ok(found);
            }
        }
        if !source.auth_events_precede()? {
            return Ok(None);
        }
        let known = &mut self.auth_events;
        auth_difference(source, known, states, conflicted, &combined.unconflicted)
    }

    fn settle(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
        auth: &AuthorizationRules,
        rules: &StateResolutionV2Rules,
    ) -> Result<StateMap> {
        let combined = request.combined;
        if request.states.len() < 2 {
            return Err(Error::InvalidState(format!(
                "state resolution of {} state(s)",
                request.states.len()
            )));
        }
        self.chains.begin();
        self.auth_events.bound();
        if self.names.keys.len() > NAMES_HELD {
            self.names = Names::default();
        }
        let conflicted_keys: HashSet<StateKey> =
            combined.conflicted.iter().map(|c| c.key).collect();
        let conflicted_events: NidSet<EventNid> = combined
            .conflicted
            .iter()
            .flat_map(|c| c.candidates.iter().copied())
            .collect();
        let walked = self.difference(source, request.states, &conflicted_keys, combined)?;
        // Without the ordered walk, room version 12's conflicted subgraph reads the chains
        // memoised here.
        let ordered = walked.is_some();
        let fork_chains = match walked {
            Some(chains) => chains,
            None if self.whole_maps => {
                let mut chains = Vec::with_capacity(request.states.len());
                for state in request.states {
                    chains.push(self.chains.of_state(source, state)?);
                }
                chains
            }
            None => self.chains.difference_only(
                source,
                request.states,
                &conflicted_keys,
                &combined.unconflicted,
            )?,
        };
        let pdus = Pdus::new(source, request.room);
        let maps = if self.whole_maps {
            request
                .states
                .iter()
                .map(|s| self.names.ruma_map(&pdus, s.iter()))
                .collect::<Result<Vec<_>>>()?
        } else {
            let sorted: NidSet<EventNid> = fork_chains
                .iter()
                .flatten()
                .copied()
                .chain(conflicted_events.iter().copied())
                .collect();
            let users = pdus.users_of(sorted.iter().copied())?;
            let unconflicted = auth_relevant(&combined.unconflicted, &users);
            request
                .states
                .iter()
                .map(|s| {
                    let conflicted = s.iter().filter(|e| conflicted_keys.contains(&e.key));
                    self.names
                        .ruma_map(&pdus, conflicted.chain(unconflicted.iter().copied()))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let chains: Vec<EventIdSet<OwnedEventId>> = fork_chains
            .iter()
            .map(|c| c.iter().map(|e| pdus.id(*e)).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        let chains_ref = &self.chains;
        let known = RefCell::new(&mut self.auth_events);
        let resolved = ruma_state_res::resolve(
            auth,
            rules,
            maps.iter(),
            chains,
            |id: &EventId| pdus.fetch(id),
            |conflicted| match ordered {
                true => pdus.ordered_subgraph(&mut known.borrow_mut(), conflicted),
                false => pdus.subgraph(chains_ref, conflicted),
            },
        );
        pdus.take_error()?;
        let resolved = resolved.map_err(|e| Error::StateResolution(e.to_string()))?;
        self.back_to_nids(&pdus, combined, resolved)
    }

    /// The resolved state in NIDs: the unconflicted state, and the crate's answer for every
    /// other key (a conflicted key may be missing when no candidate passed authorization, and
    /// an event of the auth difference may add a key no state held). Unconflicted keys keep
    /// their event, as the crate's own result does.
    fn back_to_nids(
        &mut self,
        pdus: &Pdus<'_>,
        combined: &crate::engine::resolve::Combined,
        resolved: ruma_state_res::StateMap<OwnedEventId>,
    ) -> Result<StateMap> {
        let mut added = Vec::new();
        for ((ty, state_key), id) in resolved {
            let key = self.names.key_nids(pdus, ty, state_key)?;
            if combined.unconflicted.get(key).is_none() {
                added.push(StateEntry {
                    key,
                    event: pdus.nid(&id)?,
                });
            }
        }
        Ok(combined.unconflicted.with_entries(added))
    }
}

/// The entries of `state` that authorization can read: the room's create, power levels, join
/// rules and third-party invites, and the membership of the given users. Found by binary search:
/// the state of a large room is mostly other members.
fn auth_relevant<'s>(state: &'s StateMap, users: &HashSet<StateKeyNid>) -> Vec<&'s StateEntry> {
    let types = [
        TypeNid::CREATE,
        TypeNid::POWER_LEVELS,
        TypeNid::JOIN_RULES,
        TypeNid::THIRD_PARTY_INVITE,
    ];
    let mut out: Vec<&StateEntry> = types.iter().flat_map(|t| state.of_type(*t)).collect();
    let members = state.of_type(TypeNid::MEMBER);
    for user in users {
        if let Ok(i) = members.binary_search_by_key(user, |e| e.key.key) {
            out.push(&members[i]);
        }
    }
    out
}

/// Type and state-key strings as ruma wants them, cached across resolutions (NIDs never change
/// meaning).
#[derive(Debug, Default)]
struct Names {
    types: HashMap<TypeNid, StateEventType>,
    keys: HashMap<StateKeyNid, String>,
    reverse: HashMap<(StateEventType, String), StateKey>,
}

impl Names {
    fn key_name(&mut self, pdus: &Pdus<'_>, key: StateKey) -> Result<(StateEventType, String)> {
        let ty = match self.types.entry(key.ty) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => {
                let s = pdus.source.borrow_mut().event_type(key.ty)?;
                e.insert(StateEventType::from(s.as_str())).clone()
            }
        };
        let sk = match self.keys.entry(key.key) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => e
                .insert(pdus.source.borrow_mut().state_key(key.key)?)
                .clone(),
        };
        self.reverse.entry((ty.clone(), sk.clone())).or_insert(key);
        Ok((ty, sk))
    }

    /// The NIDs of a key the crate returned.
    fn key_nids(&mut self, pdus: &Pdus<'_>, ty: StateEventType, sk: String) -> Result<StateKey> {
        if let Some(key) = self.reverse.get(&(ty.clone(), sk.clone())) {
            return Ok(*key);
        }
        let mut source = pdus.source.borrow_mut();
        let unknown =
            || Error::StateResolution(format!("resolved a key never stored: ({ty}, {sk:?})"));
        let t = source.type_nid(&ty.to_string())?.ok_or_else(unknown)?;
        let k = source.state_key_nid(&sk)?.ok_or_else(unknown)?;
        let key = StateKey::new(t, k);
        drop(source);
        self.reverse.insert((ty, sk), key);
        Ok(key)
    }

    fn ruma_map<'e>(
        &mut self,
        pdus: &Pdus<'_>,
        entries: impl Iterator<Item = &'e StateEntry>,
    ) -> Result<ruma_state_res::StateMap<OwnedEventId>> {
        entries
            .map(|e| Ok((self.key_name(pdus, e.key)?, pdus.id(e.event)?)))
            .collect()
    }
}

/// Auth chains per event, memoised: an event's chain is its auth events and their chains.
#[derive(Debug, Default)]
struct AuthChains {
    /// Chains of events whose whole ancestry is stored: these never change.
    memo: HashMap<EventNid, Arc<[EventNid]>>,
    /// Chains that reach an auth event not stored yet (or a cycle), for this resolution only:
    /// they may grow when the missing event arrives.
    partial: HashMap<EventNid, Arc<[EventNid]>>,
    held: usize,
}

impl AuthChains {
    /// The union of the auth chains of a state's events.
    fn of_state(
        &mut self,
        source: &mut dyn StateSource,
        state: &StateMap,
    ) -> Result<NidSet<EventNid>> {
        let mut out = NidSet::default();
        for e in state.iter() {
            out.extend(self.of(source, e.event)?.iter().copied());
        }
        Ok(out)
    }

    /// Starts a resolution: drops the last one's partial chains, and the memo if it outgrew its
    /// bound (never during a resolution, which reads chains it built earlier).
    fn begin(&mut self) {
        self.partial.clear();
        if self.held > AUTH_CHAIN_CACHE_NIDS {
            self.memo.clear();
            self.held = 0;
        }
    }

    /// Auth chains cut to the auth difference, without building the chains of the unconflicted
    /// state: each fork's chain is the chain of its conflicted events (A) together with the
    /// chain of the unconflicted events (X), which every fork shares. So the difference is
    /// (∪A − ∩A) − X, and X only has to be asked about those few candidates. Handing the crate
    /// `A ∩ difference` per fork leaves the difference it computes unchanged.
    fn difference_only(
        &mut self,
        source: &mut dyn StateSource,
        states: &[StateMap],
        conflicted: &HashSet<StateKey>,
        unconflicted: &StateMap,
    ) -> Result<Vec<NidSet<EventNid>>> {
        let mut own = Vec::with_capacity(states.len());
        for state in states {
            let mut chain = NidSet::default();
            for e in state.iter().filter(|e| conflicted.contains(&e.key)) {
                chain.extend(self.of(source, e.event)?.iter().copied());
            }
            own.push(chain);
        }
        let mut candidates: NidSet<EventNid> = own.iter().flatten().copied().collect();
        candidates.retain(|c| !own.iter().all(|chain| chain.contains(c)));
        for e in unconflicted.iter() {
            if candidates.is_empty() {
                break;
            }
            let chain = self.of(source, e.event)?;
            candidates.retain(|c| chain.binary_search(c).is_err());
        }
        for chain in &mut own {
            chain.retain(|e| candidates.contains(e));
        }
        Ok(own)
    }

    fn get(&self, event: &EventNid) -> Option<&Arc<[EventNid]>> {
        self.memo.get(event).or_else(|| self.partial.get(event))
    }

    fn of(&mut self, source: &mut dyn StateSource, event: EventNid) -> Result<Arc<[EventNid]>> {
        if let Some(chain) = self.get(&event) {
            return Ok(Arc::clone(chain));
        }
        // Post-order without recursion: auth chains of real rooms are tens of thousands deep.
        // An event met again while its own chain is being built is a cycle in bad input: the
        // chains on it are partial.
        let mut stack = vec![(event, false)];
        let mut open = NidSet::default();
        let mut incomplete = NidSet::default();
        while let Some((e, expanded)) = stack.pop() {
            if self.get(&e).is_some() {
                continue;
            }
            let record = source.event(e)?;
            let auth = record
                .as_ref()
                .map(|r| r.auth_events.clone())
                .unwrap_or_default();
            if !expanded {
                open.insert(e);
                stack.push((e, true));
                for a in &auth {
                    if open.contains(a) {
                        incomplete.insert(e);
                    } else if self.get(a).is_none() {
                        stack.push((*a, false));
                    }
                }
                continue;
            }
            let mut chain: NidSet<EventNid> = NidSet::default();
            let mut complete = record.is_some() && !incomplete.contains(&e);
            for a in &auth {
                chain.insert(*a);
                complete &= self.memo.contains_key(a);
                if let Some(c) = self.get(a) {
                    chain.extend(c.iter().copied());
                }
            }
            let mut chain: Vec<EventNid> = chain.into_iter().collect();
            chain.sort_unstable();
            if complete {
                self.held += chain.len();
                self.memo.insert(e, chain.into());
            } else {
                self.partial.insert(e, chain.into());
            }
            open.remove(&e);
        }
        self.get(&event)
            .cloned()
            .ok_or_else(|| Error::InvalidState(format!("auth chain of {event} not built")))
    }
}

/// Events as `ruma-state-res` reads them, parsed from their stored JSON on first use. The
/// crate's callbacks cannot fail, so the first store error is kept and returned afterwards.
struct Pdus<'s> {
    source: RefCell<&'s mut dyn StateSource>,
    room: crate::nid::RoomNid,
    parsed: RefCell<HashMap<OwnedEventId, Option<Arc<Pdu>>>>,
    ids: RefCell<HashMap<EventNid, OwnedEventId>>,
    nids: RefCell<HashMap<OwnedEventId, EventNid>>,
    error: FirstError,
}

impl<'s> Pdus<'s> {
    fn new(source: &'s mut dyn StateSource, room: crate::nid::RoomNid) -> Self {
        Pdus {
            source: RefCell::new(source),
            room,
            parsed: RefCell::default(),
            ids: RefCell::default(),
            nids: RefCell::default(),
            error: FirstError::default(),
        }
    }

    fn keep<T>(&self, result: Result<T>) -> Option<T> {
        self.error.keep(result)
    }

    fn take_error(&self) -> Result<()> {
        self.error.take()
    }

    fn id(&self, event: EventNid) -> Result<OwnedEventId> {
        if let Some(id) = self.ids.borrow().get(&event) {
            return Ok(id.clone());
        }
        let s = self.source.borrow_mut().event_id(event)?;
        let id = OwnedEventId::try_from(s.as_str())
            .map_err(|e| Error::StateResolution(format!("event ID {s:?}: {e}")))?;
        self.ids.borrow_mut().insert(event, id.clone());
        self.nids.borrow_mut().insert(id.clone(), event);
        Ok(id)
    }

    fn nid(&self, id: &EventId) -> Result<EventNid> {
        if let Some(n) = self.nids.borrow().get(id) {
            return Ok(*n);
        }
        let n = self
            .source
            .borrow_mut()
            .event_nid(id.as_str())?
            .ok_or_else(|| Error::StateResolution(format!("resolved to unknown event {id}")))?;
        self.nids.borrow_mut().insert(id.to_owned(), n);
        Ok(n)
    }

    fn fetch(&self, id: &EventId) -> Option<Arc<Pdu>> {
        if let Some(p) = self.parsed.borrow().get(id) {
            return p.clone();
        }
        let pdu = self.keep(self.load(id)).flatten();
        self.parsed.borrow_mut().insert(id.to_owned(), pdu.clone());
        pdu
    }

    /// An event's stored JSON, parsed; `None` for an event the store does not hold or whose
    /// JSON lacks what resolution reads (the crate ignores such events, as the spec says).
    fn load(&self, id: &EventId) -> Result<Option<Arc<Pdu>>> {
        let Some(nid) = self.source.borrow_mut().event_nid(id.as_str())? else {
            return Ok(None);
        };
        self.nids.borrow_mut().insert(id.to_owned(), nid);
        let mut source = self.source.borrow_mut();
        let (Some(json), Some(record)) = (source.event_json(nid)?, source.event(nid)?) else {
            return Ok(None);
        };
        if record.room != self.room {
            return Ok(None);
        }
        let pdu = stored_pdu(&json, record.rejected, || Ok(Some(id.to_owned())))?;
        Ok(pdu.map(Arc::new))
    }

    /// The state keys of the users whose membership authorizing `events` can read: senders,
    /// targets of member events, and authorising servers' users of restricted joins.
    fn users_of(&self, events: impl Iterator<Item = EventNid>) -> Result<HashSet<StateKeyNid>> {
        let mut users = HashSet::new();
        for e in events {
            let id = self.id(e)?;
            let Some(pdu) = self.fetch(&id) else {
                continue;
            };
            let mut names = vec![pdu.sender.as_str().to_owned()];
            if pdu.event_type == TimelineEventType::RoomMember
                && let Some(k) = &pdu.state_key
            {
                names.push(k.clone());
            }
            if let Ok(c) = serde_json::from_str::<AuthorisingUser>(pdu.content.get())
                && let Some(u) = c.join_authorised_via_users_server
            {
                names.push(u);
            }
            for name in names {
                if let Some(n) = self.source.borrow_mut().state_key_nid(&name)? {
                    users.insert(n);
                }
            }
        }
        self.take_error()?;
        Ok(users)
    }

    /// The conflicted state subgraph of state resolution v2.1 by the ordered walk, for a store
    /// whose auth events are always older than their events.
    fn ordered_subgraph(
        &self,
        known: &mut AuthEvents,
        conflicted: &ruma_state_res::StateMap<Vec<OwnedEventId>>,
    ) -> Option<EventIdSet<OwnedEventId>> {
        let ids: Vec<&OwnedEventId> = conflicted.values().flatten().collect();
        let nids: Vec<EventNid> = ids
            .iter()
            .filter_map(|id| self.keep(self.nid(id)))
            .collect();
        let walked = conflicted_subgraph(&mut **self.source.borrow_mut(), known, &nids);
        let Some(between) = self.keep(walked)? else {
            let broken = "an auth event is not older than its event, though the store says so";
            self.keep::<()>(Err(Error::StateResolution(broken.to_owned())));
            return None;
        };
        let mut out: EventIdSet<OwnedEventId> = ids.into_iter().cloned().collect();
        for event in between {
            out.insert(self.keep(self.id(event))?);
        }
        Some(out)
    }

    /// The conflicted state subgraph of state resolution v2.1: every event that is both an
    /// auth ancestor and an auth descendant of conflicted events, and the conflicted events.
    fn subgraph(
        &self,
        chains: &AuthChains,
        conflicted: &ruma_state_res::StateMap<Vec<OwnedEventId>>,
    ) -> Option<EventIdSet<OwnedEventId>> {
        let ids: Vec<&OwnedEventId> = conflicted.values().flatten().collect();
        let nids: NidSet<EventNid> = ids
            .iter()
            .filter_map(|id| self.keep(self.nid(id)))
            .collect();
        let mut out: EventIdSet<OwnedEventId> = ids.into_iter().cloned().collect();
        let ancestors: NidSet<EventNid> = nids
            .iter()
            .filter_map(|c| chains.get(c))
            .flat_map(|c| c.iter().copied())
            .collect();
        for a in ancestors {
            let descends = chains
                .get(&a)
                .is_some_and(|chain| chain.iter().any(|x| nids.contains(x)));
            if descends && let Some(id) = self.keep(self.id(a)) {
                out.insert(id);
            }
        }
        Some(out)
    }
}

#[derive(Deserialize)]
struct AuthorisingUser {
    join_authorised_via_users_server: Option<String>,
}
