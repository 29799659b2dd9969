//! Reading PostgreSQL's binary `COPY … TO STDOUT` format.
//!
//! The relay claims the batch it reads ahead during a backlog with
//! `COPY (SELECT …) TO STDOUT (FORMAT binary)` (`Claimer::claim_ahead`):
//! the rows arrive in the types' binary send format, and reading them here
//! costs a fraction of decoding a result set row by row through sqlx
//! (`docs/design/relay.md`, the batch claimed ahead). Fresh claims stay a
//! `SELECT`.
//!
//! Format (PostgreSQL docs, "COPY", *Binary Format*): an 11-byte signature,
//! a 32-bit flags field, a 32-bit header-extension length and that many
//! bytes; then per tuple a 16-bit field count followed by, per field, a
//! 32-bit length (−1 for `NULL`) and that many bytes; a field count of −1
//! ends the data. All integers are big-endian.

use uuid::Uuid;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Binary COPY data that does not have the expected shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CopyFormatError {
    #[error("binary COPY data does not start with the PGCOPY signature")]
    Signature,
    #[error("binary COPY data ends inside {0}")]
    Truncated(&'static str),
    #[error("binary COPY tuple has {found} fields, the claim selects {expected}")]
    FieldCount { expected: usize, found: i16 },
    #[error("binary COPY field {field} is NULL where the claim never yields NULL")]
    UnexpectedNull { field: usize },
    #[error("binary COPY field {field} has {found} bytes, its type has {expected}")]
    FieldLength {
        field: usize,
        expected: usize,
        found: usize,
    },
    #[error("binary COPY text field {field} is not UTF-8")]
    NotUtf8 { field: usize },
    #[error("binary COPY data continues after its end marker")]
    TrailingData,
}

/// An interval's parts as seconds: a month counted as 30 days, a day as
/// 86,400 s, as `EXTRACT(EPOCH …)` does.
pub(crate) fn interval_seconds(months: i32, days: i32, micros: i64) -> f64 {
    f64::from(months) * 30.0 * 86_400.0 + f64::from(days) * 86_400.0 + micros as f64 / 1e6
}

/// A cursor over binary COPY data.
pub(crate) struct CopyReader<'a> {
    data: &'a [u8],
}

impl<'a> CopyReader<'a> {
    /// Checks the header and positions the reader at the first tuple.
    pub(crate) fn new(data: &'a [u8]) -> Result<Self, CopyFormatError> {
        let rest = data
            .strip_prefix(SIGNATURE)
            .ok_or(CopyFormatError::Signature)?;
        let mut reader = Self { data: rest };
        let _flags = reader.array::<4>("the header")?;
        let extension = i32::from_be_bytes(reader.array("the header")?);
        let extension = usize::try_from(extension).map_err(|_| CopyFormatError::Signature)?;
        reader.take(extension, "the header extension")?;
        Ok(reader)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CopyFormatError> {
        if self.data.len() < n {
            return Err(CopyFormatError::Truncated(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn array<const W: usize>(&mut self, what: &'static str) -> Result<[u8; W], CopyFormatError> {
        let (head, rest) = self
            .data
            .split_first_chunk::<W>()
            .ok_or(CopyFormatError::Truncated(what))?;
        self.data = rest;
        Ok(*head)
    }

    /// The next tuple, which must have exactly `N` fields, or `None` at the
    /// end marker (after which nothing may follow).
    pub(crate) fn next_tuple<const N: usize>(
        &mut self,
    ) -> Result<Option<Tuple<'a, N>>, CopyFormatError> {
        let count = i16::from_be_bytes(self.array("a tuple's field count")?);
        if count == -1 {
            return if self.data.is_empty() {
                Ok(None)
            } else {
                Err(CopyFormatError::TrailingData)
            };
        }
        if usize::try_from(count).ok() != Some(N) {
            return Err(CopyFormatError::FieldCount {
                expected: N,
                found: count,
            });
        }
        let mut values = [None; N];
        for value in &mut values {
            let len = i32::from_be_bytes(self.array("a field's length")?);
            // A negative length is NULL (PostgreSQL writes -1).
            if let Ok(len) = usize::try_from(len) {
                *value = Some(self.take(len, "a field")?);
            }
        }
        Ok(Some(Tuple { values }))
    }
}

/// One tuple's `N` fields, `None` for `NULL`.
pub(crate) struct Tuple<'a, const N: usize> {
    values: [Option<&'a [u8]>; N],
}

impl<'a, const N: usize> Tuple<'a, N> {
    fn field(&self, field: usize) -> Option<&'a [u8]> {
        self.values.get(field).copied().flatten()
    }

    fn fixed<const W: usize>(&self, field: usize) -> Result<[u8; W], CopyFormatError> {
        let bytes = self
            .field(field)
            .ok_or(CopyFormatError::UnexpectedNull { field })?;
        bytes.try_into().map_err(|_| CopyFormatError::FieldLength {
            field,
            expected: W,
            found: bytes.len(),
        })
    }

    /// An `int8`.
    pub(crate) fn int8(&self, field: usize) -> Result<i64, CopyFormatError> {
        self.fixed(field).map(i64::from_be_bytes)
    }

    /// An `int4`.
    pub(crate) fn int4(&self, field: usize) -> Result<i32, CopyFormatError> {
        self.fixed(field).map(i32::from_be_bytes)
    }

    /// A `uuid`.
    pub(crate) fn uuid(&self, field: usize) -> Result<Uuid, CopyFormatError> {
        self.fixed(field).map(Uuid::from_bytes)
    }

    /// An `interval` as seconds (see [`interval_seconds`]).
    pub(crate) fn interval_seconds(&self, field: usize) -> Result<f64, CopyFormatError> {
        let b: [u8; 16] = self.fixed(field)?;
        let micros = i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let days = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        let months = i32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        Ok(interval_seconds(months, days, micros))
    }

    /// A `text` (or `json`, whose binary form is its text), `None` for
    /// `NULL`.
    pub(crate) fn text(&self, field: usize) -> Result<Option<&'a str>, CopyFormatError> {
        self.field(field)
            .map(|bytes| std::str::from_utf8(bytes).map_err(|_| CopyFormatError::NotUtf8 { field }))
            .transpose()
    }

    /// A `text` that is never `NULL`.
    pub(crate) fn required_text(&self, field: usize) -> Result<&'a str, CopyFormatError> {
        self.text(field)?
            .ok_or(CopyFormatError::UnexpectedNull { field })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Binary COPY data of `tuples`, each field `None` for `NULL`.
    pub(crate) fn encode(tuples: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for tuple in tuples {
            out.extend_from_slice(&i16::try_from(tuple.len()).unwrap().to_be_bytes());
            for field in tuple {
                match field {
                    Some(bytes) => {
                        out.extend_from_slice(&i32::try_from(bytes.len()).unwrap().to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// An interval's binary form.
    pub(crate) fn interval(micros: i64, days: i32, months: i32) -> Vec<u8> {
        let mut out = micros.to_be_bytes().to_vec();
        out.extend_from_slice(&days.to_be_bytes());
        out.extend_from_slice(&months.to_be_bytes());
        out
    }

    fn sample() -> Vec<u8> {
        encode(&[vec![
            Some(7i64.to_be_bytes().to_vec()),
            Some(Uuid::from_u128(9).as_bytes().to_vec()),
            Some(b"essay".to_vec()),
            None,
            Some(3i32.to_be_bytes().to_vec()),
            Some(interval(1_500_000, 1, 0)),
        ]])
    }

    /// Reads every tuple; how many there were.
    fn read_all(data: &[u8]) -> Result<usize, CopyFormatError> {
        let mut reader = CopyReader::new(data)?;
        let mut tuples = 0;
        while reader.next_tuple::<6>()?.is_some() {
            tuples += 1;
        }
        Ok(tuples)
    }

    #[test]
    fn reads_every_type_the_claim_selects() {
        let data = sample();
        let mut reader = CopyReader::new(&data).unwrap();
        let tuple = reader.next_tuple::<6>().unwrap().unwrap();
        assert_eq!(tuple.int8(0), Ok(7));
        assert_eq!(tuple.uuid(1), Ok(Uuid::from_u128(9)));
        assert_eq!(tuple.required_text(2), Ok("essay"));
        assert_eq!(tuple.text(3), Ok(None));
        assert_eq!(tuple.int4(4), Ok(3));
        assert!((tuple.interval_seconds(5).unwrap() - 86_401.5).abs() < 1e-9);
        assert!(reader.next_tuple::<6>().unwrap().is_none());
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let data = sample();
        assert_eq!(read_all(&data), Ok(1));
        for end in 0..data.len() {
            assert!(
                read_all(&data[..end]).is_err(),
                "data cut at {end} of {} bytes was accepted",
                data.len()
            );
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        let data = sample();
        let mut reader = CopyReader::new(&data).unwrap();
        assert_eq!(
            reader.next_tuple::<5>().err(),
            Some(CopyFormatError::FieldCount {
                expected: 5,
                found: 6
            })
        );
        let mut reader = CopyReader::new(&data).unwrap();
        let tuple = reader.next_tuple::<6>().unwrap().unwrap();
        assert_eq!(
            tuple.required_text(3),
            Err(CopyFormatError::UnexpectedNull { field: 3 })
        );
        assert_eq!(
            tuple.int8(2),
            Err(CopyFormatError::FieldLength {
                field: 2,
                expected: 8,
                found: 5
            })
        );
        let bad = encode(&[vec![Some(vec![0xff, 0xfe])]]);
        let mut reader = CopyReader::new(&bad).unwrap();
        let tuple = reader.next_tuple::<1>().unwrap().unwrap();
        assert_eq!(tuple.text(0), Err(CopyFormatError::NotUtf8 { field: 0 }));
        let mut trailing = sample();
        trailing.push(0);
        let mut reader = CopyReader::new(&trailing).unwrap();
        reader.next_tuple::<6>().unwrap();
        assert_eq!(
            reader.next_tuple::<6>().err(),
            Some(CopyFormatError::TrailingData)
        );
        assert!(matches!(
            CopyReader::new(b"SELECT"),
            Err(CopyFormatError::Signature)
        ));
    }
}
