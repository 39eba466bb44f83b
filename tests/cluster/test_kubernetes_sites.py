"""Sites with ``launch: kubernetes``: the operator's objects, checked against the operator's own CRDs.

There is no Kubernetes cluster here. The manifests are validated against the
``DaskCluster`` and ``DaskWorkerGroup`` CRDs shipped in the dask-kubernetes
package (made strict: a field the API server would silently prune fails), the
pod's own command is run for real against a TLS Lepton scheduler, and starting a
cluster with no reachable Kubernetes fails in one line with nothing left running.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography import x509
from dask_kubernetes.operator.controller.controller import build_worker_deployment_spec
from dask_kubernetes.operator.validation import validate_cluster_name
from distributed import Client, LocalCluster

import lepton_lab
from lepton_lab.cluster import kubernetes as k8s
from lepton_lab.cluster.gate import SiteGate
from lepton_lab.cluster.launcher import ManagedCluster
from lepton_lab.cluster.profiles import profile_from_dict
from lepton_lab.cluster.workers import site_resources, workers_now
from lepton_lab.errors import ClusterError, ConfigError
from lepton_lab.security.certs import ClusterCA
from tests.helpers import eventually, wait_no_dask_children

CLOUD = {
    "name": "cloud", "kind": "cloud", "workers": 2, "threads": 4, "memory": "16GiB", "cost_per_hour": 2.5,
    "launch": "kubernetes", "image": "registry.example.org/lepton-lab:0.1", "namespace": "ml",
    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4", "pool": "gpu"},
    "gpus_per_worker": 1, "service_account": "lepton-worker",
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
EDGE_SSH = {"name": "edge-hospital-a", "kind": "edge", "workers": 1, "memory": "1GiB", "launch": "ssh",
            "hosts": ["10.1.0.7"]}
EDGE_LOCAL = {"name": "edge-branch-b", "kind": "edge", "workers": 1, "memory": "256MiB"}
SCHEDULER = "tls://lepton.example.org:8786"


def _profile(*sites):
    return profile_from_dict("mixed", {"sites": [copy.deepcopy(s) for s in sites]}, "profiles.yaml: profiles.mixed")


def _crd(kind: str) -> dict:
    """The operator's CRD for ``kind``, as the dask-kubernetes package ships it (references resolved)."""
    path = files("dask_kubernetes") / "operator/deployment/helm/dask-kubernetes-operator/crds" / f"{kind.lower()}.yaml"
    return yaml.safe_load(path.read_text())


def _strict(schema):
    """The schema with every object closed: Kubernetes prunes unknown fields, so a typo must fail here."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validator(kind: str) -> jsonschema.Draft4Validator:
    crd = _crd(kind)
    version = crd["spec"]["versions"][0]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # What the API server adds to every object.
    schema["properties"].update(apiVersion={"enum": [f"{crd['spec']['group']}/{version['name']}"]},
                                kind={"enum": [crd["spec"]["names"]["kind"]]},
                                metadata={"type": "object"})
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return jsonschema.Draft4Validator(schema)


@pytest.fixture
def ca(tmp_path):
    return ClusterCA.create("kube-trial", tmp_path / "ca")


def _render(ca, *sites, **kwargs):
    return k8s.render(_profile(*sites), cluster_id="kube-trial", scheduler=SCHEDULER, ca=ca, **kwargs)


def _by_kind(objects):
    out: dict[str, list[dict]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def test_a_profile_mixes_a_kubernetes_cloud_site_with_ssh_and_local_edge_sites():
    profile = _profile(CLOUD, EDGE_SSH, EDGE_LOCAL)
    cloud = profile.site("cloud")
    assert (cloud.launch, cloud.image, cloud.namespace, cloud.gpus_per_worker, cloud.gpus) == (
        "kubernetes", CLOUD["image"], "ml", 1, 0)
    assert dict(cloud.node_selector) == CLOUD["node_selector"]
    assert [s.launch for s in profile.sites] == ["kubernetes", "ssh", "local"]
    kept = [s for s in profile.sites if s.launch != "ssh"]
    again = profile_from_dict("mixed", {"sites": [s.to_dict() for s in kept]}, "again")
    assert again.sites == tuple(kept)


def test_rendered_objects_pass_the_operators_crd_schemas(ca):
    objects = _render(ca, CLOUD, EDGE_SSH, EDGE_LOCAL,
                      replicas={"cloud": 3})
    kinds = _by_kind(objects)
    assert sorted(kinds) == ["DaskCluster", "DaskWorkerGroup", "Secret"]
    assert len(kinds["DaskCluster"]) == 1 and len(kinds["DaskWorkerGroup"]) == 1 and len(kinds["Secret"]) == 1
    for kind in ("DaskCluster", "DaskWorkerGroup"):
        validator = _validator(kind)
        for obj in kinds[kind]:
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
            assert errors == []
    cluster, group = kinds["DaskCluster"][0], kinds["DaskWorkerGroup"][0]
    assert group["spec"]["cluster"] == cluster["metadata"]["name"] == "lepton-kube-trial"
    validate_cluster_name(cluster["metadata"]["name"])  # the operator's own check
    assert {o["metadata"]["namespace"] for o in objects} == {"ml"}
    assert group["spec"]["worker"]["replicas"] == 3
    assert cluster["spec"]["worker"]["replicas"] == 0  # the operator's default group starts nothing
    # The strict schema does catch what Kubernetes would drop or refuse.
    bad = copy.deepcopy(group)
    container = bad["spec"]["worker"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    bad["spec"]["worker"]["spec"]["nodeSelector"]["pool"] = 1
    messages = [e.message for e in _validator("DaskWorkerGroup").iter_errors(bad)]
    assert any("'resource' was unexpected" in m for m in messages) and any("is not of type 'string'" in m
                                                                            for m in messages)


def test_worker_pods_run_lepton_workers_of_their_site(ca):
    objects = _render(ca, CLOUD, EDGE_LOCAL)
    group = _by_kind(objects)["DaskWorkerGroup"][0]
    pod = group["spec"]["worker"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == CLOUD["image"]
    assert container["command"][:2] == ["sh", "-c"] and "exec lepton-lab worker --index" in container["command"][2]
    args = container["args"]
    flags = dict(zip(args[::2], args[1::2]))
    assert flags == {
        "--scheduler": SCHEDULER, "--site": "cloud", "--kind": "cloud", "--nworkers": "1", "--nthreads": "4",
        "--memory-limit": str(16 * 2**30), "--gpus": "1", "--death-timeout": "60",
        "--tls-ca-file": "/etc/lepton/tls/ca.crt", "--tls-cert": "/etc/lepton/tls/worker.crt",
        "--tls-key": "/etc/lepton/tls/worker.key",
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"] == SCHEDULER  # the operator keeps it: workers join Lepton's scheduler
    assert pod["nodeSelector"] == CLOUD["node_selector"]
    assert pod["tolerations"] == CLOUD["tolerations"]
    assert pod["serviceAccountName"] == "lepton-worker"
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": str(16 * 2**30)},
        "limits": {"cpu": "4", "memory": str(16 * 2**30), "nvidia.com/gpu": "1"},
    }
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert (mount["name"], mount["mountPath"], mount["readOnly"]) == (volume["name"], k8s.CERT_DIR, True)
    # The certificate secret: the cluster's CA, and a worker certificate bound to the site.
    (secret,) = _by_kind(objects)["Secret"]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert sorted(secret["stringData"]) == ["ca.crt", "worker.crt", "worker.key"]
    assert secret["stringData"]["ca.crt"] == ca.ca_pem
    cert = x509.load_pem_x509_certificate(secret["stringData"]["worker.crt"].encode())
    cert.verify_directly_issued_by(ca.cert)
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert "lepton://site/cloud" in uris
    assert "PRIVATE KEY" in secret["stringData"]["worker.key"]
    # What the launcher counts for each pod names the site, as every Lepton worker's resources do.
    plan = k8s.slot_spec(type("Plan", (), {"name": "cloud-0"})(), _profile(CLOUD).site("cloud"))
    assert plan["options"]["resources"] == site_resources("cloud", "cloud", 4, gpu=True) == {
        "cloud": 4, "GPU": 1}


@pytest.fixture
def gated(ca):
    security = ca.security("scheduler", "client", common_name="control-plane")
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None, security=security,
                      protocol="tls://", scheduler_kwargs={"plugins": [SiteGate(ca.cluster_id)]}) as cluster, \
            Client(cluster, security=security) as client:
        yield cluster, client


def test_the_pod_command_joins_as_its_site_with_the_rendered_certificate(ca, gated, tmp_path):
    cluster, client = gated
    site = {"name": "cloud-pool", "kind": "cloud", "workers": 1, "threads": 1, "memory": "256MiB",
            "launch": "kubernetes", "image": "lepton-lab:test"}
    objects = k8s.render(_profile(site), cluster_id=ca.cluster_id, scheduler=cluster.scheduler_address, ca=ca)
    (secret,) = _by_kind(objects)["Secret"]
    (group,) = _by_kind(objects)["DaskWorkerGroup"]
    (container,) = group["spec"]["worker"]["spec"]["containers"]
    tls = tmp_path / "tls"
    tls.mkdir(mode=0o700)
    for name, text in secret["stringData"].items():
        (tls / name).write_text(text)
    # The Deployment the operator makes for one replica of the group, by the operator's own code.
    suffix = "0a1b2c3d4e"
    deployment = build_worker_deployment_spec(
        group["metadata"]["name"], group["metadata"]["namespace"], group["spec"]["cluster"], suffix,
        group["spec"]["worker"]["spec"], {}, group["spec"]["worker"]["metadata"]["labels"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pod_env = {e["name"]: e["value"] for e in container["env"]}
    assert pod_env["DASK_SCHEDULER_ADDRESS"] == cluster.scheduler_address  # ours, not the operator's service
    assert pod_env["DASK_WORKER_NAME"] == f"{group['metadata']['name']}-worker-{suffix}"
    argv = container["command"] + [a.replace(k8s.CERT_DIR, str(tls)) for a in container["args"]]
    env = {**os.environ, **pod_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "LEPTON_HOME": str(tmp_path / "home"), "DASK_TEMPORARY_DIRECTORY": str(tmp_path / "scratch")}
    pod = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client.wait_for_workers(1, timeout=60)
        (worker,) = workers_now(client).values()
        assert worker["name"] == f"cloud-pool-{int(suffix, 16) * k8s.PER_POD}"
        assert worker["resources"] == site_resources("cloud", "cloud-pool", 1)
        work = client.submit(sum, [4, 5], resources=lepton_lab.on_site("cloud-pool"), pure=False)
        assert work.result(timeout=30) == 9
    finally:
        pod.terminate()
        out, err = pod.communicate(timeout=60)
    assert pod.returncode == 0, err
    assert eventually(lambda: not workers_now(client), timeout=30)


@pytest.mark.parametrize("change, field", [
    ({"image": ""}, "image"),
    ({"image": "has space:1"}, "image"),
    ({"namespace": "Not_A_Namespace"}, "namespace"),
    ({"node_selector": ["pool"]}, "node_selector"),
    ({"node_selector": {"bad key!": "x"}}, "node_selector"),
    ({"node_selector": {"pool": 3}}, "node_selector.pool"),
    ({"gpus_per_worker": -1}, "gpus_per_worker"),
    ({"gpus_per_worker": True}, "gpus_per_worker"),
    ({"gpus": 2}, "gpus"),
    ({"service_account": "Has Caps"}, "service_account"),
    ({"tolerations": {"key": "x"}}, "tolerations"),
    ({"tolerations": [{"key": "x", "operator": "Sometimes"}]}, "tolerations[0].operator"),
    ({"tolerations": [{"colour": "red"}]}, "tolerations[0].colour"),
    ({"tolerations": [{"key": "x", "operator": "Exists", "value": "y"}]}, "tolerations[0].value"),
    ({"hosts": ["10.0.0.1"]}, "hosts"),
])
def test_bad_kubernetes_fields_give_one_line_config_errors(change, field):
    with pytest.raises(ConfigError) as err:
        _profile({**CLOUD, **change})
    message = str(err.value)
    assert f"sites[0].{field}:" in message and "\n" not in message, message


def test_kubernetes_fields_belong_to_kubernetes_sites_and_one_namespace():
    with pytest.raises(ConfigError, match=re.escape("sites[0].image: only for sites with launch: kubernetes")):
        _profile({**EDGE_LOCAL, "image": "x:1"})
    with pytest.raises(ConfigError, match=re.escape("sites[0].gpus_per_worker: only cloud sites carry GPUs")):
        _profile({**CLOUD, "name": "edge-pods", "kind": "edge"})
    with pytest.raises(ConfigError, match="share one namespace"):
        _profile(CLOUD, {**CLOUD, "name": "cloud-b", "namespace": "other"})


def test_a_kubernetes_site_needs_tls_and_a_reachable_scheduler_address(ca, tmp_path):
    profile = _profile(CLOUD)
    with pytest.raises(ConfigError, match="needs a cluster with TLS"):
        ManagedCluster.start(profile, gpus=[])
    security = ca.security("scheduler", "worker", "client", common_name="lepton-test")
    with pytest.raises(ConfigError, match="not loopback"):
        ManagedCluster.start(profile, security=security, ca_dir=ca.directory, gpus=[])


def test_without_a_reachable_kubernetes_the_start_fails_in_one_line_and_leaves_nothing(ca, tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": "https://127.0.0.1:9"}}],  # nothing listens
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {"token": "none"}}],
    }))
    security = ca.security("scheduler", "worker", "client", common_name="lepton-test")
    for config in (tmp_path / "missing", kubeconfig):
        monkeypatch.setenv("KUBECONFIG", str(config))
        with pytest.raises(ClusterError) as err:
            ManagedCluster.start(_profile(CLOUD, EDGE_LOCAL), name="kube-none", security=security,
                                 ca_dir=ca.directory, host="127.0.0.1", advertise="10.20.30.40", gpus=[],
)
        message = str(err.value)
        assert message.startswith("kubernetes: no cluster to reach") and "\n" not in message, message
        # The local edge worker and the scheduler are gone.
        assert wait_no_dask_children() == []
