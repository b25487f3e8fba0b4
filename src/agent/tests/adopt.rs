//! Warm restart: what an earlier run left on disk is adopted only as far as it is plausible.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::scripted::Scripted;
use super::{SEC, agent, read, start};
use crate::names::InstanceId;
use crate::sink::file::{FileDefaults, FileSinkConfig};
use crate::token::Token;

const DAY: Duration = Duration::from_secs(86_400);

/// What a run would have left for source `s0`: its token file and a matching record.
fn leave(dir: &Path, token: Token) {
    let config: FileSinkConfig = serde_saphyr::from_str("path: s0.token").unwrap();
    let defaults = FileDefaults {
        dir: dir.to_owned(),
        ..FileDefaults::default()
    };
    let sink = config.file_sink("s0", &defaults);
    sink.write_blocking(&token, &InstanceId::single()).unwrap();
}

fn jwt(exp: SystemTime) -> String {
    let exp = exp
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = format!(r#"{{"exp":{exp}}}"#);
    format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims))
}

#[tokio::test(start_paused = true)]
async fn a_record_with_a_far_future_expiry_is_not_believed() {
    let far = SystemTime::now() + 10_000 * DAY;
    let two_days_ago = SystemTime::now() - 2 * DAY;
    let cases = [
        // Issued two days ago, "valid" for decades: longer than max_interval (24 h) allows.
        ("opaque-old", two_days_ago),
        // A JWT whose own `exp` passed an hour ago, recorded as valid for decades.
        (
            &*jwt(SystemTime::now() - 3600 * SEC),
            SystemTime::now() - 2 * 3600 * SEC,
        ),
        // Issued in the future.
        ("opaque-future", SystemTime::now() + DAY),
    ];
    for (value, issued_at) in cases {
        let dir = tempfile::tempdir().unwrap();
        leave(
            dir.path(),
            Token::new(value.to_owned().into(), "Bearer".into(), issued_at, far),
        );
        let script = Scripted::new([(Duration::ZERO, Ok(600 * SEC))]);
        let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
        let (stop, task) = start(agent);
        tokio::time::sleep(SEC).await;
        assert_eq!(
            script.calls().len(),
            1,
            "{value}: fetched at once, not adopted"
        );
        assert_eq!(read(dir.path(), "s0.token"), "token-1", "{value}");
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_plausible_record_is_adopted_without_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let value = jwt(now + 3600 * SEC);
    leave(
        dir.path(),
        Token::new(value.clone().into(), "Bearer".into(), now, now + 3600 * SEC),
    );
    let script = Scripted::new([(Duration::ZERO, Ok(600 * SEC))]);
    let (agent, _) = agent(dir.path(), std::slice::from_ref(&script));
    let (stop, task) = start(agent);
    tokio::time::sleep(SEC).await;
    assert!(script.calls().is_empty(), "adopted");
    assert_eq!(read(dir.path(), "s0.token"), value);
    stop.send(true).unwrap();
    task.await.unwrap();
}
