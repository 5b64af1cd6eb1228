"""`distree deploy k8s`: manifests per tier, valid against the Kubernetes schemas (offline), and a
golden-file check of a spec with replicas."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distree.cli import app
from distree.deploy import DeployError, K8sOptions, validate_manifests, write_manifests
from distree.runtime import load_spec, parse_spec

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
GOLDEN = FIX / "golden"
OPTS = {"image": "registry.example/distree-node:1.0", "name": "digits", "namespace": "edge"}


def _kinds(out: Path) -> dict[str, list[dict]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(out.glob("*.yaml"))}


def test_manifests_of_a_spec_with_replicas_match_the_golden_files(tmp_path):
    spec = load_spec(FIX / "cluster.toml")
    opts = K8sOptions(**OPTS, pools={2: "jetson"}, backends={3: "onnx"})
    paths = write_manifests(spec, opts, tmp_path)
    assert sorted(p.name for p in paths) == ["Containerfile", "configmap.yaml", *[f"tier{k}.yaml" for k in range(1, 5)]]
    if os.environ.get("DISTREE_REGEN_GOLDEN"):  # after a deliberate change: rewrite, then review the diff
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir()
        for p in paths:
            (GOLDEN / p.name).write_text(p.read_text().replace(str(FIX), "__FIX__"))
    for p in paths:
        assert p.read_text().replace(str(FIX), "__FIX__") == (GOLDEN / p.name).read_text(), p.name
    docs = _kinds(tmp_path)
    deps = {d["metadata"]["name"]: d for f in docs.values() for d in f if d["kind"] == "Deployment"}
    assert {n: d["spec"]["replicas"] for n, d in deps.items()} == {
        "digits-tier1": 2, "digits-tier2": 3, "digits-tier3": 1, "digits-tier4": 1,
    }  # fmt: skip
    pod2 = deps["digits-tier2"]["spec"]["template"]["spec"]
    assert pod2["nodeSelector"] == {"distree.io/pool": "jetson"}
    assert pod2["containers"][0]["readinessProbe"]["grpc"] == {"port": 7002}
    svcs = [d for f in docs.values() for d in f if d["kind"] == "Service"]
    assert len(svcs) == 4 and all(s["spec"]["clusterIP"] == "None" for s in svcs)
    # the pods' spec: one node per tier, each at its headless Service's DNS name
    cm = docs["configmap.yaml"][0]["data"]
    (tmp_path / "policy.json").write_text(cm["policy.json"])
    (tmp_path / "cluster.toml").write_text(cm["cluster.toml"])
    pod_spec = load_spec(tmp_path / "cluster.toml", check_files=False)
    assert pod_spec.num_nodes == 4 and len(pod_spec.nodes) == 4
    assert pod_spec.node(2).address == "digits-tier2.edge.svc.cluster.local:7002"
    assert pod_spec.node(2).nominal_compute_ms == 12.5 and pod_spec.batching.max_batch_size == 4
    assert len(validate_manifests(paths)) == 9


def test_tls_spec_references_secrets_and_every_manifest_validates(tmp_path):
    data = {
        "checkpoint": str(FIX),
        "policy": str(FIX / "policy.json"),
        "tls": {"ca": str(FIX / "policy.json"), "client_auth": True},
        "nodes": [
            {
                "address": f"10.0.0.{k}:700{k}",
                "segment": k,
                "cert": str(FIX / "policy.json"),
                "key": str(FIX / "policy.json"),
            }
            for k in (1, 2, 2, 3)
        ],
    }
    data["nodes"][2]["address"] = "10.0.0.9:7002"
    spec = parse_spec(data, tmp_path / "tls.toml")
    paths = write_manifests(spec, K8sOptions(image="x/y:z"), tmp_path / "out")
    validate_manifests(paths)
    dep = _kinds(tmp_path / "out")["tier2.yaml"][0]
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "distree-tls-tier2"}} in pod["volumes"]
    assert "tcpSocket" in pod["containers"][0]["livenessProbe"]  # gRPC probes speak plaintext only
    toml = _kinds(tmp_path / "out")["configmap.yaml"][0]["data"]["cluster.toml"]
    assert 'ca = "/etc/distree/tls/ca.crt"' in toml and 'client_cert = "/etc/distree/tls/tls.crt"' in toml


def test_invalid_manifest_and_bad_options_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n")
    with pytest.raises(DeployError, match="bad.yaml: Deployment/x is not valid Kubernetes 1.30: spec.replicas"):
        validate_manifests([bad])
    spec = load_spec(FIX / "cluster.toml")
    with pytest.raises(DeployError, match="--name 'Bad_Name' must be a DNS label"):
        write_manifests(spec, K8sOptions(image="i", name="Bad_Name"), tmp_path / "o")


def test_deploy_cli(tmp_path):
    res = CliRunner().invoke(
        app,
        ["deploy", "k8s", "--spec", str(FIX / "cluster.toml"), "--image", "i:1", "--out", str(tmp_path / "m"),
         "--pool", "2=jetson"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "9 resources valid" in res.output and "tier 2: 3" in res.output
    res = CliRunner().invoke(app, ["deploy", "k8s", "--spec", str(FIX / "cluster.toml"), "--image", "i", "--out",
                                   str(tmp_path / "m"), "--pool", "jetson"])  # fmt: skip
    assert res.exit_code == 2 and "--pool takes TIER=VALUE" in res.output


def test_the_chain_token_is_mounted_from_a_secret_and_named_in_the_pods_spec(tmp_path):
    spec = load_spec(FIX / "cluster.toml")
    write_manifests(spec, K8sOptions(**OPTS), tmp_path)
    docs = _kinds(tmp_path)
    pod = docs["tier2.yaml"][0]["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "tokens")
    assert vol["secret"] == {"secretName": "digits-tokens", "defaultMode": 0o400}
    assert {"name": "tokens", "mountPath": "/etc/distree/tokens", "readOnly": True} in pod["containers"][0][
        "volumeMounts"
    ]
    pods_spec = docs["configmap.yaml"][0]["data"]["cluster.toml"]
    assert 'token_file = "/etc/distree/tokens/chain.token"' in pods_spec
