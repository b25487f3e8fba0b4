"""The Helm chart and the plain manifests, with the real tools: the Helm SDK (PyPI
helm-python-sdk) lints and renders `charts/token-agent`, `kubernetes-validate --strict` checks
every rendered object and every file under `deploy/` against the official schemas of two
Kubernetes versions, and `token-agent validate` checks the agent config inside each rendered
ConfigMap.

Run by scripts/test.sh after `cargo test` (it needs the debug binary):
    python3 -m unittest discover -s tests/chart -v
"""

import copy
import glob
import os
import subprocess
import tempfile
import unittest

try:
    import yaml
except ImportError:  # depends on the machine
    yaml = None

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "token-agent")
BIN = os.environ.get("TOKEN_AGENT_BIN", os.path.join(ROOT, "target", "debug", "token-agent"))
# The oldest Kubernetes with native sidecars on by default, and a current one.
KUBERNETES = ["1.29.0", "1.33.0"]
# prometheus-operator and cert-manager kinds: no official schema in kubernetes-validate, and the
# CRDs' published schemas are not vendored here. Skipped by name; the PrometheusRule's rules are
# the ones promtool checks and unit-tests (deploy/alerts.yaml), and the tests below pin the
# fields of every one of these objects.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
NAMESPACE = "token-agent"


def skip_or_fail(why):
    """A missing tool skips (listed by scripts/test.sh), or fails when CI requires it."""
    if os.environ.get("TOKEN_AGENT_REQUIRE_CHART"):
        raise AssertionError(f"{why}, and TOKEN_AGENT_REQUIRE_CHART is set")
    log = os.environ.get("TOKEN_AGENT_SKIP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"chart tests: {why}\n")
    raise unittest.SkipTest(why)


try:
    import helm_python as helm
except ImportError:  # depends on the machine
    helm = None
try:
    import kubernetes_validate
except ImportError:
    kubernetes_validate = None


def require(*modules):
    for name, module in modules:
        if module is None:
            skip_or_fail(f"{name} is not installed: pip install {name}")


def values_files():
    return sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def render(values, name="token-agent", namespace=NAMESPACE):
    """{template: [objects]} for `values`, as `helm template` would render them."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name=name, namespace=namespace)
    return {
        path: [d for d in yaml.safe_load_all(text) if d]
        for path, text in out.items()
        if not path.endswith("NOTES.txt")
    }


def objects(values, name="token-agent", namespace=NAMESPACE):
    return [o for docs in render(values, name, namespace).values() for o in docs]


def one(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[o['metadata'] for o in found]}"
    return found[0]


def rules_by_namespace(objs):
    return {o["metadata"]["namespace"]: o["rules"] for o in objs if o["kind"] == "Role"}


def selects(selector, labels):
    """Whether a label selector (a Service's plain map, or matchLabels/matchExpressions) selects `labels`."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        present, value = e["key"] in labels, labels.get(e["key"])
        if not {"In": present and value in e.get("values", []),
                "NotIn": not present or value not in e.get("values", []),
                "Exists": present, "DoesNotExist": not present}[e["operator"]]:
            return False
    return True


def pod_selectors(objs):
    """(what, selector) for every object that picks pods by label."""
    for o in objs:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Deployment":
            yield where, o["spec"]["selector"]
            for term in o["spec"]["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {}).get(
                    "preferredDuringSchedulingIgnoredDuringExecution", []):
                yield where + " anti-affinity", term["podAffinityTerm"]["labelSelector"]
        elif o["kind"] == "Service":
            yield where, o["spec"]["selector"]
        elif o["kind"] == "PodDisruptionBudget":
            yield where, o["spec"]["selector"]
        elif o["kind"] == "NetworkPolicy":
            yield where, o["spec"]["podSelector"]
        elif o["kind"] == "ServiceMonitor":
            pass  # selects Services, not pods


def flags(container):
    """`--name=value` args as {name: value}; a bare `--name` maps to True."""
    out = {}
    for arg in container["args"]:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            out[key] = value if _ else True
    return out


def kube_validate(obj, where, versions=KUBERNETES):
    if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
        return
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(
                f"{where}: {obj['kind']}/{obj['metadata'].get('name')} is invalid for Kubernetes {version}: "
                f"{'.'.join(str(p) for p in e.path)}: {e.message}"
            ) from None


def agent_validate(config_yaml, where):
    """`token-agent validate` on a config; returns (exit code, output)."""
    if not os.path.exists(BIN):
        skip_or_fail(f"{BIN} is missing: cargo build first")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(config_yaml)
        f.flush()
        run = subprocess.run([BIN, "validate", "--config", f.name], capture_output=True, text=True)
    return run.returncode, f"{where}:\n{run.stdout}{run.stderr}"


class Chart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require(("pyyaml", yaml), ("helm-python-sdk", helm), ("kubernetes-validate", kubernetes_validate))

    def test_lint_finds_nothing_above_info(self):
        for where, values in [("default values", None)] + [(os.path.basename(p), load(p)) for p in values_files()]:
            with self.subTest(values=where):
                result = helm.lint(CHART, values, namespace=NAMESPACE)
                self.assertEqual(result["errors"], [])
                serious = [m for m in result["messages"] if m["severity"] > 1]
                self.assertEqual(serious, [], "helm lint")

    def test_every_rendering_is_valid_for_kubernetes_and_the_agent(self):
        cases = [("default values", {})] + [(os.path.basename(p), load(p)) for p in values_files()]
        self.assertGreaterEqual(len(cases), 4)
        self.assertIn("injector-self-managed-values.yaml", [w for w, _ in cases])
        self.assertIn("injector-cert-manager-values.yaml", [w for w, _ in cases])
        for where, values in cases:
            with self.subTest(values=where):
                objs = objects(values)
                for obj in objs:
                    kube_validate(obj, where)
                for cm in (o for o in objs if o["kind"] == "ConfigMap"):
                    code, out = agent_validate(cm["data"]["config.yaml"], where)
                    self.assertEqual(code, 0, out)
                # The only cluster-scoped RBAC: the injector's, for its own webhook configuration,
                # in self-managed TLS mode.
                injector = values.get("injector", {})
                self_managed = injector.get("enabled") and injector.get("tls", {}).get("mode", "self-managed") == "self-managed"
                cluster_rbac = sorted((o["kind"], o["metadata"]["name"]) for o in objs
                                      if o["kind"] in ("ClusterRole", "ClusterRoleBinding"))
                self.assertEqual(cluster_rbac, [("ClusterRole", "token-agent-injector"),
                                                ("ClusterRoleBinding", "token-agent-injector")] if self_managed else [], where)
                deployments = [o for o in objs if o["kind"] == "Deployment"]
                self.assertEqual(sorted(d["metadata"]["name"] for d in deployments),
                                 ([values.get("fullnameOverride") or "token-agent"] if values.get("standalone", True) else [])
                                 + (["token-agent-injector"] if injector.get("enabled") else []), where)
                for deployment in deployments:
                    self.assert_restricted(deployment, where)
                # Every pod selector takes in the pods of exactly one Deployment: the agent's
                # selectors never pick the injector's pods, nor the other way round.
                for what, selector in pod_selectors(objs):
                    chosen = [d["metadata"]["name"] for d in deployments
                              if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
                    self.assertEqual(len(chosen), 1, f"{where}: {what} selects the pods of {chosen}")

    def assert_restricted(self, deployment, where):
        """Pod Security Standard "restricted", field by field."""
        pod = deployment["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"], where)
        self.assertEqual(pod["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"}, where)
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            self.assertIs(sc["allowPrivilegeEscalation"], False, where)
            self.assertIs(sc["readOnlyRootFilesystem"], True, where)
            self.assertEqual(sc["capabilities"], {"drop": ["ALL"]}, where)
            self.assertIn("limits", c["resources"], where)
            if c["name"] == "token-agent":
                self.assertEqual(c["startupProbe"]["httpGet"]["path"], "/readyz")
            self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
            self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")

    def test_defaults_run_one_replica_with_only_a_token_request(self):
        objs = objects({})
        deployment = one(objs, "Deployment")
        self.assertEqual(deployment["spec"]["replicas"], 1)
        self.assertFalse([o for o in objs if o["kind"] == "PodDisruptionBudget"])
        self.assertEqual(
            rules_by_namespace(objs),
            {NAMESPACE: [{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                          "resourceNames": ["default"], "verbs": ["create"]}]},
        )
        config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
        self.assertNotIn("leader_election", config)
        self.assertEqual(config["server"], {"listen": "0.0.0.0:9090"})
        # Mounted as a directory (live reload sees the kubelet's ..data swap), never subPath.
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        mount = [m for m in container["volumeMounts"] if m["name"] == "config"][0]
        self.assertEqual(mount, {"name": "config", "mountPath": "/etc/token-agent", "readOnly": True})
        self.assertIn("--config=/etc/token-agent/config.yaml", container["args"])
        self.assertEqual(container["image"], "token-agent:" + load(os.path.join(CHART, "Chart.yaml"))["appVersion"])
        # No config checksum: a config change is reloaded, not rolled out.
        self.assertNotIn("annotations", deployment["spec"]["template"]["metadata"])

    def test_two_replicas_elect_a_leader_and_keep_a_disruption_budget(self):
        objs = objects(load(os.path.join(CHART, "ci", "standalone-secret-ha-values.yaml")), name="edge")
        config = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])
        self.assertEqual(config["leader_election"], {"enabled": True, "lease": "edge-token-agent"})
        self.assertEqual(one(objs, "PodDisruptionBudget")["spec"]["minAvailable"], 1)
        rules = rules_by_namespace(objs)
        self.assertEqual(sorted(rules), ["ci", "team-b", NAMESPACE])
        self.assertEqual(
            rules[NAMESPACE],
            [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["orders-token"],
                 "verbs": ["get", "patch", "delete"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "resourceNames": ["edge-token-agent"], "verbs": ["get", "update"]},
            ],
        )
        self.assertEqual(
            [r.get("resourceNames") for r in rules["ci"]], [None, ["builder-token"], ["builder"]]
        )
        for binding in (o for o in objs if o["kind"] == "RoleBinding"):
            self.assertEqual(binding["subjects"],
                             [{"kind": "ServiceAccount", "name": "edge-token-agent", "namespace": NAMESPACE}])
        pod = one(objs, "Deployment")["spec"]["template"]["spec"]
        self.assertTrue(pod["automountServiceAccountToken"])
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        self.assertEqual(mounts["credentials-0"],
                         {"name": "credentials-0", "mountPath": "/var/run/secrets/orders", "readOnly": True})

    def test_everything_optional_renders_as_asked(self):
        objs = objects(load(os.path.join(CHART, "ci", "everything-values.yaml")))
        pod = one(objs, "Deployment")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        self.assertEqual(
            container["image"],
            "registry.example.com/platform/token-agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        self.assertEqual(container["ports"], [{"name": "metrics", "containerPort": 9191, "protocol": "TCP"}])
        self.assertEqual(one(objs, "Service")["spec"]["ports"][0]["port"], 9191)
        config = yaml.safe_load(one(objs, "ConfigMap", "tokens")["data"]["config.yaml"])
        self.assertEqual(config["server"], {"listen": "0.0.0.0:9191"})
        rules = rules_by_namespace(objs)
        # A per-tenant Secret name cannot be pinned; the listed extra one can.
        self.assertIn({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch", "delete"]},
                      rules[NAMESPACE])
        self.assertEqual(rules["team-c"][1]["resourceNames"], ["extra-token"])
        for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
            self.assertIn(key, pod)
        self.assertEqual(pod["priorityClassName"], "system-cluster-critical")
        self.assertEqual(one(objs, "ServiceMonitor")["spec"]["endpoints"][0]["port"], "metrics")
        rule = one(objs, "PrometheusRule")
        self.assertEqual(rule["spec"], load(os.path.join(ROOT, "deploy", "alerts.yaml")))
        policy = one(objs, "NetworkPolicy")
        self.assertEqual(policy["spec"]["policyTypes"], ["Ingress", "Egress"])

    def test_an_existing_configmap_takes_rbac_from_values(self):
        objs = objects(load(os.path.join(CHART, "ci", "existing-configmap-values.yaml")))
        self.assertFalse([o for o in objs if o["kind"] == "ConfigMap"])
        pod = one(objs, "Deployment")["spec"]["template"]["spec"]
        self.assertIn("--leader-elect", pod["containers"][0]["args"])
        self.assertEqual(pod["volumes"][0], {"name": "config", "configMap": {"name": "platform-token-agent"}})
        rules = rules_by_namespace(objs)
        self.assertEqual(rules[NAMESPACE][-1]["resourceNames"], ["platform-token-agent"])
        self.assertEqual(rules["ci"][0]["resourceNames"], ["builder"])

    def test_a_config_without_the_kubernetes_api_gets_no_api_token(self):
        values = {"config": {"sources": [{"name": "a", "kind": "oauth2", "token_url": "https://idp/token",
                                          "client_id": "c", "auth": "none",
                                          "sinks": [{"file": {"path": "a.token"}}]}]}}
        objs = objects(values)
        self.assertFalse([o for o in objs if o["kind"] in ("Role", "RoleBinding")])
        self.assertIs(one(objs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"], False)
        self.assertIs(one(objs, "ServiceAccount")["automountServiceAccountToken"], False)

    def test_the_schema_rejects_typos_and_wrong_types(self):
        bad = {
            "replica": 2,  # typo
            "replicas": "2",
            "image": {"repository": "x", "digest": "latest"},
            "logFormat": "yaml",
            "credentials": [{"secretName": "s", "mountPath": "relative"}],
            "metrics": {"port": 70000},
            "config": {"sources": []},
            "probes": {"startup": {"periodSecond": 1}},
            "rbac": {"secrets": [{"namespace": "a", "name": ["x"]}]},
        }
        for key, value in bad.items():
            with self.subTest(key=key):
                with self.assertRaises(Exception) as raised:
                    render({key: value})
                self.assertIn(key, str(raised.exception))

    def test_a_config_the_probes_cannot_reach_is_refused(self):
        base = load(os.path.join(CHART, "values.yaml"))["config"]
        for server, why in [
            ({"enabled": False}, "config.server.enabled: false"),
            ({"listen": "0.0.0.0:8080"}, "config.server.listen 0.0.0.0:8080 does not use metrics.port 9090"),
            ({"listen": "127.0.0.1:9090"}, "config.server.listen 127.0.0.1:9090 is loopback"),
        ]:
            with self.subTest(server=server):
                with self.assertRaises(Exception) as raised:
                    render({"config": dict(base, server=server)})
                self.assertIn(why, str(raised.exception))
        objs = objects({"config": dict(base, server={"listen": "[::]:9191"}), "metrics": {"port": 9191}})
        self.assertEqual(one(objs, "Service")["spec"]["ports"][0]["port"], 9191)

    def test_an_invalid_agent_config_in_values_is_caught_by_validate(self):
        values = copy.deepcopy(load(os.path.join(CHART, "values.yaml")))
        values["config"]["sources"][0]["expiration"] = "5 fortnights"
        code, out = agent_validate(one(objects(values), "ConfigMap")["data"]["config.yaml"], "bad config")
        self.assertEqual(code, 64, out)
        self.assertIn("expiration", out)

    def test_the_chart_alerts_are_deploy_alerts(self):
        with open(os.path.join(CHART, "files", "alerts.yaml")) as a, open(os.path.join(ROOT, "deploy", "alerts.yaml")) as b:
            self.assertEqual(a.read(), b.read(), "copy deploy/alerts.yaml to charts/token-agent/files/")


INJECTOR = "token-agent-injector"
INJECTOR_TLS_DIR = "/etc/token-agent-webhook/tls"


class Injector(unittest.TestCase):
    """The mutating admission webhook: its Deployment, Service, MutatingWebhookConfiguration,
    TLS (self-managed or cert-manager) and RBAC, consistent with the flags the binary gets."""

    @classmethod
    def setUpClass(cls):
        require(("pyyaml", yaml), ("helm-python-sdk", helm))

    def ci(self, name, **changes):
        values = load(os.path.join(CHART, "ci", f"injector-{name}-values.yaml"))
        values.update(changes)
        return values

    def container(self, objs):
        pod = one(objs, "Deployment", INJECTOR)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        return pod, container

    def webhook(self, objs):
        mwc = one(objs, "MutatingWebhookConfiguration")
        [hook] = mwc["webhooks"]
        return mwc, hook

    def test_off_by_default(self):
        objs = objects({})
        self.assertFalse([o for o in objs if INJECTOR in o["metadata"]["name"]])
        self.assertFalse([o for o in objs if o["kind"] == "MutatingWebhookConfiguration"])

    def test_self_managed_tls_names_the_same_objects_it_may_touch(self):
        objs = objects(self.ci("self-managed"))
        pod, container = self.container(objs)
        args = flags(container)
        mwc, hook = self.webhook(objs)
        service = one(objs, "Service", INJECTOR)
        role = one(objs, "Role", INJECTOR)
        cluster_role = one(objs, "ClusterRole")
        volume = {v["name"]: v for v in pod["volumes"]}["tls"]

        self.assertEqual(container["args"][:2], ["--log-format=json", "webhook"])
        self.assertIs(args["self-managed-tls"], True)
        # The flags name the rendered objects, and the RBAC grants exactly those names.
        self.assertEqual(args["webhook-config"], mwc["metadata"]["name"])
        self.assertEqual(args["service"], service["metadata"]["name"])
        self.assertEqual(hook["clientConfig"]["service"],
                         {"name": args["service"], "namespace": NAMESPACE, "path": "/mutate", "port": 443})
        self.assertEqual(args["tls-secret"], volume["secret"]["secretName"])
        self.assertEqual(args["tls-secret"], INJECTOR + "-tls")
        self.assertEqual(args["lease"], INJECTOR)
        self.assertEqual(args["namespace"], "$(POD_NAMESPACE)")
        env = {e["name"]: e for e in container["env"]}
        self.assertEqual(env["POD_NAMESPACE"]["valueFrom"], {"fieldRef": {"fieldPath": "metadata.namespace"}})
        self.assertEqual(env["POD_NAME"]["valueFrom"], {"fieldRef": {"fieldPath": "metadata.name"}})
        self.assertEqual(args["cert-validity"], "72h")
        self.assertEqual(args["ca-validity"], "87600h")
        self.assertEqual(
            args["agent-image"],
            "registry.example.com/platform/token-agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        self.assertEqual(role["rules"], [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [args["tls-secret"]],
             "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [args["lease"]],
             "verbs": ["get", "update"]},
        ])
        self.assertEqual(role["metadata"]["namespace"], NAMESPACE)
        self.assertEqual(cluster_role["metadata"]["name"], INJECTOR)
        self.assertEqual(cluster_role["rules"], [
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [args["webhook-config"]], "verbs": ["get", "update", "patch"]},
        ])
        subject = [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}]
        self.assertEqual(pod["serviceAccountName"], one(objs, "ServiceAccount", INJECTOR)["metadata"]["name"])
        binding = one(objs, "RoleBinding", INJECTOR)
        self.assertEqual((binding["roleRef"]["kind"], binding["roleRef"]["name"], binding["subjects"]),
                         ("Role", INJECTOR, subject))
        binding = one(objs, "ClusterRoleBinding")
        self.assertEqual((binding["roleRef"]["kind"], binding["roleRef"]["name"], binding["subjects"]),
                         ("ClusterRole", cluster_role["metadata"]["name"], subject))
        # The webhook patches the caBundle in: none rendered, no cert-manager annotation.
        self.assertNotIn("caBundle", hook["clientConfig"])
        self.assertNotIn("annotations", mwc["metadata"])
        self.assertFalse([o for o in objs if o["apiVersion"].startswith("cert-manager.io/")])
        # The token is mounted (the webhook calls the API); the Secret may not exist yet.
        self.assertIs(pod["automountServiceAccountToken"], True)
        self.assertIs(volume["secret"]["optional"], True)
        self.assertEqual({i["key"] for i in volume["secret"]["items"]}, {"tls.crt", "tls.key"})  # never ca.key
        self.assertEqual(container["volumeMounts"], [{"name": "tls", "mountPath": INJECTOR_TLS_DIR, "readOnly": True}])
        self.assertEqual(args["tls-dir"], INJECTOR_TLS_DIR)

    def test_the_webhook_configuration_and_its_service(self):
        objs = objects(self.ci("self-managed"))
        pod, container = self.container(objs)
        mwc, hook = self.webhook(objs)
        self.assertEqual(mwc["apiVersion"], "admissionregistration.k8s.io/v1")
        self.assertEqual(hook["name"], "inject.token-agent.io")
        self.assertEqual(hook["rules"], [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                          "resources": ["pods"], "scope": "Namespaced"}])
        self.assertEqual(hook["objectSelector"], {"matchLabels": {"token-agent.io/inject": "true"}})
        for key, value in {"failurePolicy": "Fail", "timeoutSeconds": 5, "reinvocationPolicy": "IfNeeded",
                           "sideEffects": "None", "admissionReviewVersions": ["v1"],
                           "matchPolicy": "Equivalent"}.items():
            self.assertEqual(hook[key], value, key)
        ports = {p["name"]: p for p in container["ports"]}
        self.assertEqual((ports["https"]["containerPort"], ports["metrics"]["containerPort"]), (8443, 9090))
        args = flags(container)
        self.assertEqual((args["listen"], args["metrics-listen"]), ("0.0.0.0:8443", "0.0.0.0:9090"))
        service_ports = {p["name"]: p for p in one(objs, "Service", INJECTOR)["spec"]["ports"]}
        self.assertEqual((service_ports["https"]["port"], service_ports["https"]["targetPort"]), (443, "https"))
        self.assertEqual(service_ports["metrics"]["targetPort"], "metrics")
        self.assertEqual(container["readinessProbe"]["httpGet"], {"path": "/readyz", "port": "metrics"})
        self.assertEqual(container["livenessProbe"]["httpGet"], {"path": "/healthz", "port": "metrics"})
        self.assertEqual(container["resources"], {"requests": {"cpu": "10m", "memory": "32Mi"},
                                                  "limits": {"memory": "64Mi"}})
        self.assertEqual(pod["priorityClassName"], "system-cluster-critical")
        self.assertEqual(one(objs, "Deployment", INJECTOR)["spec"]["replicas"], 3)
        self.assertEqual(one(objs, "PodDisruptionBudget", INJECTOR)["spec"]["minAvailable"], 1)
        [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        self.assertEqual(term["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname")
        self.assertTrue(selects(term["podAffinityTerm"]["labelSelector"], pod_labels := one(
            objs, "Deployment", INJECTOR)["spec"]["template"]["metadata"]["labels"]))
        self.assertEqual(pod_labels["example.com/tier"], "infra")
        # One replica: no budget; a budget switched off: none either; an affinity given replaces the default.
        objs = objects({"injector": {"enabled": True, "replicas": 1}})
        self.assertFalse([o for o in objs if o["kind"] == "PodDisruptionBudget"])
        objs = objects({"injector": {"enabled": True, "podDisruptionBudget": {"enabled": False},
                                     "affinity": {"nodeAffinity": {}}}})
        self.assertFalse([o for o in objs if o["kind"] == "PodDisruptionBudget"])
        self.assertEqual(self.container(objs)[0]["affinity"], {"nodeAffinity": {}})

    def test_cert_manager_tls_needs_no_rbac_and_no_api_token(self):
        objs = objects(self.ci("cert-manager"))
        pod, container = self.container(objs)
        args = flags(container)
        mwc, hook = self.webhook(objs)
        certificate = one(objs, "Certificate", INJECTOR)
        volume = {v["name"]: v for v in pod["volumes"]}["tls"]
        self.assertEqual(mwc["metadata"]["annotations"],
                         {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/{certificate['metadata']['name']}"})
        self.assertNotIn("caBundle", hook["clientConfig"])
        self.assertEqual(certificate["spec"]["secretName"], volume["secret"]["secretName"])
        self.assertNotIn("optional", volume["secret"])
        service = hook["clientConfig"]["service"]["name"]
        self.assertEqual(service, one(objs, "Service", INJECTOR)["metadata"]["name"])
        self.assertEqual(certificate["spec"]["dnsNames"], [
            service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.svc.cluster.local"])
        self.assertEqual(certificate["spec"]["duration"], "168h")
        # The chart's own CA: a self-signed Issuer signs a CA Certificate, whose Issuer signs the
        # serving certificate (so the caBundle changes only when the CA does).
        issuers = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Issuer"}
        self.assertEqual(certificate["spec"]["issuerRef"], {"name": INJECTOR + "-ca", "kind": "Issuer",
                                                            "group": "cert-manager.io"})
        ca = one(objs, "Certificate", INJECTOR + "-ca")
        self.assertIs(ca["spec"]["isCA"], True)
        self.assertEqual(ca["spec"]["duration"], "87600h")
        self.assertEqual(issuers, {INJECTOR + "-ca": {"ca": {"secretName": ca["spec"]["secretName"]}},
                                   ca["spec"]["issuerRef"]["name"]: {"selfSigned": {}}})
        # No API access at all.
        self.assertFalse([o for o in objs if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")])
        self.assertIs(pod["automountServiceAccountToken"], False)
        self.assertIs(one(objs, "ServiceAccount", INJECTOR)["automountServiceAccountToken"], False)
        for flag in ("self-managed-tls", "tls-secret", "webhook-config", "service", "lease", "cert-validity"):
            self.assertNotIn(flag, args)
        self.assertEqual(args["tls-dir"], INJECTOR_TLS_DIR)
        self.assertEqual(container["image"], "registry.example.com/platform/token-agent:0.1.0-webhook")
        self.assertEqual(container["imagePullPolicy"], "Always")
        self.assertEqual(args["agent-image"], "token-agent:" + load(os.path.join(CHART, "Chart.yaml"))["appVersion"])
        self.assertEqual(hook["failurePolicy"], "Ignore")
        self.assertEqual(hook["reinvocationPolicy"], "Never")
        # An issuer of the user's: only the serving Certificate, signed by it.
        values = self.ci("cert-manager")
        values["injector"]["tls"]["certManager"] = {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
        objs = objects(values)
        self.assertFalse([o for o in objs if o["kind"] == "Issuer"])
        self.assertEqual([o["metadata"]["name"] for o in objs if o["kind"] == "Certificate"], [INJECTOR])
        self.assertEqual(one(objs, "Certificate")["spec"]["issuerRef"], {"name": "corp-ca", "kind": "ClusterIssuer"})

    def test_kube_system_and_the_release_namespace_are_always_excluded(self):
        excluded = lambda ns: {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", ns]}
        _, hook = self.webhook(objects({"injector": {"enabled": True}}))
        self.assertEqual(hook["namespaceSelector"], {"matchExpressions": [excluded(NAMESPACE)]})
        own = {"matchLabels": {"team": "a"},
               "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["kube-system", "apps"]},
                                    {"key": "env", "operator": "Exists"}]}
        for namespace in (NAMESPACE, "platform"):
            with self.subTest(namespace=namespace):
                objs = objects({"injector": {"enabled": True, "webhook": {"namespaceSelector": own}}}, namespace=namespace)
                _, hook = self.webhook(objs)
                selector = hook["namespaceSelector"]
                self.assertEqual(selector["matchLabels"], {"team": "a"})
                self.assertEqual(selector["matchExpressions"], [excluded(namespace)] + own["matchExpressions"])
                for name in ("kube-system", namespace):
                    self.assertFalse(selects(selector, {"kubernetes.io/metadata.name": name, "team": "a", "env": "x"}), name)
                self.assertTrue(selects(selector, {"kubernetes.io/metadata.name": "apps", "team": "a", "env": "x"}))
        _, hook = self.webhook(objects({"injector": {"enabled": True}}, namespace="kube-system"))
        self.assertEqual(hook["namespaceSelector"]["matchExpressions"][0]["values"], ["kube-system"])

    def test_standalone_false_installs_only_the_injector(self):
        objs = objects({"standalone": False, "injector": {"enabled": True}})
        self.assertEqual([o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"], [INJECTOR])
        for o in objs:
            self.assertIn(INJECTOR, o["metadata"]["name"], f"{o['kind']}/{o['metadata']['name']}")
        # Every optional part of the agent stays off with it.
        everything = load(os.path.join(CHART, "ci", "everything-values.yaml"))
        objs = objects(dict(everything, standalone=False, injector={"enabled": True}))
        self.assertEqual(sorted({o["kind"] for o in objs} - {"ClusterRole", "ClusterRoleBinding"}), sorted(
            ["Deployment", "Service", "ServiceAccount", "MutatingWebhookConfiguration", "PodDisruptionBudget",
             "Role", "RoleBinding"]))
        self.assertFalse([o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "tokens"])
        with self.assertRaises(Exception) as raised:
            render({"standalone": False})
        self.assertIn("installs nothing", str(raised.exception))

    def test_images_and_logging_fall_back_to_the_chart_wide_values(self):
        values = {"image": {"repository": "reg/ta", "digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
                  "logFormat": "json", "logLevel": "warn",
                  "injector": {"enabled": True, "agentImage": {"tag": "1.2.3"}, "logLevel": "debug"}}
        _, container = self.container(objects(values))
        args = flags(container)
        self.assertEqual(container["image"], "reg/ta@sha256:" + "a" * 64)
        self.assertEqual(container["imagePullPolicy"], "Always")
        # A tag chosen here is not overridden by the chart-wide digest.
        self.assertEqual(args["agent-image"], "reg/ta:1.2.3")
        self.assertEqual(args["agent-pull-policy"], "Always")
        self.assertEqual(container["args"][0], "--log-format=json")
        self.assertEqual({e["name"]: e.get("value") for e in container["env"]}["RUST_LOG"], "debug")

    def test_an_unscoped_fail_webhook_is_refused(self):
        # Helm merges `{}` with the default: still the opt-in label.
        _, hook = self.webhook(objects({"injector": {"enabled": True, "webhook": {"objectSelector": {}}}}))
        self.assertEqual(hook["objectSelector"], {"matchLabels": {"token-agent.io/inject": "true"}})
        # null removes it.
        for selector in (None, {"matchLabels": None}):
            with self.subTest(selector=selector):
                with self.assertRaises(Exception) as raised:
                    render({"injector": {"enabled": True, "webhook": {"objectSelector": selector}}})
                self.assertIn("objectSelector is empty with failurePolicy Fail", str(raised.exception))
        _, hook = self.webhook(objects({"injector": {"enabled": True, "webhook": {
            "failurePolicy": "Ignore", "objectSelector": {"matchLabels": None}}}}))
        self.assertEqual(hook["objectSelector"], {})

    def test_the_schema_rejects_bad_injector_values(self):
        bad = [
            ({"webhook": {"failurePolicy": "Never"}}, "/injector/webhook/failurePolicy"),
            ({"webhook": {"timeoutSeconds": 0}}, "/injector/webhook/timeoutSeconds"),
            ({"webhook": {"timeoutSeconds": 31}}, "/injector/webhook/timeoutSeconds"),
            ({"webhook": {"reinvocationPolicy": "Always"}}, "/injector/webhook/reinvocationPolicy"),
            ({"webhok": {}}, "'webhok' not allowed"),
            ({"tls": {"mode": "genCA"}}, "/injector/tls/mode"),
            ({"tls": {"certValidity": "7 days"}}, "/injector/tls/certValidity"),
            ({"tls": {"certManager": {"issuerRef": {"nam": "x"}}}}, "'nam' not allowed"),
            ({"agentImage": {"repo": "x"}}, "'repo' not allowed"),
            ({"webhook": {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}},
             "/injector/webhook/namespaceSelector/matchExpressions/0/operator"),
        ]
        for injector, key in bad:
            with self.subTest(injector=injector):
                with self.assertRaises(Exception) as raised:
                    render({"injector": dict(injector, enabled=True)})
                self.assertIn(key, str(raised.exception))


class Manifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require(("pyyaml", yaml), ("kubernetes-validate", kubernetes_validate))

    def test_the_committed_manifest_is_a_fresh_render(self):
        require(("helm-python-sdk", helm))
        fresh = subprocess.run(
            ["python3", os.path.join(ROOT, "scripts", "render-manifests.py"), "--stdout"],
            capture_output=True, text=True, check=True,
        ).stdout
        with open(os.path.join(ROOT, "deploy", "token-agent.yaml")) as f:
            self.assertEqual(f.read(), fresh, "run scripts/render-manifests.py")

    def test_every_file_under_deploy_is_valid_for_kubernetes(self):
        files = sorted(glob.glob(os.path.join(ROOT, "deploy", "**", "*.yaml"), recursive=True))
        files = [f for f in files if not os.path.basename(f).startswith("alerts")]
        self.assertGreaterEqual(len(files), 5)
        for path in files:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
            self.assertTrue(docs, path)
            for doc in docs:
                where = os.path.relpath(path, ROOT)
                kube_validate(doc, where)
                if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                    code, out = agent_validate(doc["data"]["config.yaml"], where)
                    self.assertEqual(code, 0, out)


if __name__ == "__main__":
    unittest.main()
