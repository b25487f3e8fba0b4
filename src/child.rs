//! Child processes the agent starts (`kind: exec` sources, `exec` notify actions): each runs
//! in a process group of its own, killed whole when the agent gives up on it.

use rustix::process::{Pid, Signal, kill_process_group};

/// The command's process group, killed when this is dropped before the command was reaped
/// (a timeout, or the work cancelled at shutdown): a shell's pipeline or background job dies
/// with it. Disarmed once the command has exited and been reaped, since its group id may then
/// be reused.
pub struct ProcessGroup(Option<Pid>);

impl ProcessGroup {
    pub fn of(child: &tokio::process::Child) -> Self {
        ProcessGroup(child.id().and_then(|id| Pid::from_raw(id.try_into().ok()?)))
    }

    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // Already gone (every member exited) is fine.
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
}

/// `PATH` for a child whose environment is otherwise cleared.
pub fn path_variable() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
}
