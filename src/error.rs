//! What every error of the agent shares: a closed set of reasons for metric labels, and the
//! cause chain that log lines show.

/// The metric label of a failure: a small closed set, never free text (controller-rs'
/// `metric_label`). Sinks and sources report failures through it, so a new error kind needs
/// no new match arm anywhere else.
pub trait Reason {
    fn reason(&self) -> &'static str;
}

/// `outer: inner: innermost`, skipping repeated messages.
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}
