//! AES-256-GCM seal+open throughput of the three candidate implementations,
//! on the frame sizes the gateway uses (16 KiB and 64 KiB records).
//!
//! Run: `cargo bench --manifest-path gateway/bench/Cargo.toml --bench aead`. Throughput is reported per
//! seal+open pair of one frame (bytes = frame size), so 1 GiB/s here means
//! the sender and receiver together spend one core-second per GiB.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 2] = [16 * 1024, 64 * 1024];
const KEY: [u8; 32] = [0x42; 32];
const AAD: [u8; 4] = [0, 1, 0, 16];

fn nonce_bytes(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// ring and aws-lc-rs share one API (aws-lc-rs mirrors ring's `aead`
/// module), so one body serves both.
macro_rules! ring_style_seal_open {
    ($name:ident, $krate:ident) => {
        fn $name(buf: &mut Vec<u8>, len: usize, counter: u64) {
            use $krate::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
            thread_local! {
                static KEYS: LessSafeKey = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
            }
            KEYS.with(|key| {
                buf.truncate(len);
                let nonce = || Nonce::assume_unique_for_key(nonce_bytes(counter));
                let tag = key.seal_in_place_separate_tag(nonce(), Aad::from(AAD), buf).unwrap();
                buf.extend_from_slice(tag.as_ref());
                let plain = key.open_in_place(nonce(), Aad::from(AAD), buf).unwrap();
                assert_eq!(plain.len(), len);
            });
        }
    };
}

ring_style_seal_open!(ring_seal_open, ring);
ring_style_seal_open!(aws_lc_seal_open, aws_lc_rs);

fn rustcrypto_seal_open(buf: &mut Vec<u8>, len: usize, counter: u64) {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Nonce};
    thread_local! {
        static KEYS: Aes256Gcm = Aes256Gcm::new_from_slice(&KEY).unwrap();
    }
    KEYS.with(|key| {
        buf.truncate(len);
        let nonce = nonce_bytes(counter);
        let tag = key
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &AAD, buf)
            .unwrap();
        key.decrypt_in_place_detached(Nonce::from_slice(&nonce), &AAD, buf, &tag)
            .unwrap();
    });
}

fn bench(c: &mut Criterion) {
    type SealOpen = fn(&mut Vec<u8>, usize, u64);
    let impls: [(&str, SealOpen); 3] = [
        ("ring", ring_seal_open),
        ("aws-lc-rs", aws_lc_seal_open),
        ("aes-gcm (RustCrypto)", rustcrypto_seal_open),
    ];
    let mut group = c.benchmark_group("aes-256-gcm seal+open");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, f) in impls {
            let mut buf = vec![0xA5u8; size + 16];
            let mut counter = 0u64;
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter(|| {
                    counter += 1;
                    f(&mut buf, size, counter)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
