//! A mock webMethods API-Portal written from seed 004: external access tokens are created with
//! POST (the answer is the bare token id), renewed with PUT and removed with DELETE on
//! `/abs/apirepository/accesstokens/external[/<id>]`, all with Basic auth of an approver.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Mock, Recorded, Reply};

pub const PATH: &str = "/abs/apirepository/accesstokens/external";

/// A stored entry: the portal user and the properties.
pub type Entry = (String, BTreeMap<String, String>);

#[derive(Clone, Default)]
pub struct Portal {
    /// id → entry
    pub entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    next: Arc<AtomicUsize>,
    /// Answer 500 to everything while set.
    pub broken: Arc<AtomicBool>,
}

impl Portal {
    pub async fn start(&self) -> Mock {
        let me = self.clone();
        Mock::start(move |r| me.handle(r)).await
    }

    pub fn property(&self, id: &str, key: &str) -> Option<String> {
        self.entries.lock().unwrap().get(id)?.1.get(key).cloned()
    }

    fn handle(&self, r: &Recorded) -> Reply {
        if self.broken.load(Ordering::SeqCst) {
            return Reply::text(500, "Internal Server Error");
        }
        if r.basic_raw() != Some(("approver".into(), "appr0ver-pw".into())) {
            return Reply::text(
                401,
                "Unauthorized: the user is not in the API Consumption Approvers group",
            );
        }
        let id = r.path.strip_prefix(PATH).and_then(|rest| match rest {
            "" => Some(String::new()),
            // `…/external/<id>` with one non-empty segment; `…/externalX` is another path.
            _ => rest
                .strip_prefix('/')
                .filter(|id| !id.is_empty() && !id.contains('/'))
                .map(str::to_owned),
        });
        let Some(id) = id else {
            return Reply::text(404, "Not Found");
        };
        match (r.method.as_str(), id.is_empty()) {
            ("POST", true) | ("PUT", false) => {
                if !r
                    .header("content-type")
                    .is_some_and(|c| c.starts_with("application/json"))
                {
                    return Reply::text(415, "Content-Type must be application/json");
                }
                let body = r.json();
                let user = body["user"].as_str().unwrap_or_default().to_owned();
                let Some(list) = body["propertyList"].as_array() else {
                    return Reply::text(400, "propertyList is required");
                };
                // Each entry is exactly `{ "key": string, "value": string }`; anything else is
                // a malformed list, refused whole rather than dropped quietly.
                let mut props = BTreeMap::new();
                for p in list {
                    let well_formed = p.as_object().is_some_and(|o| o.len() == 2);
                    match (well_formed, p["key"].as_str(), p["value"].as_str()) {
                        (true, Some(key), Some(value)) => {
                            props.insert(key.to_owned(), value.to_owned());
                        }
                        _ => return Reply::text(400, &format!("malformed property {p}")),
                    }
                }
                for key in ["applicationName", "Access Token Type"] {
                    if !props.contains_key(key) {
                        return Reply::text(400, &format!("Mandatory property {key} is missing"));
                    }
                }
                if user.is_empty() {
                    return Reply::text(400, "user is required");
                }
                let mut entries = self.entries.lock().unwrap();
                if r.method == "PUT" {
                    if !entries.contains_key(&id) {
                        return Reply::text(404, "Access token not found");
                    }
                    entries.insert(id, (user, props));
                    return Reply::text(200, "");
                }
                let n = self.next.fetch_add(1, Ordering::SeqCst);
                let new_id = format!("672a9c60c-c3se-3115-13c4-5dc6822c{n:04}");
                entries.insert(new_id.clone(), (user, props));
                Reply::text(200, &new_id)
            }
            ("DELETE", false) => match self.entries.lock().unwrap().remove(&id) {
                Some(_) => Reply::text(204, ""),
                None => Reply::text(404, "Access token not found"),
            },
            _ => Reply::text(405, "Method Not Allowed"),
        }
    }
}

pub fn methods(mock: &Mock) -> Vec<(String, String)> {
    mock.requests()
        .iter()
        .map(|r| (r.method.to_string(), r.path.clone()))
        .collect()
}
