//! Compiled only for tests: `#[cfg(test)] mod tests;` in agent/mod.rs declares its parent.
//! A source that replays a script, for scheduler tests under paused time (real HTTP and a
//! paused clock do not mix). The agent runs it as it runs any `Box<dyn Source>`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::http::HttpError;
use crate::source::{FetchError, Now, SingleTokenSource};
use crate::token::Token;

/// One scripted answer: after `delay`, a token living `Ok(lifetime)` or an error (`"panic"`:
/// a panic).
pub type Step = (Duration, Result<Duration, &'static str>);

#[derive(Clone, Default)]
pub struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    /// Wall-clock time of every call.
    pub calls: Arc<Mutex<Vec<SystemTime>>>,
    /// Every success hands out the same token expiring then (an issuer that caches tokens).
    pub same_token_until: Option<SystemTime>,
}

impl Scripted {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Scripted {
            steps: Arc::new(Mutex::new(steps.into_iter().collect())),
            calls: Arc::default(),
            same_token_until: None,
        }
    }

    pub fn calls(&self) -> Vec<SystemTime> {
        self.calls.lock().unwrap().clone()
    }
}

impl SingleTokenSource for Scripted {
    async fn fetch_token(&self, now: &Now) -> Result<Token, FetchError> {
        self.calls.lock().unwrap().push(now());
        let step = self.steps.lock().unwrap().pop_front();
        let (delay, outcome) = step.unwrap_or((Duration::ZERO, Err("script exhausted")));
        tokio::time::sleep(delay).await;
        let n = self.calls.lock().unwrap().len();
        match outcome {
            Ok(lifetime) => {
                let at = now();
                Ok(match self.same_token_until {
                    Some(until) => Token::new("token-same".into(), "Bearer".into(), at, until),
                    None => Token::new(
                        format!("token-{n}").into(),
                        "Bearer".into(),
                        at,
                        at + lifetime,
                    ),
                })
            }
            Err("panic") => panic!("a scripted bug"),
            Err(detail) => Err(HttpError::Status {
                url: "scripted".into(),
                status: 503,
                remote: Some(detail.into()),
                retry_after: None,
            }
            .into()),
        }
    }
}
