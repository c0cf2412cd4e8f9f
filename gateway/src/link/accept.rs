//! The accepting gateway's answer to a connection's first message: a hello makes it the
//! control connection of the tunnel it resumes or of a new one; an attach makes it a data flow
//! of the current tunnel. The same decisions on both datapaths; each carries them out.

use crate::protocol::{Message, TunnelId, MAX_DATA_FLOWS};

/// The tunnel the accepting gateway holds (up, or held through an outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub id: TunnelId,
    pub flows: usize,
}

/// What the first message makes of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStep {
    /// The control connection of the current tunnel, which it resumes (sessions kept).
    Resume,
    /// The control connection of a new tunnel, which replaces (and resets) any current one:
    /// the peer restarted, or gave the old tunnel up.
    NewTunnel { id: TunnelId, flows: usize },
    /// Data flow `index` of the current tunnel.
    Attach { index: usize },
}

/// Why a connection is closed after its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FirstRefusal {
    #[error("hello asks for {0} data flows (1 to {MAX_DATA_FLOWS})")]
    FlowCount(u16),
    #[error("no randomness for a tunnel id")]
    NoRandomness,
    #[error("attach names an unknown tunnel")]
    UnknownTunnel,
    #[error("attach for data flow {index}, but the tunnel has {flows}")]
    FlowOutOfRange { index: usize, flows: usize },
    #[error("expected hello or attach, got {0}")]
    Unexpected(&'static str),
}

/// Decides what `first` makes of its connection, given the `current` tunnel; `new_id` draws
/// a new tunnel's id (only called for one).
pub fn first_message(
    current: Option<Current>,
    first: &Message,
    new_id: impl FnOnce() -> Option<TunnelId>,
) -> Result<FirstStep, FirstRefusal> {
    match *first {
        Message::Hello {
            data_flows, resume, ..
        } => {
            if current.is_some_and(|c| Some(c.id) == resume) {
                return Ok(FirstStep::Resume);
            }
            if !(1..=MAX_DATA_FLOWS).contains(&data_flows) {
                return Err(FirstRefusal::FlowCount(data_flows));
            }
            let id = new_id().ok_or(FirstRefusal::NoRandomness)?;
            Ok(FirstStep::NewTunnel {
                id,
                flows: data_flows as usize,
            })
        }
        Message::Attach { tunnel_id, flow } => {
            let c = current
                .filter(|c| c.id == tunnel_id)
                .ok_or(FirstRefusal::UnknownTunnel)?;
            let index = flow as usize;
            if index >= c.flows {
                return Err(FirstRefusal::FlowOutOfRange {
                    index,
                    flows: c.flows,
                });
            }
            Ok(FirstStep::Attach { index })
        }
        ref other => Err(FirstRefusal::Unexpected(other.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> TunnelId {
        TunnelId::new([b; 16]).unwrap()
    }

    fn hello(flows: u16, resume: Option<TunnelId>) -> Message {
        Message::Hello {
            name: "gw-a".into(),
            data_flows: flows,
            resume,
        }
    }

    #[test]
    fn a_hello_resumes_the_tunnel_it_names_and_starts_one_otherwise() {
        let cur = Some(Current {
            id: id(1),
            flows: 4,
        });
        let fresh = || Some(id(9));
        assert_eq!(
            first_message(cur, &hello(8, Some(id(1))), fresh),
            Ok(FirstStep::Resume)
        );
        let new = Ok(FirstStep::NewTunnel {
            id: id(9),
            flows: 8,
        });
        assert_eq!(
            first_message(cur, &hello(8, Some(id(2))), fresh),
            new,
            "an old id"
        );
        assert_eq!(
            first_message(cur, &hello(8, None), fresh),
            new,
            "a restarted peer"
        );
        assert_eq!(
            first_message(None, &hello(8, Some(id(1))), fresh),
            new,
            "we restarted"
        );
        assert_eq!(
            first_message(cur, &hello(0, None), fresh),
            Err(FirstRefusal::FlowCount(0))
        );
        assert_eq!(
            first_message(cur, &hello(MAX_DATA_FLOWS + 1, None), fresh),
            Err(FirstRefusal::FlowCount(MAX_DATA_FLOWS + 1))
        );
        assert_eq!(
            first_message(None, &hello(8, None), || None),
            Err(FirstRefusal::NoRandomness)
        );
    }

    #[test]
    fn an_attach_joins_the_current_tunnel_only() {
        let cur = Some(Current {
            id: id(1),
            flows: 4,
        });
        let attach = |t, flow| Message::Attach { tunnel_id: t, flow };
        let never = || -> Option<TunnelId> { panic!("no new tunnel for an attach") };
        assert_eq!(
            first_message(cur, &attach(id(1), 3), never),
            Ok(FirstStep::Attach { index: 3 })
        );
        assert_eq!(
            first_message(cur, &attach(id(1), 4), never),
            Err(FirstRefusal::FlowOutOfRange { index: 4, flows: 4 })
        );
        assert_eq!(
            first_message(cur, &attach(id(2), 0), never),
            Err(FirstRefusal::UnknownTunnel)
        );
        assert_eq!(
            first_message(None, &attach(id(1), 0), never),
            Err(FirstRefusal::UnknownTunnel)
        );
        assert_eq!(
            first_message(cur, &Message::Ping { id: 1 }, never),
            Err(FirstRefusal::Unexpected("ping"))
        );
    }
}
