//! PostgreSQL's binary `COPY ... TO STDOUT (FORMAT binary)` stream, decoded
//! straight into the Arrow builders of a [`Batcher`].
//!
//! Why not sqlx rows: a full extract spent about a third of its time building
//! and decoding `PgRow`s (one allocation per row, a type check per value).
//! The binary COPY format is a fixed, documented layout
//! (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format")
//! and the published types are few, so it is decoded here. No maintained
//! crate does this for sqlx and our Arrow version (pgpq encodes the other
//! way; connector-x brings its own PostgreSQL driver).
//!
//! Chunks arrive as the server's CopyData messages, one per row in practice,
//! but the decoder takes any split: an incomplete tuple waits for the next
//! chunk, and a tuple is handed on only once all of it has arrived. The
//! caller decides where a tuple goes (one batcher, or the batcher of each
//! part it is routed to) and appends it with [`append_tuple`]. A bad value
//! fails the extract (the batchers are then dropped). Errors name the column,
//! never the value.

use super::{Batcher, ColBuilder};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// PostgreSQL dates and timestamps count from 2000-01-01, Arrow's from 1970-01-01.
const DAYS_1970_TO_2000: i32 = 10_957;
const MICROS_1970_TO_2000: i64 = 946_684_800_000_000;

/// Why a COPY stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// The stream is not a binary COPY stream as documented.
    Format(String),
    /// One value cannot be published; `column` indexes the batcher's columns.
    Value { column: usize, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Done,
}

/// One whole tuple of the stream: its bytes and where each field lies.
pub struct Tuple<'a> {
    buf: &'a [u8],
    spans: &'a [Option<(usize, usize)>],
    /// The tuple's length in the stream, about what its values take in Arrow.
    pub bytes: usize,
}

impl<'a> Tuple<'a> {
    /// The raw value of field `i`; `None` is SQL NULL.
    pub fn field(&self, i: usize) -> Option<&'a [u8]> {
        self.spans[i].map(|(s, l)| &self.buf[s..s + l])
    }
}

/// What the decoder calls with each whole tuple.
pub type OnTuple<'f> = dyn FnMut(&Tuple<'_>) -> Result<(), CopyError> + 'f;

/// Decodes a binary COPY stream fed in arbitrary chunks.
pub struct CopyDecoder {
    /// Fields per tuple: the published columns.
    columns: usize,
    state: State,
    /// Bytes of an incomplete header or tuple carried to the next chunk.
    carry: Vec<u8>,
    /// Field spans of the tuple being read, reused across tuples.
    spans: Vec<Option<(usize, usize)>>,
}

impl CopyDecoder {
    pub fn new(columns: usize) -> Self {
        CopyDecoder {
            columns,
            state: State::Header,
            carry: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Hands every whole tuple of `chunk` (after any carried bytes) to
    /// `on_tuple`, in stream order.
    pub fn feed(&mut self, chunk: &[u8], on_tuple: &mut OnTuple<'_>) -> Result<(), CopyError> {
        if self.carry.is_empty() {
            let used = self.decode(chunk, on_tuple)?;
            self.carry.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(chunk);
            let used = self.decode(&buf, on_tuple)?;
            buf.drain(..used);
            self.carry = buf;
        }
        Ok(())
    }

    /// Checks that the stream ended on the trailer with nothing after it.
    pub fn finish(&self) -> Result<(), CopyError> {
        match (self.state, self.carry.is_empty()) {
            (State::Done, true) => Ok(()),
            (State::Done, false) => Err(CopyError::Format(format!(
                "{} bytes after the trailer",
                self.carry.len()
            ))),
            _ => Err(CopyError::Format(
                "the stream ended before its trailer".into(),
            )),
        }
    }

    /// Decodes what is whole in `buf`; returns the bytes used.
    fn decode(&mut self, buf: &[u8], on_tuple: &mut OnTuple<'_>) -> Result<usize, CopyError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => {
                    if pos < buf.len() {
                        return Err(CopyError::Format(format!(
                            "{} bytes after the trailer",
                            buf.len() - pos
                        )));
                    }
                    return Ok(pos);
                }
                State::Header => {
                    let rest = &buf[pos..];
                    if rest.len() < 19 {
                        return Ok(pos);
                    }
                    if &rest[..11] != SIGNATURE {
                        return Err(CopyError::Format("no binary COPY signature".into()));
                    }
                    let flags = be_u32(&rest[11..15]);
                    // Bit 16 says OIDs are included; bits 0-15 are reserved as critical.
                    if flags & 0x0001_ffff != 0 {
                        return Err(CopyError::Format(format!(
                            "unsupported header flags {flags:#x}"
                        )));
                    }
                    let ext = be_u32(&rest[15..19]) as usize;
                    if rest.len() < 19 + ext {
                        return Ok(pos);
                    }
                    pos += 19 + ext;
                    self.state = State::Tuples;
                }
                State::Tuples => {
                    let rest = &buf[pos..];
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    let fields = i16::from_be_bytes([rest[0], rest[1]]);
                    if fields == -1 {
                        pos += 2;
                        self.state = State::Done;
                        continue;
                    }
                    let ncols = self.columns;
                    if fields as usize != ncols || fields < 0 {
                        return Err(CopyError::Format(format!(
                            "a tuple of {fields} fields where {ncols} are expected"
                        )));
                    }
                    // Find every field's span first: only a whole tuple is appended.
                    self.spans.clear();
                    let mut at = 2;
                    for _ in 0..ncols {
                        if rest.len() < at + 4 {
                            return Ok(pos);
                        }
                        let len = i32::from_be_bytes(rest[at..at + 4].try_into().expect("4 bytes"));
                        at += 4;
                        if len == -1 {
                            self.spans.push(None);
                        } else if len < 0 {
                            return Err(CopyError::Format(format!("field length {len}")));
                        } else {
                            let len = len as usize;
                            if rest.len() < at + len {
                                return Ok(pos);
                            }
                            self.spans.push(Some((at, len)));
                            at += len;
                        }
                    }
                    on_tuple(&Tuple {
                        buf: rest,
                        spans: &self.spans,
                        bytes: at,
                    })?;
                    pos += at;
                }
            }
        }
    }
}

/// Appends one tuple to `batcher` as its next row.
pub fn append_tuple(batcher: &mut Batcher, tuple: &Tuple<'_>) -> Result<(), CopyError> {
    for (column, builder) in batcher.builders.iter_mut().enumerate() {
        append(builder, tuple.field(column))
            .map_err(|reason| CopyError::Value { column, reason })?;
    }
    batcher.len += 1;
    batcher.total += 1;
    Ok(())
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("a {}-byte value where {N} bytes are expected", v.len()))
}

/// One binary value into its column. The reason never quotes the value.
fn append(builder: &mut ColBuilder, value: Option<&[u8]>) -> Result<(), String> {
    let Some(v) = value else {
        match builder {
            ColBuilder::Bool(b) => b.append_null(),
            ColBuilder::Int16(b) => b.append_null(),
            ColBuilder::Int32(b) => b.append_null(),
            ColBuilder::Int64(b) => b.append_null(),
            ColBuilder::Float64(b) => b.append_null(),
            ColBuilder::Text(b) => b.append_null(),
            ColBuilder::Date(b) => b.append_null(),
            ColBuilder::Timestamp(b) => b.append_null(),
        }
        return Ok(());
    };
    match builder {
        ColBuilder::Bool(b) => match fixed::<1>(v)? {
            [0] => b.append_value(false),
            [1] => b.append_value(true),
            _ => return Err("a boolean byte other than 0 or 1".into()),
        },
        ColBuilder::Int16(b) => b.append_value(i16::from_be_bytes(fixed(v)?)),
        ColBuilder::Int32(b) => b.append_value(i32::from_be_bytes(fixed(v)?)),
        ColBuilder::Int64(b) => b.append_value(i64::from_be_bytes(fixed(v)?)),
        ColBuilder::Float64(b) => b.append_value(f64::from_be_bytes(fixed(v)?)),
        ColBuilder::Text(b) => b
            .append_utf8(v)
            .map_err(|e| format!("not valid UTF-8 ({e})"))?,
        ColBuilder::Date(b) => {
            let days = i32::from_be_bytes(fixed(v)?);
            if days == i32::MAX || days == i32::MIN {
                return Err("an infinite date, which Parquet cannot hold".into());
            }
            b.append_value(
                days.checked_add(DAYS_1970_TO_2000)
                    .ok_or("a date out of range")?,
            );
        }
        ColBuilder::Timestamp(b) => {
            let micros = i64::from_be_bytes(fixed(v)?);
            if micros == i64::MAX || micros == i64::MIN {
                return Err("an infinite timestamp, which Parquet cannot hold".into());
            }
            b.append_value(
                micros
                    .checked_add(MICROS_1970_TO_2000)
                    .ok_or("a timestamp out of range")?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Column, ColumnType, arrow_schema};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Date32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
    };
    use arrow_array::{Array, RecordBatch};

    fn columns() -> Vec<Column> {
        [
            ColumnType::Bool,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Text,
            ColumnType::Date,
            ColumnType::Timestamp,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, ty)| Column {
            name: format!("c{i}"),
            ty,
            sql_type: String::new(),
        })
        .collect()
    }

    fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
        match v {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    /// A stream as PostgreSQL writes it: two rows with values, one all NULL.
    fn stream() -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"ext!");
        for (b, i2, i4, i8, f, t, d, ts) in [
            (true, -2i16, 70_000i32, -5i64, 1.5f64, "Århus", 0i32, 0i64),
            (false, 3, -1, 1 << 40, -0.25, "", -10_958, -1),
        ] {
            s.extend_from_slice(&8i16.to_be_bytes());
            field(&mut s, Some(&[b as u8]));
            field(&mut s, Some(&i2.to_be_bytes()));
            field(&mut s, Some(&i4.to_be_bytes()));
            field(&mut s, Some(&i8.to_be_bytes()));
            field(&mut s, Some(&f.to_be_bytes()));
            field(&mut s, Some(t.as_bytes()));
            field(&mut s, Some(&d.to_be_bytes()));
            field(&mut s, Some(&ts.to_be_bytes()));
        }
        s.extend_from_slice(&8i16.to_be_bytes());
        for _ in 0..8 {
            field(&mut s, None);
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    fn decode_in(chunks: &[&[u8]]) -> Result<RecordBatch, CopyError> {
        let cols = columns();
        let mut batcher = Batcher::new(arrow_schema(&cols), &cols, "t");
        let mut decoder = CopyDecoder::new(cols.len());
        for c in chunks {
            decoder.feed(c, &mut |t| append_tuple(&mut batcher, t))?;
        }
        decoder.finish()?;
        Ok(batcher.finish())
    }

    fn check(batch: &RecordBatch) {
        assert_eq!(batch.num_rows(), 3);
        let b = batch.column(0).as_boolean();
        assert!(b.value(0) && !b.value(1) && b.is_null(2));
        assert_eq!(batch.column(1).as_primitive::<Int16Type>().value(0), -2);
        assert_eq!(batch.column(2).as_primitive::<Int32Type>().value(0), 70_000);
        assert_eq!(
            batch.column(3).as_primitive::<Int64Type>().value(1),
            1 << 40
        );
        assert_eq!(
            batch.column(4).as_primitive::<Float64Type>().value(1),
            -0.25
        );
        let t = batch.column(5).as_string::<i32>();
        assert_eq!((t.value(0), t.value(1)), ("Århus", ""));
        // 2000-01-01 is day 10957 after 1970-01-01; -10958 days from 2000 is 1969-12-31.
        let d = batch.column(6).as_primitive::<Date32Type>();
        assert_eq!((d.value(0), d.value(1)), (10_957, -1));
        let ts = batch.column(7).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 946_684_800_000_000);
        assert_eq!(ts.value(1), 946_684_799_999_999);
        for c in batch.columns() {
            assert!(c.is_null(2));
            assert_eq!(c.null_count(), 1);
        }
    }

    #[test]
    fn decodes_every_type_and_null() {
        check(&decode_in(&[&stream()]).unwrap());
    }

    #[test]
    fn any_split_of_the_stream_decodes_the_same() {
        let s = stream();
        for cut in 0..=s.len() {
            check(&decode_in(&[&s[..cut], &s[cut..]]).unwrap());
        }
        // And a byte at a time.
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        check(&decode_in(&bytes).unwrap());
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let s = stream();
        for cut in 0..s.len() {
            let err = decode_in(&[&s[..cut]]).unwrap_err();
            assert!(matches!(err, CopyError::Format(_)), "cut {cut}: {err:?}");
        }
    }

    #[test]
    fn bytes_after_the_trailer_are_an_error() {
        let mut s = stream();
        s.push(0);
        assert_eq!(
            decode_in(&[&s]).unwrap_err(),
            CopyError::Format("1 bytes after the trailer".into())
        );
    }

    #[test]
    fn a_wrong_signature_or_field_count_is_an_error() {
        let mut s = stream();
        s[0] = b'X';
        assert!(matches!(decode_in(&[&s]), Err(CopyError::Format(m)) if m.contains("signature")));
        let mut s = stream();
        s[24] = 7; // the first tuple's field count, low byte (after 19 + 4 header bytes)
        assert!(matches!(decode_in(&[&s]), Err(CopyError::Format(m)) if m.contains("7 fields")));
    }

    /// Replaces the value of `column` in the first tuple and decodes.
    fn with_value(column: usize, value: &[u8]) -> Result<RecordBatch, CopyError> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&[0; 8]);
        s.extend_from_slice(&8i16.to_be_bytes());
        for c in 0..8 {
            field(&mut s, (c == column).then_some(value));
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        decode_in(&[&s])
    }

    #[test]
    fn bad_values_name_the_column_not_the_value() {
        let err = |c, v: &[u8]| match with_value(c, v).unwrap_err() {
            CopyError::Value { column, reason } => {
                assert_eq!(column, c);
                reason
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(err(0, &[2]), "a boolean byte other than 0 or 1");
        assert_eq!(err(2, &[0, 1]), "a 2-byte value where 4 bytes are expected");
        assert!(err(5, &[0xff, 0xfe]).starts_with("not valid UTF-8"));
        // A multi-byte character cut short after ASCII text.
        assert!(err(5, &[b'A', 0xc3]).starts_with("not valid UTF-8"));
        assert!(err(6, &i32::MAX.to_be_bytes()).contains("infinite date"));
        assert!(err(7, &i64::MIN.to_be_bytes()).contains("infinite timestamp"));
    }
}
