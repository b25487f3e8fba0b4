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
# prometheus-operator kinds: no official schema in kubernetes-validate, and the CRDs' published
# schemas are not vendored here. Skipped by name; the PrometheusRule's rules are the ones
# promtool checks and unit-tests (deploy/alerts.yaml), and the tests below pin their fields.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
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


def render(values, name="token-agent"):
    """{template: [objects]} for `values`, as `helm template` would render them."""
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name=name, namespace=NAMESPACE)
    return {
        path: [d for d in yaml.safe_load_all(text) if d]
        for path, text in out.items()
        if not path.endswith("NOTES.txt")
    }


def objects(values, name="token-agent"):
    return [o for docs in render(values, name).values() for o in docs]


def one(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[o['metadata'] for o in found]}"
    return found[0]


def rules_by_namespace(objs):
    return {o["metadata"]["namespace"]: o["rules"] for o in objs if o["kind"] == "Role"}


def kube_validate(obj, where):
    if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
        return
    for version in KUBERNETES:
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
        result = helm.lint(CHART)
        self.assertEqual(result["errors"], [])
        serious = [m for m in result["messages"] if m["severity"] > 1]
        self.assertEqual(serious, [], "helm lint")

    def test_every_rendering_is_valid_for_kubernetes_and_the_agent(self):
        cases = [("default values", {})] + [(os.path.basename(p), load(p)) for p in values_files()]
        self.assertGreaterEqual(len(cases), 4)
        for where, values in cases:
            with self.subTest(values=where):
                objs = objects(values)
                for obj in objs:
                    kube_validate(obj, where)
                    self.assertNotIn(obj["kind"], ("ClusterRole", "ClusterRoleBinding"), where)
                for cm in (o for o in objs if o["kind"] == "ConfigMap"):
                    code, out = agent_validate(cm["data"]["config.yaml"], where)
                    self.assertEqual(code, 0, out)
                self.assert_restricted(one(objs, "Deployment"), where)

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
