//! The responder side of the Noise handshake fed arbitrary message-1 bytes
//! (what any stranger can send to the tunnel port): never panics, never
//! authenticates.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lmas::crypto::{PresharedKey, Responder, StaticKeypair};
use lmas::protocol::handshake::Prelude;

fn key() -> &'static StaticKeypair {
    static KEY: OnceLock<StaticKeypair> = OnceLock::new();
    KEY.get_or_init(|| StaticKeypair::generate().expect("keygen"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, msg1)) = data.split_first() else {
        return;
    };
    let prelude = Prelude {
        version: 1,
        flags: flags & 0x03,
    };
    let psk = PresharedKey([7; 32]);
    let psk = prelude.psk().then_some(&psk);
    if let Ok(mut r) = Responder::new(key(), psk, &prelude) {
        // Random bytes cannot carry a valid encryption under our static key.
        assert!(r.read_message1(msg1).is_err());
    }
});
