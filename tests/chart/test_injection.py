"""The injector's golden files (tests/inject/), checked with tools other than the ones that
wrote them: each patch is applied by PyPI `jsonpatch` (the Rust test applies it with the
`json-patch` crate) and must give the golden pod, and every pod — before and after
injection — validates with `kubernetes-validate --strict` against the official schemas of the
Kubernetes versions the case names (default 1.29 and 1.33; classic mode also 1.28; a pod with
fields newer than 1.33 on 1.35).

Run by scripts/test.sh with the chart tests:
    python3 -m unittest discover -s tests/chart -v
"""

import glob
import json
import os
import unittest

from test_chart import ROOT, kube_validate, kubernetes_validate, require, skip_or_fail, yaml

try:
    import jsonpatch
except ImportError:  # depends on the machine
    jsonpatch = None

CASES = os.path.join(ROOT, "tests", "inject", "cases")
GOLDEN = os.path.join(ROOT, "tests", "inject", "golden")
DEFAULT_VERSIONS = ["1.29.0", "1.33.0"]


class Injection(unittest.TestCase):
    def setUp(self):
        if yaml is None:
            skip_or_fail("PyYAML is not installed: pip install pyyaml")
        require(("kubernetes-validate", kubernetes_validate), ("jsonpatch", jsonpatch))

    def cases(self):
        paths = sorted(glob.glob(os.path.join(CASES, "*.yaml")))
        self.assertGreaterEqual(len(paths), 14)
        for path in paths:
            name = os.path.basename(path)[: -len(".yaml")]
            with open(path) as f:
                case = yaml.safe_load(f)
            with open(os.path.join(GOLDEN, name + ".json")) as f:
                golden = json.load(f)
            yield name, case, golden

    def test_every_patch_applies_to_the_golden_pod_and_every_pod_is_valid_kubernetes(self):
        injected = 0
        for name, case, golden in self.cases():
            versions = case.get("validate", DEFAULT_VERSIONS)
            kube_validate(case["pod"], f"{name} (as sent)", versions)
            if golden["outcome"] != "injected":
                continue
            injected += 1
            pod = jsonpatch.JsonPatch(golden["patch"]).apply(case["pod"])
            self.assertEqual(pod, golden["pod"], name)
            kube_validate(pod, f"{name} (injected)", versions)
        self.assertGreaterEqual(injected, 9)

    def test_classic_mode_is_checked_against_a_cluster_before_native_sidecars(self):
        for name, case, golden in self.cases():
            if golden["outcome"] == "injected":
                agent = [c for c in golden["pod"]["spec"]["containers"] if c["name"] == "token-agent"]
                if agent:
                    self.assertIn("1.28.0", case.get("validate", []), name)
                    self.assertNotIn("restartPolicy", agent[0], name)


if __name__ == "__main__":
    unittest.main()
