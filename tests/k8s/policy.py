#!/usr/bin/env python3
"""Policy checks on rendered Kubernetes manifests of deploy/kubernetes.

    policy.py [--backup-node NODE] [--deployable] [--external-pvc NS/NAME]... FILE...
    policy.py --self-test [same options] FILE...

FILE holds `kubectl kustomize` output (many YAML documents). Every failure is
printed as `policy: KIND/NAMESPACE/NAME: what`; the exit code is 1 if there
is any. --self-test first requires the files to pass, then breaks a copy of
them in each of the ways listed in MUTATIONS and requires each to be caught
(so a check that silently stopped checking fails the test).

What is checked (tests/k8s/check runs this on the base and every overlay):
  - CronJobs: concurrencyPolicy Forbid, startingDeadlineSeconds,
    jobTemplate backoffLimit 0 or 1, activeDeadlineSeconds,
    ttlSecondsAfterFinished, restartPolicy Never; restore/init templates
    suspended;
  - every container: requests (cpu, memory) and a memory limit; an image with
    a tag that is not `latest` (or a digest), pulled IfNotPresent or Never;
    the image is cairn's (cairn, cairn-pg15) or the pinned kubectl, nothing
    else (no busybox helpers: init containers included);
    allowPrivilegeEscalation false, capabilities drop ALL (none added),
    readOnlyRootFilesystem true, not privileged; cairn containers get a /tmp;
  - every pod: runAsNonRoot, a non-zero runAsUser, seccomp RuntimeDefault, no
    host namespaces, hostPath only for node_exporter's textfile directory;
  - key and tokens files (a `--key`/`--tokens` argument, cairn.toml's
    key_file, a Secret file named *.key or tokens) are mounted straight from a
    Secret, in the one shape cairn accepts: root's, group fsGroup, mode with
    no group write and nothing for others (defaultMode 0440), in a pod whose
    runAsGroup (each container's) equals its fsGroup, so that the file's
    group is the process's effective gid;
  - a pod with fsGroup mounts a workload PVC (one not in the output) with
    persistentVolumeClaim.readOnly, so kubelet never chgrps its files;
  - pods that use the repository (PVC cairn-backups) or a hostPath, and
    everything labelled cairn.example/backup-node, run on the backup node
    (nodeSelector kubernetes.io/hostname), where the local PV is pinned too;
  - every Secret, ConfigMap, key, PVC and ServiceAccount a pod names exists
    in the output (under its final, hashed name), in the pod's namespace;
  - ServiceAccounts do not automount tokens; only pods of cairn-k8s-reader
    get one, and there only in containers that are not cairn's;
  - the replication mounts the repository read-only, is --append-only and
    forgets nothing; a --metrics-file is in the mounted textfile directory;
  - a `--config FILE` is mounted from a ConfigMap whose cairn.toml gives
    `command` sources as argv arrays (no shell in the image), and every
    secret file it names (and the signing key, for `run`) is mounted in that
    container from a Secret; the Job's activeDeadlineSeconds exceeds the
    run's deadline;
  - the forget of the snapshots made outside `cairn run` (tag
    retention:extra) keeps what cairn.toml's [retention] keeps;
  - `cairn run`'s config has no [drill] (loading a config reads every
    secret it names: the nightly must not read the superuser's password),
    the drill's has one, and a ConfigMap's drill.toml equals its cairn.toml
    but for [drill]; a container run with --config mounts no Secret file
    that its config (or its --key/--tokens) does not read;
  - the cluster-objects dump (every `kubectl get` of configmaps or secrets in
    a container's script) can reach neither namespace cairn (node4's
    signing key, the bucket credential, serve's tokens, the admin
    passwords: any serve token reads the whole repository) nor
    kube-system's Secrets;
  - every container that restores a database source (`drill`, `restore
    couchdb`, `restore --tag source:<a cairn.toml source>`) has CAIRN_TRUST
    set to node4's key alone (cairn-site's NODE4_PUBLIC_KEY, one key, one
    of TRUSTED_KEYS) and no --trust overriding it; `cairn run` has none
    (its verify must accept the volume jobs' snapshots).
"""

import argparse
import copy
import posixpath
import re
import shlex
import sys
import tomllib

import yaml

BACKUP_PVC = "cairn-backups"
TEXTFILE_DIR = "/var/lib/node_exporter/textfile"
K8S_READER = "cairn-k8s-reader"
# Published by Kubernetes in every namespace; not part of the output.
EXTERNAL_CONFIGMAPS = {"kube-root-ca.crt"}
# Workload PVCs that Open edX owns (the volume jobs mount them).
DEFAULT_EXTERNAL_PVCS = {("openedx", "lms-uploads")}
CAIRN_IMAGES = re.compile(r"^(localhost/)?cairn(-pg15)?(:|@|$)")
# The only image that is not cairn's: the cluster-objects dump (k8s-objects.yaml).
OTHER_IMAGES = {"docker.io/bitnamilegacy/kubectl:1.33.4-debian-12-r0"}
# Files cairn refuses unless private: the signing key, `cairn serve`'s tokens.
KEY_ARGS = ("--key", "--tokens")
KEY_FILE_NAME = re.compile(r"(\.key|^tokens)$")
# What cairn accepts of a Secret mounted with fsGroup: no group write, no
# group execute, nothing for others (0440, or 0400).
SECRET_MODE_FORBIDDEN = 0o037
SECRET_DEFAULT_MODE = 0o644   # Kubernetes' default for a Secret volume
SUSPENDED_TEMPLATES = re.compile(r"^cairn-(restore-.*|init)$")
# The namespace of node4's own Secrets (signing key, bucket credential, serve
# tokens, admin passwords): never in the cluster-objects dump.
CAIRN_NAMESPACE = "cairn"
# Namespaces whose Secrets the dump leaves out too (k3s' own).
NO_SECRETS_DUMPED = ("kube-system",)
# cairn-site's key holding node4's public key alone (CAIRN_TRUST of the
# database restores), and the list the repository trusts.
NODE4_KEY = "NODE4_PUBLIC_KEY"
TRUSTED_KEYS = "TRUSTED_KEYS"
# Database sources whatever cairn.toml says (their tags).
DATABASE_TAGS = {"source:postgres", "source:couchdb"}
# kubectl flags that take a value as the next word.
KUBECTL_VALUE_FLAGS = {
    "-n", "--namespace", "--field-selector", "-l", "--selector", "-o", "--output",
    "--request-timeout", "--context", "--kubeconfig", "--cluster", "--user", "-s", "--server",
    "--token", "--chunk-size", "--sort-by", "--template", "-L", "--label-columns",
}


class Policy:
    def __init__(self, docs, backup_node, deployable, external_pvcs):
        self.docs = [d for d in docs if isinstance(d, dict)]
        self.backup_node = backup_node
        self.deployable = deployable
        self.external_pvcs = external_pvcs
        self.failures = []
        self.index = {}
        for d in self.docs:
            md = d.get("metadata") or {}
            self.index[(d.get("kind"), md.get("namespace"), md.get("name"))] = d

    # ---- helpers

    def fail(self, doc, what):
        md = doc.get("metadata") or {}
        self.failures.append(
            f"{doc.get('kind')}/{md.get('namespace') or '-'}/{md.get('name')}: {what}"
        )

    def get(self, kind, ns, name):
        return self.index.get((kind, ns, name))

    def pod_templates(self):
        """(owner doc, pod spec, namespace) for every pod the output makes."""
        for d in self.docs:
            kind, spec = d.get("kind"), d.get("spec") or {}
            ns = (d.get("metadata") or {}).get("namespace")
            if kind == "CronJob":
                tpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
            elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
                tpl = spec.get("template")
            elif kind == "Pod":
                tpl = {"spec": spec}
            else:
                continue
            yield d, (tpl or {}).get("spec") or {}, ns

    @staticmethod
    def containers(pod):
        return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])

    @staticmethod
    def volumes(pod):
        return {v.get("name"): v for v in pod.get("volumes") or []}

    @staticmethod
    def args(c):
        return [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]

    @staticmethod
    def is_cairn(c):
        return bool(CAIRN_IMAGES.match(str(c.get("image", ""))))

    # ---- checks

    def run(self):
        self.check_cronjobs()
        self.check_service_accounts()
        self.check_local_pv()
        self.check_config_pairs()
        self.check_site_keys()
        for owner, pod, ns in self.pod_templates():
            self.check_pod(owner, pod, ns)
        for d in self.docs:
            labels = (d.get("metadata") or {}).get("labels") or {}
            if labels.get("cairn.example/backup-node") == "true":
                self.check_on_backup_node(d, self.pod_of(d), "it is labelled cairn.example/backup-node")
        return self.failures

    def pod_of(self, d):
        for owner, pod, _ in self.pod_templates():
            if owner is d:
                return pod
        return {}

    def check_cronjobs(self):
        for d in self.docs:
            if d.get("kind") != "CronJob":
                continue
            spec = d.get("spec") or {}
            name = d["metadata"]["name"]
            if spec.get("concurrencyPolicy") != "Forbid":
                self.fail(d, "concurrencyPolicy is not Forbid")
            if not isinstance(spec.get("startingDeadlineSeconds"), int):
                self.fail(d, "no startingDeadlineSeconds")
            job = (spec.get("jobTemplate") or {}).get("spec") or {}
            if job.get("backoffLimit") not in (0, 1):
                self.fail(d, f"jobTemplate backoffLimit is {job.get('backoffLimit')!r}, not 0 or 1")
            for field in ("activeDeadlineSeconds", "ttlSecondsAfterFinished"):
                if not isinstance(job.get(field), int) or job.get(field) <= 0:
                    self.fail(d, f"no jobTemplate {field}")
            pod = (job.get("template") or {}).get("spec") or {}
            if pod.get("restartPolicy") != "Never":
                self.fail(d, "restartPolicy is not Never (a container restarted in place redoes its work)")
            if SUSPENDED_TEMPLATES.match(name) and spec.get("suspend") is not True:
                self.fail(d, "a restore/init template must be suspend: true")

    def check_service_accounts(self):
        for d in self.docs:
            if d.get("kind") == "ServiceAccount" and d.get("automountServiceAccountToken") is not False:
                self.fail(d, "automountServiceAccountToken is not false")
            if d.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
                for s in d.get("subjects") or []:
                    if s.get("kind") == "ServiceAccount" and not self.get(
                        "ServiceAccount", s.get("namespace"), s.get("name")
                    ):
                        self.fail(d, f"subject ServiceAccount {s.get('namespace')}/{s.get('name')} does not exist")
            if d.get("kind") == "ClusterRole" and d["metadata"]["name"] == K8S_READER:
                for rule in d.get("rules") or []:
                    extra = set(rule.get("verbs") or []) - {"get", "list"}
                    if extra:
                        self.fail(d, f"the reader may only get and list, not {sorted(extra)}")
                    if set(rule.get("resources") or []) - {"configmaps", "secrets"}:
                        self.fail(d, "the reader reads configmaps and secrets only")

    def check_local_pv(self):
        pv = self.get("PersistentVolume", None, BACKUP_PVC)
        if pv is None:
            return
        terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get(
            "nodeSelectorTerms"
        ) or []
        values = [
            v
            for t in terms
            for e in t.get("matchExpressions") or []
            if e.get("key") == "kubernetes.io/hostname"
            for v in e.get("values") or []
        ]
        if values != [self.backup_node]:
            self.fail(pv, f"local PV pinned to {values}, not [{self.backup_node}]")

    def check_on_backup_node(self, owner, pod, why):
        selector = (pod.get("nodeSelector") or {}).get("kubernetes.io/hostname")
        if selector != self.backup_node:
            self.fail(owner, f"{why}, but its nodeSelector kubernetes.io/hostname is {selector!r}, not {self.backup_node!r}")

    def check_pod(self, owner, pod, ns):
        sc = pod.get("securityContext") or {}
        containers = self.containers(pod)
        volumes = self.volumes(pod)

        # Pod security.
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(field):
                self.fail(owner, f"{field} is set")
        if not (sc.get("runAsNonRoot") is True or all(
            (c.get("securityContext") or {}).get("runAsNonRoot") is True for c in containers
        )):
            self.fail(owner, "runAsNonRoot is not true")
        for c in containers:
            uid = (c.get("securityContext") or {}).get("runAsUser", sc.get("runAsUser"))
            if not isinstance(uid, int) or uid == 0:
                self.fail(owner, f"container {c.get('name')}: runAsUser {uid!r} (a non-zero uid is required)")
            seccomp = ((c.get("securityContext") or {}).get("seccompProfile") or sc.get("seccompProfile") or {})
            if seccomp.get("type") != "RuntimeDefault":
                self.fail(owner, f"container {c.get('name')}: seccompProfile is not RuntimeDefault")

        # Containers.
        for c in containers:
            self.check_container(owner, c, volumes)

        # Key and tokens files, and fsGroup's reach.
        self.check_key_files(owner, pod, ns, volumes)
        if sc.get("fsGroup") is not None:
            for vname, v in volumes.items():
                claim = v.get("persistentVolumeClaim")
                if claim is None or self.get("PersistentVolumeClaim", ns, claim.get("claimName")) is not None:
                    continue
                if claim.get("readOnly") is not True:
                    self.fail(owner, f"volume {vname}: fsGroup {sc['fsGroup']} with the workload PVC "
                                     f"{ns}/{claim.get('claimName')} mounted writable: kubelet would chgrp its files "
                                     f"(set persistentVolumeClaim.readOnly: true)")

        # ServiceAccount and tokens.
        sa_name = pod.get("serviceAccountName")
        sa = self.get("ServiceAccount", ns, sa_name) if sa_name else None
        if not sa_name:
            self.fail(owner, "no serviceAccountName (the namespace's default account)")
        elif sa is None:
            self.fail(owner, f"ServiceAccount {ns}/{sa_name} does not exist")
        automount = pod.get("automountServiceAccountToken")
        if automount is None and sa is not None:
            automount = sa.get("automountServiceAccountToken")
        projected_tokens = {
            name
            for name, v in volumes.items()
            for s in (v.get("projected") or {}).get("sources") or []
            if "serviceAccountToken" in s
        }
        if automount is not False or projected_tokens:
            if sa_name != K8S_READER:
                self.fail(owner, f"mounts a ServiceAccount token, but only {K8S_READER}'s pod may")
            if automount is not False:
                self.fail(owner, "automounts its token into every container (project it into the one that needs it)")
            for c in containers:
                if self.is_cairn(c) and any(m.get("name") in projected_tokens for m in c.get("volumeMounts") or []):
                    self.fail(owner, f"container {c.get('name')} (cairn) mounts the API token")

        # References.
        self.check_references(owner, pod, ns, volumes)

        # Node pinning and volumes.
        uses_repo = any(
            (v.get("persistentVolumeClaim") or {}).get("claimName") == BACKUP_PVC for v in volumes.values()
        )
        host_paths = [v for v in volumes.values() if "hostPath" in v]
        if uses_repo:
            self.check_on_backup_node(owner, pod, f"it mounts the repository ({BACKUP_PVC})")
        if host_paths:
            self.check_on_backup_node(owner, pod, "it mounts a hostPath")
        for v in host_paths:
            if v["hostPath"].get("path") != TEXTFILE_DIR:
                self.fail(owner, f"hostPath {v['hostPath'].get('path')} (only {TEXTFILE_DIR} is allowed)")

        # The replication: read-only repository, nothing forgotten.
        for c in containers:
            args = c.get("args") or []
            if args[:1] == ["replicate"]:
                for m in c.get("volumeMounts") or []:
                    v = volumes.get(m.get("name")) or {}
                    if "persistentVolumeClaim" in v:
                        if m.get("readOnly") is not True:
                            self.fail(owner, f"the replication mounts {m.get('mountPath')} read-write (must be read-only)")
                        if v["persistentVolumeClaim"].get("readOnly") is not True:
                            self.fail(owner, f"the replication's claim {v['persistentVolumeClaim'].get('claimName')} is not read-only")
                if "--keep-last" in args:
                    self.fail(owner, "the replication forgets (--keep-last): its credential must not delete")
                if "--append-only" not in args:
                    self.fail(owner, "the replication is not --append-only (its credential may not delete or overwrite)")

        # Metrics files go where node_exporter reads them, and are mounted.
        for c in containers:
            args = self.args(c)
            mounts = {m.get("mountPath", "").rstrip("/") for m in c.get("volumeMounts") or []}
            for i, a in enumerate(args[:-1]):
                if a == "--metrics-file":
                    d = posixpath.dirname(args[i + 1])
                    if d != TEXTFILE_DIR or d not in mounts:
                        self.fail(owner, f"container {c.get('name')}: --metrics-file {args[i + 1]} is not in a mounted {TEXTFILE_DIR}")

        # A cairn.toml used with --config.
        for c in containers:
            args = self.args(c)
            if "--config" in args[:-1]:
                self.check_config(owner, pod, c, args[args.index("--config") + 1], volumes, ns)

        # The retention of snapshots made outside `cairn run` is cairn.toml's.
        for c in containers:
            args = [str(a) for a in c.get("args") or []]
            if args[:1] == ["forget"] and "retention:extra" in args:
                self.check_extra_retention(owner, args, ns)

        # Who may sign what a database restore loads; what the dump reads.
        for c in containers:
            self.check_trust(owner, c, ns)
            self.check_dump(owner, c, ns, pod.get("serviceAccountName") == K8S_READER)

    def check_extra_retention(self, owner, args, ns):
        configs = [d for d in self.docs if d.get("kind") == "ConfigMap"
                   and (d.get("metadata") or {}).get("namespace") == ns
                   and "cairn.toml" in (d.get("data") or {})]
        for cm in configs:
            try:
                policy = tomllib.loads(cm["data"]["cairn.toml"]).get("retention") or {}
            except tomllib.TOMLDecodeError:
                continue
            want = {f"--{k.replace('_', '-')}": str(v) for k, v in policy.items()}
            got = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--keep-")}
            if want != got:
                self.fail(owner, f"retention {got} differs from cairn.toml's [retention] {want} "
                                 f"(ConfigMap {cm['metadata']['name']})")

    def check_container(self, owner, c, volumes):
        name = c.get("name")
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for r in ("cpu", "memory"):
            if r not in req:
                self.fail(owner, f"container {name}: no {r} request")
        if "memory" not in lim:
            self.fail(owner, f"container {name}: no memory limit")
        image = str(c.get("image", ""))
        if not self.is_cairn(c) and image not in OTHER_IMAGES:
            self.fail(owner, f"container {name}: image {image!r} is neither a cairn image nor one of "
                             f"{sorted(OTHER_IMAGES)} (no helper images such as busybox)")
        last = image.rsplit("/", 1)[-1]
        if "@" not in last:
            if ":" not in last:
                self.fail(owner, f"container {name}: image {image!r} has no tag")
            elif last.rsplit(":", 1)[1] == "latest":
                self.fail(owner, f"container {name}: image {image!r} uses the tag latest")
        if self.deployable and re.match(r"^cairn(-pg15)?(:|$)", image):
            self.fail(owner, f"container {name}: image {image!r} is the base's symbolic name; map it in the overlay's images:")
        if c.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
            self.fail(owner, f"container {name}: imagePullPolicy {c.get('imagePullPolicy')!r} (imported images: IfNotPresent or Never)")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            self.fail(owner, f"container {name}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.fail(owner, f"container {name}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            self.fail(owner, f"container {name}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            self.fail(owner, f"container {name}: capabilities do not drop ALL")
        if caps.get("add"):
            self.fail(owner, f"container {name}: capabilities added: {caps['add']}")
        if self.is_cairn(c) and not any(m.get("mountPath") == "/tmp" for m in c.get("volumeMounts") or []):
            self.fail(owner, f"container {name}: cairn needs a writable /tmp (TMPDIR)")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                self.fail(owner, f"container {name}: mounts volume {m.get('name')!r}, which the pod does not have")

    def secret_files(self, c, volumes, ns):
        """{path: (volume name, mode)} of every file container c sees from a
        Secret (a secret volume, or a projected volume's secret source)."""
        out = {}
        for m in c.get("volumeMounts") or []:
            v = volumes.get(m.get("name")) or {}
            mount = m.get("mountPath", "").rstrip("/")
            if "secret" in v:
                sources, default = [v["secret"] | {"name": v["secret"].get("secretName")}], v["secret"].get("defaultMode")
            elif "projected" in v:
                sources = [src["secret"] for src in v["projected"].get("sources") or [] if "secret" in src]
                default = v["projected"].get("defaultMode")
            else:
                continue
            default = SECRET_DEFAULT_MODE if default is None else default
            for s in sources:
                items = s.get("items")
                if items:
                    files = {i.get("path"): i.get("mode", default) for i in items}
                else:
                    doc = self.get("Secret", ns, s.get("name"))
                    files = {k: default for k in self.keys_of(doc)} if doc is not None else {}
                for f, mode in files.items():
                    path = posixpath.join(mount, f) if not m.get("subPath") else mount
                    if m.get("subPath") and m["subPath"] != f:
                        continue
                    out[path] = (m.get("name"), mode)
        return out

    def key_paths(self, pod, ns):
        """Paths cairn reads as a key or tokens file in this pod."""
        paths = set()
        for c in self.containers(pod):
            args = self.args(c)
            paths |= {args[i + 1] for i, a in enumerate(args[:-1]) if a in KEY_ARGS}
            if "--config" in args[:-1] and self.is_cairn(c):
                for d in self.docs:
                    if d.get("kind") == "ConfigMap" and (d.get("metadata") or {}).get("namespace") == ns:
                        for name, text in (d.get("data") or {}).items():
                            if not name.endswith(".toml"):
                                continue
                            try:
                                config = tomllib.loads(text)
                            except tomllib.TOMLDecodeError:
                                continue
                            key_file = (config.get("repository") or {}).get("key_file")
                            if key_file:
                                paths.add(key_file)
        return paths

    def check_key_files(self, owner, pod, ns, volumes):
        """Key and tokens files come straight from a Secret, mode 0440 (no
        group write, nothing for others), in a pod whose runAsGroup is its
        fsGroup: the file is root's with group fsGroup, and cairn accepts it
        only if that group is its effective gid."""
        sc = pod.get("securityContext") or {}
        fs_group = sc.get("fsGroup")
        named = self.key_paths(pod, ns)
        for c in self.containers(pod):
            files = self.secret_files(c, volumes, ns)
            args = self.args(c)
            for i, a in enumerate(args[:-1]):
                if a in KEY_ARGS and args[i + 1] not in files:
                    self.fail(owner, f"container {c.get('name')}: {a} {args[i + 1]} is not mounted from a Secret "
                                     f"(mount the Secret at its directory, defaultMode 0440)")
            keys = {p: vm for p, vm in files.items()
                    if p in named or KEY_FILE_NAME.search(posixpath.basename(p))}
            if not keys:
                continue
            gid = (c.get("securityContext") or {}).get("runAsGroup", sc.get("runAsGroup"))
            if not isinstance(fs_group, int) or gid != fs_group:
                self.fail(owner, f"container {c.get('name')}: mounts the key or tokens file {sorted(keys)[0]}, "
                                 f"but its runAsGroup {gid!r} is not the pod's fsGroup {fs_group!r} "
                                 f"(cairn accepts a Secret's file only if its group is the process's gid)")
            for path, (vname, mode) in sorted(keys.items()):
                if not isinstance(mode, int) or mode & SECRET_MODE_FORBIDDEN:
                    shown = f"{mode:04o}" if isinstance(mode, int) else repr(mode)
                    self.fail(owner, f"container {c.get('name')}: {path} (volume {vname}) has mode {shown}: "
                                     f"group write or others may read, and cairn refuses it (defaultMode 0440)")

    def keys_of(self, doc):
        return set((doc.get("data") or {}).keys()) | set((doc.get("stringData") or {}).keys()) | set(
            (doc.get("binaryData") or {}).keys()
        )

    def check_ref(self, owner, ns, kind, name, keys=(), optional=False, where=""):
        if optional:
            return
        if kind == "ConfigMap" and name in EXTERNAL_CONFIGMAPS:
            return
        doc = self.get(kind, ns, name)
        if doc is None:
            self.fail(owner, f"{where}: {kind} {ns}/{name} does not exist in the output")
            return
        for k in keys:
            if k not in self.keys_of(doc):
                self.fail(owner, f"{where}: {kind} {ns}/{name} has no key {k!r}")

    def check_references(self, owner, pod, ns, volumes):
        for vname, v in volumes.items():
            where = f"volume {vname}"
            if "secret" in v:
                s = v["secret"]
                self.check_ref(owner, ns, "Secret", s.get("secretName"),
                               [i["key"] for i in s.get("items") or []], s.get("optional", False), where)
            if "configMap" in v:
                s = v["configMap"]
                self.check_ref(owner, ns, "ConfigMap", s.get("name"),
                               [i["key"] for i in s.get("items") or []], s.get("optional", False), where)
            for src in (v.get("projected") or {}).get("sources") or []:
                for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                    if key in src:
                        s = src[key]
                        self.check_ref(owner, ns, kind, s.get("name"),
                                       [i["key"] for i in s.get("items") or []], s.get("optional", False), where)
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"].get("claimName")
                if self.get("PersistentVolumeClaim", ns, claim) is None and (ns, claim) not in self.external_pvcs:
                    self.fail(owner, f"{where}: PersistentVolumeClaim {ns}/{claim} does not exist in the output (nor is it a known workload PVC)")
        for c in self.containers(pod):
            for e in c.get("env") or []:
                ref = e.get("valueFrom") or {}
                for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                    if key in ref:
                        r = ref[key]
                        self.check_ref(owner, ns, kind, r.get("name"), [r.get("key")],
                                       r.get("optional", False), f"container {c.get('name')} env {e.get('name')}")
            for e in c.get("envFrom") or []:
                for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if key in e:
                        self.check_ref(owner, ns, kind, e[key].get("name"), (), e[key].get("optional", False),
                                       f"container {c.get('name')} envFrom")

    def provides(self, pod, c, volumes, path, ns):
        """Whether `path` is a file that container c sees from a Secret
        volume (mounted as is: no init container copies secrets around)."""
        for m in c.get("volumeMounts") or []:
            mount = m.get("mountPath", "").rstrip("/")
            if posixpath.dirname(path) != mount or m.get("subPath"):
                continue
            v = volumes.get(m.get("name")) or {}
            base = posixpath.basename(path)
            if "secret" in v:
                s = v["secret"]
                items = s.get("items")
                if items:
                    return any(i.get("path") == base for i in items)
                doc = self.get("Secret", ns, s.get("secretName"))
                return doc is not None and base in self.keys_of(doc)
            return False
        return False

    def check_config(self, owner, pod, c, path, volumes, ns):
        where = f"container {c.get('name')} --config {path}"
        text = None
        for m in c.get("volumeMounts") or []:
            if m.get("mountPath", "").rstrip("/") == posixpath.dirname(path):
                v = volumes.get(m.get("name")) or {}
                if "configMap" in v:
                    cm = self.get("ConfigMap", ns, v["configMap"].get("name"))
                    if cm is not None:
                        text = (cm.get("data") or {}).get(posixpath.basename(path))
        if text is None:
            self.fail(owner, f"{where}: not mounted from a ConfigMap holding it")
            return
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            self.fail(owner, f"{where}: not valid TOML: {e}")
            return
        for s in config.get("source") or []:
            if s.get("kind") == "command" and not isinstance(s.get("command"), list):
                self.fail(owner, f"{where}: source {s.get('name')!r}: command must be an argv array (the image has no shell)")
        files = sorted(set(secret_files(config)))
        verb = (c.get("args") or [""])[0]
        if verb == "run":
            files.append(config.get("repository", {}).get("key_file"))
        for f in files:
            if not f or not self.provides(pod, c, volumes, f, ns):
                self.fail(owner, f"{where}: the config reads {f}, which is not mounted in the container")
        # Least privilege: a Secret file mounted here is read by the config
        # or named by an argument, else it has no business in this pod.
        args = self.args(c)
        wanted = set(files) | {args[i + 1] for i, a in enumerate(args[:-1]) if a in KEY_ARGS}
        for f, (vname, _) in sorted(self.secret_files(c, volumes, ns).items()):
            if f not in wanted:
                self.fail(owner, f"{where}: mounts {f} (volume {vname}), which its config does not read "
                                 f"(mount only the Secret's keys it names: items)")
        if verb == "run" and "drill" in config:
            self.fail(owner, f"{where}: `cairn run`'s config names [drill]: loading it reads [drill]'s "
                             f"secrets (the superuser's password); give the drill its own file (drill.toml)")
        if verb == "drill" and "drill" not in config:
            self.fail(owner, f"{where}: the drill's config has no [drill] section")
        mounts = {m.get("mountPath", "").rstrip("/") for m in c.get("volumeMounts") or []}
        url = config.get("repository", {}).get("url", "")
        if url.startswith("/") and url.rstrip("/") not in mounts:
            self.fail(owner, f"{where}: the repository {url} is not mounted")
        textfile = (config.get("metrics") or {}).get("textfile")
        if textfile and posixpath.dirname(textfile) not in mounts:
            self.fail(owner, f"{where}: the metrics directory {posixpath.dirname(textfile)} is not mounted")
        if verb == "drill":
            scratch = (config.get("drill") or {}).get("scratch")
            if scratch and scratch.rstrip("/") not in mounts:
                self.fail(owner, f"{where}: the drill's scratch {scratch} is not mounted")
        if owner.get("kind") == "CronJob":
            deadline = parse_span((config.get("run") or {}).get("deadline", "6h"))
            active = ((owner["spec"].get("jobTemplate") or {}).get("spec") or {}).get("activeDeadlineSeconds")
            if isinstance(active, int) and deadline is not None and active <= deadline:
                self.fail(owner, f"activeDeadlineSeconds {active} is not above the config's run deadline ({deadline} s)")

    def check_config_pairs(self):
        """A ConfigMap's drill.toml is its cairn.toml plus [drill], and
        cairn.toml has no [drill]."""
        for d in self.docs:
            data = (d.get("data") or {}) if d.get("kind") == "ConfigMap" else {}
            if "cairn.toml" not in data or "drill.toml" not in data:
                continue
            try:
                run, drill = tomllib.loads(data["cairn.toml"]), tomllib.loads(data["drill.toml"])
            except tomllib.TOMLDecodeError as e:
                self.fail(d, f"cairn.toml or drill.toml is not valid TOML: {e}")
                continue
            if "drill" in run:
                self.fail(d, "cairn.toml has a [drill] section (it belongs in drill.toml only)")
            if "drill" not in drill:
                self.fail(d, "drill.toml has no [drill] section")
            rest = {k: v for k, v in drill.items() if k != "drill"}
            mine = {k: v for k, v in run.items() if k != "drill"}
            if rest != mine:
                differ = sorted(k for k in set(rest) | set(mine) if rest.get(k) != mine.get(k))
                self.fail(d, f"drill.toml differs from cairn.toml outside [drill], in {differ} "
                             f"(keep the two equal but for [drill])")

    def check_site_keys(self):
        """NODE4_PUBLIC_KEY is one key, and one the repository trusts."""
        for d in self.docs:
            data = (d.get("data") or {}) if d.get("kind") == "ConfigMap" else {}
            if NODE4_KEY not in data:
                continue
            node4 = split_keys(data[NODE4_KEY])
            if len(node4) != 1:
                self.fail(d, f"{NODE4_KEY} names {len(node4)} keys; node4's public key alone is wanted")
            if TRUSTED_KEYS in data and not set(node4) <= set(split_keys(data[TRUSTED_KEYS])):
                self.fail(d, f"{NODE4_KEY} is not one of {TRUSTED_KEYS}")

    def database_tags(self, ns):
        """source:NAME of every source of a cairn config in namespace ns:
        node4 makes them all (the volume jobs' sources are not there)."""
        tags = set(DATABASE_TAGS)
        for d in self.docs:
            if d.get("kind") != "ConfigMap" or (d.get("metadata") or {}).get("namespace") != ns:
                continue
            for name, text in (d.get("data") or {}).items():
                if name.endswith(".toml"):
                    try:
                        config = tomllib.loads(text)
                    except tomllib.TOMLDecodeError:
                        continue
                    tags |= {f"source:{s.get('name')}" for s in config.get("source") or []}
        return tags

    def env_value(self, c, name, ns):
        """(present, value or None, where the value comes from) of env var name."""
        for e in c.get("env") or []:
            if e.get("name") != name:
                continue
            if "value" in e:
                return True, str(e["value"]), "value"
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                cm = self.get("ConfigMap", ns, ref.get("name"))
                value = ((cm or {}).get("data") or {}).get(ref.get("key"))
                return True, value, ref.get("key")
            return True, None, "valueFrom"
        return False, None, None

    def check_trust(self, owner, c, ns):
        if not self.is_cairn(c):
            return
        args = self.args(c)
        tags = {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--tag"} | {
            a.split("=", 1)[1] for a in args if a.startswith("--tag=")}
        what = None
        if args[:1] == ["drill"]:
            what = "the drill"
        elif args[:2] == ["restore", "couchdb"]:
            what = "a CouchDB restore"
        elif args[:1] == ["restore"] and tags & self.database_tags(ns):
            what = f"a restore of {sorted(tags & self.database_tags(ns))[0]}"
        present, value, source = self.env_value(c, "CAIRN_TRUST", ns)
        name = c.get("name")
        if args[:1] == ["run"] and present:
            self.fail(owner, f"container {name}: `cairn run` with CAIRN_TRUST: its verify would refuse the "
                             f"volume jobs' snapshots (only the database restores trust node4 alone)")
        if what is None:
            return
        if not present:
            self.fail(owner, f"container {name}: {what} without CAIRN_TRUST: a snapshot signed by the volume "
                             f"jobs' key (on node1-3) would be loaded; set it to cairn-site's {NODE4_KEY}")
            return
        if any(a == "--trust" or a.startswith("--trust=") for a in args):
            self.fail(owner, f"container {name}: {what} passes --trust, which overrides CAIRN_TRUST")
        if source not in (NODE4_KEY, "value"):
            self.fail(owner, f"container {name}: CAIRN_TRUST comes from {source!r}, not cairn-site's {NODE4_KEY}")
        elif value is not None and len(split_keys(value)) != 1:
            self.fail(owner, f"container {name}: CAIRN_TRUST names {len(split_keys(value))} keys; node4's alone")

    def check_dump(self, owner, c, ns, reader):
        """Every `kubectl get` of configmaps or secrets leaves out namespace
        cairn, and kube-system's Secrets. In the reader's pod, a container
        other than cairn's must show its `kubectl get` plainly."""
        commands = kubectl_commands(self.args(c))
        if reader and not self.is_cairn(c) and not any("get" in argv for argv in commands):
            self.fail(owner, f"container {c.get('name')}: no plain `kubectl get` in its command: "
                             f"the policy cannot tell which namespaces it dumps")
        for argv in commands:
            words = argv[1:]
            if "get" not in words:
                continue
            rest = words[words.index("get") + 1:]
            positional, namespace, all_ns, selector = [], None, False, ""
            i = 0
            while i < len(rest):
                w = rest[i]
                if w.startswith("--"):
                    flag, eq, val = w.partition("=")
                elif w.startswith("-") and len(w) > 2:     # -nNAME, -oyaml
                    flag, eq, val = w[:2], "=", w[2:]
                else:
                    flag, eq, val = w, "", ""
                if flag in KUBECTL_VALUE_FLAGS and not eq:
                    i += 1
                    val = rest[i] if i < len(rest) else ""
                if flag in ("-A", "--all-namespaces"):
                    all_ns = val != "false"
                elif flag in ("-n", "--namespace"):
                    namespace = val
                elif flag == "--field-selector":
                    selector = val
                elif not w.startswith("-"):
                    positional.append(w)
                i += 1
            if not positional:
                continue
            kinds = {KUBECTL_KINDS.get(r.split("/", 1)[0].split(".", 1)[0].lower())
                     for r in positional[0].split(",")}
            only, excluded = namespaces_of(selector)
            if all_ns:
                reach = lambda n: (only is None or n in only) and n not in excluded
            else:
                target = namespace or ns
                reach = lambda n: n == target and (only is None or n in only) and n not in excluded
            shown = " ".join(argv)
            if kinds & {"secrets", "configmaps"} and reach(CAIRN_NAMESPACE):
                self.fail(owner, f"container {c.get('name')}: `{shown}` can dump namespace {CAIRN_NAMESPACE} "
                                 f"(node4's signing key, the bucket credential, serve's tokens), which any "
                                 f"serve token could then read: --field-selector metadata.namespace!={CAIRN_NAMESPACE}")
            for n in NO_SECRETS_DUMPED:
                if "secrets" in kinds and reach(n):
                    self.fail(owner, f"container {c.get('name')}: `{shown}` can dump {n}'s Secrets "
                                     f"(--field-selector metadata.namespace!={n})")


KUBECTL_KINDS = {"secret": "secrets", "secrets": "secrets",
                 "configmap": "configmaps", "configmaps": "configmaps", "cm": "configmaps"}


def split_keys(text):
    return [k.strip() for k in str(text).split(",") if k.strip()]


def namespaces_of(selector):
    """(the only namespaces a field selector allows, or None; those it excludes)."""
    only, excluded = None, set()
    for req in filter(None, (r.strip() for r in selector.split(","))):
        m = re.match(r"^metadata\.namespace\s*(!=|==|=)\s*(.*)$", req)
        if not m:
            continue
        if m.group(1) == "!=":
            excluded.add(m.group(2))
        else:
            only = {m.group(2)} if only is None else only & {m.group(2)}
    return only, excluded


def kubectl_commands(argv):
    """Every kubectl command line in a container's argv: the argv itself, or
    each one in a shell script passed as an argument."""
    if argv and posixpath.basename(argv[0]) == "kubectl":
        return [argv]
    out = []
    for a in argv:
        if "kubectl" not in a:
            continue
        for line in a.replace("\\\n", " ").splitlines():
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            try:
                words = list(lex)
            except ValueError:
                words = line.split()
            command = []
            for w in words + [";"]:
                if w and set(w) <= set("();<>|&"):
                    while command and command[0] in ("{", "}", "!", "then", "do", "else", "exec", "command"):
                        command.pop(0)
                    if command and posixpath.basename(command[0]) == "kubectl":
                        out.append(command)
                    command = []
                else:
                    command.append(w)
    return out


def secret_files(node):
    """Every `{ file = PATH }` in a parsed cairn.toml."""
    if isinstance(node, dict):
        if set(node) == {"file"} and isinstance(node["file"], str):
            yield node["file"]
            return
        for v in node.values():
            yield from secret_files(v)
    elif isinstance(node, list):
        for v in node:
            yield from secret_files(v)


def parse_span(text):
    """Seconds of a cairn duration such as 4h, 90m, 1h30m (None if unknown)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([smhd])", str(text))
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s", "", str(text)):
        return None
    return sum(int(n) * units[u] for n, u in parts)


# ---- self-test: each mutation breaks one rule, and must be caught.


def find(docs, kind, name):
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == kind and (d.get("metadata") or {}).get("name") == name:
            return d
    raise KeyError(f"{kind}/{name} is not in the output: the self-test needs it")


def cj_pod(docs, name):
    return find(docs, "CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container(docs, cj, name="cairn"):
    return next(c for c in cj_pod(docs, cj)["containers"] if c["name"] == name)


def hashed(docs, kind, prefix):
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == kind and d["metadata"]["name"].startswith(prefix):
            return d
    raise KeyError(f"{kind} {prefix}* is not in the output")


def m_config(docs, edit):
    cm = hashed(docs, "ConfigMap", "cairn-config")
    cm["data"]["cairn.toml"] = edit(cm["data"]["cairn.toml"])


def set_in(d, path, value):
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


def m_dump(docs, edit):
    """Edits the script of the cluster-objects dump (kubectl-dump's args)."""
    c = next(c for c in cj_pod(docs, "cairn-k8s-objects")["initContainers"] if c["name"] == "kubectl-dump")
    c["args"] = [edit(a) for a in c["args"]]


def m_file(docs, key, edit):
    cm = hashed(docs, "ConfigMap", "cairn-config")
    cm["data"][key] = edit(cm["data"][key])


def without_env(c, name):
    c["env"] = [e for e in c.get("env") or [] if e["name"] != name]


def init_container(docs, cj, name):
    return next(c for c in cj_pod(docs, cj)["initContainers"] if c["name"] == name)


# The dump as it was before namespace cairn was left out.
DUMP_EVERYTHING = """set -euo pipefail
umask 077
kubectl get configmaps,secrets --all-namespaces --output=yaml --request-timeout=120s \\
  > /dump/.kubernetes-objects.yaml.part
mv /dump/.kubernetes-objects.yaml.part /dump/kubernetes-objects.yaml
"""


MUTATIONS = [
    ("concurrencyPolicy", "concurrencyPolicy is not Forbid",
     lambda ds: find(ds, "CronJob", "cairn-nightly")["spec"].pop("concurrencyPolicy")),
    ("startingDeadlineSeconds", "no startingDeadlineSeconds",
     lambda ds: find(ds, "CronJob", "cairn-drill")["spec"].pop("startingDeadlineSeconds")),
    ("backoffLimit", "backoffLimit is 6",
     lambda ds: set_in(find(ds, "CronJob", "cairn-nightly"), ["spec", "jobTemplate", "spec", "backoffLimit"], 6)),
    ("activeDeadlineSeconds", "no jobTemplate activeDeadlineSeconds",
     lambda ds: find(ds, "CronJob", "cairn-k8s-objects")["spec"]["jobTemplate"]["spec"].pop("activeDeadlineSeconds")),
    ("ttlSecondsAfterFinished", "no jobTemplate ttlSecondsAfterFinished",
     lambda ds: find(ds, "CronJob", "cairn-replicate-offsite")["spec"]["jobTemplate"]["spec"].pop("ttlSecondsAfterFinished")),
    ("run deadline", "is not above the config's run deadline",
     lambda ds: set_in(find(ds, "CronJob", "cairn-nightly"), ["spec", "jobTemplate", "spec", "activeDeadlineSeconds"], 14400)),
    ("memory limit", "no memory limit",
     lambda ds: container(ds, "cairn-nightly")["resources"]["limits"].pop("memory")),
    ("requests", "no cpu request",
     lambda ds: container(ds, "cairn-retention-extra")["resources"]["requests"].pop("cpu")),
    ("latest tag", "uses the tag latest",
     lambda ds: set_in(container(ds, "cairn-drill"), ["image"], "localhost/cairn:latest")),
    ("no tag", "has no tag",
     lambda ds: set_in(container(ds, "cairn-drill"), ["image"], "localhost/cairn")),
    ("pull policy", "imagePullPolicy 'Always'",
     lambda ds: set_in(container(ds, "cairn-drill"), ["imagePullPolicy"], "Always")),
    ("runAsNonRoot", "runAsNonRoot is not true",
     lambda ds: set_in(cj_pod(ds, "cairn-nightly"), ["securityContext", "runAsNonRoot"], False)),
    ("root", "runAsUser 0",
     lambda ds: set_in(cj_pod(ds, "cairn-nightly"), ["securityContext", "runAsUser"], 0)),
    ("seccomp", "seccompProfile is not RuntimeDefault",
     lambda ds: cj_pod(ds, "cairn-nightly")["securityContext"].pop("seccompProfile")),
    ("privilege escalation", "allowPrivilegeEscalation is not false",
     lambda ds: set_in(container(ds, "cairn-nightly"), ["securityContext", "allowPrivilegeEscalation"], True)),
    ("capabilities", "capabilities do not drop ALL",
     lambda ds: container(ds, "cairn-nightly")["securityContext"].pop("capabilities")),
    ("read-only root", "readOnlyRootFilesystem is not true",
     lambda ds: set_in(container(ds, "cairn-nightly"), ["securityContext", "readOnlyRootFilesystem"], False)),
    ("backup node", "its nodeSelector kubernetes.io/hostname is None",
     lambda ds: cj_pod(ds, "cairn-nightly").pop("nodeSelector")),
    ("missing Secret", "does not exist in the output",
     lambda ds: set_in(next(v for v in cj_pod(ds, "cairn-nightly")["volumes"] if v["name"] == "couchdb"),
                       ["secret", "secretName"], "cairn-couchdb-typo")),
    ("missing key", "has no key 'pass'",
     lambda ds: set_in(next(e for e in container(ds, "cairn-restore-couchdb")["env"] if e["name"] == "COUCHDB_PASSWORD"),
                       ["valueFrom", "secretKeyRef", "key"], "pass")),
    ("missing ServiceAccount", "does not exist",
     lambda ds: set_in(cj_pod(ds, "cairn-drill"), ["serviceAccountName"], "nobody")),
    ("automounted token", "only cairn-k8s-reader's pod may",
     lambda ds: set_in(cj_pod(ds, "cairn-nightly"), ["automountServiceAccountToken"], True)),
    ("token in the cairn container", "(cairn) mounts the API token",
     lambda ds: container(ds, "cairn-k8s-objects")["volumeMounts"].append(
         {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True})),
    ("replication read-write", "the replication mounts /srv/backups read-write",
     lambda ds: next(m for m in container(ds, "cairn-replicate-offsite")["volumeMounts"]
                     if m["mountPath"] == "/srv/backups").pop("readOnly")),
    ("replication deletes", "the replication forgets",
     lambda ds: container(ds, "cairn-replicate-offsite")["args"].extend(["--keep-last", "30"])),
    ("replication overwrites", "is not --append-only",
     lambda ds: container(ds, "cairn-replicate-offsite")["args"].remove("--append-only")),
    ("replication metrics unmounted", "is not in a mounted /var/lib/node_exporter/textfile",
     lambda ds: container(ds, "cairn-replicate-offsite").__setitem__(
         "volumeMounts", [m for m in container(ds, "cairn-replicate-offsite")["volumeMounts"] if m["name"] != "textfile"])),
    ("restore not suspended", "must be suspend: true",
     lambda ds: set_in(find(ds, "CronJob", "cairn-restore-postgres"), ["spec", "suspend"], False)),
    ("secret of the config not mounted", "the config reads /run/secrets/postgres/password",
     lambda ds: container(ds, "cairn-nightly").__setitem__(
         "volumeMounts", [m for m in container(ds, "cairn-nightly")["volumeMounts"] if m["name"] != "postgres"])),
    ("command as a shell string", "command must be an argv array",
     lambda ds: m_config(ds, lambda t: re.sub(r"command = \[.*\]", 'command = "pg_dump -Fc openedx"', t))),
    ("no /tmp", "needs a writable /tmp",
     lambda ds: container(ds, "cairn-retention-extra").__setitem__(
         "volumeMounts", [m for m in container(ds, "cairn-retention-extra")["volumeMounts"] if m["mountPath"] != "/tmp"])),
    ("retention drift", "differs from cairn.toml's [retention]",
     lambda ds: m_config(ds, lambda t: t.replace("keep_daily = 7", "keep_daily = 14"))),
    ("hostPath elsewhere", "only /var/lib/node_exporter/textfile is allowed",
     lambda ds: set_in(next(v for v in cj_pod(ds, "cairn-nightly")["volumes"] if v["name"] == "textfile"),
                       ["hostPath", "path"], "/")),
    ("busybox init container", "image 'busybox:1.37.0' is neither a cairn image",
     lambda ds: cj_pod(ds, "cairn-nightly").setdefault("initContainers", []).append({
         "name": "key-permissions", "image": "busybox:1.37.0", "imagePullPolicy": "IfNotPresent",
         "command": ["busybox", "true"],
         "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
         "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "capabilities": {"drop": ["ALL"]}}})),
    ("runAsGroup is not fsGroup", "its runAsGroup 1000 is not the pod's fsGroup 65532",
     lambda ds: set_in(cj_pod(ds, "cairn-volume-lms-uploads"), ["securityContext", "runAsGroup"], 1000)),
    ("tokens without fsGroup", "its runAsGroup 65532 is not the pod's fsGroup None",
     lambda ds: find(ds, "Deployment", "cairn-serve")["spec"]["template"]["spec"]["securityContext"].pop("fsGroup")),
    ("key readable by others", "has mode 0444",
     lambda ds: set_in(next(v for v in cj_pod(ds, "cairn-volume-lms-uploads")["volumes"] if v["name"] == "signing-key"),
                       ["secret", "defaultMode"], 0o444)),
    ("key copied into an emptyDir", "--key /run/secrets/cairn/backup.key is not mounted from a Secret",
     lambda ds: set_in(cj_pod(ds, "cairn-k8s-objects"), ["volumes"],
                       [{"name": "signing-key", "emptyDir": {"medium": "Memory"}} if v["name"] == "signing-key" else v
                        for v in cj_pod(ds, "cairn-k8s-objects")["volumes"]])),
    ("key of the config copied into an emptyDir", "the config reads /run/secrets/cairn/backup.key",
     lambda ds: set_in(cj_pod(ds, "cairn-nightly"), ["volumes"],
                       [{"name": "signing-key", "emptyDir": {"medium": "Memory"}} if v["name"] == "signing-key" else v
                        for v in cj_pod(ds, "cairn-nightly")["volumes"]])),
    ("workload PVC writable with fsGroup", "kubelet would chgrp its files",
     lambda ds: next(v for v in cj_pod(ds, "cairn-volume-lms-uploads")["volumes"]
                     if v["name"] == "uploads")["persistentVolumeClaim"].pop("readOnly")),
    # F2: the cluster-objects dump never reaches namespace cairn.
    ("dump of every namespace", "can dump namespace cairn",
     lambda ds: m_dump(ds, lambda a: DUMP_EVERYTHING if "kubectl" in a else a)),
    ("dump without the cairn exclusion", "can dump namespace cairn",
     lambda ds: m_dump(ds, lambda a: a.replace("metadata.namespace!=cairn,", "").replace(
         "'metadata.namespace!=cairn'", "'metadata.namespace!=default'"))),
    ("dump of the pod's own namespace", "can dump namespace cairn",
     lambda ds: m_dump(ds, lambda a: a.replace("echo ---", "kubectl get secrets -o yaml; echo ---"))),
    ("dump through a variable", "the policy cannot tell which namespaces it dumps",
     lambda ds: m_dump(ds, lambda a: a.replace("kubectl get", '"$KUBECTL" get').replace(
         "umask 077", "umask 077; KUBECTL=kubectl"))),
    ("dump of kube-system's Secrets", "can dump kube-system's Secrets",
     lambda ds: m_dump(ds, lambda a: a.replace(",metadata.namespace!=kube-system", ""))),
    # F3: database restores trust node4's key alone.
    ("drill without CAIRN_TRUST", "the drill without CAIRN_TRUST",
     lambda ds: without_env(container(ds, "cairn-drill"), "CAIRN_TRUST")),
    ("CouchDB restore without CAIRN_TRUST", "a CouchDB restore without CAIRN_TRUST",
     lambda ds: without_env(container(ds, "cairn-restore-couchdb"), "CAIRN_TRUST")),
    ("PostgreSQL restore without CAIRN_TRUST", "a restore of source:postgres without CAIRN_TRUST",
     lambda ds: without_env(init_container(ds, "cairn-restore-postgres", "cairn-restore"), "CAIRN_TRUST")),
    ("CAIRN_TRUST from TRUSTED_KEYS", "CAIRN_TRUST comes from 'TRUSTED_KEYS'",
     lambda ds: set_in(next(e for e in container(ds, "cairn-drill")["env"] if e["name"] == "CAIRN_TRUST"),
                       ["valueFrom", "configMapKeyRef", "key"], "TRUSTED_KEYS")),
    ("--trust overriding CAIRN_TRUST", "passes --trust, which overrides CAIRN_TRUST",
     lambda ds: container(ds, "cairn-restore-couchdb")["args"].extend(["--trust", "$(TRUSTED_KEYS)"])),
    ("NODE4_PUBLIC_KEY with the volume key", "NODE4_PUBLIC_KEY names 2 keys",
     lambda ds: hashed(ds, "ConfigMap", "cairn-site")["data"].__setitem__(
         "NODE4_PUBLIC_KEY", hashed(ds, "ConfigMap", "cairn-site")["data"]["NODE4_PUBLIC_KEY"] + ",ed25519:OTHER")),
    ("NODE4_PUBLIC_KEY not trusted", "NODE4_PUBLIC_KEY is not one of TRUSTED_KEYS",
     lambda ds: hashed(ds, "ConfigMap", "cairn-site")["data"].__setitem__("NODE4_PUBLIC_KEY", "ed25519:OTHER")),
    ("nightly with CAIRN_TRUST", "`cairn run` with CAIRN_TRUST",
     lambda ds: container(ds, "cairn-nightly").setdefault("env", []).append({"name": "CAIRN_TRUST", "value": "x"})),
    # F9: the nightly reads no [drill], and drill.toml is cairn.toml plus [drill].
    ("[drill] in the nightly's config", "`cairn run`'s config names [drill]",
     lambda ds: m_file(ds, "cairn.toml", lambda t: t + "\n[drill]\nscratch = \"/tmp\"\n")),
    ("drill.toml drifts from cairn.toml", "drill.toml differs from cairn.toml outside [drill], in ['source']",
     lambda ds: m_file(ds, "drill.toml", lambda t: t.replace('PGUSER = "openedx"', 'PGUSER = "postgres"', 1))),
    ("drill config without [drill]", "the drill's config has no [drill] section",
     lambda ds: m_file(ds, "drill.toml", lambda t: t[:t.index("[drill]")])),
    ("superuser's password mounted in the nightly", "mounts /run/secrets/postgres/admin-password",
     lambda ds: next(v for v in cj_pod(ds, "cairn-nightly")["volumes"] if v["name"] == "postgres")["secret"].pop("items")),
]


def self_test(docs, options):
    failures = Policy(copy.deepcopy(docs), *options).run()
    if failures:
        print("policy self-test: the unbroken manifests must pass first:", file=sys.stderr)
        for f in failures:
            print(f"policy: {f}", file=sys.stderr)
        return 1
    missed = 0
    for name, expected, mutate in MUTATIONS:
        broken = copy.deepcopy(docs)
        mutate(broken)
        found = Policy(broken, *options).run()
        caught = [f for f in found if expected in f]
        if caught:
            print(f"policy self-test: caught   {name}: {caught[0]}")
        else:
            missed += 1
            print(f"policy self-test: MISSED   {name} (expected a failure containing {expected!r}; got {found})",
                  file=sys.stderr)
    print(f"policy self-test: {len(MUTATIONS) - missed} of {len(MUTATIONS)} broken copies caught")
    return 1 if missed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--backup-node", default="node4")
    p.add_argument("--deployable", action="store_true",
                   help="an overlay's output: no symbolic image names left")
    p.add_argument("--external-pvc", action="append", default=[], metavar="NS/NAME",
                   help="a workload PVC the output mounts but does not define")
    p.add_argument("--self-test", action="store_true")
    a = p.parse_args()
    docs = []
    for f in a.files:
        with open(f) as fh:
            docs.extend(d for d in yaml.safe_load_all(fh) if d)
    if not docs:
        print("policy: no documents to check", file=sys.stderr)
        return 1
    external = set(DEFAULT_EXTERNAL_PVCS) | {tuple(x.split("/", 1)) for x in a.external_pvc}
    options = (a.backup_node, a.deployable, external)
    if a.self_test:
        return self_test(docs, options)
    failures = Policy(docs, *options).run()
    for f in failures:
        print(f"policy: {f}", file=sys.stderr)
    kinds = sorted({d.get("kind") for d in docs})
    if failures:
        print(f"policy: {len(failures)} failures in {len(docs)} documents", file=sys.stderr)
        return 1
    print(f"policy: {len(docs)} documents pass ({', '.join(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
