//! Golden files for the injector: every pod in `tests/inject/cases/` goes through the same
//! AdmissionReview path the webhook serves, and the answer (outcome, patch, patched pod or
//! denial message) must equal `tests/inject/golden/<case>.json`. `UPDATE_GOLDEN=1 cargo test
//! --test inject_golden` rewrites them; review the diff like code.
//!
//! Beyond the golden text, every injected pod is checked for what must hold whatever the golden
//! says: the patch only adds (so every field the pod had survives, newer ones included), it
//! applies, it is idempotent under reinvocation, and the agent container is locked down.
//! `tests/chart/test_chart.py` applies the same patches with another JSON-patch implementation
//! and validates each resulting pod against the official Kubernetes schemas.

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use token_agent::inject::{InjectorDefaults, Outcome, Policy, review};

fn policy() -> Policy {
    Policy {
        defaults: InjectorDefaults {
            image: "registry.example/token-agent:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
        },
        excluded_namespaces: vec!["kube-system".into(), "token-agent".into()],
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 14,
        "cases went missing from {}",
        dir.display()
    );
    cases
}

/// The AdmissionReview the API server would send for `case`.
fn admission_review(case: &Value) -> Value {
    common::admission_review(
        &case["pod"],
        case["namespace"].as_str().unwrap_or("apps"),
        case["operation"].as_str().unwrap_or("CREATE"),
    )
}

fn decode_patch(response: &Value) -> Option<json_patch::Patch> {
    use base64::Engine;
    let patch = response["patch"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// What the golden file records for one case.
fn answer(case: &Value) -> Value {
    let body = serde_json::to_vec(&admission_review(case)).unwrap();
    let verdict = review(&body, &policy()).unwrap();
    let response = &verdict.review["response"];
    assert_eq!(
        response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "the uid is echoed"
    );
    match verdict.outcome {
        Outcome::Injected => {
            assert_eq!(response["patchType"], "JSONPatch");
            let patch = decode_patch(response).unwrap();
            let mut pod = case["pod"].clone();
            json_patch::patch(&mut pod, &patch).unwrap();
            json!({ "outcome": "injected", "patch": patch, "pod": pod })
        }
        Outcome::Skipped(why) => {
            assert_eq!(response["allowed"], true);
            assert!(
                response.get("patch").is_none(),
                "a skipped pod gets no patch"
            );
            json!({ "outcome": "skipped", "why": why })
        }
        Outcome::Denied => {
            assert_eq!(response["allowed"], false);
            assert_eq!(response["status"]["code"], 403);
            assert!(response.get("patch").is_none());
            json!({ "outcome": "denied", "message": response["status"]["message"] })
        }
    }
}

#[test]
fn every_case_answers_as_its_golden_file_says() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatched = Vec::new();
    for path in cases() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let case: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = answer(&case);
        let golden = path
            .parent()
            .unwrap()
            .with_file_name("golden")
            .join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != text {
            mismatched.push(name);
        }
    }
    assert!(
        mismatched.is_empty(),
        "answers differ from tests/inject/golden for {mismatched:?}; if the change is intended, run UPDATE_GOLDEN=1 cargo test --test inject_golden and review the diff"
    );
}

/// Paths of every leaf of `value` (objects and arrays walked).
fn leaves(value: &Value, at: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{at}/{i}"), out);
            }
        }
        _ => out.push((at, value.clone())),
    }
}

#[test]
fn injection_only_adds_so_every_field_the_pod_had_survives() {
    for path in cases() {
        let case: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let got = answer(&case);
        if got["outcome"] != "injected" {
            continue;
        }
        let name = path.display();
        for op in got["patch"].as_array().unwrap() {
            assert_eq!(op["op"], "add", "{name}: {op}");
        }
        // Every leaf of the input is in the output, at its path shifted past an inserted init
        // container (the only insertion that is not an append).
        let mut before = Vec::new();
        leaves(&case["pod"], String::new(), &mut before);
        let patched = &got["pod"];
        let inserted_at = got["patch"].as_array().unwrap().iter().find_map(|op| {
            op["path"]
                .as_str()?
                .strip_prefix("/spec/initContainers/")?
                .parse::<usize>()
                .ok()
        });
        for (pointer, value) in before {
            let shifted = match (inserted_at, pointer.strip_prefix("/spec/initContainers/")) {
                (Some(at), Some(rest)) => {
                    let (index, tail) = rest.split_once('/').unwrap_or((rest, ""));
                    let index: usize = index.parse().unwrap();
                    let index = if index >= at { index + 1 } else { index };
                    format!("/spec/initContainers/{index}/{tail}")
                        .trim_end_matches('/')
                        .to_owned()
                }
                _ => pointer.clone(),
            };
            assert_eq!(
                patched.pointer(&shifted),
                Some(&value),
                "{name}: {pointer} did not survive"
            );
        }
        // A reinvocation (another webhook changed the pod after us) leaves it alone.
        let again = answer(&json!({ "pod": patched, "namespace": case["namespace"] }));
        assert_eq!(again["outcome"], "skipped", "{name}: injected twice");
    }
}

#[test]
fn the_injected_agent_is_locked_down_and_gates_the_app_on_its_first_tokens() {
    for path in cases() {
        let case: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let got = answer(&case);
        if got["outcome"] != "injected" {
            continue;
        }
        let name = path.display();
        let spec = &got["pod"]["spec"];
        let agents: Vec<&Value> = spec["initContainers"]
            .as_array()
            .into_iter()
            .chain(spec["containers"].as_array())
            .flatten()
            .filter(|c| c["name"].as_str().unwrap().starts_with("token-agent"))
            .collect();
        assert!(!agents.is_empty(), "{name}");
        for agent in agents {
            let sc = &agent["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{name}");
            assert!(sc["runAsUser"].as_i64().unwrap() > 0, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            assert!(agent["resources"]["limits"]["memory"].is_string(), "{name}");
            if agent["restartPolicy"] == "Always" {
                let probe = &agent["startupProbe"];
                assert_eq!(probe["httpGet"]["path"], "/readyz", "{name}");
                assert_eq!(probe["periodSeconds"], 1, "{name}");
                assert_eq!(agent["args"][0], "run", "{name}");
            }
        }
        let tokens = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "token-agent-tokens")
            .unwrap();
        assert_eq!(tokens["emptyDir"]["medium"], "Memory", "{name}");
        for c in spec["containers"].as_array().unwrap() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                if m["name"] == "token-agent-tokens"
                    && !c["name"].as_str().unwrap().starts_with("token-agent")
                {
                    assert_eq!(m["readOnly"], true, "{name}: an app can write its tokens");
                }
            }
        }
    }
}

/// A valid opted-in pod, changed by `edit`, then reviewed: the denial message.
fn denial(edit: impl FnOnce(&mut Value)) -> String {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "labels": { "token-agent.io/inject": "true" },
            "annotations": { "token-agent.io/config-map": "agent" },
        },
        "spec": {
            "initContainers": [{ "name": "setup", "image": "busybox" }],
            "containers": [{
                "name": "app",
                "image": "app",
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "emptyDir": {} }],
        },
    });
    edit(&mut pod);
    let got = answer(&json!({ "pod": pod }));
    assert_eq!(got["outcome"], "denied", "{got}");
    got["message"].as_str().unwrap().to_owned()
}

fn annotate(key: &str, value: &str) -> impl FnOnce(&mut Value) {
    let (key, value) = (key.to_owned(), value.to_owned());
    move |pod| pod["metadata"]["annotations"][format!("token-agent.io/{key}")] = json!(value)
}

/// A change to the valid pod [`denial`] starts from.
type Edit<'a> = Box<dyn FnOnce(&mut Value) + 'a>;

const GOOD_CONFIG: &str = "sources:\n  - name: a\n    kind: exec\n    command: [/bin/true]\n    sinks:\n      - file: { path: a.token }\n";

#[test]
fn every_invalid_setting_is_denied_with_a_message_naming_its_annotation() {
    let inline = |config: &str| {
        let config = config.to_owned();
        move |pod: &mut Value| {
            let a = &mut pod["metadata"]["annotations"];
            a.as_object_mut()
                .unwrap()
                .remove("token-agent.io/config-map");
            a["token-agent.io/config"] = json!(config);
        }
    };
    let cases: Vec<(Edit<'_>, &str)> = vec![
        (
            Box::new(annotate("mode", "sidecar")),
            "token-agent.io/mode: `sidecar` is not one of native, classic, init-only",
        ),
        (
            Box::new(annotate("containers", "nosuch")),
            "token-agent.io/containers: the pod has no container `nosuch`",
        ),
        (
            Box::new(annotate("containers", "App_1")),
            "token-agent.io/containers: `App_1` is not a valid name",
        ),
        (
            Box::new(annotate("containers", "setup")),
            "token-agent.io/containers: init container `setup` runs before token-agent",
        ),
        (
            Box::new(annotate("containers", " , ")),
            "token-agent.io/containers: is empty",
        ),
        (
            Box::new(annotate("path", "tokens")),
            "token-agent.io/path: `tokens` must be an absolute path",
        ),
        (
            Box::new(annotate("path", "/a/../b")),
            "token-agent.io/path: `/a/../b` must be an absolute path",
        ),
        (
            Box::new(annotate("path", "/")),
            "token-agent.io/path: `/` must be an absolute path",
        ),
        (
            Box::new(annotate("path", "/data")),
            "token-agent.io/path: container `app` already mounts something at /data",
        ),
        (
            Box::new(annotate("file-user", "0")),
            "token-agent.io/file-user: 0 is root",
        ),
        (
            Box::new(annotate("file-user", "-5")),
            "token-agent.io/file-user: `-5` is not a user or group id",
        ),
        (
            Box::new(annotate("file-group", "staff")),
            "token-agent.io/file-group: `staff` is not a user or group id",
        ),
        (
            Box::new(annotate("cpu-request", "lots")),
            "token-agent.io/cpu-request: `lots` is not a Kubernetes quantity",
        ),
        (
            Box::new(annotate("memory-request", "128Mi")),
            "token-agent.io/memory-request: 128Mi is above the memory limit 64Mi",
        ),
        (
            Box::new(annotate("memory-limit", "1.5.5Gi")),
            "token-agent.io/memory-limit: `1.5.5Gi` is not a Kubernetes quantity",
        ),
        (
            Box::new(annotate("image", "has space")),
            "token-agent.io/image: `has space` is not an image reference",
        ),
        (
            Box::new(annotate("port", "70000")),
            "token-agent.io/port: `70000` is not a port",
        ),
        (
            Box::new(annotate("port", "0")),
            "token-agent.io/port: `0` is not a port",
        ),
        (
            Box::new(annotate("init-first", "yes")),
            "token-agent.io/init-first: `yes` is not true or false",
        ),
        (
            Box::new(annotate("startup-timeout", "forever")),
            "token-agent.io/startup-timeout: `forever` is not a duration between 1s and 24h",
        ),
        (
            Box::new(annotate("startup-timeout", "48h")),
            "token-agent.io/startup-timeout: `48h` is not a duration",
        ),
        (
            Box::new(annotate("secrets", "Orders")),
            "token-agent.io/secrets: `Orders` is not a valid name",
        ),
        (
            Box::new(annotate("config-map", "a,b")),
            "token-agent.io/config-map: names one ConfigMap",
        ),
        (
            Box::new(annotate("config", GOOD_CONFIG)),
            "token-agent.io/config: set either config or config-map, not both",
        ),
        (
            Box::new(annotate("contaners", "app")),
            "token-agent.io/contaners: unknown annotation; known: config, config-map,",
        ),
        (
            Box::new(annotate("status", "pending")),
            "token-agent.io/status: `pending` is not `injected`",
        ),
        (
            Box::new(|pod: &mut Value| {
                pod["metadata"]["annotations"] = json!({});
            }),
            "token-agent.io/config: the pod opted in (label token-agent.io/inject) but names no config",
        ),
        (
            Box::new(inline(&format!(
                "allow_inline_secrets: true\n{GOOD_CONFIG}"
            ))),
            "token-agent.io/config: allow_inline_secrets: anyone who can read the pod",
        ),
        (
            Box::new(inline(&format!(
                "server: {{ enabled: false }}\n{GOOD_CONFIG}"
            ))),
            "token-agent.io/config: server.enabled: the startup probe needs /readyz",
        ),
        (
            Box::new(inline(&format!(
                "server: {{ listen: 127.0.0.1:9090 }}\n{GOOD_CONFIG}"
            ))),
            "token-agent.io/config: server.listen: 127.0.0.1:9090 is loopback",
        ),
        (
            Box::new(inline(&format!(
                "defaults: {{ file: {{ uid: 1000 }} }}\n{GOOD_CONFIG}"
            ))),
            "token-agent.io/config: defaults.file.uid/gid: changing owners needs CAP_CHOWN",
        ),
        (
            Box::new(inline(
                "sources:\n  - name: a\n    kind: exec\n    command: [/bin/true]\n    sinks:\n      - file: { path: a.token, dir: /elsewhere }\n",
            )),
            "token-agent.io/config: sources[0].sinks[0]: writes /elsewhere/a.token outside defaults.file.dir /var/run/tokens",
        ),
        (
            Box::new(inline(&format!("{GOOD_CONFIG}    colour: blue\n"))),
            "token-agent.io/config:7:5: sources[0].colour: unknown field",
        ),
        (
            Box::new(|pod: &mut Value| {
                inline(GOOD_CONFIG)(pod);
                annotate("port", "9102")(pod);
            }),
            "token-agent.io/port: 9102 differs from the config's server.listen port 9090",
        ),
        (
            Box::new(|pod: &mut Value| {
                pod["spec"]["volumes"][0]["name"] = json!("token-agent-tokens")
            }),
            "the pod already has a volume `token-agent-tokens` but was not injected",
        ),
        (
            Box::new(|pod: &mut Value| pod["spec"]["containers"][0]["name"] = json!("token-agent")),
            "the pod already has a container `token-agent` but was not injected",
        ),
        (
            Box::new(|pod: &mut Value| pod["spec"]["containers"] = json!("app")),
            "not a pod: spec.containers must be a list of objects",
        ),
        (
            Box::new(|pod: &mut Value| pod["spec"]["containers"][0]["volumeMounts"] = json!({})),
            "not a pod: spec.containers[].volumeMounts must be a list",
        ),
    ];
    let mut wrong = Vec::new();
    for (edit, want) in cases {
        let got = denial(edit);
        let body = got
            .strip_prefix("token-agent cannot be injected: ")
            .unwrap_or_else(|| panic!("{got}"));
        if !body.starts_with(want) {
            wrong.push(format!("want: {want}\n got: {body}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_problem_of_a_pod_is_named_at_once() {
    let message = denial(|pod| {
        annotate("mode", "sidecar")(pod);
        annotate("cpu-request", "lots")(pod);
        annotate("containers", "nosuch")(pod);
    });
    for part in ["token-agent.io/mode", "token-agent.io/cpu-request"] {
        assert!(message.contains(part), "{message}");
    }
}
