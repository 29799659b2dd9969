//! Where claims start: the claim floor, below which no row of the relay's
//! shards is pending or can become pending, and the horizon it rests on,
//! the highest `seq` no open transaction can still commit below.

mod floor;
pub(crate) mod horizon;

pub(crate) use floor::{ClaimFloor, NO_FLOOR};
