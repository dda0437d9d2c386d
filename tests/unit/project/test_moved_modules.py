"""The flat layout's module paths still import, for one release: the same module object as the new
path (a patch through either is seen by both), with a DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import warnings

import pytest

import facemask


@pytest.mark.parametrize("old", sorted(facemask.MOVED))
def test_every_old_path_is_the_new_module_with_a_warning(old):
    new = facemask.moved_to(f"facemask.{old}")
    module = importlib.import_module(new)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_module = importlib.import_module(f"facemask.{old}")
    assert old_module is module and module.__spec__.name == new
    if caught:  # the first import of the old path warns; later ones find it in sys.modules
        assert issubclass(caught[0].category, DeprecationWarning) and new in str(caught[0].message)


def test_a_submodule_of_a_moved_package_is_not_loaded_twice():
    from facemask.live import tracker as old
    from facemask.serving.live import tracker

    assert old is tracker


def test_the_first_import_of_an_old_path_warns_and_a_name_that_never_existed_still_fails():
    import subprocess
    import sys

    code = "import warnings; warnings.simplefilter('error'); import facemask.tune_finish"
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 1 and "facemask.tune_finish is now facemask.training.finish" in ran.stderr
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("facemask.no_such_module")
    assert facemask.moved_to("facemask.live.streams") == "facemask.video.streams"
    assert facemask.moved_to("facemask.live.tracker") == "facemask.serving.live.tracker"
