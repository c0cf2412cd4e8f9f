//! Forward error correction candidates for the lane (`gateway/src/lane/fec.rs`): one 64 KiB
//! frame as a Reed-Solomon group of 47 data shards of 1400 bytes (1395 with the frame cut
//! evenly) and 4 parity shards, as the lane sends it; then the frame rebuilt with 4 of its
//! data shards lost, the worst its parity covers.
//!
//! Run: `cargo bench --manifest-path gateway/bench/Cargo.toml --bench fec -- --warm-up-time 1
//! --measurement-time 3`.
//!
//! - `reed-solomon-erasure` 6 with `simd-accel` (its C kernels, PSHUFB over GF(2^8)): what
//!   the gateway uses;
//! - `reed-solomon-simd` 3 (Leopard-RS, O(n log n) over GF(2^16)).

use criterion::{black_box, criterion_group, criterion_main, Criterion};

const FRAME: usize = 64 * 1024;
const DATA: usize = 47;
const PARITY: usize = 4;
const LOST: [usize; 4] = [3, 17, 30, 46];

fn shards() -> Vec<Vec<u8>> {
    let len = FRAME.div_ceil(DATA);
    // Even length: reed-solomon-simd wants shards of an even byte count.
    let len = len + len % 2;
    (0..DATA)
        .map(|i| (0..len).map(|j| (i * 7 + j * 13) as u8).collect())
        .collect()
}

fn erasure(c: &mut Criterion, name: &str) {
    let data = shards();
    let rs = reed_solomon_erasure::galois_8::ReedSolomon::new(DATA, PARITY).unwrap();
    let mut group: Vec<Vec<u8>> = data.clone();
    group.extend((0..PARITY).map(|_| vec![0u8; data[0].len()]));
    c.bench_function(&format!("{name}/encode"), |b| {
        b.iter(|| rs.encode(black_box(&mut group)).unwrap())
    });
    c.bench_function(&format!("{name}/rebuild 4"), |b| {
        b.iter(|| {
            let mut slots: Vec<(Vec<u8>, bool)> = group
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), !LOST.contains(&i)))
                .collect();
            rs.reconstruct_data(black_box(&mut slots)).unwrap();
        })
    });
}

fn erasure_simd(c: &mut Criterion) {
    erasure(c, "reed-solomon-erasure simd-accel");
}

fn simd(c: &mut Criterion) {
    let data = shards();
    c.bench_function("reed-solomon-simd/encode", |b| {
        b.iter(|| reed_solomon_simd::encode(DATA, PARITY, black_box(&data)).unwrap())
    });
    let parity = reed_solomon_simd::encode(DATA, PARITY, &data).unwrap();
    c.bench_function("reed-solomon-simd/rebuild 4", |b| {
        b.iter(|| {
            let original = data
                .iter()
                .enumerate()
                .filter(|(i, _)| !LOST.contains(i));
            let recovery = parity.iter().enumerate();
            reed_solomon_simd::decode(DATA, PARITY, original, recovery).unwrap()
        })
    });
}

criterion_group!(benches, erasure_simd, simd);
criterion_main!(benches);
