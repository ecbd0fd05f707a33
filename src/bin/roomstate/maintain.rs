//! The subcommands that delete: purge and compact.

use crate::failure::{CliResult, Failure};
use crate::names::room_nid;
use roomstate::Store;
use std::path::Path;

pub fn purge(store: &Store, id: &str) -> CliResult {
    let room = room_nid(&store.read()?, id)?;
    let mut tx = store.write()?;
    let purged = match tx.purge_room(room) {
        // The room's ID outlives it, so a second purge (say, after a kill that came once the
        // first had committed) finds the ID and no room.
        Err(roomstate::Error::UnknownRoom(_)) => {
            return Err(Failure::User(format!(
                "room {id} has no events: nothing to purge"
            )));
        }
        other => other?,
    };
    tx.commit()?;
    println!(
        "purged {id}: {} events, {} memberships, {} snapshots and {} blocks no other room used",
        purged.events, purged.memberships, purged.collected.snapshots, purged.collected.blocks
    );
    println!("run `roomstate compact` to return the space to the file system");
    Ok(())
}

pub fn compact(mut store: Store, path: &Path) -> CliResult {
    let before = std::fs::metadata(path)?.len();
    let mut tx = store.write()?;
    let collected = tx.collect_garbage()?;
    tx.commit()?;
    // redb compacts in steps; each call reports whether it moved anything.
    while store.compact()? {}
    drop(store);
    let after = std::fs::metadata(path)?.len();
    println!(
        "collected {} snapshots and {} blocks; {} went from {before} to {after} bytes",
        collected.snapshots,
        collected.blocks,
        path.display()
    );
    Ok(())
}
