"""Prints the PrometheusRule that carries deploy/prometheus/rules/recsys.yml into Kubernetes.

Regenerate after changing the rules: python deploy/k8s/prometheus_rule.py > deploy/k8s/prometheus-rule.yaml
"""

from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parent.parent / "prometheus" / "rules" / "recsys.yml"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL expressions) as literal blocks, as in the rules file."""


_BlockDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def prometheus_rule() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "recsys"},
        "spec": yaml.safe_load(RULES.read_text()),
    }


if __name__ == "__main__":
    print("# Generated from deploy/prometheus/rules/recsys.yml by deploy/k8s/prometheus_rule.py: do not edit.")
    print(yaml.dump(prometheus_rule(), Dumper=_BlockDumper, sort_keys=False, width=200), end="")
