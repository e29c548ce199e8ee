//! Frames built chunk by chunk, for tests of the decoder and of what uses it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Builds frames chunk by chunk.
#[derive(Default)]
pub(crate) struct Builder {
    chunks: Vec<u8>,
}

impl Builder {
    pub(crate) fn chunk(mut self, vendor: u16, t: u16, body: &[u8]) -> Self {
        self.chunks.extend_from_slice(&vendor.to_be_bytes());
        self.chunks.extend_from_slice(&t.to_be_bytes());
        self.chunks
            .extend_from_slice(&((body.len() + 6) as u16).to_be_bytes());
        self.chunks.extend_from_slice(body);
        self
    }
    pub(crate) fn c(self, t: u16, body: &[u8]) -> Self {
        self.chunk(0, t, body)
    }
    pub(crate) fn build(self) -> Vec<u8> {
        let mut out = b"HEP3".to_vec();
        out.extend_from_slice(&((self.chunks.len() + 6) as u16).to_be_bytes());
        out.extend_from_slice(&self.chunks);
        out
    }
    /// The mandatory IPv4 chunks without the payload.
    pub(crate) fn v4() -> Self {
        Builder::default()
            .c(1, &[2])
            .c(2, &[17])
            .c(3, &[10, 0, 0, 1])
            .c(4, &[10, 0, 0, 2])
            .c(7, &5060u16.to_be_bytes())
            .c(8, &5080u16.to_be_bytes())
            .c(9, &1_313_440_459u32.to_be_bytes())
            .c(10, &120_000u32.to_be_bytes())
            .c(11, &[1])
    }
}
