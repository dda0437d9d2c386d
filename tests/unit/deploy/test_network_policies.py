"""kubernetes/network-policies.yaml against the table in docs/jobs-and-clusters.md ("Who can reach
what"): every pod the manifests start, and the peers outside them, with the ports each listens
on; who may reach which of them worked out from the policies as Kubernetes' NetworkPolicy
semantics say (a pod selected for a direction takes only what a rule allows; rules add up; a
connection needs the sender's egress and the receiver's ingress); and the result compared with
the table both ways. Enforcement itself needs a CNI and cannot run here.

One reading is this evaluator's, where Kubernetes leaves it to the CNI: an `ipBlock` matches
addresses outside the cluster, never a pod."""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kuberay import cluster_specs, documents

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "facemask"  # where the manifests are applied; any name does, policies name none
RAY_OWN_PORT = ("TCP", 10002)  # one of the ports Ray's own processes listen on (raylet, objects, workers)


@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str | None = None  # None: an address outside the cluster
    labels: tuple = ()
    address: str = ""
    ports: frozenset = field(default_factory=frozenset)  # (protocol, port) it listens on
    ours: bool = False  # started by the manifests, so the policies may select it

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def container_ports(pod_spec: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["containerPort"]) for c in pod_spec["containers"] for p in c.get("ports", [])}


def project_pods(docs: list[dict]) -> list[Peer]:
    """Each pod the manifests start, with its template's labels and the ones KubeRay adds."""
    pods = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            template = doc["spec"]["template"]
            name = template["metadata"]["labels"]["app.kubernetes.io/name"]
            labels = tuple(sorted(template["metadata"]["labels"].items()))
            pods.append(Peer(name, NAMESPACE, labels, ports=frozenset(container_ports(template["spec"])), ours=True))
        if doc["kind"] not in ("RayJob", "RayService"):
            continue
        (cluster,) = cluster_specs(doc)
        app = doc["metadata"]["name"].removeprefix("facemask").strip("-") or "serve"
        groups = [("head", cluster["headGroupSpec"])] + [("worker", g) for g in cluster["workerGroupSpecs"]]
        for node_type, group in groups:
            template = group["template"]
            kuberay = {"ray.io/node-type": node_type, "ray.io/is-ray-node": "yes", "ray.io/cluster": f"{app}-x1"}
            labels = tuple(sorted({**template["metadata"].get("labels", {}), **kuberay}.items()))
            ports = container_ports(template["spec"]) | {RAY_OWN_PORT}
            pods.append(Peer(f"{app} {node_type}", NAMESPACE, labels, ports=frozenset(ports), ours=True))
        if doc["kind"] == "RayJob":  # KubeRay's submitter pod: its labels name the RayJob
            labels = {"ray.io/originated-from-crd": "RayJob", "ray.io/originated-from-cr-name": doc["metadata"]["name"]}
            pods.append(Peer(f"{app} submitter", NAMESPACE, tuple(sorted(labels.items())), ours=True))
    return pods


def outside_peers() -> list[Peer]:
    def tcp(*ports: int) -> frozenset:
        return frozenset(("TCP", p) for p in ports)

    return [
        Peer("KubeRay operator", "kuberay-system", (("app.kubernetes.io/component", "kuberay-operator"),)),
        Peer("Prometheus", "monitoring", (("app.kubernetes.io/name", "prometheus"),)),
        Peer("kube-dns", "kube-system", (("k8s-app", "kube-dns"),), ports=frozenset({("UDP", 53), ("TCP", 53)})),
        Peer("other pod", NAMESPACE, (("app", "debug"),)),
        Peer("other namespace", "default", (("app", "web"),)),
        Peer("internet", address="203.0.113.7", ports=tcp(80, 443, 5432, 6443)),
        Peer("cloud metadata", address="169.254.169.254", ports=tcp(80)),
    ]


def selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(rule_peer: dict, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        if peer.namespace is not None:
            return False
        address = ipaddress.ip_address(peer.address)
        block = rule_peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except", []))
    if peer.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        namespace_labels = {"kubernetes.io/metadata.name": peer.namespace}
        if not selects(rule_peer["namespaceSelector"], namespace_labels):
            return False
    elif peer.namespace != NAMESPACE:  # a podSelector alone means the policy's own namespace
        return False
    return selects(rule_peer.get("podSelector", {}), peer.label_map)


def rule_allows(rule: dict, peers_key: str, peer: Peer, port: tuple[str, int]) -> bool:
    ports = rule.get("ports")
    if ports and not any((p.get("protocol", "TCP"), p.get("port")) == port for p in ports):
        return False
    peers = rule.get(peers_key)
    return not peers or any(peer_matches(p, peer) for p in peers)


def allowed(policies: list[dict], source: Peer, target: Peer, port: tuple[str, int]) -> bool:
    def direction(pod: Peer, kind: str, rules_key: str, peers_key: str, other: Peer) -> bool:
        if not pod.ours:
            return True  # not ours to police
        chosen = [
            p["spec"]
            for p in policies
            if kind in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], pod.label_map)
        ]
        if not chosen:
            return True
        return any(rule_allows(r, peers_key, other, port) for spec in chosen for r in spec.get(rules_key, []))

    sent = direction(source, "Egress", "egress", "to", target)
    return sent and direction(target, "Ingress", "ingress", "from", source)


def reach(policies: list[dict], peers: list[Peer]) -> set[tuple[str, str, str]]:
    """Every (from, to, port) the policies let through, where one end at least is a project pod."""
    out = set()
    for source in peers:
        for target in peers:
            if source is target or not (source.ours or target.ours):
                continue
            for port in target.ports:
                if allowed(policies, source, target, port):
                    out.add((source.name, target.name, f"{port[1]}/{port[0]}"))
    return out


def table(peers: list[Peer]) -> set[tuple[str, str, str]]:
    """The docs' table, each row's names and ports expanded ("all": every port the target listens on)."""
    text = (ROOT / "docs" / "jobs-and-clusters.md").read_text()
    section = text.split("### Who can reach what", 1)[1].split("\n#", 1)[0]
    by_name = {p.name: p for p in peers}
    clients = [p.name for p in peers if not p.ours]  # anything outside the project's pods
    out = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("from", "") or set(cells[0]) <= {"-", " "}:
            continue
        sources = [n.strip("` ") for n in cells[0].split(",")]
        sources = [c for n in sources for c in (clients if n == "clients" else [n])]
        for source in sources:
            for target in (n.strip("` ") for n in cells[1].split(",")):
                if target == source:
                    continue  # a pod and itself: no policy stands between them
                assert source in by_name and target in by_name, f"unknown name in the table: {line}"
                ports = by_name[target].ports
                if cells[2] != "all":
                    wanted = {p if "/" in p else f"{p}/TCP" for p in re.split(r",\s*", cells[2].strip("` "))}
                    ports = {p for p in ports if f"{p[1]}/{p[0]}" in wanted}
                    assert len(ports) == len(wanted), f"{target} listens on none of some of {wanted}: {line}"
                out |= {(source, target, f"{p[1]}/{p[0]}") for p in ports}
    return out


def policies_of(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def test_every_project_pod_is_held_both_ways():
    docs = documents()
    pods = project_pods(docs)
    assert {"tune head", "tune worker", "tune submitter", "serve head", "serve worker", "mlflow", "redis"} <= {
        p.name for p in pods
    }
    for pod in pods:
        for kind in ("Ingress", "Egress"):
            assert any(
                kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.label_map)
                for p in policies_of(docs)
            ), f"no {kind} policy selects the {pod.name} pod: it would take anything"


def test_the_policies_allow_exactly_the_documented_table():
    docs = documents()
    peers = project_pods(docs) + outside_peers()
    got, documented = reach(policies_of(docs), peers), table(peers)
    assert not got - documented, f"allowed but not in the table: {sorted(got - documented)}"
    assert not documented - got, f"in the table but refused: {sorted(documented - got)}"
    # What the table is for, said outright: no pod reaches the cloud's metadata, Redis takes only
    # the endpoint's head, and a trial cannot reach the endpoint's Redis or its head's dashboard.
    assert not any(target == "cloud metadata" for _, target, _ in got)
    assert {source for source, target, _ in got if target == "redis"} == {"serve head"}
    assert ("tune worker", "serve head", "8265/TCP") not in got


@pytest.mark.parametrize(
    "break_it, now_allowed",
    [
        ("metadata", ("tune worker", "cloud metadata", "80/TCP")),
        ("redis", ("serve worker", "redis", "6379/TCP")),
        ("submitter", ("tune submitter", "retrain head", "8265/TCP")),
    ],
)
def test_a_loosened_policy_is_caught(break_it, now_allowed):
    docs = copy.deepcopy(documents())
    policies = {p["metadata"]["name"]: p["spec"] for p in policies_of(docs)}
    if break_it == "metadata":
        policies["facemask-tune-nodes"]["egress"][-1] = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}  # "allow out"
    elif break_it == "redis":
        policies["redis"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop("ray.io/node-type")
        policies["facemask-serve-nodes"]["egress"].append({"to": [{"podSelector": {}}]})
    else:
        policies["facemask-tune-submitter"]["egress"][0]["to"][0]["podSelector"] = {
            "matchLabels": {"ray.io/node-type": "head"}
        }
        policies["facemask-retrain-head"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].pop(
            "ray.io/originated-from-cr-name"
        )
    peers = project_pods(docs) + outside_peers()
    assert now_allowed in reach(policies_of(docs), peers)
    assert now_allowed not in table(peers)
