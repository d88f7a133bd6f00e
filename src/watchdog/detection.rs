//! Whether a runtime is stalled: the watched runtimes ([`runtimes`]), the
//! heartbeat task each runs ([`heartbeat`]), detection for one runtime
//! ([`detect`]), the stall state machine ([`stall`]), and what a stuck
//! thread did with its time, with pauses of the whole process ([`cause`]).

pub(crate) mod cause;
pub(crate) mod detect;
pub(crate) mod heartbeat;
pub(crate) mod runtimes;
pub(crate) mod stall;
