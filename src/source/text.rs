//! A text column from bytes. A binary COPY hands over each value as bytes;
//! checking them with `is_ascii` (the common case) and `from_utf8` only
//! otherwise is cheaper than `from_utf8` on every short value. The column is
//! arrow's own `StringBuilder`, which takes `&str` and so finishes without a
//! second check of the whole buffer.

use arrow_array::StringArray;
use arrow_array::builder::StringBuilder;

#[derive(Default)]
pub struct TextBuilder(StringBuilder);

impl TextBuilder {
    pub fn append_str(&mut self, value: Option<&str>) {
        self.0.append_option(value);
    }

    /// Appends `value` if it is UTF-8; if not, appends nothing.
    pub fn append_utf8(&mut self, value: &[u8]) -> Result<(), std::str::Utf8Error> {
        let text = if value.is_ascii() {
            // SAFETY: ASCII is valid UTF-8, and `is_ascii` just held.
            unsafe { std::str::from_utf8_unchecked(value) }
        } else {
            std::str::from_utf8(value)?
        };
        self.0.append_value(text);
        Ok(())
    }

    pub fn append_null(&mut self) {
        self.0.append_null();
    }

    /// The values so far as a column; the builder starts again empty.
    pub fn finish(&mut self) -> StringArray {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;

    #[test]
    fn keeps_valid_text_and_refuses_the_rest_without_a_trace() {
        let mut b = TextBuilder::default();
        b.append_str(Some("Århus"));
        b.append_utf8(b"101").unwrap();
        b.append_utf8("Sønderborg".as_bytes()).unwrap();
        // A two-byte character cut short after ASCII, and a lone continuation byte.
        assert!(b.append_utf8(b"Aar\xc3").is_err());
        assert!(b.append_utf8(b"\x80").is_err());
        b.append_null();
        b.append_str(None);
        b.append_utf8(b"").unwrap();
        let a = b.finish();
        assert_eq!(a.len(), 6);
        assert_eq!(
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect::<Vec<_>>(),
            [
                Some("Århus"),
                Some("101"),
                Some("Sønderborg"),
                None,
                None,
                Some("")
            ]
        );
        // The column is valid throughout.
        a.to_data().validate_full().unwrap();
        // The builder starts again empty.
        b.append_str(Some("x"));
        assert_eq!(b.finish().value(0), "x");
    }
}
