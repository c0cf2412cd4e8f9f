//! Any record plaintext: decoding never panics, and what decodes re-encodes
//! to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmas::protocol::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(bytes::Bytes::copy_from_slice(data)) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, data, "{msg:?}");
    }
});
