"""The Containerfile builds, and its image runs what the Helm chart runs.

Built for real and offline, as tools/container_image.py does for anyone without a registry:
a debootstrapped Debian base (made once, then kept in podman's store) and the project's
wheels from this checkout. Its entrypoint then runs as the chart's pod runs it: as the
image's user, read-only root, tmpfs /tmp and data directory, the config the chart renders
mounted read-only at /etc/igsp-gateway. Each run goes through ``podman run`` where an OCI
runtime works on this machine, and through the image's own filesystem under chroot in any
case, so the fallback a runtime-less builder uses is exercised too.

Slow (a first run debootstraps a base: about a minute; later ones build in about 30 s):
select with ``-m container``, leave out with ``-m "not container"``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from gateway import __version__
from gateway.tools.simulators.hub88_wallet import generate_keypair
from tests.test_helm import CI_DIR, load_values, pod_spec, render_chart, write_config_tree
from tests.test_helm_config import _pod_env as pod_env
from tools import container_image

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

RESULT = re.compile(r"^RESULT: all (\d+) steps right, legacy ledger == iGSP ledger", re.M)
# The keys an operator keeps in the production values' existing Secret (tests/test_helm_config.py).
PRODUCTION_SECRET = {"REDIS_PASSWORD": "pw", "PP_SECRET_KEY": "pp-secret", "PP_SECURE_LOGIN": "casino",
                     "PARTNER_ACME_GAMES_API_KEY": "acme-key-0001", "PARTNER_ACME_GAMES_SECRET": "a" * 32,
                     "PARTNER_CASINO_ONE_API_KEY": "casino-key-0001", "PARTNER_CASINO_ONE_SECRET": "c" * 32,
                     "PARTNER_CASINO_ONE_SECRET_PREVIOUS": "d" * 32}


@pytest.fixture(scope="module")
def image():
    """The gateway image, built from this checkout; removed afterwards (the base is kept)."""
    if os.geteuid() != 0:
        pytest.skip("building and running an image here needs root")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (Debian: apt-get install podman buildah debootstrap runc)")
    tag = f"localhost/igsp-gateway:test-{os.getpid()}"
    started = time.monotonic()
    container_image.build_image(tag, wheelhouse=f"wheelhouse-test-{os.getpid()}")
    print(f"\nimage {tag} built in {time.monotonic() - started:.0f} s")
    yield tag
    subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)


@pytest.fixture(scope="module")
def podman_runtime(image):
    """The runtime ``podman run`` works with here, or None when only chroot does."""
    return container_image.podman_runtime(image)


@pytest.fixture(params=["podman", "chroot"])
def via(request, podman_runtime):
    if request.param == "podman" and podman_runtime is None:
        pytest.skip("no OCI runtime works with podman run on this machine (crun refuses cgroup v1/v2 hybrid "
                    "hosts; apt-get install runc); the chroot run covers the image")
    return request.param


def run(image, args, via, **kwargs) -> tuple[str, subprocess.CompletedProcess]:
    how, done = container_image.run_entrypoint(image, args, via=via, **kwargs)
    assert how.startswith(via)
    return how, done


def config_volume(manifests, directory):
    """The chart's config volume laid out as mounted, readable by the pod's user."""
    write_config_tree(manifests, directory)
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def test_image_runs_what_the_chart_runs(image):
    """Entrypoint and command are the chart's container's; the user is its runAsUser."""
    config = container_image.image_config(image)
    pod = pod_spec(render_chart(load_values(CI_DIR / "production-values.yaml")))
    container = pod["containers"][0]
    assert config["Entrypoint"] + config["Cmd"] == container["command"] + container["args"]
    context = container["securityContext"]
    assert config["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
    assert context["readOnlyRootFilesystem"] is True
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__


def test_runs_as_10001_on_a_read_only_root_with_the_packaged_data(image, via):
    probe = ("import json, os, pathlib, sys\n"
             "from gateway import resources\n"
             "def writable(path):\n"
             "    try:\n"
             "        pathlib.Path(path, 'probe').write_text('x'); return True\n"
             "    except OSError:\n"
             "        return False\n"
             "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter\n"
             "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd(), 'prefix': sys.prefix,\n"
             "  'spec': str(resources.data_dir('spec')), 'mappings': sorted(p.name for p in\n"
             "   resources.data_dir('mappings').glob('*.yaml')), 'root': writable('/'),\n"
             "  'venv': writable(sys.prefix), 'tmp': writable('/tmp'), 'data': writable(os.getcwd())}))\n")
    _, done = run(image, ["-c", probe], via, entrypoint="python3")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["uid"], seen["gid"]) == (10001, 10001)
    assert seen["cwd"] == "/var/lib/igsp-gateway" and seen["prefix"] == "/opt/igsp-gateway"
    # spec/ and mappings/ come from the wheel's data files, not from a checkout.
    assert seen["spec"] == "/opt/igsp-gateway/share/igsp-gateway/spec"
    assert {"hub88-wallet.yaml", "pragmatic-provider.yaml"} <= set(seen["mappings"])
    assert not seen["root"] and not seen["venv"]
    assert seen["tmp"] and seen["data"]


@pytest.mark.parametrize("scenario", ["production", "single-node"])
def test_the_config_the_chart_mounts_validates_in_the_image(image, via, scenario, tmp_path):
    """The init container's own command, with the pod's environment, on the rendered ConfigMap."""
    manifests = render_chart(load_values(CI_DIR / f"{scenario}-values.yaml"))
    env = pod_env(manifests)
    if scenario == "production":
        env.update(PRODUCTION_SECRET, HUB88_PRIVATE_KEY=generate_keypair()[0])
    (init,) = pod_spec(manifests)["initContainers"]
    assert init["command"] == ["igsp-gateway"] and init["args"][0] == "validate"
    config = config_volume(manifests, tmp_path / "config")
    how, done = run(image, init["args"], via, entrypoint=init["command"][0], config_dir=config, env=env)
    assert done.returncode == 0, f"{how}: {done.stdout}{done.stderr}"
    assert done.stdout.strip().endswith("/etc/igsp-gateway/gateway.yaml: ok"), done.stdout
    if scenario == "production":
        # The environment is what makes it valid: without one Secret key it is refused, by name.
        del env["PARTNER_ACME_GAMES_SECRET"]
        how, done = run(image, init["args"], via, entrypoint=init["command"][0], config_dir=config, env=env)
        assert done.returncode == 1, f"{how}: {done.stdout}{done.stderr}"
        assert "environment variable PARTNER_ACME_GAMES_SECRET is not set" in done.stderr


def test_demo_runs_in_the_image(image, via):
    """``igsp-gateway demo``: simulators and gateway inside the image, every step right."""
    how, done = run(image, ["demo"], via, timeout=300)
    assert done.returncode == 0, f"{how}: {done.stdout}{done.stderr}"
    result = RESULT.search(done.stdout)
    assert result, done.stdout
    assert int(result.group(1)) >= 22  # both faces: the provider face is part of the image
    assert "reconciliation, platform face:" in done.stdout and "— OK" in done.stdout
    assert "reconciliation, provider face:" in done.stdout
    assert "FAIL" not in done.stdout


def test_debootstrap_uses_the_mirror_apt_uses(tmp_path):
    """The base comes from where this machine's apt fetches the suite itself (deb822 or
    one-line sources), not from -updates or -security, nor from a disabled stanza."""
    sources = tmp_path / "apt"
    (sources / "sources.list.d").mkdir(parents=True)
    (sources / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\n# a comment\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert container_image.apt_mirror("bookworm", sources) == "http://mirror.example/debian"
    (sources / "sources.list").write_text("# deb http://commented.example/debian bookworm main\n"
                                          "deb http://updates.example/debian bookworm-updates main\n"
                                          "deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian bookworm main\n")
    assert container_image.apt_mirror("bookworm", sources) == "http://list.example/debian"
    assert container_image.apt_mirror("trixie", sources) == container_image.DEFAULT_MIRROR


def test_the_base_tag_follows_suite_and_packages():
    """A changed package list makes a new base instead of reusing a stale one."""
    tag = container_image.base_tag("bookworm", ("python3", "python3-venv"))
    assert tag.startswith("localhost/igsp-gateway-base:bookworm-")
    assert container_image.base_tag("bookworm", ("python3-venv", "python3")) == tag
    assert container_image.base_tag("bookworm", ("python3", "python3-venv", "curl")) != tag
    assert container_image.base_tag("trixie", ("python3", "python3-venv")) != tag
