"""The Helm chart (deploy/helm/dlm-triton), linted and rendered by Helm's own Go library
(helm-python-sdk) and checked on what the rendered objects do: probes, ports, volumes, the
autoscaler's metric and the adapter rule behind it, replicas, security settings."""

import shutil

import pytest
import yaml

from deploy import lint

pytest.importorskip("helm_python", reason="helm-python-sdk not installed (requirements.txt)")


def objects(values=None) -> dict[str, dict]:
    """Kind -> the one object of that kind the chart renders with `values`."""
    out: dict[str, dict] = {}
    for obj in lint.manifests(values):
        assert obj["kind"] not in out, f"two {obj['kind']} objects"
        out[obj["kind"]] = obj
    return out


def pod(values=None) -> dict:
    return objects(values)["Deployment"]["spec"]["template"]


def container(values=None, name="tritonserver") -> dict:
    spec = pod(values)["spec"]
    return next(c for c in spec["containers"] + spec["initContainers"] if c["name"] == name)


def env(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


@pytest.mark.parametrize("variant", sorted(lint.VARIANTS))
def test_chart_lints_clean_and_renders_valid_yaml(variant):
    values = lint.VARIANTS[variant]
    assert lint.helm_lint(values) == []
    for path, text in lint.render(values).items():
        assert lint.yamllint(text, path) == []


def test_lint_reports_what_is_wrong(tmp_path):
    """The checks can fail: values against values.schema.json, a broken template, bad YAML."""
    found = lint.helm_lint({"replicaCount": "many", "storage": {"type": "nfs"}})
    assert any("replicaCount" in f for f in found) and any("storage" in f for f in found), found
    broken = tmp_path / "chart"
    shutil.copytree(lint.CHART, broken)
    (broken / "templates" / "service.yaml").write_text("{{ if .Values.service }}\nkind: x\n")
    assert lint.helm_lint(chart=broken), "an unclosed if is not reported"
    assert lint.yamllint("a: 1\na: 2\n", "dup.yaml"), "duplicate key not reported"
    assert lint.yamllint("key:   [1,2]  \n", "spaces.yaml")


def test_probes_ports_and_metrics_scraping():
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert env(c)["DLM_HTTP_PORT"] == "8000" and env(c)["DLM_METRICS_PORT"] == "8002"
    assert env(c)["DLM_ADDRESS"] == "0.0.0.0"  # reachable by the kubelet and the Service
    annotations = pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8002"
    assert annotations["prometheus.io/path"] == "/metrics"
    svc_ports = {p["name"]: p["port"] for p in objects()["Service"]["spec"]["ports"]}
    assert svc_ports == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_ports_follow_values():
    c = container({"server": {"httpPort": 9000, "metricsPort": 9002}})
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == 9000 and ports["metrics"] == 9002
    assert env(c)["DLM_HTTP_PORT"] == "9000" and env(c)["DLM_METRICS_PORT"] == "9002"
    annotations = pod({"server": {"metricsPort": 9002}})["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9002"


def test_service_monitor_is_optional():
    assert "ServiceMonitor" not in objects()
    sm = objects({"metrics": {"serviceMonitor": {"enabled": True}}})["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == pod()["metadata"]["labels"]


def test_hpa_scales_on_queue_time_per_request():
    objs = objects()
    hpa = objs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == objs["Deployment"]["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "dlm_queue_us_per_request"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}
    # With the HPA on, the Deployment leaves the count to it (an upgrade must not reset it).
    assert "replicas" not in objs["Deployment"]["spec"]
    hpa = objects({"autoscaling": {"targetQueueUsPerRequest": 20000, "maxReplicas": 3}})[
        "HorizontalPodAutoscaler"
    ]
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "20000"
    assert hpa["spec"]["maxReplicas"] == 3


def test_adapter_rule_divides_queue_time_by_successes():
    cm = objects()["ConfigMap"]
    [rule] = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == "dlm_queue_us_per_request"
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    numerator, denominator = rule["metricsQuery"].split(" / ")
    assert numerator.startswith("sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m]))")
    assert 'nv_inference_request_success{<<.LabelMatchers>>,model="ensemble"}[1m]' in denominator
    assert denominator.startswith("clamp_min(")  # no division by zero when idle
    assert "by (<<.GroupBy>>)" in numerator and "by (<<.GroupBy>>)" in denominator
    window = objects({"autoscaling": {"window": "2m"}})["ConfigMap"]["data"]["config.yaml"]
    assert window.count("[2m]") == 2
    assert "ConfigMap" not in objects({"autoscaling": {"adapterRules": False}})


def test_replicas_from_values_without_autoscaling():
    objs = objects({"autoscaling": {"enabled": False}, "replicaCount": 3})
    assert objs["Deployment"]["spec"]["replicas"] == 3
    assert "HorizontalPodAutoscaler" not in objs and "ConfigMap" not in objs


def test_model_and_engine_come_from_the_volume():
    spec = pod()["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "demo-dlm-triton"
    assert objects()["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    init, server = container(name="prepare"), container()
    assert init["args"] == ["prepare"] and server["args"] == ["serve"]
    for c in (init, server):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["storage"] == "/var/lib/dlm" and mounts["workdir"] == "/tmp/dlm"
        assert env(c)["DLM_ENGINE_DIR"] == "/var/lib/dlm/engine"
        assert env(c)["DLM_WORKDIR"] == "/tmp/dlm"
    assert {m["name"]: m["mountPath"] for m in server["volumeMounts"]}["shm"] == "/dev/shm"

    host = pod({"storage": {"type": "hostPath", "hostPath": {"path": "/data/dlm"}}})["spec"]
    storage = next(v for v in host["volumes"] if v["name"] == "storage")
    assert storage["hostPath"] == {"path": "/data/dlm", "type": "DirectoryOrCreate"}
    assert "PersistentVolumeClaim" not in objects({"storage": {"type": "hostPath"}})
    claim = objects({"storage": {"pvc": {"existingClaim": "models"}}})
    assert "PersistentVolumeClaim" not in claim
    assert env(container({"model": {"dir": "/var/lib/dlm/models/x"}}))["DLM_MODEL"] == (
        "/var/lib/dlm/models/x"
    )


def test_unknown_storage_type_fails_to_render():
    with pytest.raises(Exception, match="storage.type"):
        lint.render({"storage": {"type": "nfs"}})


def test_model_control_stays_closed():
    """No flag opens model control; the repository API key comes only from a Secret."""
    for values in ({}, lint.VARIANTS["cpu-hostpath"]):
        for c in pod(values)["spec"]["containers"] + pod(values)["spec"]["initContainers"]:
            assert not any("model-control" in a or "restricted" in a for a in c["args"]), c["args"]
    assert "DLM_ADMIN_KEY" not in env(container())  # a random key per start: API closed
    key = env(container({"server": {"adminKeySecret": "dlm-admin"}}))["DLM_ADMIN_KEY"]
    assert key == {"secretKeyRef": {"name": "dlm-admin", "key": "admin-key"}}
    sec = container()["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False and sec["capabilities"]["drop"] == ["ALL"]
    assert pod()["spec"]["securityContext"]["runAsNonRoot"] is True


def test_gpu_by_default_and_graceful_stop():
    c = container()
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(name="prepare")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod()["spec"]["terminationGracePeriodSeconds"] > 15 + 5  # Triton's exit timeout
    cpu = container(lint.VARIANTS["cpu-hostpath"])
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert cpu["image"] == "dlm-triton-cpu:0.1.0"
