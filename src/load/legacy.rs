//! The legacy SUP text format (shared/domain/README.md §3), an optional extra
//! output for suppliers whose loaders expect it: one `.csv` per load and
//! authority, zipped on its own under the same name.
//!
//! - name `<datapakke>_<table>_<run date YYYY_MM_DD>.csv`;
//! - line 1, fixed width: record count (15, zero-padded), run date (10),
//!   extract period start (10), end (10), load type (1: `D` or `F`);
//! - line 2 the column names, then the rows; fields separated by `¤|¤|¤`,
//!   records ended by CRLF, null as an empty field;
//! - numbers with the sign first and a decimal comma, dates `yyyy-mm-dd`,
//!   timestamps `yyyy-mm-dd hh:mm:ss.sss` in Danish time (CET/CEST).
//!
//! Pure: formatting only.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use chrono::{DateTime, NaiveDate};
use chrono_tz::Europe::Copenhagen;

pub const SEPARATOR: &str = "¤|¤|¤";

/// What the header and file name need, per load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacySpec {
    /// Two digits, e.g. `05`.
    pub datapakke: String,
    /// e.g. `tblJoblog`.
    pub table: String,
    pub run_date: NaiveDate,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    /// `F` (full) or `D` (delta).
    pub load_type: char,
}

impl LegacySpec {
    pub fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.csv",
            self.datapakke,
            self.table,
            self.run_date.format("%Y_%m_%d")
        )
    }

    /// Line 1, with its CRLF.
    pub fn header(&self, records: u64) -> String {
        format!(
            "{records:015}{}{}{}{}\r\n",
            self.run_date.format("%Y-%m-%d"),
            self.period_start.format("%Y-%m-%d"),
            self.period_end.format("%Y-%m-%d"),
            self.load_type
        )
    }
}

/// Line 2: the column names.
pub fn column_line(batch_schema: &arrow_schema::Schema) -> String {
    let names: Vec<&str> = batch_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    format!("{}\r\n", names.join(SEPARATOR))
}

/// The first column of `row` whose text the format cannot carry: it has no
/// escape, so a value holding the separator, CR or LF would split or break
/// its record. Such a row is left out of the text file (never altered).
pub fn unrepresentable(batch: &RecordBatch, row: usize) -> Option<usize> {
    batch.columns().iter().position(|col| {
        matches!(col.data_type(), DataType::Utf8) && !col.is_null(row) && {
            let s = col.as_string::<i32>().value(row);
            s.contains(['\r', '\n']) || s.contains(SEPARATOR)
        }
    })
}

/// Appends one row of `batch` as a record; check it with [`unrepresentable`] first.
pub fn push_row(out: &mut String, batch: &RecordBatch, row: usize) {
    for (i, col) in batch.columns().iter().enumerate() {
        if i > 0 {
            out.push_str(SEPARATOR);
        }
        if col.is_null(row) {
            continue;
        }
        match col.data_type() {
            DataType::Boolean => out.push(if col.as_boolean().value(row) {
                '1'
            } else {
                '0'
            }),
            DataType::Int16 => {
                out.push_str(&col.as_primitive::<Int16Type>().value(row).to_string())
            }
            DataType::Int32 => {
                out.push_str(&col.as_primitive::<Int32Type>().value(row).to_string())
            }
            DataType::Int64 => {
                out.push_str(&col.as_primitive::<Int64Type>().value(row).to_string())
            }
            DataType::Float64 => {
                out.push_str(&decimal_comma(col.as_primitive::<Float64Type>().value(row)))
            }
            DataType::Date32 => {
                let days = col.as_primitive::<Date32Type>().value(row);
                let d = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                    + chrono::Duration::days(days as i64);
                out.push_str(&d.format("%Y-%m-%d").to_string());
            }
            DataType::Timestamp(..) => {
                let micros = col.as_primitive::<TimestampMicrosecondType>().value(row);
                if let Some(t) = DateTime::from_timestamp_micros(micros) {
                    out.push_str(
                        &t.with_timezone(&Copenhagen)
                            .format("%Y-%m-%d %H:%M:%S%.3f")
                            .to_string(),
                    );
                }
            }
            _ => out.push_str(col.as_string::<i32>().value(row)),
        }
    }
    out.push_str("\r\n");
}

fn decimal_comma(v: f64) -> String {
    let s = v.to_string();
    s.replacen('.', ",", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        BooleanArray, Date32Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow_schema::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    #[test]
    fn header_is_fixed_width_and_the_name_follows_sup() {
        let spec = LegacySpec {
            datapakke: "05".into(),
            table: "tblJoblog".into(),
            run_date: NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
            period_start: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
            period_end: NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
            load_type: 'D',
        };
        let h = spec.header(42);
        assert_eq!(h, "0000000000000422026-11-222026-11-212026-11-22D\r\n");
        assert_eq!(h.trim_end().len(), 46);
        assert_eq!(spec.file_name(), "05_tblJoblog_2026_11_22.csv");
    }

    #[test]
    fn values_follow_the_sup_conventions() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("timer", DataType::Float64, true),
            Field::new("dato", DataType::Date32, true),
            Field::new(
                "tid",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("tekst", DataType::Utf8, true),
            Field::new("flag", DataType::Boolean, true),
        ]));
        // 2026-07-01T10:00:00.250Z is 12:00:00.250 in Danish summer time.
        let t = DateTime::parse_from_rfc3339("2026-07-01T10:00:00.250Z")
            .unwrap()
            .timestamp_micros();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(-7), None])),
                Arc::new(Float64Array::from(vec![Some(-12.5), Some(37.0)])),
                Arc::new(Date32Array::from(vec![Some(20_635), None])),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(t), None]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![Some("linje to"), None])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
            ],
        )
        .unwrap();
        assert_eq!(
            column_line(&schema),
            "id¤|¤|¤timer¤|¤|¤dato¤|¤|¤tid¤|¤|¤tekst¤|¤|¤flag\r\n"
        );
        let mut out = String::new();
        push_row(&mut out, &batch, 0);
        push_row(&mut out, &batch, 1);
        assert_eq!(
            out,
            "-7¤|¤|¤-12,5¤|¤|¤2026-07-01¤|¤|¤2026-07-01 12:00:00.250¤|¤|¤linje to¤|¤|¤1\r\n¤|¤|¤37¤|¤|¤¤|¤|¤¤|¤|¤¤|¤|¤\r\n"
        );
    }

    #[test]
    fn a_value_holding_the_separator_or_a_line_break_is_unrepresentable() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("tekst", DataType::Utf8, true),
        ]));
        let values = ["almindelig", "a¤|¤|¤b", "to\nlinjer", "cr\r", "¤|¤ alene"];
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])),
                Arc::new(StringArray::from(values.to_vec())),
            ],
        )
        .unwrap();
        let got: Vec<Option<usize>> = (0..5).map(|r| unrepresentable(&batch, r)).collect();
        assert_eq!(got, [None, Some(1), Some(1), Some(1), None]);
    }
}
