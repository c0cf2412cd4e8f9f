//! The clear-text handshake prelude and length checks never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmas::protocol::handshake::{check_noise_len, Prelude, PRELUDE_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = <[u8; PRELUDE_LEN]>::try_from(data.get(..PRELUDE_LEN).unwrap_or(&[])) {
        if let Ok(p) = Prelude::decode(&bytes) {
            assert_eq!(p.encode(), bytes);
        }
    }
    if data.len() >= 2 {
        let _ = check_noise_len(u16::from_be_bytes([data[0], data[1]]));
    }
});
