"""Renders and lints the chart with Helm's own engine (Helm v4's library,
wrapped by PyPI's helm-python-sdk), for charts/tests/chart.rs.

Reads {"chart": DIR, "cases": [{"values": {...}, "namespace": NS}],
"lint": [values, ...]} as JSON on stdin; writes {"renders": [{"manifests":
{template: text}} | {"error": text}], "lints": [report, ...]} on stdout.
"""
import json
import sys

try:
    import helm_python as helm
except ImportError:
    print("helm-python-sdk is missing: pip install helm-python-sdk==0.2.2", file=sys.stderr)
    sys.exit(3)

request = json.load(sys.stdin)
chart = helm.Chart.load(request["chart"])
renders = []
for case in request["cases"]:
    try:
        manifests = chart.render(case["values"], name="lanyard", namespace=case["namespace"], is_install=True)
        renders.append({"manifests": manifests})
    except Exception as error:  # the test reads Helm's message
        renders.append({"error": f"{type(error).__name__}: {error}"})
lints = [helm.lint(request["chart"], values, strict=True) for values in request.get("lint", [])]
json.dump({"renders": renders, "lints": lints}, sys.stdout)
