//! A packed data frame (`0x21`) from a peer that lies: the record layer's unpack path
//! (`Opening::open`: authenticate, decode the packed header, unpack lz4/zstd/zero runs within
//! the frame's claim) never panics, and what it yields is exactly the claimed length, never
//! more than `MAX_UNPACKED_LEN`.
//!
//! The bytes are sealed under a fixed key first, so they reach the unpacker as a real peer's
//! records would. Input `mode | rest`:
//! - mode even: `rest` is the record's plaintext as it is (first byte forced to `0x21`);
//! - mode odd (structure-aware, so that the fuzzer starts from valid frames without a stored
//!   corpus): `codec | repeat | edits | edits × (pos u16, xor u8) | data`. `data` repeated
//!   `repeat + 1` times (capped) is packed by the real `Packer` (zero run, lz4 or zstd), the
//!   edits flip bytes of the packed frame (header included: claims, codec, lengths; the type
//!   byte stays `0x21`), and the result is opened. Without edits it must open to exactly the frame that was packed.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use lmas::crypto::{Opening, RecordSealer, RECORD_HEADER_LEN};
use lmas::protocol::packed::{CodecSet, MAX_UNPACKED_LEN, PACKED_DATA};
use lmas::protocol::{DataFrame, Message, SessionId};
use lmas::transform::{Choice, PackOutcome, Packer};

const KEY: [u8; 32] = [0x21; 32];
/// Largest plain frame the structure-aware mode packs (a gateway cuts at most 128 KiB).
const MAX_FRAME: usize = 128 * 1024;

/// Seals `plaintext` as one record under [`KEY`] and opens it as a gateway would.
fn check(plaintext: &[u8]) -> Option<DataFrame> {
    let mut buf = vec![0u8; RECORD_HEADER_LEN];
    buf.extend_from_slice(plaintext);
    // Too long for one record: a sender cannot produce it, nothing to open.
    RecordSealer::new(&KEY).seal(&mut buf, 0).ok()?;
    let header: [u8; RECORD_HEADER_LEN] = buf[..RECORD_HEADER_LEN].try_into().expect("4 bytes");
    let body = BytesMut::from(&buf[RECORD_HEADER_LEN..]);
    match Opening::new(&KEY).open(header, body).map(|o| o.msg) {
        Ok(Some(Message::Data(f))) => {
            // Only a packed record gets here: the plaintext starts with 0x21.
            let claim = u32::from_be_bytes(plaintext[18..22].try_into().expect("4 bytes"));
            assert!(
                f.payload.len() <= MAX_UNPACKED_LEN,
                "unpacked {} bytes",
                f.payload.len()
            );
            assert_eq!(
                f.payload.len(),
                claim as usize,
                "unpacked length is not the claim"
            );
            assert_eq!(
                f.session.0,
                u64::from_be_bytes(plaintext[1..9].try_into().unwrap())
            );
            assert_eq!(
                f.offset,
                u64::from_be_bytes(plaintext[9..17].try_into().unwrap())
            );
            Some(f)
        }
        Ok(other) => panic!("a 0x21 record opened as {other:?}"),
        Err(_) => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let mut plaintext = rest.to_vec();
        match plaintext.first_mut() {
            Some(b) => *b = PACKED_DATA,
            None => return,
        }
        check(&plaintext);
        return;
    }
    let [codec, repeat, edits, rest @ ..] = rest else {
        return;
    };
    let edits_len = (*edits as usize % 8) * 3;
    let Some((edits, payload)) = rest.split_at_checked(edits_len) else {
        return;
    };
    if payload.is_empty() {
        return;
    }
    let len = (payload.len() * (*repeat as usize + 1)).min(MAX_FRAME);
    let plain: Vec<u8> = if codec % 4 == 0 {
        vec![0; len]
    } else {
        payload.iter().cycle().take(len).copied().collect()
    };
    let choice = match codec % 4 {
        1 => Choice::Lz4,
        c => Choice::Zstd(i32::from(codec / 4 % 6) - 2 + i32::from(c == 3)),
    };
    let frame = DataFrame {
        session: SessionId(u64::from(*repeat) << 32 | 7),
        offset: u64::from(*codec) << 20,
        flags: 0,
        payload: Bytes::from(plain),
    };
    let mut packed = Vec::new();
    let PackOutcome::Packed { .. } =
        Packer::default().pack(&frame, choice, CodecSet::SUPPORTED, &mut packed)
    else {
        return;
    };
    for e in edits.chunks_exact(3) {
        let pos = usize::from(u16::from_be_bytes([e[0], e[1]])) % packed.len();
        packed[pos] ^= e[2];
    }
    // Still a packed record (a flipped type byte is the message target's input).
    packed[0] = PACKED_DATA;
    let opened = check(&packed);
    if edits.is_empty() {
        assert_eq!(
            opened.as_ref(),
            Some(&frame),
            "a packed frame does not round-trip"
        );
    }
});
