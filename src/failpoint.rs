//! Failpoints: named places where a fault test makes the process crash,
//! wait or hold a window open, as TiKV's `fail` crate does them.
//!
//! They exist only in a build with the `failpoints` feature (`scripts/test`
//! builds so); in any other build [`failpoint!`](crate::failpoint!) expands
//! to `None` and the names are not in the binary (`scripts/check-failpoints`
//! looks). A test arms one through the environment of the process it
//! starts: `FAILPOINTS="capture-flush-crash=return(4000)"`.
//!
//! | name | where | `return(ARG)` does |
//! |---|---|---|
//! | `capture-before-snapshot` | capture, after the gate read the journal, before the slot's snapshot | waits ARG ms |
//! | `capture-flush-crash` | capture, a consent flight before its queries | waits ARG ms, then aborts |
//! | `capture-flight-lands-late` | capture, a consent flight after its queries | waits ARG ms |
//! | `capture-producer-fatal` | capture, producing a message | the producer's fatal error (librdkafka's test hook) at the ARG-th message, once per process |
//! | `prostore-crash-before-commit` | ProStore feed, a delta's messages written | aborts after ARG messages, before the commit |
//! | `rdm-crash-after-send` | RDM client, a file accepted | aborts |
//! | `projector-crash-before-offsets` | projector, a batch's writers committed, its offsets not | aborts at the ARG-th such batch |

/// Evaluates failpoint `$name`: `Some(ARG)` when a test armed it with
/// `return(ARG)` (`Some("")` for a bare `return`), else `None`. Its other
/// actions (`sleep`, `panic`, `pause`) are the `fail` crate's.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        ::fail::eval($name, |arg| arg.unwrap_or_default())
    };
}

/// Without the `failpoints` feature: never armed, and the name is not
/// compiled in.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        ::core::option::Option::<::std::string::String>::None
    };
}

/// Arms the failpoints named in `FAILPOINTS`; keep the guard for the
/// process's life. Without the feature it does nothing.
pub fn setup() -> Guard {
    #[cfg(feature = "failpoints")]
    {
        Guard(Some(fail::FailScenario::setup()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Guard(None)
    }
}

/// Keeps the armed failpoints armed.
pub struct Guard(#[allow(dead_code)] Option<Scenario>);

#[cfg(feature = "failpoints")]
type Scenario = fail::FailScenario<'static>;
#[cfg(not(feature = "failpoints"))]
type Scenario = ();

/// An armed failpoint's argument as milliseconds (0 when absent or not a
/// number).
pub fn millis(arg: &str) -> std::time::Duration {
    std::time::Duration::from_millis(arg.parse().unwrap_or(0))
}

/// The process dies here, as a SIGKILL would leave it: no destructor runs,
/// nothing is flushed. (Takes no name: the code around an unarmed
/// failpoint stays in a debug build, and the names must not.)
pub fn crash() -> ! {
    tracing::error!("failpoint: crashing");
    std::process::abort()
}
