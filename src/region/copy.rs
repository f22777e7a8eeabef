//! COPY text-format rows: tab-separated fields, `\N` for NULL, with
//! backslash, tab, newline and carriage return escaped.

use std::fmt::Display;

use chrono::{NaiveDate, NaiveDateTime};

/// One table's rows in COPY text format.
pub struct CopyBuf {
    pub table: &'static str,
    pub columns: &'static str,
    pub data: Vec<u8>,
    pub rows: u64,
    first: bool,
}

impl CopyBuf {
    pub fn new(table: &'static str, columns: &'static str) -> Self {
        CopyBuf {
            table,
            columns,
            data: Vec::with_capacity(1 << 16),
            rows: 0,
            first: true,
        }
    }

    fn sep(&mut self) {
        if !self.first {
            self.data.push(b'\t');
        }
        self.first = false;
    }

    pub fn text(&mut self, s: &str) -> &mut Self {
        self.sep();
        for b in s.bytes() {
            match b {
                b'\\' => self.data.extend_from_slice(b"\\\\"),
                b'\t' => self.data.extend_from_slice(b"\\t"),
                b'\n' => self.data.extend_from_slice(b"\\n"),
                b'\r' => self.data.extend_from_slice(b"\\r"),
                _ => self.data.push(b),
            }
        }
        self
    }

    pub fn opt_text(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.data.extend_from_slice(b"\\N");
        self
    }

    /// A value whose Display form needs no escaping (numbers, booleans).
    pub fn val(&mut self, v: impl Display) -> &mut Self {
        use std::io::Write;
        self.sep();
        write!(self.data, "{v}").expect("write to Vec");
        self
    }

    pub fn opt_val<T: Display>(&mut self, v: Option<T>) -> &mut Self {
        match v {
            Some(v) => self.val(v),
            None => self.null(),
        }
    }

    pub fn date(&mut self, d: NaiveDate) -> &mut Self {
        self.val(d.format("%Y-%m-%d"))
    }

    pub fn opt_date(&mut self, d: Option<NaiveDate>) -> &mut Self {
        match d {
            Some(d) => self.date(d),
            None => self.null(),
        }
    }

    /// A local (Moscow time) timestamp written with its offset.
    pub fn ts(&mut self, t: NaiveDateTime) -> &mut Self {
        self.val(t.format("%Y-%m-%d %H:%M:%S+03"))
    }

    pub fn end_row(&mut self) {
        self.data.push(b'\n');
        self.rows += 1;
        self.first = true;
    }

    pub fn statement(&self) -> String {
        format!("COPY journal.{} ({}) FROM STDIN", self.table, self.columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nulls() {
        let mut b = CopyBuf::new("t", "a, b, c");
        b.text("x\ty\\z\n").null().val(5);
        b.end_row();
        assert_eq!(b.data, b"x\\ty\\\\z\\n\t\\N\t5\n");
        assert_eq!(b.rows, 1);
    }
}
