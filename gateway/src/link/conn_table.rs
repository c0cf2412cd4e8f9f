//! The tunnel's connection table: which WAN connection serves the control role and each data
//! flow right now, and what follows when one attaches or dies. Both datapaths keep theirs in
//! one of these (the kernel's connection tasks and the DPDK engine's connections are only
//! numbers here); the clock is passed in.
//!
//! The rules (docs/FAILURES.md, "One end only"):
//! - The peer dials a new control connection, or re-attaches data flow k, only after it gave the
//!   old one up (whose RST may have been lost on the way). So a connection that attaches in a
//!   role **replaces** the one there: the driver closes the old one, and a flow's frames go out
//!   again.
//! - Only the connection in place may declare its role lost: the late death of a replaced
//!   connection changes nothing.
//! - A lost control connection holds the tunnel for the grace period (unless it is zero), also
//!   while the gateway drains: the drain's own deadline bounds it. A new control connection
//!   within it resumes the tunnel; when it runs out the tunnel is given up.

use std::time::Duration;

/// A driver's number for one WAN connection (unique over the driver's lifetime).
pub type ConnRef = u64;

/// What a connection is to the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control,
    Flow(usize),
}

/// A control connection attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the replaced connection must be closed, and a resumed tunnel resynced"]
pub struct ControlAttached {
    /// The connection it replaced: close it.
    pub replaced: Option<ConnRef>,
    /// A control connection was attached before: both ends restate their sessions (resync).
    pub resumed: bool,
}

/// A data flow attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the replaced connection must be closed and its frames sent again"]
pub struct FlowAttached {
    /// The connection it replaced: close it; its frames go out again (`TunnelCore::flow_lost`).
    pub replaced: Option<ConnRef>,
    /// Every data flow has now attached at least once, for the first time: the tunnel is up.
    pub first_whole: bool,
}

/// What a connection's death means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a lost control connection holds or ends the tunnel, a lost flow's frames go again"]
pub enum Lost {
    /// It was not in place (replaced, or never attached): nothing changes.
    NotInPlace,
    /// The control connection: the tunnel is held until `hold_until` (the driver's clock), or,
    /// with `None`, given up at once.
    Control { hold_until: Option<u64> },
    /// Data flow k: its frames go out on the others; the dialler re-attaches it.
    Flow(usize),
}

/// The control slot and the data flow slots of one tunnel.
#[derive(Debug, Clone)]
pub struct ConnTable {
    control: Option<ConnRef>,
    flows: Vec<Option<ConnRef>>,
    attached_once: Vec<bool>,
    whole: bool,
    controls_attached: u64,
    /// While held: when the grace period runs out.
    held_until: Option<u64>,
    grace_us: u64,
}

impl ConnTable {
    /// An empty table for `flows` data flows; a lost control connection is held for `grace`.
    pub fn new(flows: usize, grace: Duration) -> ConnTable {
        ConnTable {
            control: None,
            flows: vec![None; flows],
            attached_once: vec![false; flows],
            whole: flows == 0,
            controls_attached: 0,
            held_until: None,
            grace_us: u64::try_from(grace.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// `conn` is now the control connection (it sent hello, or brought the welcome).
    pub fn attach_control(&mut self, conn: ConnRef) -> ControlAttached {
        let replaced = self.control.replace(conn).filter(|&old| old != conn);
        self.controls_attached += 1;
        self.held_until = None;
        ControlAttached {
            replaced,
            resumed: self.controls_attached > 1,
        }
    }

    /// `conn` is now data flow `k`; `None` if the tunnel has no flow `k` (the caller checked the
    /// index against the hello's count, so this is a driver's bug, not the peer's).
    pub fn attach_flow(&mut self, k: usize, conn: ConnRef) -> Option<FlowAttached> {
        let slot = self.flows.get_mut(k)?;
        let replaced = slot.replace(conn).filter(|&old| old != conn);
        self.attached_once[k] = true;
        let first_whole = !self.whole && self.attached_once.iter().all(|&a| a);
        self.whole |= first_whole;
        Some(FlowAttached {
            replaced,
            first_whole,
        })
    }

    /// Connection `conn` died at `now`.
    pub fn lost(&mut self, conn: ConnRef, now: u64) -> Lost {
        match self.role_of(conn) {
            None => Lost::NotInPlace,
            Some(Role::Control) => {
                self.control = None;
                let hold = self.grace_us > 0;
                self.held_until = hold.then(|| now.saturating_add(self.grace_us));
                Lost::Control {
                    hold_until: self.held_until,
                }
            }
            Some(Role::Flow(k)) => {
                self.flows[k] = None;
                Lost::Flow(k)
            }
        }
    }

    /// When the grace period of a held tunnel runs out.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.held_until
    }

    /// Whether the grace period ran out by `now`: then the tunnel is given up (`true` once).
    #[must_use = "a tunnel whose grace period ran out must be given up"]
    pub fn handle_timeout(&mut self, now: u64) -> bool {
        let expired = self.held_until.is_some_and(|until| now >= until);
        if expired {
            self.held_until = None;
        }
        expired
    }

    /// The role `conn` serves, if it is in place.
    pub fn role_of(&self, conn: ConnRef) -> Option<Role> {
        if self.control == Some(conn) {
            return Some(Role::Control);
        }
        self.flows
            .iter()
            .position(|&f| f == Some(conn))
            .map(Role::Flow)
    }

    /// The connection in place for `role`.
    pub fn holder(&self, role: Role) -> Option<ConnRef> {
        match role {
            Role::Control => self.control,
            Role::Flow(k) => self.flow(k),
        }
    }

    pub fn control(&self) -> Option<ConnRef> {
        self.control
    }

    pub fn flow(&self, k: usize) -> Option<ConnRef> {
        self.flows.get(k).copied().flatten()
    }

    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Flows with no connection in place.
    pub fn missing_flows(&self) -> impl Iterator<Item = usize> + '_ {
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_none())
            .map(|(k, _)| k)
    }

    /// Whether a control connection is in place (new sessions may open).
    pub fn is_up(&self) -> bool {
        self.control.is_some()
    }

    /// Whether every data flow has attached at least once.
    pub fn whole(&self) -> bool {
        self.whole
    }

    /// The connections in place, control first, as `lmas status` lists them (`None`: control,
    /// `Some(k)`: data flow k).
    pub fn connections(&self) -> impl Iterator<Item = (Option<u16>, ConnRef)> + '_ {
        let flows = self.flows.iter().enumerate();
        self.control.map(|c| (None, c)).into_iter().chain(
            flows.filter_map(|(k, c)| c.map(|c| (Some(u16::try_from(k).unwrap_or(u16::MAX)), c))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(4);

    #[test]
    fn a_new_control_connection_replaces_the_old_and_resumes() {
        let mut t = ConnTable::new(2, GRACE);
        let first = t.attach_control(1);
        assert_eq!((first.replaced, first.resumed), (None, false));
        let second = t.attach_control(2);
        assert_eq!((second.replaced, second.resumed), (Some(1), true));
        // The old one's late death changes nothing.
        assert_eq!(t.lost(1, 10), Lost::NotInPlace);
        assert_eq!(t.control(), Some(2));
    }

    #[test]
    fn a_lost_control_connection_holds_for_the_grace_period_then_gives_up() {
        let mut t = ConnTable::new(1, GRACE);
        let _ = t.attach_control(1);
        assert_eq!(
            t.lost(1, 1_000),
            Lost::Control {
                hold_until: Some(4_001_000)
            }
        );
        assert!(!t.is_up());
        assert!(!t.handle_timeout(4_000_999));
        assert!(t.handle_timeout(4_001_000));
        assert!(!t.handle_timeout(5_000_000), "given up once");
    }

    #[test]
    fn a_control_connection_within_the_grace_period_ends_the_hold() {
        let mut t = ConnTable::new(1, GRACE);
        let _ = t.attach_control(1);
        let _ = t.lost(1, 0);
        let back = t.attach_control(2);
        assert_eq!((back.replaced, back.resumed), (None, true));
        assert_eq!(t.poll_timeout(), None);
        assert!(!t.handle_timeout(10_000_000));
    }

    #[test]
    fn no_hold_with_no_grace_period() {
        let mut t = ConnTable::new(1, Duration::ZERO);
        let _ = t.attach_control(1);
        assert_eq!(t.lost(1, 0), Lost::Control { hold_until: None });
    }

    #[test]
    fn a_flow_is_whole_once_every_flow_attached_and_replaced_flows_are_not_in_place() {
        let mut t = ConnTable::new(2, GRACE);
        let a = t.attach_flow(0, 10).unwrap();
        assert_eq!((a.replaced, a.first_whole), (None, false));
        let b = t.attach_flow(1, 11).unwrap();
        assert_eq!((b.replaced, b.first_whole), (None, true));
        let c = t.attach_flow(1, 12).unwrap();
        assert_eq!((c.replaced, c.first_whole), (Some(11), false));
        assert_eq!(t.lost(11, 0), Lost::NotInPlace);
        assert_eq!(t.lost(12, 0), Lost::Flow(1));
        assert_eq!(t.missing_flows().collect::<Vec<_>>(), vec![1]);
        assert!(t.attach_flow(2, 13).is_none());
    }

    #[test]
    fn status_lists_control_first_then_flows() {
        let mut t = ConnTable::new(3, GRACE);
        let _ = t.attach_flow(2, 7).unwrap();
        let _ = t.attach_control(5);
        let _ = t.attach_flow(0, 6).unwrap();
        let rows: Vec<_> = t.connections().collect();
        assert_eq!(rows, vec![(None, 5), (Some(0), 6), (Some(2), 7)]);
    }

    /// One step of a tunnel's life as the table sees it.
    #[derive(Debug, Clone)]
    enum Step {
        AttachControl,
        AttachFlow(usize),
        /// The death of the i-th connection ever attached (old ones included: late deaths).
        Lose(usize),
        Wait(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Step::AttachControl),
            (0usize..3).prop_map(Step::AttachFlow),
            (0usize..64).prop_map(Step::Lose),
            (0u64..3_000_000).prop_map(Step::Wait),
        ]
    }

    proptest::proptest! {
        /// Any interleaving of attaches, deaths (of live and long-replaced connections) and time
        /// keeps at most one connection per role, each a live one; a replaced connection's
        /// death never frees a role; the tunnel is given up only after a grace period with no
        /// control connection.
        #[test]
        fn any_interleaving_keeps_one_live_connection_per_role(
            steps in proptest::collection::vec(step(), 0..80),
        ) {
            let mut t = ConnTable::new(3, GRACE);
            let mut now = 0u64;
            let mut next: ConnRef = 1;
            let mut ever: Vec<ConnRef> = Vec::new();
            let mut dead: Vec<ConnRef> = Vec::new();
            let mut closed: Vec<ConnRef> = Vec::new();
            let mut control_lost_at: Option<u64> = None;
            let mut given_up = false;
            for s in steps {
                if given_up {
                    break;
                }
                match s {
                    Step::AttachControl => {
                        let a = t.attach_control(next);
                        closed.extend(a.replaced);
                        ever.push(next);
                        next += 1;
                        control_lost_at = None;
                    }
                    Step::AttachFlow(k) => {
                        let a = t.attach_flow(k, next).expect("k < 3");
                        closed.extend(a.replaced);
                        ever.push(next);
                        next += 1;
                    }
                    Step::Lose(i) => {
                        let Some(&c) = ever.get(i) else { continue };
                        let before = t.role_of(c);
                        let lost = t.lost(c, now);
                        dead.push(c);
                        match (before, lost) {
                            (None, Lost::NotInPlace) => {}
                            (Some(Role::Control), Lost::Control { hold_until }) => {
                                proptest::prop_assert_eq!(hold_until, Some(now + 4_000_000));
                                control_lost_at = Some(now);
                            }
                            (Some(Role::Flow(k)), Lost::Flow(j)) => proptest::prop_assert_eq!(k, j),
                            other => proptest::prop_assert!(false, "{other:?}"),
                        }
                    }
                    Step::Wait(us) => {
                        now += us;
                        if t.handle_timeout(now) {
                            let since = control_lost_at.expect("held");
                            proptest::prop_assert!(now - since >= 4_000_000);
                            given_up = true;
                        }
                    }
                }
                // Every connection in place is alive and was never replaced.
                for (_, c) in t.connections() {
                    proptest::prop_assert!(!dead.contains(&c) && !closed.contains(&c), "{c} in place");
                }
                proptest::prop_assert!(t.connections().filter(|(f, _)| f.is_none()).count() <= 1);
                if let Some(since) = control_lost_at {
                    if !given_up {
                        proptest::prop_assert!(now - since < 4_000_000 || t.poll_timeout().is_some());
                    }
                }
            }
        }
    }
}
