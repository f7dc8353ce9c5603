//! What the fuzz targets share: a reader that hands its data out in reads of varied sizes,
//! as a pipe does, so that every buffer boundary falls everywhere in a line.

use std::io::{self, Read};

/// Reads `data` in reads whose sizes follow a pseudo-random sequence seeded by the data
/// itself (deterministic: a crash reproduces). The first read is at least `first_at_least`
/// bytes, as the session needs the streamed batch prefix in its buffer at once.
pub struct Chunks<'a> {
    data: &'a [u8],
    state: u64,
    first: Option<usize>,
    max: u64,
}

impl<'a> Chunks<'a> {
    /// `max`: the largest read after the first (at least 1).
    pub fn new(data: &'a [u8], first_at_least: usize, max: usize) -> Self {
        let mut state = 0x9e37_79b9_7f4a_7c15 ^ data.len() as u64;
        for &b in data.iter().take(64) {
            state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut chunks = Chunks {
            data,
            state: state | 1,
            first: None,
            max: max.max(1) as u64,
        };
        let extra = chunks.next() % 64;
        chunks.first = Some(first_at_least + extra as usize);
        chunks
    }

    /// The whole data in one read.
    pub fn whole(data: &'a [u8]) -> Self {
        Chunks {
            data,
            state: 1,
            first: Some(data.len().max(1)),
            max: u64::MAX,
        }
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.data
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = match self.first.take() {
            Some(first) => first,
            None => {
                // Mostly tiny reads (every offset of a boundary), sometimes larger ones.
                let r = self.next();
                let bound = if r & 3 == 0 {
                    self.max
                } else {
                    8.min(self.max)
                };
                (1 + (r >> 8) % bound) as usize
            }
        };
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
