"""Fault injection on file writes: modes of published files, concurrent manifest writers."""

import os
import stat

import pytest

from t2v_turbo.fileio import atomic_write


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_publishes_files_with_the_umask_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "out" / "file.json", lambda tmp: open(tmp, "w").write("{}"))
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)
    assert path.read_text() == "{}" and sorted(p.name for p in path.parent.iterdir()) == ["file.json"]


def test_two_manifest_writers_never_collide(tmp_path, monkeypatch):
    """Writer A has written its temporary file when writer B writes and publishes the whole manifest;
    then A publishes. With one shared temporary name A's file was gone (FileNotFoundError)."""
    import json

    from eval.vbench import generate
    from eval.vbench.suite import load_suite

    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": "a cat", "dimension": ["aesthetic_quality"]},
                                {"prompt_en": "a dog", "dimension": ["scene"]}]), encoding="utf-8")
    suite = load_suite(info, dimensions="all")
    settings = generate.GenerationSettings(num_frames=4, height=16, width=16, num_samples=2)
    jobs = generate.build_jobs(suite, settings)
    out = tmp_path / "run"
    (out / generate.PARTIAL_DIR).mkdir(parents=True)
    replace, interleaved = os.replace, []

    def replace_after_another_writer(src, dst):
        if not interleaved:  # only the first publish is interrupted by a whole second write
            interleaved.append(src)
            generate.write_manifest(out, suite, jobs, settings, {"kind": "test"}, 1)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_another_writer)
    generate.write_manifest(out, suite, jobs, settings, {"kind": "test"}, 1)
    manifest = json.loads((out / generate.MANIFEST).read_text(encoding="utf-8"))
    assert [v["file"] for v in manifest["videos"]] == [j.filename for j in jobs] and len(jobs) == 4
    assert sorted(p.name for p in out.iterdir()) == [generate.PARTIAL_DIR, generate.MANIFEST]
    assert not any((out / generate.PARTIAL_DIR).iterdir())
