"""Safe, bounded extraction of .tar (gz/bz2/xz) and .zip archives: nothing escapes, no bomb fills the disk."""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PureWindowsPath

from imgclf import fileio, progress
from imgclf.errors import DataSourceError, UnsafeArchiveError

_COPY_CHUNK = 1 << 20
_SPECIAL_FILE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


@dataclasses.dataclass(frozen=True)
class ExtractionLimits:
    """How much an archive may write: a decompression bomb stops with an error, not a full disk.

    Checked member by member while extracting; `max_expansion_ratio` compares what is written with the
    archive's size and only applies past the first `_RATIO_FREE_BYTES` (tiny archives compress well too).
    `max_members` is checked on the archive's listing, before anything is extracted: 300,000 empty files write
    no bytes, so only a count stops them (140 s of file creation, and the inodes).
    """

    max_extracted_mb: float = 20480.0  # data.max_extracted_mb
    max_expansion_ratio: float = 100.0  # data.max_expansion_ratio
    max_members: int = 200_000  # data.max_archive_members: files and folders; CIFAR-10 as JPEGs has 60,000

    def max_archive_bytes(self) -> int:
        """The most an archive within these limits can weigh: its content, each member's headers and padding
        (a tar header and long-name records, a zip's local and central entries) and compression's worst case.
        A download bigger than this could never extract, so it is stopped there (an endless body included)."""
        content = self.max_extracted_mb * (1 << 20)
        return math.ceil(content * 1.01) + self.max_members * _MEMBER_OVERHEAD_BYTES + (1 << 20)


_RATIO_FREE_BYTES = 16 << 20
_MEMBER_OVERHEAD_BYTES = 4096


class _ExtractionBudget:
    """Counts the bytes an extraction writes and refuses the member that would go over a limit."""

    def __init__(self, archive: Path, limits: ExtractionLimits):
        self.archive, self.limits = archive, limits
        self.archive_bytes = max(1, archive.stat().st_size)
        self.written = 0

    def count_member(self, count: int) -> None:
        """Refuse the archive once its listing holds more than `max_members` entries."""
        if count > self.limits.max_members:
            raise DataSourceError(
                f"{self.archive} holds more than data.max_archive_members={self.limits.max_members} files and "
                "folders; refusing to extract it (check the archive, or raise data.max_archive_members if the data "
                "set really has that many images)")

    def add(self, count: int, member: str) -> None:
        self.written += count
        limit_bytes = self.limits.max_extracted_mb * (1 << 20)
        if self.written > limit_bytes:
            raise DataSourceError(
                f"{self.archive}: extracting {member!r} takes the archive past data.max_extracted_mb="
                f"{self.limits.max_extracted_mb:g} MB; raise data.max_extracted_mb if the data set really is "
                "that big, or check the archive (it may be a decompression bomb)")
        ratio = self.written / self.archive_bytes
        if self.written > _RATIO_FREE_BYTES and ratio > self.limits.max_expansion_ratio:
            raise DataSourceError(
                f"{self.archive}: extracting {member!r} expands the archive {ratio:.0f}-fold, past "
                f"data.max_expansion_ratio={self.limits.max_expansion_ratio:g}; this looks like a decompression "
                "bomb: check where the archive came from, or raise data.max_expansion_ratio")


def safe_extract(archive: Path, target: Path, limits: ExtractionLimits = ExtractionLimits()) -> None:
    """Extract a .tar (optionally gz/bz2/xz-compressed) or .zip archive into `target`, refusing escapes.

    Every member is checked before anything is written: absolute paths, `..` components, device files and
    FIFOs raise `UnsafeArchiveError`; links must resolve inside the target, both by name and once created.
    Extraction happens in a temporary sibling directory renamed into place at the end, so a failure leaves
    no partial `target`. `target` must not exist or be an empty directory. `limits` bound what is written.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataSourceError(f"cannot extract {archive} into {target}: it exists and is not empty")
    if not archive.is_file():
        raise DataSourceError(f"{archive} is not a file")
    with fileio.staged_directory(target) as staging:
        budget = _ExtractionBudget(archive, limits)
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, staging, budget)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, budget)
        else:
            raise DataSourceError(f"{archive} is not a .tar, .tar.gz/.tgz or .zip archive, or it is corrupt; "
                                  "check data.path")


# The longest file name Linux file systems store (NAME_MAX): a longer member fails with ENAMETOOLONG half-way.
MAX_NAME_BYTES = 255


def _check_member_name(archive: Path, name: str) -> None:
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise _unsafe(archive, name, "has an absolute path")
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        raise _unsafe(archive, name, "contains '..'")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        raise _unsafe(archive, name, f"has a name longer than {MAX_NAME_BYTES} bytes, which no file system stores")
    if len([part for part in parts if part not in ("", ".")]) > fileio.MAX_FOLDER_DEPTH:
        raise _unsafe(archive, name, f"is nested more than {fileio.MAX_FOLDER_DEPTH} folders deep")


def _unsafe(archive: Path, member: str, problem: str) -> UnsafeArchiveError:
    shown = member if len(member) <= 100 else f"{member[:60]}...{member[-30:]}"  # one readable line
    return UnsafeArchiveError(f"{archive}: member {shown!r} {problem}; refusing to extract this archive "
                              "(check where it came from, or extract it yourself and use the folder)")


def is_inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies under it (both absolute and normalised, links resolved by the caller)."""
    return os.path.commonpath([path, root]) == root


def _extract_tar(archive: Path, staging: Path, budget: _ExtractionBudget) -> None:
    root = os.path.realpath(staging)
    try:
        with tarfile.open(archive, "r:*") as tar:
            plain, links = [], []
            # Iterated lazily: headers are read as the stream is decompressed, so a bomb is refused at the
            # member that overflows the budget, before its data is decompressed or anything is written
            # (tarfile writes exactly `size` bytes per file).
            for count, member in enumerate(tar, start=1):
                budget.count_member(count)
                _check_member_name(archive, member.name)
                if member.isreg():
                    budget.add(member.size, member.name)
                if member.isreg() or member.isdir():
                    plain.append(member)
                elif member.issym() or member.islnk():
                    _check_link_name(archive, member, root)
                    links.append(member)
                else:
                    raise _unsafe(archive, member.name, "is a device file, FIFO or of an unknown type")
            # Links are made last, so no file is ever written through one; the "data" filter (Python
            # 3.11.4+) is a second line of defence on top of the checks above.
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            with progress.step(f"extract {archive.name}", total=budget.written, unit=progress.BYTES) as counter:
                tar.extractall(staging, members=_counted(plain, counter), **options)
            _make_links(archive, links, staging, root)
    except tarfile.FilterError as error:
        name = error.tarinfo.name if error.tarinfo is not None else "?"
        raise _unsafe(archive, name, f"was refused by tarfile's data filter ({error})") from error
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataSourceError(f"{archive} is corrupt or truncated ({error}); fetch it again") from error


def _counted(members: Iterable[tarfile.TarInfo], counter: progress.Counter) -> Iterator[tarfile.TarInfo]:
    """The members, each counted once `extractall` comes back for the next one, i.e. once it is written."""
    for member in members:
        yield member
        counter.update(member.size if member.isreg() else 0)


def _check_link_name(archive: Path, member: tarfile.TarInfo, root: str) -> None:
    """Refuse a link whose target, read as a path, leaves the extraction directory."""
    link = member.linkname
    base = os.path.dirname(member.name) if member.issym() else ""  # hard links name a member path
    if os.path.isabs(link) or not is_inside(os.path.normpath(os.path.join(root, base, link)), root):
        raise _unsafe(archive, member.name, f"links to {link!r}, outside the extraction directory")


def _make_links(archive: Path, links: list[tarfile.TarInfo], staging: Path, root: str) -> None:
    """Create the archive's links, checking where each really resolves (chains of links included)."""
    for member in links:
        destination = os.path.join(staging, member.name)
        parent = os.path.realpath(os.path.dirname(destination))
        if not is_inside(parent, root) or os.path.lexists(destination):
            raise _unsafe(archive, member.name, "would be written through a link or over another member")
        os.makedirs(parent, exist_ok=True)
        if member.issym():
            os.symlink(member.linkname, os.path.join(parent, os.path.basename(destination)))
            continue
        source = os.path.realpath(os.path.join(staging, member.linkname))
        if not is_inside(source, root) or not os.path.isfile(source):
            raise _unsafe(archive, member.name,
                          f"is a hard link to {member.linkname!r}, which is not a file inside the archive")
        os.link(source, os.path.join(parent, os.path.basename(destination)))
    # A later link can change where an earlier one resolves, so every symlink is checked once all exist.
    for member in links:
        if member.issym() and not is_inside(os.path.realpath(os.path.join(staging, member.name)), root):
            raise _unsafe(archive, member.name,
                          f"links to {member.linkname!r}, which resolves outside the extraction directory")


def _extract_zip(archive: Path, staging: Path, budget: _ExtractionBudget) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            budget.count_member(len(bundle.infolist()))  # the central directory, read when the archive is opened
            for info in bundle.infolist():
                _check_member_name(archive, info.filename)
                # Unix type bits, when the archiver recorded them (many leave them 0).
                if stat.S_IFMT(info.external_attr >> 16) in _SPECIAL_FILE_TYPES:
                    raise _unsafe(archive, info.filename, "is a device file or FIFO")
                if info.flag_bits & 0x1:
                    raise DataSourceError(f"{archive}: member {info.filename!r} is encrypted; extract the "
                                          "archive yourself and point data.path at the folder")
            # A zip "symlink" is written as a plain file holding the target's name: nothing escapes. Sizes in
            # the directory can lie, so the bytes are counted as they are decompressed (the declared total only
            # gives the progress bar its estimate).
            declared = sum(info.file_size for info in bundle.infolist())
            with progress.step(f"extract {archive.name}", total=declared, unit=progress.BYTES) as counter:
                for info in bundle.infolist():
                    target = staging.joinpath(*[part for part in re.split(r"[\\/]", info.filename) if part])
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(info) as member, open(target, "wb") as handle:
                        while chunk := member.read(_COPY_CHUNK):
                            budget.add(len(chunk), info.filename)
                            handle.write(chunk)
                            counter.update(len(chunk))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotADirectoryError, IsADirectoryError) as error:
        raise DataSourceError(f"{archive} is corrupt or truncated ({error}); fetch it again") from error
    except UnicodeDecodeError as error:  # zipfile decodes a name flagged UTF-8 strictly
        raise DataSourceError(f"{archive}: a member's name is marked UTF-8 but is not ({error}); extract the archive "
                              "yourself and point data.path at the folder") from error

