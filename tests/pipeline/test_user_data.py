"""No git or DVC command a user runs can write to their data: real git and DVC on a sandbox project whose data.path
is a relative archive outside it and a relative photo folder inside it (the README's form), checksummed before and
after each command. The project holds no link to the data (imgclf/data/fingerprint.py says why)."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from imgclf import smoke_copy
from imgclf.data import fingerprint
from imgclf.entry_points import PROJECT_ROOT
from imgclf.errors import DataSourceError

QUEUE_SECONDS = 600


def _snapshot(path: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under `path` (or the file itself): kind, mode and content digest, links not followed."""
    entries = [path] if not path.is_dir() else [path, *sorted(path.rglob("*"))]
    snapshot = {}
    for entry in entries:
        info = entry.lstat()
        kind = "link" if stat.S_ISLNK(info.st_mode) else "dir" if stat.S_ISDIR(info.st_mode) else "file"
        digest = hashlib.sha256(entry.read_bytes()).hexdigest() if kind == "file" else os.readlink(entry) \
            if kind == "link" else ""
        snapshot[str(entry.relative_to(path.parent))] = (kind, stat.S_IMODE(info.st_mode), digest)
    return snapshot


def _ok(result) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _wait_for_queue(root: Path, names: list[str]) -> str:
    deadline = time.monotonic() + QUEUE_SECONDS
    while time.monotonic() < deadline:
        refs = smoke_copy.run_git(root, "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
        if any("/celery/failed" in ref for ref in refs) or all(any(ref.endswith(f"/{n}") for ref in refs)
                                                               for n in names):
            break
        time.sleep(1)
    return smoke_copy.dvc(root, "queue", "status").stdout


@pytest.mark.integration
@pytest.mark.slow(seconds=90)
def test_no_git_or_dvc_command_writes_to_the_users_archive_or_folder(tmp_path, write_image_folder):
    archive = tmp_path / "arch.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(write_image_folder(tmp_path / "tree", {"cat": 5, "dog": 5}), arcname="photos")
    overrides = smoke_copy.merge(smoke_copy.SMOKE_OVERRIDES,
                              {"data": {"source": "image_folder", "path": "../arch.tar.gz"}})
    root = smoke_copy.create(tmp_path / "project", source_root=PROJECT_ROOT, overrides=overrides, git=True)
    # The real stages that read the data; those after them only make every command slower (and `dvc exp apply`
    # refuses a pipeline with outputs that were never built).
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in ("check_params", "fingerprint_data", "download")}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    photos = write_image_folder(root / "photos", {"cat": 6, "dog": 6}, seed=3)  # the README's `data.path=photos`
    (root / ".git" / "info" / "exclude").write_text("/photos/\n")
    before = {archive: _snapshot(archive), photos: _snapshot(photos)}

    def unchanged(after: str) -> None:
        for path, snapshot in before.items():
            assert _snapshot(path) == snapshot, f"{path} changed by {after}"

    _ok(smoke_copy.dvc(root, "repro"))
    smoke_copy.commit(root, "archive")
    assert not any(path.is_symlink() for path in (root / "data").iterdir()), "the project links to no data"
    first = smoke_copy.run_git(root, "rev-parse", "HEAD").stdout.strip()

    # Queued experiments, two at a time, in DVC's temporary copies: a relative data.path is the project's.
    queued = {"on-folder": "data.path=photos", "on-archive": "data.max_extracted_mb=900"}
    for name, assignment in queued.items():
        _ok(smoke_copy.dvc(root, "exp", "run", "--queue", "--name", name, "-S", assignment))
    unchanged("dvc exp run --queue")
    smoke_copy.dvc(root, "queue", "start", "--jobs", "2", capture=False)
    try:
        status = _wait_for_queue(root, list(queued))
    finally:
        smoke_copy.dvc(root, "queue", "stop", check=False)
    logs = "\n".join(smoke_copy.dvc(root, "queue", "logs", name, check=False).stdout for name in queued)
    assert status.count("Success") == 2, f"{status}\n{logs[-6000:]}"
    unchanged("dvc queue start --jobs 2")
    assert not smoke_copy.run_git(root, "stash", "list").stdout, "no stash entry left behind"

    _ok(smoke_copy.dvc(root, "exp", "apply", "on-folder"))
    unchanged("dvc exp apply")
    assert "\n  path: photos\n" in (root / "params.yaml").read_text()
    _ok(smoke_copy.dvc(root, "exp", "branch", "on-folder", "folder-branch"))
    unchanged("dvc exp branch")
    smoke_copy.commit(root, "folder")

    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "# an uncommitted edit\n")
    smoke_copy.run_git(root, "stash")
    unchanged("git stash")
    smoke_copy.run_git(root, "stash", "pop")
    unchanged("git stash pop")
    smoke_copy.run_git(root, "checkout", "--quiet", "--", "params.yaml")
    smoke_copy.run_git(root, "checkout", "--quiet", first)
    _ok(smoke_copy.dvc(root, "checkout"))
    unchanged("git checkout + dvc checkout of the first commit")
    smoke_copy.run_git(root, "checkout", "--quiet", "main")
    _ok(smoke_copy.dvc(root, "checkout"))
    unchanged("git checkout + dvc checkout back")

    # The applied experiment is up to date on the folder; an edit to the folder reruns download, and only it.
    ran = _ok(smoke_copy.dvc(root, "repro"))
    assert "Running stage 'download'" not in ran
    (photos / "cat" / "0000.png").unlink()
    before[photos] = _snapshot(photos)
    assert "Running stage 'download'" in _ok(smoke_copy.dvc(root, "repro"))
    unchanged("dvc repro")


def test_the_fingerprint_is_the_contents_not_the_spelling_of_the_path(tmp_path, write_image_folder, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    photos = write_image_folder(project / "photos", {"cat": 3, "dog": 3})
    monkeypatch.chdir(project)
    spellings = ["photos", "./photos", "photos/", str(photos), "../project/photos"]
    digests = {fingerprint.fingerprint("image_folder", path, project=project)["digest"] for path in spellings}
    assert len(digests) == 1
    # In a queued experiment's copy, DVC_ROOT names the user's project: a relative path is found there.
    copy = project / ".dvc" / "tmp" / "exps" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert fingerprint.fingerprint("image_folder", "photos", project=copy)["digest"] in digests
    monkeypatch.delenv("DVC_ROOT")
    with pytest.raises(DataSourceError, match="does not exist"):
        fingerprint.fingerprint("image_folder", "photos", project=copy)


def test_the_fingerprint_sees_every_change_and_never_leaves_the_folder(tmp_path, write_image_folder):
    photos = write_image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    (tmp_path / "secret.png").write_bytes(b"outside")
    digest = lambda: fingerprint.fingerprint("image_folder", str(photos), project=tmp_path / "p")  # noqa: E731
    first = digest()
    assert first["kind"] == "folder" and first["files"] == 6
    (photos / "cat" / "0000.png").write_bytes((photos / "cat" / "0000.png").read_bytes() + b"\0")
    second = digest()
    assert second["digest"] != first["digest"], "a changed image"
    (photos / "cat" / "0000.png").rename(photos / "dog" / "moved.png")
    assert digest()["digest"] != second["digest"], "an image moved to another class"
    link = photos / "dog" / "outside.png"
    link.symlink_to(tmp_path / "secret.png")
    linked = digest()
    (tmp_path / "secret.png").write_bytes(b"changed outside")
    assert digest() == linked, "a link out of the folder is never read (download skips it too)"
    os.mkfifo(photos / "cat" / "fifo.png")
    assert digest() == linked, "a FIFO in the folder is never opened"
    assert fingerprint.fingerprint("cifar10", None, project=tmp_path)["kind"] == "none"
    assert fingerprint.fingerprint("image_folder", "https://example.com/a.zip", project=tmp_path)["kind"] == "none"


@pytest.mark.parametrize("kind", ["fifo", "inside-outputs", "project-itself"])
def test_data_path_that_is_special_or_the_projects_own_is_refused(tmp_path, kind):
    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    path = {"fifo": tmp_path / "fifo", "inside-outputs": project / "data" / "raw", "project-itself": project}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(DataSourceError, match=r"not a regular file|inside the project's own|contains this project"):
        fingerprint.checked_local_path(str(path), project=project)
    assert (project / "data" / "raw").is_dir()


def test_the_mlflow_dataset_digest_is_the_prepared_contents(tmp_path, write_prepared):
    """One digest for the same images wherever the project lies; another when one shard's bytes differ."""
    from imgclf.tracking import datasets

    for project in ("a", "b", "c"):
        write_prepared(tmp_path / project / "data" / "prepared", class_names=["cat", "dog"],
                       per_class={"train": 3, "val": 1, "test": 1}, seed=1 if project == "c" else 0)
    digests = {project: datasets.prepared_digest(tmp_path / project) for project in ("a", "b", "c")}
    assert digests["a"] == digests["b"] and digests["a"] != digests["c"]
    assert datasets.prepared_digest(tmp_path / "empty") is None
