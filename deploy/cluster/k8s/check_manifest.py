#!/usr/bin/env python3
"""Checks what a schema validator cannot in deploy/cluster/k8s/prism.yaml: that the objects
fit together as Prism's cluster mode needs (used by deploy/cluster/check-k8s.sh).

    python3 check_manifest.py prism.yaml [--pods OUT.json]

Asserts: the StatefulSet's serviceName is a headless Service that publishes not-ready pods and
carries the Raft port as UDP; selectors match the pod labels; probes use GET /health on the
HTTP port; every pod (0..replicas-1) has its config file `<pod>.toml` in the ConfigMap, which
parses as TOML, advertises `<pod>.<service>:<raft port>`, and only the first pod's says
`bootstrap = true`; --peers names every pod's headless address; every mount names a volume.
With --pods, writes each pod's container arguments and config file, `$(VAR)` expanded as the
kubelet does, for the docker run of check-k8s.sh. Exits 1 listing every failed assertion.
"""
import json
import re
import sys
import tomllib

import yaml

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
    return ok


def main():
    path = sys.argv[1]
    pods_out = sys.argv[sys.argv.index("--pods") + 1] if "--pods" in sys.argv else None
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sts = by_kind["StatefulSet"][0]
    spec = sts["spec"]
    tpl = spec["template"]
    pod_labels = tpl["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    configmaps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}

    replicas = spec["replicas"]
    check(replicas == 3, f"replicas is {replicas}, not 3")
    check(spec["selector"]["matchLabels"].items() <= pod_labels.items(),
          "the StatefulSet's selector does not match its pod labels")

    headless_name = spec["serviceName"]
    headless = services.get(headless_name)
    check(headless is not None, f"serviceName {headless_name!r} is not a Service in the file")
    headless = headless or {"spec": {}}
    check(headless["spec"].get("clusterIP") == "None", "the serviceName Service is not headless")
    check(headless["spec"].get("publishNotReadyAddresses") is True,
          "the headless Service does not publish not-ready pods: peers could not resolve each other while forming")
    clients = [s for n, s in services.items() if n != headless_name]
    check(len(clients) == 1 and clients[0]["spec"].get("clusterIP") != "None",
          "there must be one client (non-headless) Service")
    for svc in services.values():
        check(svc["spec"]["selector"].items() <= pod_labels.items(),
              f"Service {svc['metadata']['name']} selects no pod of the StatefulSet")

    (container,) = tpl["spec"]["containers"]
    ports = {p["name"]: p for p in container["ports"]}
    check(ports.get("raft", {}).get("protocol") == "UDP", "the raft containerPort is not UDP (QUIC)")
    raft_port = ports.get("raft", {}).get("containerPort")
    http_port = ports.get("http", {}).get("containerPort")
    hs_raft = [p for p in headless["spec"].get("ports", []) if p.get("port") == raft_port]
    check(hs_raft and hs_raft[0].get("protocol") == "UDP",
          "the headless Service does not carry the raft port as UDP")

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        check(get.get("path") == "/health" and get.get("port") in ("http", http_port),
              f"{probe} is not GET /health on the HTTP port")

    volumes = {v["name"] for v in tpl["spec"].get("volumes", [])}
    volumes |= {v["metadata"]["name"] for v in spec.get("volumeClaimTemplates", [])}
    for m in container.get("volumeMounts", []):
        check(m["name"] in volumes, f"volumeMount {m['name']!r} names no volume")

    args = container["args"]
    flag = {a.split("=", 1)[0]: (a.split("=", 1) + [""])[1] for a in args}
    check("--cluster" in flag, "no --cluster")
    check("--bootstrap" not in flag, "--bootstrap in the shared args would make every pod found its own cluster")
    check(flag.get("--node-id") == "$(POD_NAME)", "--node-id is not $(POD_NAME)")
    check(flag.get("--raft-addr") == f":{raft_port}", f"--raft-addr is not :{raft_port}")
    check(flag.get("--port") == str(http_port), f"--port is not the http containerPort {http_port}")
    env = {e["name"]: e for e in container.get("env", [])}
    check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "POD_NAME does not come from the downward API's metadata.name")

    sts_name = sts["metadata"]["name"]
    pod_names = [f"{sts_name}-{i}" for i in range(replicas)]
    peer_addrs = [f"{p}.{headless_name}:{raft_port}" for p in pod_names]
    check(sorted(flag.get("--peers", "").split(",")) == sorted(peer_addrs),
          f"--peers is not {','.join(peer_addrs)}")

    config_arg = flag.get("--config", "")
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    cm_volume = next((v for v in tpl["spec"].get("volumes", []) if "configMap" in v), None)
    check(cm_volume is not None, "no ConfigMap volume")
    cm_dir = mounts.get(cm_volume["name"]) if cm_volume else None
    check(cm_dir and config_arg == f"{cm_dir}/$(POD_NAME).toml",
          f"--config is not the ConfigMap's <pod>.toml (got {config_arg!r}, ConfigMap at {cm_dir})")
    data = configmaps.get(cm_volume["configMap"]["name"], {}).get("data", {}) if cm_volume else {}

    pods = []
    for i, pod in enumerate(pod_names):
        key = f"{pod}.toml"
        if not check(key in data, f"the ConfigMap has no {key}: pod {pod} would not start"):
            continue
        try:
            conf = tomllib.loads(data[key])
        except tomllib.TOMLDecodeError as e:
            check(False, f"{key} is not TOML: {e}")
            continue
        cluster = conf.get("cluster", {})
        check(cluster.get("bootstrap", False) is (i == 0),
              f"{key}: bootstrap must be true for pod 0 only (is {cluster.get('bootstrap', False)})")
        check(cluster.get("advertise_addr") == peer_addrs[i],
              f"{key}: advertise_addr is not {peer_addrs[i]}")
        tls = cluster.get("tls", {})
        check(tls.get("enabled", True) and tls.get("ca_cert_path") and not tls.get("skip_verify"),
              f"{key}: [cluster.tls] must be enabled with a CA and no skip_verify")
        expanded = [re.sub(r"\$\(POD_NAME\)", pod, a) for a in args]
        pods.append({"name": pod, "args": expanded, "config": data[key],
                     "config_path": config_arg.replace("$(POD_NAME)", pod), "advertise": peer_addrs[i]})

    if failures:
        print("FAIL: the manifest does not fit together:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    if pods_out:
        json.dump({"pods": pods, "http_port": http_port, "raft_port": raft_port,
                   "image": container["image"], "mounts": mounts}, open(pods_out, "w"), indent=1)
    print(f"ok: {path}: {replicas} pods {', '.join(pod_names)}; only {pod_names[0]} bootstraps; "
          f"peers {','.join(peer_addrs)}; probes on /health; raft {raft_port}/UDP")


if __name__ == "__main__":
    main()
