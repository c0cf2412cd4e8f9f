//! Compression figures in `lmas status --json`.

/// The figures of `lmas status --json` in a session's or the tunnel's `compression`.
pub const PACKING_FIGURES: [&str; 6] = [
    "bytes_in",
    "bytes_out",
    "frames_packed",
    "frames_skipped",
    "pack_ns",
    "unpack_ns",
];

/// One figure of such a `compression` object.
pub fn packing_figure(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no figure {k} in {v:#}"))
}

/// Checks that the sessions' figures add up to the tunnel's, and the tunnel's (one tunnel
/// since start) to the gateway's `compression_*` counters. Returns the sessions by target.
pub fn packing_adds_up(
    st: &serde_json::Value,
    who: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let t = &st["tunnel"];
    let sessions = t["sessions"].as_array().expect("sessions");
    for k in PACKING_FIGURES {
        let sum: u64 = sessions
            .iter()
            .map(|s| packing_figure(&s["compression"], k))
            .sum();
        assert_eq!(
            sum,
            packing_figure(&t["compression"], k),
            "{who}: sessions' {k}: {st:#}"
        );
        let counter = st["counters"][format!("compression_{k}")].as_u64();
        assert_eq!(counter, Some(sum), "{who}: the gateway's {k}: {st:#}");
    }
    sessions
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap().to_string(),
                s["compression"].clone(),
            )
        })
        .collect()
}
