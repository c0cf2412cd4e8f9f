//! The dialling gateway's side of the tunnel's lifecycle: when to dial the control connection
//! and each data flow, how long to wait after a failure, and when a new tunnel whose flows do
//! not attach is given up. Both datapaths keep one of these and carry out what it says; it
//! reads no clock and dials nothing itself.
//!
//! The rules:
//! - The control connection is dialled while the tunnel is not up (none yet, or held after its
//!   control connection died) and no dial of it waits for its welcome; after a failed dial it
//!   waits its [`Backoff`], after a lost connection that had worked it dials again at once.
//! - Data flows attach to a tunnel the peer knows: they are dialled only while the control
//!   connection is in place, each missing flow once at a time, after its own backoff.
//! - A new tunnel's flows must all attach within [`FLOWS_ATTACH_TIMEOUT`]; if they do not, the
//!   tunnel is given up (and dialled anew).

use std::time::Duration;

use super::conn_table::{ConnRef, ConnTable, Role};
use super::handshake::HANDSHAKE_TIMEOUT;
use super::Backoff;

/// How long a new tunnel's data flows may take to attach (each dial gets its handshake timeout,
/// and then one retry).
pub const FLOWS_ATTACH_TIMEOUT: Duration = Duration::from_secs(2 * HANDSHAKE_TIMEOUT.as_secs());

#[derive(Debug, Clone, Copy, Default)]
struct FlowDial {
    backoff: Backoff,
    /// A connection dialled for this flow and not attached yet.
    dialling: Option<ConnRef>,
    /// Attached before: the next attach is a re-attach.
    attached_once: bool,
}

/// The dialling gateway's reconnect state (see the module's rules).
#[derive(Debug, Clone)]
pub struct Dialer {
    control: Backoff,
    /// The control connection dialled and waiting for its welcome.
    awaiting_welcome: Option<ConnRef>,
    flows: Vec<FlowDial>,
    /// A new tunnel whose flows have not all attached: given up at this time.
    attach_by: Option<u64>,
}

/// What became of a dialled connection that failed or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a failed dial is logged with its retry delay"]
pub enum DialFailed {
    /// The control connection's dial (before its welcome): dialled again after `retry_in`.
    Control { retry_in: Duration },
    /// Data flow `k`'s dial (before it attached): dialled again after `retry_in`.
    Flow { k: usize, retry_in: Duration },
    /// Not a dial in progress (attached already, or unknown): the connection table decides.
    NotADial,
}

impl Dialer {
    pub fn new(flows: usize) -> Dialer {
        Dialer {
            control: Backoff::default(),
            awaiting_welcome: None,
            flows: vec![FlowDial::default(); flows],
            attach_by: None,
        }
    }

    /// The next connection to dial at `now`, if one is due; `tunnel` is the tunnel's connection
    /// table (`None`: no tunnel). Call until it returns `None`, telling [`Dialer::dialling`]
    /// the connection each dial became (or [`Dialer::not_dialled`] if it could not start).
    #[must_use = "a due dial must be carried out"]
    pub fn poll_dial(&self, now: u64, tunnel: Option<&ConnTable>) -> Option<Role> {
        let up = tunnel.is_some_and(|t| t.is_up());
        if !up {
            let due = self.awaiting_welcome.is_none() && self.control.due(now);
            return due.then_some(Role::Control);
        }
        let table = tunnel?;
        table.missing_flows().find_map(|k| {
            let f = self.flows.get(k)?;
            (f.dialling.is_none() && f.backoff.due(now)).then_some(Role::Flow(k))
        })
    }

    /// The driver started dialling `conn` for `role` (as [`Dialer::poll_dial`] said).
    pub fn dialling(&mut self, role: Role, conn: ConnRef) {
        match role {
            Role::Control => self.awaiting_welcome = Some(conn),
            Role::Flow(k) => {
                if let Some(f) = self.flows.get_mut(k) {
                    f.dialling = Some(conn);
                }
            }
        }
    }

    /// The driver could not even start the dial [`Dialer::poll_dial`] said was due (no socket):
    /// it counts as a failed dial.
    pub fn not_dialled(&mut self, role: Role, now: u64) -> Duration {
        match role {
            Role::Control => self.control.failed(now),
            Role::Flow(k) => self
                .flows
                .get_mut(k)
                .map_or(Duration::ZERO, |f| f.backoff.failed(now)),
        }
    }

    /// The control connection dialled as `conn`, if it still waits for its welcome.
    pub fn awaiting_welcome(&self) -> Option<ConnRef> {
        self.awaiting_welcome
    }

    /// The welcome came at `now`. `new_tunnel`: the peer set up a new tunnel (not the one we
    /// held), whose flows must attach within [`FLOWS_ATTACH_TIMEOUT`].
    pub fn welcomed(&mut self, now: u64, new_tunnel: bool) {
        self.awaiting_welcome = None;
        self.control.succeeded();
        if new_tunnel {
            self.flows.fill(FlowDial::default());
            let by = now.saturating_add(FLOWS_ATTACH_TIMEOUT.as_micros() as u64);
            self.attach_by = Some(by);
        }
    }

    /// Data flow `k`'s dial is keyed and its attach sent: it is in place. True if it had been
    /// attached before (a re-attach, worth a line).
    pub fn flow_attached(&mut self, k: usize) -> bool {
        let Some(f) = self.flows.get_mut(k) else {
            return false;
        };
        f.dialling = None;
        f.backoff.succeeded();
        std::mem::replace(&mut f.attached_once, true)
    }

    /// Dialled connection `conn` failed at `now` before it was in place (before the welcome,
    /// or before its attach went out).
    pub fn failed(&mut self, conn: ConnRef, now: u64) -> DialFailed {
        if self.awaiting_welcome == Some(conn) {
            self.awaiting_welcome = None;
            let retry_in = self.control.failed(now);
            return DialFailed::Control { retry_in };
        }
        for (k, f) in self.flows.iter_mut().enumerate() {
            if f.dialling == Some(conn) {
                f.dialling = None;
                let retry_in = f.backoff.failed(now);
                return DialFailed::Flow { k, retry_in };
            }
        }
        DialFailed::NotADial
    }

    /// The tunnel's control connection, in place, was lost at `now` (the tunnel is held):
    /// dial it again at once.
    pub fn control_lost(&mut self, now: u64) {
        self.control.due_now(now);
    }

    /// Data flow `k`, in place, was lost at `now`: dial it again after its backoff.
    pub fn flow_lost(&mut self, k: usize, now: u64) {
        if let Some(f) = self.flows.get_mut(k) {
            f.backoff.failed(now);
        }
    }

    /// The tunnel was given up: the flow dials still under way are for nothing. Returns them,
    /// for the driver to close. (The attach deadline is left alone: it only counts while there
    /// is a tunnel, and the next welcome sets it anew, whichever the driver tells first.)
    pub fn tunnel_gone(&mut self) -> Vec<ConnRef> {
        self.flows
            .iter_mut()
            .filter_map(|f| f.dialling.take())
            .collect()
    }

    /// When the dialer next has something to do: a backoff ending, or the attach deadline.
    pub fn poll_timeout(&self, tunnel: Option<&ConnTable>) -> Option<u64> {
        let up = tunnel.is_some_and(|t| t.is_up());
        let control = (!up && self.awaiting_welcome.is_none()).then(|| self.control.not_before());
        let flows = tunnel.filter(|_| up).into_iter().flat_map(|t| {
            t.missing_flows().filter_map(|k| {
                let f = self.flows.get(k)?;
                f.dialling.is_none().then(|| f.backoff.not_before())
            })
        });
        let attach = self
            .attach_by
            .filter(|_| tunnel.is_some_and(|t| !t.whole()));
        control.into_iter().chain(flows).chain(attach).min()
    }

    /// Whether the new tunnel's flows failed to attach in time (`true` once): then the driver
    /// gives the tunnel up, with [`FLOWS_ATTACH_TIMEOUT`] in its line.
    #[must_use = "a tunnel whose flows did not attach must be given up"]
    pub fn handle_timeout(&mut self, now: u64, tunnel: Option<&ConnTable>) -> bool {
        if tunnel.is_some_and(|t| t.whole()) {
            self.attach_by = None;
        }
        let late = self.attach_by.is_some_and(|by| now >= by);
        if late {
            self.attach_by = None;
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GRACE: Duration = Duration::from_secs(4);
    const SEC: u64 = 1_000_000;

    /// A dialer welcomed at 0 to a new tunnel of `flows` flows, control connection 1 in place.
    fn welcomed(flows: usize) -> (Dialer, ConnTable) {
        let mut d = Dialer::new(flows);
        d.dialling(Role::Control, 1);
        d.welcomed(0, true);
        let mut t = ConnTable::new(flows, GRACE);
        let _ = t.attach_control(1);
        (d, t)
    }

    #[test]
    fn dials_control_first_then_every_flow_once_it_is_welcomed() {
        let mut d = Dialer::new(2);
        assert_eq!(d.poll_dial(0, None), Some(Role::Control));
        d.dialling(Role::Control, 1);
        assert_eq!(d.poll_dial(0, None), None, "one control dial at a time");
        d.welcomed(5, true);
        let mut t = ConnTable::new(2, GRACE);
        let _ = t.attach_control(1);
        assert_eq!(d.poll_dial(5, Some(&t)), Some(Role::Flow(0)));
        d.dialling(Role::Flow(0), 2);
        assert_eq!(d.poll_dial(5, Some(&t)), Some(Role::Flow(1)));
        d.dialling(Role::Flow(1), 3);
        assert_eq!(d.poll_dial(5, Some(&t)), None);
        assert!(!d.flow_attached(0));
        let _ = t.attach_flow(0, 2);
        assert!(!d.flow_attached(1));
        let _ = t.attach_flow(1, 3);
        assert_eq!(d.poll_dial(6, Some(&t)), None);
        assert_eq!(d.poll_timeout(Some(&t)), None, "nothing left to do");
        assert!(!d.handle_timeout(100 * SEC, Some(&t)));
    }

    #[test]
    fn a_failed_control_dial_backs_off_and_a_lost_one_redials_at_once() {
        let mut d = Dialer::new(1);
        d.dialling(Role::Control, 1);
        assert_eq!(
            d.failed(1, 0),
            DialFailed::Control {
                retry_in: Duration::from_millis(100)
            }
        );
        assert_eq!(d.poll_dial(99_999, None), None);
        assert_eq!(d.poll_timeout(None), Some(100_000));
        assert_eq!(d.poll_dial(100_000, None), Some(Role::Control));
        d.dialling(Role::Control, 2);
        d.welcomed(200_000, true);
        let mut t = ConnTable::new(1, GRACE);
        let _ = t.attach_control(2);
        let _ = t.lost(2, 300_000);
        d.control_lost(300_000);
        assert_eq!(d.poll_dial(300_000, Some(&t)), Some(Role::Control));
    }

    #[test]
    fn flows_are_not_dialled_while_the_tunnel_is_held() {
        let (mut d, mut t) = welcomed(1);
        let _ = t.lost(1, 0);
        d.control_lost(0);
        assert_eq!(d.poll_dial(0, Some(&t)), Some(Role::Control));
        d.dialling(Role::Control, 2);
        assert_eq!(d.poll_dial(0, Some(&t)), None, "flow waits for the welcome");
    }

    #[test]
    fn a_re_attach_is_told_apart_and_a_lost_flow_waits_its_backoff() {
        let (mut d, mut t) = welcomed(1);
        d.dialling(Role::Flow(0), 2);
        assert!(!d.flow_attached(0));
        let _ = t.attach_flow(0, 2);
        let _ = t.lost(2, SEC);
        d.flow_lost(0, SEC);
        assert_eq!(d.poll_dial(SEC, Some(&t)), None);
        assert_eq!(d.poll_dial(SEC + 100_000, Some(&t)), Some(Role::Flow(0)));
        d.dialling(Role::Flow(0), 3);
        assert!(d.flow_attached(0), "a re-attach");
    }

    #[test]
    fn a_new_tunnel_whose_flows_do_not_attach_is_given_up_once() {
        let mut d = Dialer::new(2);
        d.dialling(Role::Control, 1);
        d.welcomed(SEC, true);
        let mut t = ConnTable::new(2, GRACE);
        let _ = t.attach_control(1);
        d.dialling(Role::Flow(0), 2);
        d.dialling(Role::Flow(1), 3);
        let _ = d.flow_attached(0);
        let _ = t.attach_flow(0, 2);
        let by = SEC + FLOWS_ATTACH_TIMEOUT.as_micros() as u64;
        assert_eq!(d.poll_timeout(Some(&t)), Some(by));
        assert!(!d.handle_timeout(by - 1, Some(&t)));
        assert!(d.handle_timeout(by, Some(&t)));
        assert!(!d.handle_timeout(by + 1, Some(&t)), "once");
        assert_eq!(d.tunnel_gone(), vec![3], "flow 1's dial is closed");
    }

    #[test]
    fn the_attach_deadline_holds_whether_the_old_tunnel_goes_before_or_after_the_welcome() {
        for gone_first in [true, false] {
            let mut d = Dialer::new(1);
            d.dialling(Role::Control, 1);
            if gone_first {
                let _ = d.tunnel_gone();
            }
            d.welcomed(0, true);
            if !gone_first {
                let _ = d.tunnel_gone();
            }
            let mut t = ConnTable::new(1, GRACE);
            let _ = t.attach_control(1);
            let by = FLOWS_ATTACH_TIMEOUT.as_micros() as u64;
            assert_eq!(d.poll_timeout(Some(&t)), Some(0), "flow 0 is due now");
            assert!(d.handle_timeout(by, Some(&t)), "gone first: {gone_first}");
        }
    }

    #[test]
    fn a_resumed_tunnel_keeps_its_flows_and_has_no_attach_deadline() {
        let (mut d, mut t) = welcomed(1);
        d.dialling(Role::Flow(0), 2);
        let _ = d.flow_attached(0);
        let _ = t.attach_flow(0, 2);
        assert!(
            !d.handle_timeout(1, Some(&t)),
            "whole: the deadline is gone"
        );
        let _ = t.lost(1, 2);
        d.control_lost(2);
        d.dialling(Role::Control, 3);
        d.welcomed(3, false);
        let _ = t.attach_control(3);
        assert_eq!(d.poll_timeout(Some(&t)), None);
        assert!(!d.handle_timeout(u64::MAX, Some(&t)));
    }

    /// What the driver does with the dialer.
    #[derive(Debug, Clone)]
    enum Step {
        /// Dial whatever is due.
        Dial,
        /// The n-th dial in progress fails.
        Fail(usize),
        /// The n-th dial in progress succeeds (welcome, or attach sent).
        Succeed(usize),
        /// The connection in place of role n (0: control, k+1: flow k) dies.
        Lose(usize),
        /// Time passes.
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Dial),
            2 => (0usize..4).prop_map(Step::Fail),
            3 => (0usize..4).prop_map(Step::Succeed),
            1 => (0usize..4).prop_map(Step::Lose),
            2 => (1u64..3_000_000).prop_map(Step::Wait),
        ]
    }

    /// Dial `conn` for `role` succeeded: the welcome came (a tunnel the first time), or the
    /// flow's attach went out.
    fn succeed(d: &mut Dialer, table: &mut Option<ConnTable>, now: u64, conn: ConnRef, role: Role) {
        match role {
            Role::Control => {
                let flows = d.flows.len();
                let t = table.get_or_insert_with(|| ConnTable::new(flows, GRACE));
                d.welcomed(now, false);
                let _ = t.attach_control(conn);
            }
            Role::Flow(k) => {
                let t = table.as_mut().expect("flows dial only with a tunnel");
                let _ = d.flow_attached(k);
                let _ = t.attach_flow(k, conn);
            }
        }
    }

    proptest! {
        /// Under any sequence of dial failures, successes, losses and waits: at most one dial
        /// per role at a time, never a dial for a role that is in place, never a flow dial
        /// without a control connection, and once everything succeeds the tunnel is whole.
        #[test]
        fn one_dial_per_role_and_the_tunnel_is_always_repaired(
            steps in proptest::collection::vec(step(), 0..80)
        ) {
            let flows = 3;
            let mut d = Dialer::new(flows);
            let mut table: Option<ConnTable> = None;
            let mut dials: Vec<(ConnRef, Role)> = Vec::new();
            let (mut now, mut next) = (0u64, 1u64);
            for s in steps {
                match s {
                    Step::Dial => {
                        while let Some(role) = d.poll_dial(now, table.as_ref()) {
                            prop_assert!(!dials.iter().any(|&(_, r)| r == role), "{role:?} twice");
                            if let Some(t) = &table {
                                prop_assert!(t.holder(role).is_none(), "{role:?} in place");
                                if matches!(role, Role::Flow(_)) {
                                    prop_assert!(t.is_up());
                                }
                            }
                            d.dialling(role, next);
                            dials.push((next, role));
                            next += 1;
                        }
                    }
                    Step::Fail(n) if n < dials.len() => {
                        let (conn, role) = dials.remove(n);
                        let failed = d.failed(conn, now);
                        prop_assert_ne!(failed, DialFailed::NotADial, "{:?}", role);
                    }
                    Step::Succeed(n) if n < dials.len() => {
                        let (conn, role) = dials.remove(n);
                        succeed(&mut d, &mut table, now, conn, role);
                    }
                    Step::Lose(n) => {
                        let Some(t) = table.as_mut() else { continue };
                        let role = if n == 0 { Role::Control } else { Role::Flow(n - 1) };
                        let Some(conn) = t.holder(role) else { continue };
                        let _ = t.lost(conn, now);
                        match role {
                            Role::Control => d.control_lost(now),
                            Role::Flow(k) => d.flow_lost(k, now),
                        }
                    }
                    Step::Fail(_) | Step::Succeed(_) => {}
                    Step::Wait(us) => now += us,
                }
            }
            // Repair: every dial that is due succeeds, however long backoffs take.
            for _ in 0..(2 * (flows + 1) + 2) {
                for (conn, role) in std::mem::take(&mut dials) {
                    succeed(&mut d, &mut table, now, conn, role);
                }
                now += 10 * SEC;
                while let Some(role) = d.poll_dial(now, table.as_ref()) {
                    d.dialling(role, next);
                    dials.push((next, role));
                    next += 1;
                }
            }
            let t = table.expect("a tunnel");
            prop_assert!(t.is_up());
            prop_assert_eq!(t.missing_flows().count(), 0);
        }
    }
}
