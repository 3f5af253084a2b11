"""The role, through provision.deploy, on real simulator guests (systemd-nspawn containers).

Each guest is a booted Debian 12 with sshd and systemd; the Ollama double is installed from the
local mirror's release tarball and pulls gemma2:2b (scaled weights) from the mirror's registry.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.deploy import DeployHost, DeployResult, deploy
from provision.errors import DeployError
from tests.doubles import build_release
from tests.support.deploy_lab import MODEL, Lab
from tests.support.reporting import RecordingReporter

pytestmark = [pytest.mark.guests, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def run_deploy(
    lab: Lab,
    host: DeployHost,
    tmp_path: Path,
    reporter: RecordingReporter | None = None,
    **options: object,
) -> DeployResult:
    return deploy(
        [host],
        lab.ssh,
        state_dir=lab.state_dir,
        options=lab.options(**options),
        reporter=reporter or RecordingReporter(),
        inventory_out=lab.inventory,
    )


def api(lab: Lab, host: DeployHost, path: str, body: dict[str, object]) -> tuple[int, str]:
    out = lab.ssh_run(
        host, f"curl -s -w '\\n%{{http_code}}' http://127.0.0.1:11434{path} -d '{json.dumps(body)}'"
    ).stdout
    text, _, code = out.rpartition("\n")
    return int(code), text


# (host, first result, second result, first deploy's progress, tmp dir)
Deployed = tuple[DeployHost, DeployResult, DeployResult, RecordingReporter, Path]


@pytest.fixture(scope="module")
def deployed(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """One guest deployed twice: (host, first result, second result, first progress, tmp)."""
    tmp = tmp_path_factory.mktemp("deployed")
    host = lab.boot()
    reporter = RecordingReporter()
    first = run_deploy(lab, host, tmp, reporter)
    second = run_deploy(lab, host, tmp)
    yield host, first, second, reporter, tmp
    lab.destroy(host)


def test_first_deploy_installs_and_pulls_then_a_second_changes_nothing(deployed: Deployed) -> None:
    host, first, second, _reporter, _tmp = deployed
    assert first.ok and first.changed > 0
    changed = {c.task for c in first.changes}
    assert {
        "Download the Ollama release and check its sha256.",
        "Unpack Ollama into the install prefix.",
        "Pull the missing models.",
    } <= changed
    assert second.ok
    assert second.changed == 0 and second.stats[host.name].changed == 0
    assert second.stats[host.name].failed == 0


def test_a_redeploy_of_an_up_to_date_vm_reads_its_state_in_one_task_and_skips_the_rest(
    deployed: Deployed,
) -> None:
    """What makes a re-deploy cheap: one call to the host (library/ollama_state.py), whose
    answer (version, account, unit and drop-in checksums, service, API, models) skips every
    block. More tasks on this path cost ~0.3 s each (bench/deploy.py)."""
    host, _first, second, _reporter, _tmp = deployed
    stats = second.stats[host.name]
    assert (stats.ok, stats.changed, stats.failed) == (1, 0, 0)
    assert stats.skipped >= 5


def test_progress_has_one_line_per_task_with_status_and_elapsed(deployed: Deployed) -> None:
    host, _first, _second, reporter, _tmp = deployed
    steps = [msg for kind, msg in reporter.events if kind == "step"]
    assert ("stage", "deploy") in reporter.events
    assert any(
        re.fullmatch(rf"{host.name}: changed +Pull the missing models\. \[\d+\.\ds\]", s)
        for s in steps
    )
    assert steps[-1].startswith("deploy finished in ")


def test_the_guests_ollama_lists_the_model_and_runs_as_the_service(
    lab: Lab, deployed: Deployed
) -> None:
    host, *_ = deployed
    listed = lab.ssh_run(host, "ollama list").stdout
    assert re.search(r"^gemma2:2b\s+[0-9a-f]{12}\s", listed, re.MULTILINE), listed
    facts = lab.ssh_run(
        host,
        "systemctl is-enabled ollama; systemctl is-active ollama; "
        "ps -o user= -C ollama; id -nG ollama; ollama -v",
    ).stdout.split()
    assert facts[:3] == ["enabled", "active", "ollama"]
    assert f"{lab.release.version}" in facts[-1]
    layout = lab.ssh_run(
        host,
        "ls /usr/local/bin/ollama /usr/local/lib/ollama/llama-server "
        "/usr/share/ollama/.ollama/models/manifests/registry.ollama.ai/"
        "library/gemma2/2b",
    )
    assert layout.returncode == 0, layout.stderr
    dropin = lab.ssh_run(host, "cat /etc/systemd/system/ollama.service.d/labctl.conf").stdout
    assert 'Environment="OLLAMA_HOST=127.0.0.1:11434"' in dropin
    assert f'Environment="OLLAMA_DOUBLE_REGISTRY={lab.mirror.url}"' in dropin


def test_the_deployed_model_generates_inside_the_guest(lab: Lab, deployed: Deployed) -> None:
    host, *_ = deployed
    status, text = api(
        lab,
        host,
        "/api/generate",
        {
            "model": MODEL,
            "prompt": "Why is the sky blue?",
            "stream": False,
            "options": {"num_predict": 4, "seed": 42},
        },
    )
    assert status == 200, text
    reply = json.loads(text)
    assert reply["eval_count"] == 4 and reply["done_reason"] == "length"


def test_artifacts_follow_the_ansible_runner_directory_contract(
    lab: Lab, deployed: Deployed
) -> None:
    _host, first, *_ = deployed
    artifacts = first.artifact_dir
    assert artifacts.parent.parent.name == "deploy"
    assert artifacts.parent.parent.parent.parent.name == "runs"
    assert (artifacts / "status").read_text() == "successful"
    assert (artifacts / "rc").read_text() == "0"
    assert list((artifacts / "job_events").glob("*.json"))


def test_check_mode_on_a_deployed_vm_would_change_nothing(lab: Lab, deployed: Deployed) -> None:
    host, _first, _second, _reporter, tmp = deployed
    result = run_deploy(lab, host, tmp, check=True)
    assert result.ok and result.check and result.changed == 0


def test_plain_ansible_playbook_with_the_written_inventory_changes_nothing(
    lab: Lab, deployed: Deployed
) -> None:
    host, *_ = deployed
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(lab.inventory), "playbooks/site.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert re.search(
        rf"^{re.escape(host.name)}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+"
        r"failed=0",
        proc.stdout,
        re.MULTILINE,
    ), proc.stdout[-1500:]


def test_drift_on_the_host_is_put_back_and_restarts_the_service(
    lab: Lab, deployed: Deployed
) -> None:
    """The one-task fast path must still see local edits, loose modes, a stopped service and a
    deleted model; the ordinary tasks then fix them, and the next run changes nothing."""
    host, _first, _second, _reporter, tmp = deployed
    drift = lab.ssh_run(
        host,
        (
            "sudo sh -c 'echo Environment=OLLAMA_DEBUG=1 >> "
            "/etc/systemd/system/ollama.service.d/labctl.conf; "
            "chmod 0600 /etc/systemd/system/ollama.service' && "
            f'curl -sf -X DELETE http://127.0.0.1:11434/api/delete -d \'{{"model": "{MODEL}"}}\' '
            "&& sudo systemctl stop ollama"
        ),
    )
    assert drift.returncode == 0, drift.stderr
    fixed = run_deploy(lab, host, tmp)
    assert {
        "Install the ollama systemd unit.",
        "Write the server environment drop-in.",
        "Restart ollama.",
        "Pull the missing models.",
    } <= {c.task for c in fixed.changes}
    dropin = lab.ssh_run(
        host,
        "cat /etc/systemd/system/ollama.service.d/labctl.conf; "
        "stat -c %a /etc/systemd/system/ollama.service; "
        "systemctl is-active ollama; ollama list",
    ).stdout
    assert "OLLAMA_DEBUG" not in dropin
    assert "\n644\nactive\n" in dropin and MODEL in dropin
    assert run_deploy(lab, host, tmp).changed == 0


def test_a_model_the_registry_lacks_fails_naming_task_host_and_ollamas_error(
    lab: Lab, deployed: Deployed
) -> None:
    host, _first, _second, _reporter, tmp = deployed
    with pytest.raises(DeployError) as failure:
        run_deploy(lab, host, tmp, models=(MODEL, "nosuchmodel:1b"))
    message = str(failure.value)
    assert 'task "Pull the missing models." failed on ' + host.name in message
    assert "ollama: pull model manifest: file does not exist" in message
    assert "artifacts: " + str(lab.state_dir / "runs") in message


def test_check_mode_on_a_fresh_vm_reports_changes_and_installs_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    host = lab.boot()
    try:
        reporter = RecordingReporter()
        result = run_deploy(lab, host, tmp_path, reporter, check=True)
        assert result.ok and result.changed > 0
        would = {c.task for c in result.changes}
        assert {
            "Download the Ollama release and check its sha256.",
            "Report the models a real run would pull.",
        } <= would
        assert ("stage", "check") in reporter.events
        assert lab.ssh_run(host, "test -e /usr/local/bin/ollama").returncode == 1
    finally:
        lab.destroy(host)


def test_a_bad_checksum_fails_the_download_with_task_host_and_artifacts(
    lab: Lab, tmp_path: Path
) -> None:
    host = lab.boot()
    try:
        with pytest.raises(DeployError) as failure:
            run_deploy(lab, host, tmp_path, checksum="sha256:" + "0" * 64)
        message = str(failure.value)
        assert message.startswith(
            f'task "Download the Ollama release and check its sha256." failed on {host.name}: '
        )
        assert "checksum" in message.lower()
        assert "(artifacts: " in message
        assert failure.value.exit_code == 6
        assert lab.ssh_run(host, "test -e /usr/local/bin/ollama").returncode == 1
    finally:
        lab.destroy(host)


def test_a_new_version_from_a_local_tarball_replaces_the_old_and_a_small_vm_gets_oom_killed(
    lab: Lab, tmp_path: Path
) -> None:
    """One guest for two stories (a deploy costs ~10-20 s here): upgrade, then shrink it.

    The double's weights are real memory: below the model's size the kernel kills its runner.
    """
    newer = build_release(lab.mirror.root, "0.33.0")
    host = lab.boot()
    try:
        run_deploy(lab, host, tmp_path)
        # the offline-site path: a tarball on the controller, pinned by its sha256
        upgraded = run_deploy(
            lab,
            host,
            tmp_path,
            ollama_version=newer.version,
            local_tarball=newer.tarball,
            checksum=f"sha256:{newer.sha256}",
            download_base_url="http://192.0.2.1/unreachable",
        )
        assert {
            "Copy the Ollama release from the controller.",
            "Unpack Ollama into the install prefix.",
        } <= {c.task for c in upgraded.changes}
        assert "Pull the missing models." not in {c.task for c in upgraded.changes}
        assert lab.ssh_run(host, "ollama -v").stdout.strip() == "ollama version is 0.33.0"

        vmid = lab.vmid_of(host)
        lab.backend.reshape(vmid, cores=2, memory_mib=512)  # limit = 512 MiB x mem_scale
        limit = lab.backend.limits(vmid)[2]
        assert limit < lab.models[0].model_bytes + (40 << 20)
        status, text = api(
            lab, host, "/api/generate", {"model": MODEL, "prompt": "hi", "stream": False}
        )
        assert status == 500
        assert json.loads(text) == {"error": "llama-server process has terminated: signal: killed"}
        assert lab.backend.oom_kills(vmid) >= 1
    finally:
        lab.destroy(host)


def test_a_filesystem_too_small_for_the_release_fails_the_disk_check_before_any_download(
    lab: Lab, tmp_path: Path
) -> None:
    """The double's release with weight (a padding file, as the real bundle's GPU libraries),
    and a real small filesystem at the install prefix (a tmpfs in the guest). Too small: one
    line names the need and --disk, and nothing is downloaded. Big enough: it installs, the
    tarball is removed, and a re-deploy is still the one state task."""
    padded = build_release(lab.mirror.root, "0.33.1", padding_bytes=64 << 20)
    tarball_bytes = padded.tarball.stat().st_size
    assert tarball_bytes < 0.5 * padded.unpacked_bytes  # packs like the real bundle
    sizes = {
        "ollama_disk_tarball_bytes": tarball_bytes,
        "ollama_disk_unpacked_bytes": padded.unpacked_bytes,
        "ollama_disk_margin_bytes": 8 << 20,
    }
    need_mib = math.ceil((padded.unpacked_bytes + (8 << 20)) / (1 << 20))
    host = lab.boot()
    try:
        small = lab.ssh_run(host, "sudo mount -t tmpfs -o size=48m,mode=755 small /usr/local")
        assert small.returncode == 0, small.stderr
        with pytest.raises(DeployError) as failure:
            run_deploy(lab, host, tmp_path, ollama_version=padded.version, role_vars=sizes)
        assert failure.value.message == (
            f'task "Check the free disk space." failed on {host.name}: not enough disk on '
            f"/usr/local: 48 MiB free, Ollama 0.33.1 needs {need_mib} MiB there (unpacked "
            f"{math.floor(padded.unpacked_bytes / (1 << 20) + 0.5)} + margin 8 MiB); give the VM "
            f"a bigger disk: labctl up {host.name} --disk 32G, then reboot it if it runs "
            "(cloud-init grows the filesystem at boot)"
        )
        assert str(failure.value.hint).startswith(f"artifacts: {lab.state_dir / 'runs'}")
        assert failure.value.exit_code == 6
        untouched = lab.ssh_run(host, "ls /var/cache/ollama-* /usr/local/bin/ollama")
        assert untouched.returncode != 0 and untouched.stdout == "", untouched.stdout

        bigger = lab.ssh_run(
            host,
            "sudo umount /usr/local && sudo mount -t tmpfs -o size=96m,mode=755 bigger /usr/local",
        )
        assert bigger.returncode == 0, bigger.stderr
        reporter = RecordingReporter()
        first = run_deploy(
            lab, host, tmp_path, reporter, ollama_version=padded.version, role_vars=sizes
        )
        assert any(
            re.fullmatch(rf"{host.name}: ok +Check the free disk space\. \[\d+\.\ds\]", m)
            for kind, m in reporter.events
            if kind == "step"
        ), reporter.events
        assert {"Unpack Ollama into the install prefix.", "Remove the downloaded release."} <= {
            c.task for c in first.changes
        }
        after = lab.ssh_run(
            host, "ls /var/cache; df -B1 --output=used /usr/local | tail -1; ollama -v"
        ).stdout.split()
        assert not [name for name in after if name.startswith("ollama-")]  # tarball removed
        assert int(after[-5]) >= padded.unpacked_bytes  # the weight really is on the small fs
        assert after[-4:] == ["ollama", "version", "is", "0.33.1"]
        again = run_deploy(lab, host, tmp_path, ollama_version=padded.version, role_vars=sizes)
        stats = again.stats[host.name]
        assert (stats.ok, stats.changed, stats.failed) == (1, 0, 0)
    finally:
        lab.destroy(host)
