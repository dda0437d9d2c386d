"""Every reach into a dependency's private parts, one module per vendor.

Ray, Ultralytics, MLflow, uvicorn and onnxruntime give no public way to do a few things the
platform needs (see each module). Those reaches live here and nowhere else
(`tests/unit/project/test_architecture.py` fails on a private name of theirs used elsewhere). Each
module states the versions it was checked against and refuses, when imported, any other with
one line naming the package, its version and the range; `tests/unit/compat/test_compat.py` guards
each reach on the installed version. An upgrade then breaks one file, loudly.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from facemask.core.errors import FacemaskError


class IncompatibleDependencyError(FacemaskError, ImportError):
    """An installed package outside the versions a compat module was checked against."""


def require(package: str, low: str, below: str, module: str) -> str:
    """The installed version of `package`; IncompatibleDependencyError unless low <= it < below."""
    from packaging.version import Version

    try:
        installed = version(package)
    except PackageNotFoundError:
        raise IncompatibleDependencyError(
            f"{package} is not installed; {module} needs {package}>={low},<{below}"
        ) from None
    if not Version(low) <= Version(installed) < Version(below):
        raise IncompatibleDependencyError(
            f"{package} {installed} is outside {low} <= version < {below}, the versions {module} was checked "
            f"against: pip install '{package}>={low},<{below}'"
        )
    return installed
