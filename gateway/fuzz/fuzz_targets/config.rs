//! Any config text: validation never panics (errors name a field instead).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lmas::admin::Config::parse(std::path::Path::new("/nonexistent/fuzz.toml"), text);
    }
});
