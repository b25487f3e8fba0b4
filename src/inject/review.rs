//! The admission decision: an `admission.k8s.io/v1` AdmissionReview in, one out. Pure, no
//! network call and no clock: the webhook answers from what the API server sent, so an outage
//! of anything else never delays a pod.

use base64::Engine;
use serde_json::{Value, json};

use crate::inject::mutate::mutate;
use crate::inject::settings::{InjectorDefaults, Invalid, Request, Settings};

const API_VERSION: &str = "admission.k8s.io/v1";

/// Namespaces the injector never touches whatever their pods ask: the control plane's, and
/// its own (a broken injector must not block its own replacement).
#[derive(Debug, Clone)]
pub struct Policy {
    pub defaults: InjectorDefaults,
    pub excluded_namespaces: Vec<String>,
}

/// What happened to one pod, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    /// Allowed unchanged: not a pod CREATE, not opted in, already injected, excluded namespace.
    Skipped(&'static str),
    Denied,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Denied => "denied",
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Verdict {
    /// The AdmissionReview to send back.
    pub review: Value,
    pub namespace: String,
    pub outcome: Outcome,
    /// Why a pod was denied (already in `review`; for the log).
    pub problems: Vec<Invalid>,
}

/// The body was not an AdmissionReview request the webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("not an {API_VERSION} AdmissionReview request: {0}")]
pub struct BadReview(String);

/// Decides on `body`, an AdmissionReview request.
pub fn review(body: &[u8], policy: &Policy) -> Result<Verdict, BadReview> {
    let review: Value = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
    if review["apiVersion"] != API_VERSION || review["kind"] != "AdmissionReview" {
        return Err(BadReview(
            "apiVersion must be admission.k8s.io/v1 and kind AdmissionReview".into(),
        ));
    }
    let request = &review["request"];
    let Some(uid) = request["uid"].as_str() else {
        return Err(BadReview("request.uid is missing".into()));
    };
    let namespace = request["namespace"].as_str().unwrap_or_default().to_owned();
    let answer = |outcome: Outcome, response: Value, problems: Vec<Invalid>| {
        let mut response = response;
        response["uid"] = json!(uid);
        Verdict {
            review: json!({ "apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response }),
            namespace: namespace.clone(),
            outcome,
            problems,
        }
    };
    let allow =
        |why: &'static str| answer(Outcome::Skipped(why), json!({ "allowed": true }), vec![]);

    let is_pod = request["kind"]["group"] == "" && request["kind"]["kind"] == "Pod";
    if !is_pod || request["operation"] != "CREATE" {
        return Ok(allow("not a pod CREATE"));
    }
    if policy.excluded_namespaces.contains(&namespace) {
        return Ok(allow("excluded namespace"));
    }
    let pod = &request["object"];
    let problems = match Settings::read(pod, &policy.defaults) {
        Request::NotOptedIn => return Ok(allow("not opted in")),
        Request::AlreadyInjected => return Ok(allow("already injected")),
        Request::Invalid(problems) => problems,
        Request::Inject(settings) => match mutate(pod, &settings) {
            Ok(patch) => {
                let patch = serde_json::to_vec(&patch).map_err(|e| BadReview(e.to_string()))?;
                let response = json!({
                    "allowed": true,
                    "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(patch),
                });
                return Ok(answer(Outcome::Injected, response, vec![]));
            }
            Err(problems) => problems,
        },
    };
    let message = format!(
        "token-agent cannot be injected: {}",
        problems
            .iter()
            .map(Invalid::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let response = json!({
        "allowed": false,
        "status": { "code": 403, "reason": "Forbidden", "message": message },
    });
    Ok(answer(Outcome::Denied, response, problems))
}
