"""deploy/ as shipped: every Kubernetes manifest validates against the KubeRay CRDs (unknown
fields are errors), points only at things deploy/ creates or documents, and its commands
run (placeholders refused by the commands themselves)."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from flowception.eval.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = Path(__file__).parent / "crds"
NOT_MANIFESTS = {"ray-cluster.yaml"}  # the Ray cluster launcher's config (`ray up`), not Kubernetes


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever properties are listed and
    unknown fields are not explicitly preserved (the API server's strict validation)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def schemas() -> dict[str, jsonschema.Draft7Validator]:
    out = {}
    for path in sorted(CRDS.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 3 MB: the C loader
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = strict(v1["schema"]["openAPIV3Schema"])
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    assert set(out) == {"RayCluster", "RayJob", "RayCronJob"}
    return out


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name in NOT_MANIFESTS:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((path.name, doc))
    return out


def containers(doc: Any) -> list[dict]:
    if isinstance(doc, dict):
        found = list(doc.get("containers", []))
        return found + [c for v in doc.values() for c in containers(v)]
    if isinstance(doc, list):
        return [c for v in doc for c in containers(v)]
    return []


def test_every_manifest_validates_against_the_kuberay_crds(schemas):
    docs = manifests()
    assert {d["kind"] for _, d in docs} == {"RayCluster", "RayJob", "RayCronJob"}
    assert all(d["apiVersion"] == "ray.io/v1" for _, d in docs)
    for name, doc in docs:
        schemas[doc["kind"]].validate(doc)  # raises naming the bad field
        assert name not in NOT_MANIFESTS


def test_an_unknown_field_is_an_error(schemas):
    (doc,) = [d for _, d in manifests() if d["kind"] == "RayCronJob"]
    bad = copy.deepcopy(doc)
    bad["spec"]["jobTemplate"]["concurrencyPolicy"] = "Forbid"  # a batch/v1 CronJob field
    with pytest.raises(jsonschema.ValidationError, match="concurrencyPolicy"):
        schemas["RayCronJob"].validate(bad)


def test_images_are_what_deploy_dockerfile_builds():
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    built = set(re.findall(r"-t (flowception:[\w.\-]+) \.", dockerfile))
    assert built == {f"flowception:{version}-cpu", f"flowception:{version}-cu128"}
    images = {c["image"] for _, d in manifests() for c in containers(d)}
    assert images and images <= built, images - built
    assert "latest" not in dockerfile and re.search(r"^ARG BASE_IMAGE=\S+:\S+", dockerfile, re.M)


def test_dockerfile_installs_like_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    torch = re.search(r"^TORCH_SPEC \?= (\S+)", makefile, re.M)[1]
    assert f"ARG TORCH_SPEC={torch}" in dockerfile
    deepspeed = (
        "DS_BUILD_OPS=0 pip install --no-build-isolation -c requirements/constraints.txt deepspeed"
    )
    as_make = makefile.replace("$(BIN)/", "").replace(" -q", "")
    assert deepspeed in as_make.replace("$(CONSTRAINTS)", "requirements/constraints.txt")
    assert deepspeed in dockerfile
    assert 'pip install -c requirements/constraints.txt ".[${EXTRAS}]"' in dockerfile


def test_references_resolve_inside_deploy():
    docs = manifests()
    clusters = {d["metadata"]["name"] for _, d in docs if d["kind"] == "RayCluster"}
    for name, doc in docs:
        text = (DEPLOY / name).read_text()
        if doc["kind"] == "RayCronJob":  # the sweep runs on the long-lived cluster of deploy/
            selector = doc["spec"]["jobTemplate"]["clusterSelector"]["ray.io/cluster"]
            assert selector in clusters
        for c in containers(doc):
            for ref in c.get("envFrom", []):  # a Secret the header says how to create
                secret = ref["secretRef"]["name"]
                assert f"kubectl create secret generic {secret}" in text or any(
                    f"kubectl create secret generic {secret}" in (DEPLOY / n).read_text()
                    for n, _ in docs
                ), (name, secret)
        assert "-svc" not in yaml.safe_dump(doc["spec"])  # no hand-written service names


def _entrypoints() -> list[tuple[str, list[str]]]:
    out = []
    for name, doc in manifests():
        spec = doc["spec"].get("jobTemplate", doc["spec"])
        if "entrypoint" in spec:
            out.append((name, shlex.split(spec["entrypoint"])))
    return out


@pytest.mark.parametrize(("name", "argv"), _entrypoints(), ids=lambda x: str(x)[:30])
def test_entrypoints_parse_and_refuse_their_placeholders(name, argv, capsys, monkeypatch):
    assert argv[:3] == ["python", "-m", "flowception.eval.cli"], name
    args = build_parser().parse_args(argv[3:])  # the command and its options exist
    for arg in argv[3:]:
        if arg.endswith(".yaml"):
            assert (ROOT / arg).is_file(), arg
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(argv[3:]) == 2, args
    err = capsys.readouterr().err
    assert "YOUR_BUCKET is a placeholder" in err, err
