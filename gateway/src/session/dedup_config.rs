//! `[wan] dedup`, `dedup_scope` and `dedup_store_bytes`: whether this gateway removes repeats
//! from what it sends (references to chunks the far gateway holds), which earlier chunks a
//! migration may reference, and how large a store it keeps for what the peer sends.

/// `wan.dedup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// Neither sends references nor offers a store: frames cross as they are.
    Off,
    /// Sends references where the peer offers a store, and offers a store of its own.
    Auto,
}

/// `wan.dedup_scope`: which chunks a migration's frames may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupScope {
    /// Only chunks its own migration sent. No migration learns, by timing, what another
    /// migration through the tunnel carried (docs/CRYPTO.md, "Dedup").
    Migration,
    /// Any chunk the tunnel sent: a second migration of a guest, or of a guest cloned from the
    /// same template, crosses as references.
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    pub mode: DedupMode,
    pub scope: DedupScope,
    /// The receiving store's bound (chunk bytes plus per-chunk overhead).
    pub store_bytes: u64,
}

/// Default store: a guest's working set of repeats within one migration, and memory an
/// appliance can spare; raise it (`dedup_store_bytes`) to keep whole guests for repeat
/// migrations.
pub const DEFAULT_STORE_BYTES: u64 = 512 << 20;
/// Below this a store holds too few chunks to find anything.
pub const MIN_STORE_BYTES: u64 = 16 << 20;
/// Far above any appliance's memory: a typo, not a size.
pub const MAX_STORE_BYTES: u64 = 1 << 40;

/// Off by default: fingerprinting every byte costs CPU that a gateway on a small host needs
/// for the transfer itself (docs/DEDUP.md measures it), and what it buys depends on the
/// migrations (repeats across them need `dedup_scope = "tunnel"` as well).
impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            mode: DedupMode::Off,
            scope: DedupScope::Migration,
            store_bytes: DEFAULT_STORE_BYTES,
        }
    }
}

impl DedupConfig {
    /// What this gateway offers the peer in its handshake: the store it keeps (0: none).
    pub fn offered_store(&self) -> u64 {
        match self.mode {
            DedupMode::Off => 0,
            DedupMode::Auto => self.store_bytes,
        }
    }

    /// What the handshake offers the peer: our store, and (tunnel scope) a wish for the
    /// inventory of the peer's store when a tunnel begins, so that what it kept across a
    /// restart (`dedup_dir`) is referenced at once.
    pub fn offer(&self) -> crate::crypto::DedupOffer {
        crate::crypto::DedupOffer {
            store: self.offered_store(),
            inventory: self.offered_store() > 0 && self.scope == DedupScope::Tunnel,
        }
    }
}

impl DedupMode {
    pub fn parse(s: &str) -> Result<DedupMode, String> {
        match s {
            "auto" => Ok(DedupMode::Auto),
            "off" => Ok(DedupMode::Off),
            _ => Err(format!("{s:?}: use \"auto\" or \"off\"")),
        }
    }
}

impl DedupScope {
    pub fn parse(s: &str) -> Result<DedupScope, String> {
        match s {
            "migration" => Ok(DedupScope::Migration),
            "tunnel" => Ok(DedupScope::Tunnel),
            _ => Err(format!("{s:?}: use \"migration\" or \"tunnel\"")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DedupScope::Migration => "migration",
            DedupScope::Tunnel => "tunnel",
        }
    }
}
