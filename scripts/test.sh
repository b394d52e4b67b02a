#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (integration needs root).
# Extra arguments go to pytest, e.g. scripts/test.sh -k unpack
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${COVE_VENV:-/opt/cove/venv}
py="$venv/bin/python"
[ -x "$py" ] || py=${PYTHON:-python3}
cd "$here"

bash "$here/scripts/test-deps.sh" || exit 1

"$py" -m ruff check cove tests bench || exit 1
"$py" -m mypy || exit 1
# the layer contract (pyproject.toml [tool.importlinter]): imports point down
"$venv/bin/lint-imports" --no-logo --no-cache || exit 1
"$py" -m pytest -rs -p no:cacheprovider "$@"
rc=$?
if [ $rc = 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit $rc
