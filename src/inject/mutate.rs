//! The injection itself, a pure function: the pod's JSON and its [`Settings`] in, a JSON patch
//! out. It edits a copy of the JSON the API server sent and diffs the two, so every field it
//! does not touch — including ones newer than this code — is left exactly as it was (an old
//! AWS webhook that round-tripped pods through typed structs dropped `restartPolicy: Always`
//! from init containers, kops#16802).

use serde_json::{Map, Value, json};

use crate::inject::settings::{
    CONFIG_DIR, CONFIG_FILE, ConfigSource, INJECTED, Invalid, Mode, PREFIX, SECRETS_DIR,
    STATUS_ANNOTATION, Settings,
};

/// The agent container (native or classic sidecar).
pub const AGENT: &str = "token-agent";
/// The `once` init container (classic, init-only).
pub const AGENT_INIT: &str = "token-agent-init";
/// Volumes the injector adds; a pod that already has one of these names is refused.
pub const TOKENS_VOLUME: &str = "token-agent-tokens";
pub const CONFIG_VOLUME: &str = "token-agent-config";
pub const STATE_VOLUME: &str = "token-agent-state";
const SECRET_VOLUME_PREFIX: &str = "token-agent-secret-";
/// Where the ServiceAccount admission plugin mounts the API token. It ran before this webhook,
/// so the injected containers did not get the mount: it is copied from an app container.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The pod with the agent added, as a JSON patch against `pod` made of `add` operations only:
/// nothing the pod had is removed or replaced.
///
/// Everything but the agent's init container is an edit of a copy, diffed. The init container
/// is one explicit `add` at its index: a positional diff of an array with an element inserted
/// in the middle would rewrite every later element into its neighbour.
pub fn mutate(pod: &Value, settings: &Settings) -> Result<json_patch::Patch, Vec<Invalid>> {
    let mut out = pod.clone();
    let (index, init) = inject(&mut out, settings)?;
    let mut patch = json_patch::diff(pod, &out);
    let op = if pod["spec"]["initContainers"].is_array() {
        json!({ "op": "add", "path": format!("/spec/initContainers/{index}"), "value": init })
    } else {
        json!({ "op": "add", "path": "/spec/initContainers", "value": [init] })
    };
    patch.0.extend(
        serde_json::from_value::<json_patch::Patch>(json!([op]))
            .map_err(|e| vec![Invalid::pod(format!("cannot build the patch: {e}"))])?
            .0,
    );
    Ok(patch)
}

/// Edits `pod` in place, except for the agent's init container: that is returned, with the
/// index it goes to.
fn inject(pod: &mut Value, s: &Settings) -> Result<(usize, Value), Vec<Invalid>> {
    check_shape(pod)?;
    let spec = pod["spec"].as_object().cloned().unwrap_or_default();
    let inits = list(&spec, "initContainers");
    let apps = list(&spec, "containers");
    let agent_at = if s.init_first { 0 } else { inits.len() };
    let selected = select(s, &inits, &apps, agent_at)?;
    check_volumes(&spec, s)?;

    let token_mount = json!({ "name": TOKENS_VOLUME, "mountPath": s.path, "readOnly": true });
    let mut problems = Vec::new();
    let mut mount_into = |container: &mut Value| {
        let name = name_of(container);
        let mounts = container["volumeMounts"].as_array().map(Vec::as_slice);
        if mounts
            .unwrap_or_default()
            .iter()
            .any(|m| m["mountPath"].as_str() == Some(&s.path))
        {
            problems.push(Invalid::new(
                "path",
                format!(
                    "container `{name}` already mounts something at {}; choose another token-agent.io/path",
                    s.path
                ),
            ));
        }
        append(container, "volumeMounts", [token_mount.clone()]);
    };
    let mut new_inits = inits.clone();
    for (i, c) in new_inits.iter_mut().enumerate() {
        if i >= agent_at && selected.contains(&name_of(c)) {
            mount_into(c);
        }
    }
    let mut new_apps = apps.clone();
    for c in new_apps.iter_mut() {
        if selected.contains(&name_of(c)) {
            mount_into(c);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let account = service_account_mount(&inits, &apps);
    let agent = |name: &str, command: &str| agent_container(s, name, command, account.as_ref());
    let init = match s.mode {
        Mode::Native => {
            let mut sidecar = agent(AGENT, "run");
            sidecar["restartPolicy"] = json!("Always");
            sidecar["startupProbe"] = probe(s, "/readyz", 1, s.startup_timeout.as_secs());
            sidecar["readinessProbe"] = probe(s, "/readyz", 10, 1);
            sidecar["livenessProbe"] = probe(s, "/healthz", 10, 3);
            sidecar
        }
        Mode::Classic => {
            let mut sidecar = agent(AGENT, "run");
            sidecar["readinessProbe"] = probe(s, "/readyz", 10, 1);
            sidecar["livenessProbe"] = probe(s, "/healthz", 10, 3);
            new_apps.push(sidecar);
            agent(AGENT_INIT, "once")
        }
        Mode::InitOnly => agent(AGENT_INIT, "once"),
    };

    let spec = &mut pod["spec"];
    if !inits.is_empty() {
        spec["initContainers"] = Value::Array(new_inits);
    }
    spec["containers"] = Value::Array(new_apps);
    append(spec, "volumes", volumes(s));
    let annotations = &mut pod["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[STATUS_ANNOTATION] = json!(INJECTED);
    Ok((agent_at, init))
}

/// The names of the containers that get the token mount, checked against the pod.
fn select(
    s: &Settings,
    inits: &[Value],
    apps: &[Value],
    agent_at: usize,
) -> Result<Vec<String>, Vec<Invalid>> {
    let Some(wanted) = &s.containers else {
        let later_inits = inits[agent_at..].iter().map(name_of);
        return Ok(later_inits.chain(apps.iter().map(name_of)).collect());
    };
    let mut problems = Vec::new();
    for name in wanted {
        if let Some(i) = inits.iter().position(|c| &name_of(c) == name) {
            if i < agent_at {
                problems.push(Invalid::new(
                    "containers",
                    format!(
                        "init container `{name}` runs before token-agent and would find no tokens; set token-agent.io/init-first: \"true\" or leave it out"
                    ),
                ));
            }
        } else if !apps.iter().any(|c| &name_of(c) == name) {
            problems.push(Invalid::new(
                "containers",
                format!("the pod has no container `{name}`"),
            ));
        }
    }
    if problems.is_empty() {
        Ok(wanted.clone())
    } else {
        Err(problems)
    }
}

/// Refuses a pod that already uses one of the names the injector adds.
fn check_volumes(spec: &Map<String, Value>, s: &Settings) -> Result<(), Vec<Invalid>> {
    let ours: Vec<String> = volumes(s)
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let containers = list(spec, "initContainers")
        .into_iter()
        .chain(list(spec, "containers"));
    let mut problems: Vec<Invalid> = list(spec, "volumes")
        .iter()
        .map(name_of)
        .filter(|n| ours.contains(n))
        .map(|n| {
            Invalid::pod(format!(
                "the pod already has a volume `{n}` but was not injected; rename it"
            ))
        })
        .collect();
    problems.extend(
        containers
            .map(|c| name_of(&c))
            .filter(|n| n == AGENT || n == AGENT_INIT)
            .map(|n| {
                Invalid::pod(format!(
                    "the pod already has a container `{n}` but was not injected; rename it"
                ))
            }),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The volumes the agent needs: tokens in memory, its config, its state, its credentials.
fn volumes(s: &Settings) -> Vec<Value> {
    let config = match &s.config {
        ConfigSource::Annotation => json!({
            "name": CONFIG_VOLUME,
            "downwardAPI": { "items": [{
                "path": CONFIG_FILE,
                "fieldRef": { "fieldPath": format!("metadata.annotations['{PREFIX}config']") },
            }]},
        }),
        ConfigSource::ConfigMap(name) => json!({
            "name": CONFIG_VOLUME,
            "configMap": { "name": name },
        }),
    };
    let mut volumes = vec![
        json!({ "name": TOKENS_VOLUME, "emptyDir": { "medium": "Memory" } }),
        config,
        json!({ "name": STATE_VOLUME, "emptyDir": {} }),
    ];
    for (i, secret) in s.secrets.iter().enumerate() {
        volumes.push(json!({
            "name": format!("{SECRET_VOLUME_PREFIX}{i}"),
            "secret": { "secretName": secret },
        }));
    }
    volumes
}

/// One agent container running `command` (`run` or `once`).
fn agent_container(s: &Settings, name: &str, command: &str, account: Option<&Value>) -> Value {
    let mut mounts = vec![
        json!({ "name": TOKENS_VOLUME, "mountPath": s.token_dir }),
        json!({ "name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true }),
        json!({ "name": STATE_VOLUME, "mountPath": s.state_dir }),
    ];
    for (i, secret) in s.secrets.iter().enumerate() {
        mounts.push(json!({
            "name": format!("{SECRET_VOLUME_PREFIX}{i}"),
            "mountPath": format!("{SECRETS_DIR}/{secret}"),
            "readOnly": true,
        }));
    }
    mounts.extend(account.cloned());
    json!({
        "name": name,
        "image": s.image,
        "imagePullPolicy": s.pull_policy,
        "args": [command, "--config", format!("{CONFIG_DIR}/{CONFIG_FILE}")],
        "ports": [{ "name": "token-agent", "containerPort": s.port, "protocol": "TCP" }],
        "resources": {
            "requests": { "cpu": s.cpu_request, "memory": s.memory_request },
            "limits": { "memory": s.memory_limit },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": s.run_as_user,
            "runAsGroup": s.run_as_group,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    })
}

fn probe(s: &Settings, path: &str, period: u64, failures: u64) -> Value {
    json!({
        "httpGet": { "path": path, "port": s.port },
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": failures.max(1),
    })
}

/// The API token mount an app container got from the ServiceAccount admission plugin.
fn service_account_mount(inits: &[Value], apps: &[Value]) -> Option<Value> {
    apps.iter()
        .chain(inits)
        .filter_map(|c| c["volumeMounts"].as_array())
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(SERVICE_ACCOUNT_DIR))
        .map(|m| json!({ "name": m["name"], "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true }))
}

fn list(spec: &Map<String, Value>, key: &str) -> Vec<Value> {
    spec.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn name_of(container: &Value) -> String {
    container["name"].as_str().unwrap_or_default().to_owned()
}

/// Appends `more` to the array at `value[key]`, made if missing (a JSON patch cannot add
/// into a missing array; the diff then adds the whole array).
fn append(value: &mut Value, key: &str, more: impl IntoIterator<Item = Value>) {
    let mut items = match value[key].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    items.extend(more);
    value[key] = Value::Array(items);
}

/// Refuses JSON that is not shaped like a pod where the injector writes: every place it
/// indexes must be an object or an array of objects (the API server sends such pods; anyone
/// else reaching the webhook might not).
fn check_shape(pod: &Value) -> Result<(), Vec<Invalid>> {
    let malformed = |what: &str| Err(vec![Invalid::pod(format!("not a pod: {what}"))]);
    if !pod["metadata"].is_object() || !pod["spec"].is_object() {
        return malformed("metadata and spec must be objects");
    }
    if !matches!(
        pod["metadata"]["annotations"],
        Value::Null | Value::Object(_)
    ) {
        return malformed("metadata.annotations must be an object");
    }
    for key in ["initContainers", "containers", "volumes"] {
        match &pod["spec"][key] {
            Value::Null => {}
            Value::Array(items) if items.iter().all(Value::is_object) => {
                for item in items {
                    if !matches!(item["volumeMounts"], Value::Null | Value::Array(_)) {
                        return malformed(&format!("spec.{key}[].volumeMounts must be a list"));
                    }
                }
            }
            _ => return malformed(&format!("spec.{key} must be a list of objects")),
        }
    }
    Ok(())
}
