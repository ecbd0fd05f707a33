//! Room membership, as `m.room.member` events' `content.membership` states it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A user's membership in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Membership {
    /// `join`
    Join = 1,
    /// `invite`
    Invite = 2,
    /// `leave` (also a kick, or an invite withdrawn or refused)
    Leave = 3,
    /// `ban`
    Ban = 4,
    /// `knock`
    Knock = 5,
}

impl Membership {
    /// Every membership, in code order.
    pub const ALL: [Membership; 5] = [
        Membership::Join,
        Membership::Invite,
        Membership::Leave,
        Membership::Ban,
        Membership::Knock,
    ];

    /// The spec's string for this membership.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Join => "join",
            Membership::Invite => "invite",
            Membership::Leave => "leave",
            Membership::Ban => "ban",
            Membership::Knock => "knock",
        }
    }

    /// The one-byte code stored in the membership index.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The membership behind a stored code.
    pub fn from_code(code: u8) -> Option<Self> {
        Membership::ALL.into_iter().find(|m| m.code() == code)
    }
}

impl FromStr for Membership {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Membership::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown membership {s:?}"))
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
