# Sourced by the other scripts: a project virtualenv with everything installed, once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the project's dependencies changed.
stamp=.venv/.installed-$(cat pyproject.toml dev/pyproject.toml sdk/python/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]' -e ./sdk/python -e ./dev
    rm -f .venv/.installed-*
    touch "$stamp"
fi
