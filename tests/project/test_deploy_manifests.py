"""deploy/k8s/*.yaml: valid against the Kubernetes API schemas, and consistent with deploy/nginx/nginx.conf.

Not applied to a cluster: the schemas come with the ``kubernetes-validate`` package (the ``test``
extra); without it (or PyYAML) these tests skip.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The oldest Kubernetes with gRPC probes on by default (GA in 1.27), and the newest the package knows.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]


def documents() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def find(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    """Every document is a known kind and passes strict validation (no unknown or misspelt fields)."""
    found = documents()
    assert {d["kind"] for _, d in found} >= {
        "StatefulSet",
        "Service",
        "Deployment",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Secret",
    }
    for name, doc in found:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {error.message} at {list(error.path)}")


def test_the_check_catches_a_misspelt_field():
    """Strict validation rejects what a typo makes of a field (so the test above means something)."""
    statefulset = copy.deepcopy(find("StatefulSet")[0])
    probe = statefulset["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["grcp"] = probe.pop("grpc")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, VERSIONS[-1], strict=True)


def test_proxy_configmap_is_deploy_nginx_conf():
    """The ConfigMap that nginx runs with holds deploy/nginx/nginx.conf, byte for byte."""
    (config,) = find("ConfigMap", "rnnsim-proxy")
    assert config["data"]["nginx.conf"] == (DEPLOY / "nginx" / "nginx.conf").read_text()
    (proxy,) = find("Deployment", "rnnsim-proxy")
    mounts = proxy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"mountPath": "/etc/nginx/nginx.conf", "subPath": "nginx.conf"}.items() <= mounts[0].items()


def test_proxy_upstreams_are_the_statefulset_replicas():
    """nginx lists one upstream per StatefulSet pod, each the pod's own Service on the gRPC port."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstreams = re.findall(r"^\s*server ([\w.-]+):(\d+)\b", conf, flags=re.M)
    (statefulset,) = find("StatefulSet", "rnnsim")
    pods = [f"rnnsim-{i}" for i in range(statefulset["spec"]["replicas"])]
    assert upstreams == [(pod, "50051") for pod in pods]
    assert re.search(r"^\s*hash \$\w+ consistent;", conf, flags=re.M)
    for pod in pods:
        (service,) = find("Service", pod)
        assert service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == pod
        assert [p["port"] for p in service["spec"]["ports"]] == [50051]
    (headless,) = find("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_replicas_probe_grpc_request_a_gpu_and_share_checkpoints():
    """gRPC probes on 50051, one GPU each, the server id from the pod name, the RWX checkpoint
    volume and the auth Secret mounted where the server reads them."""
    (statefulset,) = find("StatefulSet", "rnnsim")
    pod = statefulset["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["grpc"]["port"] == 50051, probe
    assert str(server["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    env = {e["name"]: e for e in server["env"]}
    assert env["RNNSIM_SERVER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["RNNSIM_CHECKPOINT_DIR"]["value"] == mounts["checkpoints"]
    (claim,) = find("PersistentVolumeClaim", volumes["checkpoints"]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert env["RNNSIM_AUTH_FILE"]["value"] == f"{mounts['auth']}/auth.toml"
    (secret,) = find("Secret", volumes["auth"]["secret"]["secretName"])
    assert "auth.toml" in secret["stringData"]
    assert pod["terminationGracePeriodSeconds"] > int(env["RNNSIM_GRACE"]["value"])
