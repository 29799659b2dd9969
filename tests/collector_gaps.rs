//! The test collector's bookkeeping of a partition's offsets
//! (`support::PartitionLog`): a gap the broker's fetch left is read again,
//! and what is read twice is kept once.

mod support;

use support::{PartitionLog, Placement};

#[test]
fn a_skipped_offset_is_sought_again_and_placed_when_it_arrives() {
    let mut log = PartitionLog::default();
    assert_eq!(log.place(0), Placement::Next);
    assert_eq!(log.seek_to(), None, "nothing skipped");
    assert_eq!(log.place(1), Placement::Next);
    assert_eq!(log.place(4), Placement::Next, "2 and 3 skipped");
    assert_eq!(log.seek_to(), Some(2));
    assert_eq!(log.seek_to(), None, "at most every 200 ms");
    // After the seek back: the skipped offsets, then what was read before.
    assert_eq!(log.place(2), Placement::Filled);
    assert_eq!(log.place(3), Placement::Filled);
    assert_eq!(log.place(4), Placement::Seen);
    assert_eq!(log.place(5), Placement::Next);
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(log.seek_to(), None, "nothing missing any more");
}

#[test]
fn a_partition_that_starts_late_is_a_gap_from_zero() {
    let mut log = PartitionLog::default();
    assert_eq!(log.place(2), Placement::Next);
    assert_eq!(log.seek_to(), Some(0));
}
