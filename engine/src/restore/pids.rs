//! How a restore gets the saved pids back.

/// The way new tasks get their saved pids. `set_tid` is the only one yet;
/// fallbacks for hosts that refuse it (`ns_last_pid`, pid spinning) are
/// added here and picked by [`PidStrategy::choose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PidStrategy {
    /// `clone3` with `set_tid`, one entry per pid namespace level.
    SetTid,
}

impl PidStrategy {
    /// The strategy a restore uses on a host where `clone3` with `set_tid`
    /// works (`set_tid`) or not.
    pub fn choose(set_tid: bool) -> Option<PidStrategy> {
        set_tid.then_some(PidStrategy::SetTid)
    }

    /// Its name as `rcr check` prints it.
    pub fn name(self) -> &'static str {
        match self {
            PidStrategy::SetTid => "set_tid",
        }
    }
}
