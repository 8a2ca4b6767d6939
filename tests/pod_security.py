"""The Pod Security Standards' "baseline" and "restricted" rules, as checks on a pod spec.

Written from the Kubernetes documentation (Concepts > Security > Pod Security Standards,
profile details for Baseline and Restricted, policy version "latest"), one function per
control, so a test can say which control a manifest breaks. No cluster runs here, so this
stands in for the PodSecurity admission plugin with ``enforce: restricted``.

What it does not cover: the pod-level fields Knative does not let a Service set at all
(they cannot appear), and the queue-proxy sidecar Knative adds to every revision (its
securityContext is Knative's, set by the cluster's Knative version).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: baseline: capabilities a container may add
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: baseline: sysctls considered safe
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
#: restricted: the only volume sources allowed
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for i, container in enumerate(pod.get(field) or []):
            yield f"{field}[{i}]", container


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def baseline_violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """Everything the baseline profile refuses in ``pod`` (a PodSpec as a dict)."""
    found: list[str] = []
    pod_sc = _sc(pod)
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("HostProcess: spec.securityContext.windowsOptions.hostProcess must be false")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"Host Namespaces: spec.{field} must be false")
    for i, volume in enumerate(pod.get("volumes") or []):
        if "hostPath" in volume:
            found.append(f"HostPath Volumes: spec.volumes[{i}].hostPath is forbidden")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl.get('name')} is not in the safe set")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/"):
            if not (value == "runtime/default" or value.startswith("localhost/")):
                found.append(f"AppArmor: annotation {key}={value}")
    for where, sc in [("spec", pod_sc)] + [(f"spec.{p}", _sc(c)) for p, c in _containers(pod)]:
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"AppArmor: {where}.securityContext.appArmorProfile.type={apparmor}")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"SELinux: {where}.securityContext.seLinuxOptions={selinux}")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"Seccomp: {where}.securityContext.seccompProfile.type must not be Unconfined")
    for path, container in _containers(pod):
        found += _baseline_container(path, container)
    return found


def _baseline_container(path: str, container: dict[str, Any]) -> list[str]:
    found = []
    sc = _sc(container)
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append(f"HostProcess: spec.{path}.securityContext.windowsOptions.hostProcess")
    if sc.get("privileged"):
        found.append(f"Privileged Containers: spec.{path}.securityContext.privileged must be false")
    added = set((sc.get("capabilities") or {}).get("add") or [])
    if added - BASELINE_CAPABILITIES:
        found.append(f"Capabilities: spec.{path} adds {sorted(added - BASELINE_CAPABILITIES)}")
    for j, port in enumerate(container.get("ports") or []):
        if port.get("hostPort"):
            found.append(f"Host Ports: spec.{path}.ports[{j}].hostPort must be 0 or unset")
    if sc.get("procMount") not in (None, "Default"):
        found.append(f"/proc Mount Type: spec.{path}.securityContext.procMount must be Default")
    return found


def restricted_violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """Everything the restricted profile refuses in ``pod`` (baseline included)."""
    found = baseline_violations(pod, annotations)
    pod_sc = _sc(pod)
    for i, volume in enumerate(pod.get("volumes") or []):
        sources = set(volume) - {"name"}
        if not sources <= RESTRICTED_VOLUMES:
            found.append(f"Volume Types: spec.volumes[{i}] uses {sorted(sources - RESTRICTED_VOLUMES)}")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    if pod_sc.get("runAsUser") == 0:
        found.append("Running as Non-root user: spec.securityContext.runAsUser must not be 0")
    for path, container in _containers(pod):
        sc = _sc(container)
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(
                f"Privilege Escalation: spec.{path}.securityContext.allowPrivilegeEscalation must be false"
            )
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"Running as Non-root: spec.{path}.securityContext.runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            found.append(f"Running as Non-root user: spec.{path}.securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is None and not pod_seccomp:
            found.append(f"Seccomp: spec.{path} needs seccompProfile RuntimeDefault or Localhost")
        elif seccomp not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"Seccomp: spec.{path}.securityContext.seccompProfile.type={seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"Capabilities: spec.{path}.securityContext.capabilities.drop must include ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"Capabilities: spec.{path} may add only NET_BIND_SERVICE")
    return found
