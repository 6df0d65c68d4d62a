#!/usr/bin/env python3
"""Build the gateway's image without a registry, and run its entrypoint as Kubernetes would.

Where no image registry is reachable (an air-gapped builder, CI), the Containerfile's two
build arguments take what a registry would have given:

* ``BASE_IMAGE``: a Debian base made here with ``debootstrap`` from the Debian mirror the
  machine's apt already uses, with python3 and python3-venv, and ``podman import``ed. It is
  built once per suite and package list and kept in podman's own image store (the tag
  carries a hash of both), so a second build starts from it.
* ``WHEELHOUSE``: the project's wheel and every dependency's, made on this host by
  ``pip wheel '.[tracing]'``, for an offline ``pip install --no-index`` in the image. The
  wheels are the host's CPython ABI and glibc: the base must have the same Python minor
  version and at least the host's glibc (a bookworm base on a bookworm host does).

The image is built with ``--isolation=chroot``, which needs no OCI runtime or cgroups.

``run`` starts the image's entrypoint the way the chart's pod does: as the image's user
(10001), read-only root filesystem, a tmpfs on /tmp and /var/lib/igsp-gateway, a config
directory mounted read-only at /etc/igsp-gateway. It uses ``podman run`` when an OCI runtime
works on this machine (crun refuses a cgroup v1/v2 hybrid host; runc does not), and otherwise
the image's own filesystem (``podman image mount``) under ``unshare`` and ``chroot``, which
needs only root.

    python tools/container_image.py build --tag localhost/igsp-gateway:dev
    python tools/container_image.py run localhost/igsp-gateway:dev -- demo
    python tools/container_image.py run --config-dir ./rendered localhost/igsp-gateway:dev \\
        --entrypoint igsp-gateway -- validate /etc/igsp-gateway/gateway.yaml

Needs root, podman and, for a new base, debootstrap (Debian: ``apt-get install podman
debootstrap``; ``runc`` lets ``run`` use podman itself).
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import fcntl
import functools
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
# What the Containerfile needs of a base: python3 (3.11, like the host's wheels), venv with
# its bundled pip, and useradd/groupadd (in every minbase).
BASE_PACKAGES = ("python3", "python3-venv")
BASE_REPOSITORY = "localhost/igsp-gateway-base"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Where the image mounts what the chart mounts.
CONFIG_MOUNT = "/etc/igsp-gateway"
DATA_MOUNT = "/var/lib/igsp-gateway"


def _sbin_on_path() -> None:
    """debootstrap, chroot, runc and mount live in sbin, which a non-login PATH may lack."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(parts + [d for d in ("/usr/sbin", "/sbin") if d not in parts])


def log(message: str) -> None:
    print(f"container_image: {message}", file=sys.stderr, flush=True)


def run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), check=True, **kwargs)


def cache_dir() -> Path:
    """Locks and debootstrap's scratch space; the bases themselves live in podman's store."""
    base = os.environ.get("IGSP_IMAGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "igsp-gateway", "image")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder at a time per base: a second one waits, then finds the image made."""
    with open(cache_dir() / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- the Debian mirror apt uses -------------------------------------------------------------

def apt_mirror(suite: str = SUITE, sources: Path = Path("/etc/apt")) -> str:
    """The URI of the first apt source that serves ``suite`` itself (not -updates/-security).

    Reads one-line ``.list`` entries and deb822 ``.sources`` stanzas, so debootstrap fetches
    from wherever this machine's apt does (a local mirror, a proxy) rather than the internet.
    """
    files = [sources / "sources.list"] + sorted((sources / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                    if fields.get("Enabled", "yes").lower() != "no":
                        return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                match = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match and match.group(2) == suite:
                    return match.group(1)
    return DEFAULT_MIRROR


# --- the base image -------------------------------------------------------------------------

def base_tag(suite: str = SUITE, packages: Sequence[str] = BASE_PACKAGES) -> str:
    key = hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]
    return f"{BASE_REPOSITORY}:{suite}-{key}"


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def ensure_base(suite: str = SUITE, mirror: str | None = None, packages: Sequence[str] = BASE_PACKAGES) -> str:
    """The base image's tag; debootstraps and imports it first if podman does not have it."""
    _sbin_on_path()
    tag = base_tag(suite, packages)
    with locked(tag.rsplit(":", 1)[1]):
        if image_exists(tag):
            log(f"base {tag} already in podman's store")
            return tag
        mirror = mirror or apt_mirror(suite)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir()) as scratch:
            rootfs = Path(scratch) / "rootfs"
            log(f"debootstrap {suite} from {mirror} (minbase + {', '.join(packages)})")
            run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror],
                stdout=subprocess.DEVNULL)
            # Downloaded .debs and package lists are no part of a base (about 90 MB).
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (rootfs / leftover).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
            run(["podman", "import", "--quiet", "--change", "CMD [\"/bin/bash\"]", "-", tag], stdin=tar.stdout,
                stdout=subprocess.DEVNULL)
            tar.stdout.close()
            if tar.wait() != 0:
                raise subprocess.CalledProcessError(tar.returncode, "tar")
        log(f"base {tag} made in {time.monotonic() - started:.0f} s")
        return tag


# --- the gateway image ----------------------------------------------------------------------

# What packaging.markers.default_environment() computes, run by the base's own python3
# (which has no packaging) so that markers are decided for the interpreter in the image.
_MARKER_ENVIRONMENT = r"""
import json, os, platform, sys
info = sys.implementation.version
version = "%d.%d.%d" % info[:3] + ("" if info.releaselevel == "final" else info.releaselevel[0] + str(info.serial))
print(json.dumps({
    "implementation_name": sys.implementation.name, "implementation_version": version,
    "os_name": os.name, "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(), "platform_python_implementation":
    platform.python_implementation(), "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform}))
"""


def marker_environment(base: str) -> dict[str, str]:
    """Environment markers of the base image's python3, read in its own filesystem."""
    mounted = run(["podman", "image", "mount", base], capture_output=True, text=True).stdout.strip()
    try:
        out = run(["chroot", mounted, "python3", "-c", _MARKER_ENVIRONMENT], capture_output=True, text=True)
    finally:
        subprocess.run(["podman", "image", "unmount", base], capture_output=True)
    return json.loads(out.stdout)


def _wheel_requirements(wheel: Path) -> tuple[str, list[str]]:
    """A wheel's project name and its Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        metadata = email.parser.HeaderParser().parsestr(archive.read(name).decode("utf-8"))
    return metadata["Name"], metadata.get_all("Requires-Dist") or []


def build_wheelhouse(directory: Path, target: dict[str, str], source: Path = ROOT) -> None:
    """The project's wheel and its dependencies', tracing extra included, into ``directory``.

    pip resolves for the interpreter running it, so a dependency that only the image's
    python needs (``async-timeout; python_full_version < "3.11.3"`` of redis, with Debian's
    3.11.2 and a newer host) would be missing: every wheel's requirements are evaluated
    again with ``target``'s markers and what is missing is added, until nothing is.
    """
    if directory.exists():
        shutil.rmtree(directory)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(directory)]
    run([*pip, f"{source}[tracing]"])
    wanted_extras: dict[str, set[str]] = {"igsp-gateway": {"tracing"}}
    while True:
        have, missing = {}, {}
        for wheel in directory.glob("*.whl"):
            name, requires = _wheel_requirements(wheel)
            have[canonicalize_name(name)] = requires
        for name, requires in have.items():
            for line in requires:
                requirement = Requirement(line)
                extras = wanted_extras.get(name, set()) or {""}
                if requirement.marker and not any(requirement.marker.evaluate({**target, "extra": extra})
                                                  for extra in extras):
                    continue
                key = canonicalize_name(requirement.name)
                wanted_extras.setdefault(key, set()).update(requirement.extras)
                if key not in have:
                    missing[key] = f"{requirement.name}{requirement.specifier}"
        if not missing:
            return
        log(f"wheels for the image's python only: {', '.join(sorted(missing.values()))}")
        run([*pip, "--no-deps", *missing.values()])


def build_image(tag: str, *, base: str | None = None, context: Path = ROOT, wheelhouse: str | None = "wheelhouse",
                keep_wheelhouse: bool = False) -> str:
    """``podman build`` the Containerfile offline; returns the tag.

    ``wheelhouse`` is a directory name inside ``context``, made fresh for this build (and
    removed after, unless ``keep_wheelhouse``); ``None`` installs from the package index.
    """
    _sbin_on_path()
    base = base or ensure_base()
    args = ["--build-arg", f"BASE_IMAGE={base}"]
    wheel_dir = None
    if wheelhouse:
        wheel_dir = context / wheelhouse
        started = time.monotonic()
        build_wheelhouse(wheel_dir, marker_environment(base), context)
        log(f"wheelhouse {wheel_dir} built in {time.monotonic() - started:.0f} s")
        args += ["--build-arg", f"WHEELHOUSE={wheelhouse}"]
    try:
        started = time.monotonic()
        run(["podman", "build", "--isolation=chroot", "--pull=never", "--layers=false", "--quiet",
             "-f", str(context / "Containerfile"), "-t", tag, *args, str(context)], stdout=subprocess.DEVNULL)
        log(f"image {tag} built in {time.monotonic() - started:.0f} s")
    finally:
        if wheel_dir and not keep_wheelhouse:
            shutil.rmtree(wheel_dir, ignore_errors=True)
    return tag


# --- running the entrypoint -----------------------------------------------------------------

def image_config(image: str) -> dict:
    out = run(["podman", "image", "inspect", "--format", "{{json .Config}}", image], capture_output=True, text=True)
    return json.loads(out.stdout)


def _rlimit_args() -> list[str]:
    """podman asks for more open files and processes than a host without CAP_SYS_RESOURCE
    grants (setrlimit then fails in the runtime): ask for at most what this process has,
    and few processes (past a few ten thousand runc is refused here too; the gateway needs
    a handful)."""
    args = []
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, 1 << 20), ("nproc", resource.RLIMIT_NPROC, 4096)):
        soft, hard = resource.getrlimit(which)
        limit = min(v for v in (soft, hard, cap) if v != resource.RLIM_INFINITY)
        args.append(f"--ulimit={name}={limit}:{limit}")
    return args


def _podman_run_command(image: str, args: Sequence[str], *, config_dir: Path | None, env: dict[str, str],
                        entrypoint: str | None, runtime: str) -> list[str]:
    user = image_config(image).get("User") or "0"
    command = ["podman", "run", "--rm", "--network=none", "--read-only", *_rlimit_args(),
               "--tmpfs=/tmp:rw,mode=1777,nosuid,nodev",
               f"--mount=type=tmpfs,destination={DATA_MOUNT},tmpfs-mode=0700,chown=true"]
    if runtime:
        command.insert(2, f"--runtime={runtime}")
    if config_dir is not None:
        command.append(f"--volume={config_dir}:{CONFIG_MOUNT}:ro")
    for key, value in env.items():
        command.append(f"--env={key}={value}")
    if entrypoint is not None:
        command.append(f"--entrypoint={json.dumps([entrypoint])}")
    return [*command, f"--user={user}", image, *args]


@functools.cache
def podman_runtime(image: str) -> str | None:
    """The OCI runtime ``podman run`` works with here (``""``: podman's default), or None:
    the image's entrypoint is asked for its version under each candidate (podman's default
    first, then runc). Asked once per image and process."""
    _sbin_on_path()
    candidates = [""] + (["runc"] if shutil.which("runc") else [])
    for runtime in candidates:
        command = ["podman", "run", "--rm", "--network=none", *_rlimit_args(), image, "--version"]
        if runtime:
            command.insert(3, f"--runtime={runtime}")
        probe = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return runtime
        log(f"podman run{' --runtime=' + runtime if runtime else ''} does not work here: "
            f"{probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}")
    return None


# Inside fresh mount and pid namespaces: the image's root made read-only, then what the pod
# mounts (tmpfs /tmp and data dir, config read-only, its own /proc, a minimal /dev).
_CHROOT_SCRIPT = r"""
set -eu
root=$1 config=$2 uid=$3 gid=$4 workdir=$5
shift 5
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount -t tmpfs -o "mode=0700,uid=$uid,gid=$gid,nosuid,nodev" tmpfs "$root/var/lib/igsp-gateway"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null:1:3 zero:1:5 random:1:8 urandom:1:9; do
    IFS=: read -r name major minor <<EOF
$node
EOF
    mknod -m 666 "$root/dev/$name" c "$major" "$minor"
done
mkdir "$root/dev/shm"
mount -o remount,ro "$root/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
if [ -n "$config" ]; then
    mount --bind "$config" "$root/etc/igsp-gateway"
    mount -o remount,bind,ro "$root/etc/igsp-gateway"
fi
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
exec chroot --userspec="$uid:$gid" --groups="$gid" "$root" /usr/bin/env -i -C "$workdir" "$@"
"""


def _home(rootfs: Path, uid: str) -> str:
    with contextlib.suppress(OSError):
        for line in (rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 5 and fields[2] == uid:
                return fields[5]
    return "/"


def run_in_chroot(image: str, args: Sequence[str], *, config_dir: Path | None, env: dict[str, str],
                  entrypoint: str | None, timeout: float) -> subprocess.CompletedProcess:
    """The image's filesystem, mounted by podman, as the root of a chroot in new namespaces."""
    config = image_config(image)
    uid, _, gid = (config.get("User") or "0").partition(":")
    gid = gid or uid
    if not (uid.isdigit() and gid.isdigit()):
        raise SystemExit(f"image user {config.get('User')!r} is not numeric uid:gid")
    command = ([entrypoint] if entrypoint else list(config.get("Entrypoint") or [])) + list(args)
    mounted = run(["podman", "image", "mount", image], capture_output=True, text=True).stdout.strip()
    try:
        rootfs = Path(mounted)
        environment = dict(item.split("=", 1) for item in config.get("Env") or [])
        environment.update({"HOME": _home(rootfs, uid), "HOSTNAME": "igsp-gateway", **env})
        return subprocess.run(
            ["unshare", "--mount", "--propagation=private", "--pid", "--fork", "--", "sh", "-c", _CHROOT_SCRIPT, "sh",
             mounted, str(config_dir or ""), uid, gid, config.get("WorkingDir") or "/",
             *[f"{k}={v}" for k, v in environment.items()], *command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["podman", "image", "unmount", image], capture_output=True)


def run_entrypoint(image: str, args: Sequence[str], *, config_dir: Path | None = None,
                   env: dict[str, str] | None = None, entrypoint: str | None = None, via: str = "auto",
                   timeout: float = 300) -> tuple[str, subprocess.CompletedProcess]:
    """Run the image's entrypoint (or ``entrypoint``) with ``args`` as the pod would.

    ``via``: ``podman``, ``chroot`` or ``auto`` (podman where a runtime works). Returns how
    it ran (``podman``, ``podman --runtime=runc``, ``chroot``) and the finished process.
    """
    _sbin_on_path()
    env = dict(env or {})
    if via in ("auto", "podman"):
        runtime = podman_runtime(image)
        if runtime is not None:
            command = _podman_run_command(image, args, config_dir=config_dir, env=env, entrypoint=entrypoint,
                                          runtime=runtime)
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            return (f"podman --runtime={runtime}" if runtime else "podman"), done
        if via == "podman":
            raise SystemExit("podman run works with no OCI runtime on this machine (try: apt-get install runc)")
    return "chroot", run_in_chroot(image, args, config_dir=config_dir, env=env, entrypoint=entrypoint,
                                   timeout=timeout)


# --- command line ---------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    base = commands.add_parser("base", help="make (once) the debootstrapped base image; prints its tag")
    base.add_argument("--suite", default=SUITE)
    base.add_argument("--mirror", help="Debian mirror (default: the one apt uses here)")
    build = commands.add_parser("build", help="build the gateway image offline; prints its tag")
    build.add_argument("--tag", default="localhost/igsp-gateway:dev")
    build.add_argument("--base", help="base image (default: the debootstrapped one, made if missing)")
    build.add_argument("--online", action="store_true", help="no wheelhouse: pip in the image uses the index")
    build.add_argument("--keep-wheelhouse", action="store_true", help="leave ./wheelhouse after the build")
    start = commands.add_parser("run", help="run the image's entrypoint as the chart's pod does")
    start.add_argument("image")
    start.add_argument("--config-dir", type=Path, help=f"mounted read-only at {CONFIG_MOUNT}")
    start.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--entrypoint", help="instead of the image's (as a pod's `command:`)")
    start.add_argument("--via", choices=("auto", "podman", "chroot"), default="auto")
    start.add_argument("args", nargs="*", help="after --: the entrypoint's arguments")
    options = parser.parse_args(argv)
    if options.command == "base":
        print(ensure_base(options.suite, options.mirror))
    elif options.command == "build":
        print(build_image(options.tag, base=options.base, wheelhouse=None if options.online else "wheelhouse",
                          keep_wheelhouse=options.keep_wheelhouse))
    else:
        env = dict(item.split("=", 1) for item in options.env)
        config_dir = options.config_dir.resolve() if options.config_dir else None
        how, done = run_entrypoint(options.image, options.args, config_dir=config_dir, env=env,
                                   entrypoint=options.entrypoint, via=options.via)
        log(f"ran via {how}")
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
