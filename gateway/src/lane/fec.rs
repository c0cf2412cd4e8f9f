//! Forward error correction: one frame is one group of `data` shards and
//! `parity` shards, a Reed-Solomon code over GF(2^8) (the
//! `reed-solomon-erasure` crate, SIMD build). Any `data` of the group's
//! datagrams rebuild the frame where it lands, without the round trip a
//! resend costs.
//!
//! A group's shards are all `shard_len` bytes: the frame is cut into `data`
//! equal pieces, the last padded with zeros, and `len` says where the frame
//! ends. Measured on this machine (`cargo bench --manifest-path
//! gateway/bench/Cargo.toml --bench fec`, docs/BENCHMARKS.md "The lane"):
//! encoding a 64 KiB frame as 47 + 4 shards takes 6.6 µs, rebuilding it with
//! 4 data shards lost 10.4 µs; `reed-solomon-simd` encodes as fast (6.5 µs)
//! but took 190 µs to rebuild.

use reed_solomon_erasure::galois_8::ReedSolomon;
use rustc_hash::FxHashMap;

/// GF(2^8) allows 256 shards per group; the wire's one-byte counts allow 255.
pub const MAX_SHARDS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    #[error("a group of {data} data and {parity} parity shards is over the code's {MAX_SHARDS}")]
    TooManyShards { data: usize, parity: usize },
    #[error("a group needs at least one data shard and one byte")]
    Empty,
    #[error("shard index {index} is outside a group of {total}")]
    IndexOutOfRange { index: usize, total: usize },
    #[error("a shard of {got} bytes in a group of {want}-byte shards")]
    ShardLength { got: usize, want: usize },
    #[error("a group of {len} bytes cannot be {data} shards of {shard_len} bytes")]
    BadLength {
        len: usize,
        data: usize,
        shard_len: usize,
    },
    #[error("{have} of the {need} shards needed to rebuild the group")]
    TooFewShards { have: usize, need: usize },
}

/// How one group is cut: what every shard of it says in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub data: u8,
    pub parity: u8,
    pub shard_len: u16,
    /// The frame's bytes (the last data shard's padding excluded).
    pub len: u32,
}

impl Shape {
    /// The shape of a `len`-byte frame in shards of at most `max_shard`
    /// bytes with `parity` parity shards: as few data shards as fit, and all
    /// of them equally long, so that padding stays under one byte a shard.
    pub fn for_len(len: usize, max_shard: usize, parity: u8) -> Result<Shape, FecError> {
        if len == 0 || max_shard == 0 {
            return Err(FecError::Empty);
        }
        let data = len.div_ceil(max_shard);
        let shape = Shape {
            data: u8::try_from(data).map_err(|_| FecError::TooManyShards {
                data,
                parity: parity.into(),
            })?,
            parity,
            shard_len: u16::try_from(len.div_ceil(data)).map_err(|_| FecError::BadLength {
                len,
                data,
                shard_len: max_shard,
            })?,
            len: u32::try_from(len).map_err(|_| FecError::BadLength {
                len,
                data,
                shard_len: max_shard,
            })?,
        };
        shape.check()?;
        Ok(shape)
    }

    pub fn total(&self) -> usize {
        usize::from(self.data) + usize::from(self.parity)
    }

    /// Whether the numbers agree with each other (a peer's header may not).
    pub fn check(&self) -> Result<(), FecError> {
        let (data, shard_len, len) = (
            usize::from(self.data),
            usize::from(self.shard_len),
            self.len as usize,
        );
        if data == 0 || len == 0 {
            return Err(FecError::Empty);
        }
        if self.total() > MAX_SHARDS {
            return Err(FecError::TooManyShards {
                data,
                parity: self.parity.into(),
            });
        }
        // Every data shard holds at least one byte of the frame.
        if len > data * shard_len || len <= (data - 1) * shard_len {
            return Err(FecError::BadLength {
                len,
                data,
                shard_len,
            });
        }
        Ok(())
    }
}

/// Reed-Solomon codecs by (data, parity): building one inverts a matrix, and
/// a tunnel's frames come in a few shapes.
#[derive(Default)]
pub struct Codecs {
    built: FxHashMap<(u8, u8), ReedSolomon>,
}

impl std::fmt::Debug for Codecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codecs")
            .field("built", &self.built.len())
            .finish()
    }
}

/// Shapes kept at most; past it the cache starts again (a peer choosing
/// odd shapes costs CPU, never memory).
const MAX_CODECS: usize = 64;

impl Codecs {
    fn get(&mut self, shape: Shape) -> Result<Option<&ReedSolomon>, FecError> {
        shape.check()?;
        if shape.parity == 0 {
            return Ok(None);
        }
        if self.built.len() >= MAX_CODECS && !self.built.contains_key(&(shape.data, shape.parity)) {
            self.built.clear();
        }
        let codec = match self.built.entry((shape.data, shape.parity)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                ReedSolomon::new(shape.data.into(), shape.parity.into()).map_err(|_| {
                    FecError::TooManyShards {
                        data: shape.data.into(),
                        parity: shape.parity.into(),
                    }
                })?,
            ),
        };
        Ok(Some(codec))
    }

    /// The group of `frame` cut as `shape` (from [`Shape::for_len`]): all
    /// its shards back to back, `shape.total()` of `shape.shard_len` bytes.
    pub fn encode(&mut self, frame: &[u8], shape: Shape) -> Result<Vec<u8>, FecError> {
        if frame.len() != shape.len as usize {
            return Err(FecError::BadLength {
                len: frame.len(),
                data: shape.data.into(),
                shard_len: shape.shard_len.into(),
            });
        }
        let shard_len = usize::from(shape.shard_len);
        let data_bytes = usize::from(shape.data) * shard_len;
        let mut group = vec![0u8; shape.total() * shard_len];
        group[..frame.len()].copy_from_slice(frame);
        if let Some(codec) = self.get(shape)? {
            let (data, parity) = group.split_at_mut(data_bytes);
            let data: Vec<&[u8]> = data.chunks(shard_len).collect();
            let mut parity: Vec<&mut [u8]> = parity.chunks_mut(shard_len).collect();
            codec
                .encode_sep(&data, &mut parity)
                .map_err(|_| FecError::ShardLength {
                    got: shard_len,
                    want: shard_len,
                })?;
        }
        Ok(group)
    }
}

/// One group on its way in: the shards that arrived, until enough have to
/// rebuild the frame.
#[derive(Debug)]
pub struct GroupAssembly {
    shape: Shape,
    /// Every shard's slot, back to back; `present` says which hold one.
    shards: Vec<u8>,
    present: Vec<bool>,
    have: usize,
}

impl GroupAssembly {
    pub fn new(shape: Shape) -> Result<GroupAssembly, FecError> {
        shape.check()?;
        Ok(GroupAssembly {
            shape,
            shards: vec![0u8; shape.total() * usize::from(shape.shard_len)],
            present: vec![false; shape.total()],
            have: 0,
        })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The memory it holds.
    pub fn bytes(&self) -> usize {
        self.shards.len()
    }

    /// Takes shard `index`; false if it was here already (a duplicate).
    pub fn insert(&mut self, index: usize, shard: &[u8]) -> Result<bool, FecError> {
        let total = self.shape.total();
        if index >= total {
            return Err(FecError::IndexOutOfRange { index, total });
        }
        let want = usize::from(self.shape.shard_len);
        if shard.len() != want {
            return Err(FecError::ShardLength {
                got: shard.len(),
                want,
            });
        }
        if self.present[index] {
            return Ok(false);
        }
        self.shards[index * want..(index + 1) * want].copy_from_slice(shard);
        self.present[index] = true;
        self.have += 1;
        Ok(true)
    }

    /// Whether every data shard arrived (no parity needed).
    pub fn has_all_data(&self) -> bool {
        self.present[..usize::from(self.shape.data)]
            .iter()
            .all(|p| *p)
    }

    /// Whether enough shards arrived to rebuild the frame.
    pub fn ready(&self) -> bool {
        self.have >= usize::from(self.shape.data)
    }

    /// The frame, rebuilt from what arrived.
    pub fn finish(mut self, codecs: &mut Codecs) -> Result<Vec<u8>, FecError> {
        let data = usize::from(self.shape.data);
        if !self.ready() {
            return Err(FecError::TooFewShards {
                have: self.have,
                need: data,
            });
        }
        let shard_len = usize::from(self.shape.shard_len);
        if self.present[..data].iter().any(|p| !p) {
            let codec = codecs.get(self.shape)?.ok_or(FecError::TooFewShards {
                have: self.have,
                need: data,
            })?;
            let mut slots: Vec<(&mut [u8], bool)> = self
                .shards
                .chunks_mut(shard_len)
                .zip(self.present.iter().copied())
                .collect();
            codec
                .reconstruct_data(&mut slots)
                .map_err(|_| FecError::TooFewShards {
                    have: self.have,
                    need: data,
                })?;
        }
        self.shards.truncate(self.shape.len as usize);
        Ok(self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_64_kib_frame_is_55_shards_of_1192_bytes_and_its_parity() {
        let shape = Shape::for_len(65_536, 1200, 4).unwrap();
        assert_eq!(
            shape,
            Shape {
                data: 55,
                parity: 4,
                shard_len: 1192,
                len: 65_536
            }
        );
        let group = Codecs::default().encode(&frame(65_536, 1), shape).unwrap();
        assert_eq!(group.len(), 59 * 1192);
    }

    #[test]
    fn shapes_a_peer_could_send_that_do_not_add_up_are_refused() {
        let bad = |data, parity, shard_len, len| {
            Shape {
                data,
                parity,
                shard_len,
                len,
            }
            .check()
        };
        assert_eq!(bad(0, 4, 100, 10), Err(FecError::Empty));
        assert_eq!(bad(2, 4, 100, 0), Err(FecError::Empty));
        assert!(matches!(
            bad(200, 56, 10, 2000),
            Err(FecError::TooManyShards { .. })
        ));
        assert!(matches!(
            bad(2, 1, 100, 201),
            Err(FecError::BadLength { .. })
        ));
        assert!(matches!(
            bad(2, 1, 100, 100),
            Err(FecError::BadLength { .. })
        ));
        assert_eq!(bad(2, 1, 100, 101), Ok(()));
        assert!(matches!(
            Shape::for_len(300 * 1200, 1200, 4),
            Err(FecError::TooManyShards { .. })
        ));
        assert!(GroupAssembly::new(Shape {
            data: 3,
            parity: 0,
            shard_len: 0,
            len: 1
        })
        .is_err());
    }

    #[test]
    fn wrong_sizes_and_indexes_are_errors_and_duplicates_are_noted() {
        let shape = Shape::for_len(1000, 400, 1).unwrap();
        let mut group = GroupAssembly::new(shape).unwrap();
        let shard = vec![0u8; shape.shard_len.into()];
        assert!(matches!(
            group.insert(4, &shard),
            Err(FecError::IndexOutOfRange { index: 4, total: 4 })
        ));
        assert!(matches!(
            group.insert(0, &shard[1..]),
            Err(FecError::ShardLength { .. })
        ));
        assert_eq!(group.insert(0, &shard), Ok(true));
        assert_eq!(group.insert(0, &shard), Ok(false));
        assert!(!group.ready());
        assert!(matches!(
            group.finish(&mut Codecs::default()),
            Err(FecError::TooFewShards { have: 1, need: 3 })
        ));
    }

    #[test]
    fn without_parity_every_data_shard_is_needed() {
        let mut codecs = Codecs::default();
        let shape = Shape::for_len(5000, 1200, 0).unwrap();
        let sent = frame(5000, 9);
        let group = codecs.encode(&sent, shape).unwrap();
        let mut got = GroupAssembly::new(shape).unwrap();
        for (i, shard) in group.chunks(shape.shard_len.into()).enumerate().skip(1) {
            got.insert(i, shard).unwrap();
        }
        assert!(!got.ready());
        got.insert(0, &group[..shape.shard_len.into()]).unwrap();
        assert_eq!(got.finish(&mut codecs).unwrap(), sent);
    }

    proptest! {
        /// Any `parity` shards lost, in any order of arrival, the frame comes back whole; one
        /// more lost and it cannot.
        #[test]
        fn any_parity_losses_are_rebuilt_and_one_more_is_not(
            len in 1usize..20_000,
            max_shard in 64usize..1400,
            parity in 0u8..8,
            seed in any::<u8>(),
            order in any::<u64>(),
        ) {
            let Ok(shape) = Shape::for_len(len, max_shard, parity) else {
                return Ok(());
            };
            let mut codecs = Codecs::default();
            let sent = frame(len, seed);
            let group = codecs.encode(&sent, shape).unwrap();
            let total = shape.total();
            let shard_len = usize::from(shape.shard_len);
            // A pseudo-random arrival order from `order`.
            let mut idx: Vec<usize> = (0..total).collect();
            let mut x = order | 1;
            for i in (1..total).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                idx.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let arrive = |lost: usize| {
                let mut got = GroupAssembly::new(shape).unwrap();
                for &i in &idx[lost..] {
                    got.insert(i, &group[i * shard_len..(i + 1) * shard_len]).unwrap();
                }
                got
            };
            let whole = arrive(usize::from(parity));
            prop_assert!(whole.ready());
            prop_assert_eq!(whole.finish(&mut codecs).unwrap(), sent);
            if usize::from(parity) < total {
                let short = arrive(usize::from(parity) + 1);
                prop_assert!(!short.ready());
            }
        }
    }
}
