//! The frame transform stage: what happens to a data frame between the session core and the
//! record layer on its way out (packing: compression, zero runs), and back on the way in. Per
//! frame, so that loss, resends and reordering across flows work as for plain frames; per
//! connection, so that each flow packs only what its peer said it unpacks.
//!
//! - [`codec`]: packing and bounded unpacking of one frame (lz4, zstd, zero runs), with a
//!   cheap probe that sends incompressible frames as they are;
//! - [`policy`]: which codec and level a tunnel uses now (`[wan] compression`), adapted to
//!   what the CPU and the WAN measure.

pub mod codec;
pub mod cpu_time;
pub mod policy;

pub use codec::{PackOutcome, Packer, UnpackError, Unpacker};
pub use policy::{
    Adaptive, Choice, Compression, PackFigures, PackNote, PackPolicy, PackStats, ADAPT_EVERY_US,
};

/// `n` incompressible bytes for tests (xorshift64 from `seed`), the same for the same seed.
#[cfg(test)]
pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
