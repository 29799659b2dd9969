//! The column values of a batch of events, as the insert statements bind
//! them: nine arrays for a batch, nine plain values for a batch of one.

use uuid::Uuid;

/// A batch's columns, one entry per event in each.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    pub ids: Vec<Uuid>,
    pub aggregate_types: Vec<&'static str>,
    pub aggregate_ids: Vec<String>,
    pub event_types: Vec<&'static str>,
    pub versions: Vec<i32>,
    pub topics: Vec<&'static str>,
    pub keys: Vec<String>,
    pub data: Vec<String>,
    pub headers: Vec<String>,
}

impl Columns {
    /// The one event of a batch of one, as plain values, leaving the
    /// columns empty; `None`, leaving them untouched, for any other batch.
    pub(crate) fn take_single(&mut self) -> Option<Row> {
        let lengths = [
            self.ids.len(),
            self.aggregate_types.len(),
            self.aggregate_ids.len(),
            self.event_types.len(),
            self.versions.len(),
            self.topics.len(),
            self.keys.len(),
            self.data.len(),
            self.headers.len(),
        ];
        if lengths != [1; 9] {
            return None;
        }
        Some(Row {
            id: self.ids.pop()?,
            aggregate_type: self.aggregate_types.pop()?,
            aggregate_id: self.aggregate_ids.pop()?,
            event_type: self.event_types.pop()?,
            version: self.versions.pop()?,
            topic: self.topics.pop()?,
            key: self.keys.pop()?,
            data: self.data.pop()?,
            headers: self.headers.pop()?,
        })
    }
}

/// One event's column values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub id: Uuid,
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub event_type: &'static str,
    pub version: i32,
    pub topic: &'static str,
    pub key: String,
    pub data: String,
    pub headers: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u128) -> Row {
        Row {
            id: Uuid::from_u128(n),
            aggregate_type: "essay",
            aggregate_id: format!("e-{n}"),
            event_type: "EssayScoredV1",
            version: 2,
            topic: "essays.v1",
            key: format!("k-{n}"),
            data: format!("{{\"n\":{n}}}"),
            headers: "{}".into(),
        }
    }

    fn push(cols: &mut Columns, row: Row) {
        cols.ids.push(row.id);
        cols.aggregate_types.push(row.aggregate_type);
        cols.aggregate_ids.push(row.aggregate_id);
        cols.event_types.push(row.event_type);
        cols.versions.push(row.version);
        cols.topics.push(row.topic);
        cols.keys.push(row.key);
        cols.data.push(row.data);
        cols.headers.push(row.headers);
    }

    /// The columns of a batch of one.
    fn one(row: Row) -> Columns {
        let mut cols = Columns::default();
        push(&mut cols, row);
        cols
    }

    #[test]
    fn a_batch_of_one_gives_its_row_and_round_trips() {
        let mut cols = one(row(7));
        assert_eq!(cols.take_single(), Some(row(7)));
        assert!(cols.ids.is_empty() && cols.headers.is_empty());
        assert_eq!(one(row(7)).take_single(), Some(row(7)));
    }

    #[test]
    fn other_batches_are_left_untouched() {
        let mut empty = Columns::default();
        assert_eq!(empty.take_single(), None);
        let mut two = Columns::default();
        push(&mut two, row(1));
        push(&mut two, row(2));
        assert_eq!(two.take_single(), None);
        assert_eq!(two.ids, [Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert_eq!(two.data.len(), 2, "nothing was taken");
    }
}
