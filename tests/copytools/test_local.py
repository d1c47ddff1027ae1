"""The local copytool on real files: checksums, codes, atomic writes, real EACCES and a really full disk."""

from __future__ import annotations

import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from compass_pilot.config import StorageSection
from compass_pilot.copytools import adler32_of, local, make_copytool
from compass_pilot.copytools.local import LocalCopyTool
from compass_pilot.errors import ErrorCode, PilotError, StageInError, StageOutError
from compass_pilot.job import FileSpec
from tests.copytools.conftest import run_as_nobody

RAW = "2016/raw/W14/cdr11001-275678.raw"


@pytest.fixture
def tool(tmp_path: Path) -> LocalCopyTool:
    (tmp_path / "in" / "2016/raw/W14").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    return LocalCopyTool(StorageSection(input_root=str(tmp_path / "in"), output_root=str(tmp_path / "out")))


def _raw(tool: LocalCopyTool, data: bytes = b"raw data " * 1000, rel: str = RAW) -> tuple[Path, FileSpec]:
    path = tool.input_root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    spec = FileSpec(Path(rel).name, "input", fsize=len(data), checksum=f"ad:{zlib.adler32(data):08x}")
    return path, spec


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 kB tmpfs: writes beyond it fail with ENOSPC (tests run as root, as CI does)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (needs root): {done.stderr.decode()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_adler32_streams_across_blocks_and_pads(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # crosses the 1 MiB block boundary
    (tmp_path / "f").write_bytes(data)
    assert adler32_of(tmp_path / "f") == f"{zlib.adler32(data):08x}"
    (tmp_path / "small").write_bytes(b"\x00")  # adler32 0x00010001: leading zeros must stay
    assert adler32_of(tmp_path / "small") == "00010001"
    (tmp_path / "empty").write_bytes(b"")
    assert adler32_of(tmp_path / "empty") == "00000001"


def test_make_copytool_selects_and_refuses_unknown(tmp_path: Path) -> None:
    assert isinstance(make_copytool(StorageSection(input_root=str(tmp_path))), LocalCopyTool)
    with pytest.raises(ValueError, match="'ftp'"):
        make_copytool(StorageSection(copytool="ftp"))


def test_stage_in_copy_and_link(tool: LocalCopyTool, tmp_path: Path) -> None:
    src, spec = _raw(tool)
    got = tool.stage_in(spec, RAW, tmp_path / "work")
    assert got == tmp_path / "work" / spec.lfn
    assert got.read_bytes() == src.read_bytes() and not got.is_symlink()
    tool.storage.link_inputs = True
    linked = tool.stage_in(spec, RAW, tmp_path / "work")
    assert linked.is_symlink() and linked.resolve() == src.resolve()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [spec.lfn]  # no temp names left


def test_copy_after_link_never_writes_through_the_link(tool: LocalCopyTool, tmp_path: Path) -> None:
    """A retried attempt in copy mode must replace a stale link, not truncate the storage file behind it."""
    src, spec = _raw(tool)
    original = src.read_bytes()
    tool.storage.link_inputs = True
    tool.stage_in(spec, RAW, tmp_path / "work")
    tool.storage.link_inputs = False
    got = tool.stage_in(spec, RAW, tmp_path / "work")
    assert not got.is_symlink() and got.read_bytes() == original
    assert src.read_bytes() == original


def test_stage_in_detects_corruption_with_both_values(tool: LocalCopyTool, tmp_path: Path) -> None:
    src, spec = _raw(tool)
    src.write_bytes(src.read_bytes()[:-1] + b"X")  # same size, different content
    for link in (False, True):
        tool.storage.link_inputs = link
        with pytest.raises(StageInError) as err:
            tool.stage_in(spec, RAW, tmp_path / "work")
        assert err.value.code == ErrorCode.CHECKSUM_MISMATCH
        assert spec.adler32 in err.value.diag and adler32_of(src) in err.value.diag
        assert list((tmp_path / "work").iterdir()) == []  # a bad input never gets its name


def test_stage_in_size_mismatch_is_1229(tool: LocalCopyTool, tmp_path: Path) -> None:
    _, spec = _raw(tool)
    longer = FileSpec(spec.lfn, "input", fsize=spec.fsize + 1)
    with pytest.raises(StageInError) as err:
        tool.stage_in(longer, RAW, tmp_path / "work")
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH
    assert str(spec.fsize) in err.value.diag and str(spec.fsize + 1) in err.value.diag


def test_missing_input_is_1331(tool: LocalCopyTool, tmp_path: Path) -> None:
    spec = FileSpec("cdr99999-275678.raw", "input")
    with pytest.raises(StageInError) as err:
        tool.stage_in(spec, "2016/raw/W14/cdr99999-275678.raw", tmp_path / "work")
    assert err.value.code == ErrorCode.MISSING_INPUT and "cdr99999" in err.value.diag
    (tool.input_root / "2016/raw/W14/adir.raw").mkdir()  # a directory is not an input file either
    with pytest.raises(StageInError) as err:
        tool.stage_in(FileSpec("adir.raw", "input"), "2016/raw/W14/adir.raw", tmp_path / "work")
    assert err.value.code == ErrorCode.MISSING_INPUT


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/passwd", "a/../b", "a//b", "./a", "x\x00y", "a\nb", ""])
def test_hostile_paths_refused(tool: LocalCopyTool, tmp_path: Path, path: str) -> None:
    _, spec = _raw(tool)
    with pytest.raises(StageInError, match="refused stage-in storage path") as err:
        tool.stage_in(spec, path, tmp_path / "work")
    assert repr(path) in err.value.diag
    (tmp_path / "work" / "x.root").write_text("x")
    with pytest.raises(StageOutError, match="refused stage-out storage path"):
        tool.stage_out(tmp_path / "work" / "x.root", path, guid="g")
    assert not tool.output_root.exists()  # refused before touching the storage


@pytest.mark.parametrize("link", [False, True])
@pytest.mark.parametrize("lfn", ["../escaped.raw", "/tmp/escaped.raw", "sub/x.raw", "..", "", "a\nb"])
def test_hostile_lfn_refused(tool: LocalCopyTool, tmp_path: Path, lfn: str, link: bool) -> None:
    """The work-dir name comes from the job spec too: refused by name, not reported as a missing input."""
    tool.storage.link_inputs = link
    _, good = _raw(tool)
    work = tmp_path / "a" / "work"
    work.mkdir(parents=True)
    with pytest.raises(StageInError, match="refused stage-in file name") as err:
        tool.stage_in(FileSpec(lfn, "input", checksum=good.checksum), RAW, work)
    assert err.value.code == ErrorCode.STAGE_IN_FAILED
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["work"] and not list(work.iterdir())


def test_stage_out_verified_and_reported(tool: LocalCopyTool, tmp_path: Path) -> None:
    local_file = tmp_path / "work" / "mDST-275678-11001-2-7.root"
    local_file.write_bytes(os.urandom(100_000))
    report = tool.stage_out(local_file, "P09/mDST.chunks/mDST-275678-11001-2-7.root", guid="guid-1")
    dest = tool.output_root / "P09/mDST.chunks/mDST-275678-11001-2-7.root"
    assert dest.read_bytes() == local_file.read_bytes()
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    assert (report.lfn, report.guid, report.fsize, report.adler32, report.surl) == (
        local_file.name,
        "guid-1",
        100_000,
        adler32_of(local_file),
        str(dest),
    )
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_stage_out_is_atomic(tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure mid-copy leaves neither a half file nor a temp file, and an earlier good copy untouched."""
    dest = tool.output_root / "P09/mDST/big.root"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"earlier good copy")
    local_file = tmp_path / "work" / "big.root"
    local_file.write_bytes(os.urandom(3 * 1024 * 1024))

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StageOutError) as err:
        tool.stage_out(local_file, "P09/mDST/big.root", guid="g")
    assert err.value.code == ErrorCode.STAGE_OUT_FAILED and "Input/output error" in err.value.diag
    assert [p.name for p in dest.parent.iterdir()] == ["big.root"]
    assert dest.read_bytes() == b"earlier good copy"


def test_stage_out_corruption_at_destination_is_1229(
    tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that change on their way to the destination are caught before they get the final name."""
    tool.storage.link_outputs = False  # a copy: a link has no second set of bytes to go wrong
    real_copy = local._copy_to_temp

    def flaky_storage(src: Path, directory: Path, name: str, durable: bool = True) -> tuple[Path, int, str]:
        tmp, size, checksum = real_copy(src, directory, name, durable)
        with open(tmp, "r+b") as handle:  # one flipped byte, as a bad disk or controller would
            first = handle.read(1)
            handle.seek(0)
            handle.write(bytes([first[0] ^ 0xFF]))
        return tmp, size, checksum

    monkeypatch.setattr(local, "_copy_to_temp", flaky_storage)
    local_file = tmp_path / "work" / "m.root"
    local_file.write_bytes(os.urandom(50_000))
    with pytest.raises(StageOutError) as err:
        tool.stage_out(local_file, "P09/mDST/m.root", guid="g")
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH and adler32_of(local_file) in err.value.diag
    assert list((tool.output_root / "P09/mDST").iterdir()) == []


def test_full_disk_is_1098(tmp_path: Path, tiny_fs: Path) -> None:
    big = tmp_path / "big.root"
    big.write_bytes(os.urandom(1024 * 1024))
    out = make_copytool(StorageSection(input_root=str(tmp_path), output_root=str(tiny_fs)))
    with pytest.raises(PilotError) as err:
        out.stage_out(big, "P09/big.root", guid="g")
    assert err.value.code == ErrorCode.NO_LOCAL_SPACE
    assert list((tiny_fs / "P09").iterdir()) == []  # the temp file was removed
    # stage-in into a work dir on a full disk: 1098 too, not a generic stage-in failure
    spec = FileSpec("big.root", "input", fsize=big.stat().st_size)
    with pytest.raises(PilotError) as err:
        out.stage_in(spec, "big.root", tiny_fs)
    assert err.value.code == ErrorCode.NO_LOCAL_SPACE
    assert [p.name for p in tiny_fs.iterdir()] == ["P09"]


def test_permission_denied_codes(shared_tmp: Path) -> None:
    """Real EACCES (the tool runs as nobody): unreadable input → 1175, unwritable output dir → 1176."""
    inputs, outputs, work = shared_tmp / "in", shared_tmp / "out", shared_tmp / "work"
    for path in (inputs, outputs, work):
        path.mkdir(mode=0o755)
    os.chown(work, 65534, 65534)
    secret = inputs / "secret.raw"
    secret.write_bytes(b"x" * 100)
    secret.chmod(0o600)
    produced = work / "out.root"
    produced.write_bytes(b"y" * 100)
    produced.chmod(0o644)
    tool = LocalCopyTool(StorageSection(input_root=str(inputs), output_root=str(outputs)))

    with pytest.raises(StageInError) as err:
        run_as_nobody(lambda: tool.stage_in(FileSpec("secret.raw", "input"), "secret.raw", work))
    assert err.value.code == ErrorCode.STAGE_IN_PERMISSION
    with pytest.raises(StageOutError) as err:
        run_as_nobody(lambda: tool.stage_out(produced, "P09/out.root", guid="g"))
    assert err.value.code == ErrorCode.STAGE_OUT_PERMISSION
    assert list(outputs.iterdir()) == []


def test_relative_work_dir_named_like_an_option(
    tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, spec = _raw(tool)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-work").mkdir()
    got = tool.stage_in(spec, RAW, Path("-work"))
    assert got == tmp_path / "-work" / spec.lfn and got.is_file()


def test_stage_in_is_not_synced(tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input is a cache of storage (fetched again after a crash): no fsync, but still verified."""

    def no_fsync(fd: int) -> None:
        raise AssertionError("stage-in must not fsync")

    monkeypatch.setattr(os, "fsync", no_fsync)
    src, spec = _raw(tool)
    got = tool.stage_in(spec, RAW, tmp_path / "work")
    assert got.read_bytes() == src.read_bytes()
    src.write_bytes(b"changed under us")
    with pytest.raises(StageInError) as err:
        tool.stage_in(spec, RAW, tmp_path / "work")
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH


def test_stage_out_links_on_the_same_file_system(tool: LocalCopyTool, tmp_path: Path) -> None:
    local_file = tmp_path / "work" / "m.root"
    local_file.write_bytes(os.urandom(20_000))
    local_file.chmod(0o600)
    report = tool.stage_out(local_file, "P09/mDST/m.root", guid="g")
    dest = tool.output_root / "P09/mDST/m.root"
    assert dest.stat().st_ino == local_file.stat().st_ino  # a second name, no second copy
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    assert (report.fsize, report.adler32, report.surl) == (20_000, adler32_of(local_file), str(dest))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.root"]


def test_stage_out_copies_across_file_systems(tmp_path: Path, tiny_fs: Path) -> None:
    local_file = tmp_path / "m.root"
    local_file.write_bytes(os.urandom(10_000))
    tool = LocalCopyTool(StorageSection(input_root=str(tmp_path), output_root=str(tiny_fs)))
    report = tool.stage_out(local_file, "P09/m.root", guid="g")
    dest = tiny_fs / "P09/m.root"
    assert dest.read_bytes() == local_file.read_bytes() and dest.stat().st_dev != local_file.stat().st_dev
    assert report.adler32 == adler32_of(local_file)


@pytest.mark.parametrize("link", [True, False])
def test_burst_syncs_once_and_names_what_it_could_not_sync(
    tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link: bool
) -> None:
    """A burst writes without an fsync per file; its sync says which copies are not durable, and removes them."""
    tool.storage.link_outputs = link
    burst = tool.burst()
    fsynced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd)))
    reports = []
    for n in range(3):
        produced = tmp_path / "work" / f"out{n}.root"
        produced.write_bytes(os.urandom(5_000))
        reports.append(burst.stage_out(produced, f"P09/mDST/out{n}.root", guid=f"g{n}"))
    assert fsynced == []  # nothing synced per file
    bad = reports[1].surl

    def failing_syncfs(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    def fsync_file(path: Path) -> None:
        if str(path) == bad:
            raise OSError(5, "Input/output error", str(path))
        real_fsync_file(path)

    real_fsync_file = local._fsync_file
    monkeypatch.setattr(local, "_syncfs", failing_syncfs)
    monkeypatch.setattr(local, "_fsync_file", fsync_file)
    failed = burst.sync()
    assert list(failed) == [bad] and failed[bad].code == ErrorCode.STAGE_OUT_FAILED
    assert sorted(p.name for p in (tool.output_root / "P09/mDST").iterdir()) == ["out0.root", "out2.root"]
    assert burst.sync() == {}  # each copy is synced by one sync only


def test_staging_out_a_linked_output_again_leaves_no_temp_file(tool: LocalCopyTool, tmp_path: Path) -> None:
    """A restarted daemon stages out again what its predecessor linked already (same inode at the destination)."""
    local_file = tmp_path / "work" / "m.root"
    local_file.write_bytes(os.urandom(1000))
    first = tool.stage_out(local_file, "P09/mDST/m.root", guid="g")
    again = tool.burst().stage_out(local_file, "P09/mDST/m.root", guid="g")
    assert again == first
    assert [p.name for p in (tool.output_root / "P09/mDST").iterdir()] == ["m.root"]


def test_a_linked_output_with_the_agents_sums_is_not_read(
    tool: LocalCopyTool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node agent measured it where it was written: the MOM node links it and reads nothing."""
    import compass_pilot.copytools as copytools

    local_file = tmp_path / "work" / "m.root"
    local_file.write_bytes(b"abc")

    def no_reading(path: object) -> str:
        raise AssertionError(f"read {path} for its checksum")

    monkeypatch.setattr(copytools, "adler32_of", no_reading)
    report = tool.stage_out(local_file, "P09/m.root", guid="g", known=(3, "024d0127"))
    assert (report.fsize, report.adler32) == (3, "024d0127")
    assert (tool.output_root / "P09/m.root").stat().st_ino == local_file.stat().st_ino


@pytest.mark.parametrize("link", [True, False])
def test_an_output_changed_since_the_agent_measured_it_is_1229(tmp_path: Path, link: bool) -> None:
    """A size (link) or checksum (copy) other than the agent's: the file changed after the payload
    ended — nothing is left at the destination and no report claims it."""
    (tmp_path / "work").mkdir()
    tool = LocalCopyTool(StorageSection(output_root=str(tmp_path / "out"), link_outputs=link))
    local_file = tmp_path / "work" / "m.root"
    local_file.write_bytes(b"abcd")  # the agent saw "abc"
    known = (4, "024d0127") if not link else (3, "024d0127")
    with pytest.raises(StageOutError) as err:
        tool.stage_out(local_file, "P09/m.root", guid="g", known=known)
    assert err.value.code == ErrorCode.CHECKSUM_MISMATCH and "node agent measured" in err.value.diag
    assert not (tmp_path / "out" / "P09" / "m.root").exists()
    assert [p.name for p in (tmp_path / "out" / "P09").iterdir()] == []  # no temp file either
