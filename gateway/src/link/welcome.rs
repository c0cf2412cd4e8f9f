//! What the welcome to the dialler's hello makes of the tunnel it held: the same tunnel goes on
//! (resumed), or the peer answered with another tunnel id (it restarted, or had given ours up)
//! and a new tunnel replaces the held one, whose sessions the peer no longer knows.

use crate::protocol::TunnelId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WelcomeStep {
    /// The peer resumed the tunnel we held.
    Resume,
    /// A new tunnel; it `replaces` the one we held (its sessions are reset).
    NewTunnel { replaces: bool },
}

/// The step for a welcome naming `welcomed`, when the dialler held `held`.
pub fn welcome_step(held: Option<TunnelId>, welcomed: TunnelId) -> WelcomeStep {
    match held {
        Some(id) if id == welcomed => WelcomeStep::Resume,
        held => WelcomeStep::NewTunnel {
            replaces: held.is_some(),
        },
    }
}

impl WelcomeStep {
    /// The warning both datapaths log when a new tunnel replaces the one held.
    pub fn warning(self, peer: &str) -> Option<String> {
        (self == WelcomeStep::NewTunnel { replaces: true }).then(|| {
            format!(
                "peer {peer} does not know our tunnel any more (restarted?); starting a new one"
            )
        })
    }
}

/// The warning for a hello or welcome whose sender calls itself other than `peer.name`.
pub fn name_mismatch(expected: &str, peer: &str, said: &str) -> Option<String> {
    (said != expected).then(|| format!("peer {peer} calls itself {said:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_tunnel_resumes_and_any_other_id_replaces_it() {
        let (a, b) = (
            TunnelId::new([1; 16]).unwrap(),
            TunnelId::new([2; 16]).unwrap(),
        );
        assert_eq!(welcome_step(Some(a), a), WelcomeStep::Resume);
        let replaced = welcome_step(Some(a), b);
        assert_eq!(replaced, WelcomeStep::NewTunnel { replaces: true });
        assert!(replaced
            .warning("gw-b (192.0.2.1:7700)")
            .unwrap()
            .contains("restarted?"));
        let first = welcome_step(None, b);
        assert_eq!(first, WelcomeStep::NewTunnel { replaces: false });
        assert_eq!(first.warning("gw-b"), None);
    }

    #[test]
    fn a_peer_calling_itself_otherwise_is_named() {
        assert_eq!(name_mismatch("gw-b", "gw-b (x)", "gw-b"), None);
        assert_eq!(
            name_mismatch("gw-b", "gw-b (x)", "gw-c").as_deref(),
            Some("peer gw-b (x) calls itself \"gw-c\"")
        );
    }
}
