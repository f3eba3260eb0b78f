//! Length-prefixed canonical encoding shared by entry seals and audit-chain hashes.
//!
//! Every field is written as its length (u64, big-endian) followed by its bytes; optional fields
//! carry a presence byte first; integers are 8 big-endian bytes. No two different field lists
//! encode to the same bytes, which is what makes a MAC or hash over them meaningful.

/// Streams canonical fields into a sink (a MAC, a hasher, or a Vec).
pub struct Canon<F: FnMut(&[u8])> {
    sink: F,
}

impl<F: FnMut(&[u8])> Canon<F> {
    /// An encoder writing to `sink`.
    pub fn new(sink: F) -> Self {
        Self { sink }
    }

    /// Appends bytes, length-prefixed.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        (self.sink)(&(bytes.len() as u64).to_be_bytes());
        (self.sink)(bytes);
        self
    }

    /// Appends a string's UTF-8 bytes, length-prefixed.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    /// Appends an integer (8 bytes, big-endian), length-prefixed.
    pub fn int(&mut self, n: i64) -> &mut Self {
        self.bytes(&n.to_be_bytes())
    }

    /// Appends an optional string (a presence byte, then the string).
    pub fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.bytes(&[0]),
            Some(v) => self.bytes(&[1]).str(v),
        }
    }
}
