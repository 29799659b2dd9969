//! Aggregates whose later rows must wait.

use crate::relay::claim::ClaimedRow;
use std::collections::HashSet;

/// Aggregates (type, id) with a row that did not get through a batch
/// (failed, or held behind a failure). Until that row's outcome is written,
/// the claim statement cannot see it, so the relay drops the aggregate's
/// later rows from any batch claimed meanwhile.
///
/// Empty in the usual case; lookups then cost nothing.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Unfinished(HashSet<(String, String)>);

impl Unfinished {
    /// Adds the aggregate of `row`.
    pub(crate) fn insert(&mut self, row: &ClaimedRow) {
        self.0.insert((
            row.aggregate_type().to_owned(),
            row.aggregate_id().to_owned(),
        ));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `row` belongs to one of these aggregates.
    pub(crate) fn holds(&self, row: &ClaimedRow) -> bool {
        !self.0.is_empty()
            && self.0.contains(&(
                row.aggregate_type().to_owned(),
                row.aggregate_id().to_owned(),
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::claim::tests::row;

    #[test]
    fn aggregates_match_on_type_and_id() {
        let mut unfinished = Unfinished::default();
        assert!(!unfinished.holds(&row(1, "essay", "a")));
        unfinished.insert(&row(1, "essay", "a"));
        assert!(unfinished.holds(&row(2, "essay", "a")));
        assert!(!unfinished.holds(&row(3, "file_upload", "a")));
        assert!(!unfinished.holds(&row(4, "essay", "b")));
    }
}
