#!/bin/bash
# Makes tests/fixtures/mergekit with mergekit itself (PyPI, into the reference venv that
# scripts/make-arch-fixtures.sh creates). mergekit 0.1.4 fails on BERT models in plan.py
# ("can only concatenate list (not tuple)"): the venv copy gets list(...) around the aliases.
set -euo pipefail
cd "$(dirname "$0")/.."
R=.cache/ref-venv
[ -x $R/bin/python ] || { echo "no reference venv: run scripts/make-arch-fixtures.sh first" >&2; exit 1; }
# mergekit pins pydantic 2.10, older than transformers' venv has: its own venv, reading the rest
# (torch, transformers) from the reference venv.
V=.cache/mergekit-venv
if [ ! -x $V/bin/python ]; then
  python3 -m venv $V
  echo "$PWD/$($R/bin/python -c 'import site; print(site.getsitepackages()[0])' | sed "s#^$PWD/##")" \
    > "$($V/bin/python -c 'import site; print(site.getsitepackages()[0])')/ref.pth"
fi
$V/bin/pip install -q --no-deps mergekit==0.1.4 pydantic==2.10.6 pydantic_core==2.27.2 immutables==0.21
PLAN=$($V/bin/python -c 'import mergekit, os; print(os.path.join(os.path.dirname(mergekit.__file__), "plan.py"))')
sed -i 's/\[w_in.name\] + (w_in.aliases or \[\])/[w_in.name] + list(w_in.aliases or [])/' "$PLAN"
HF_HUB_OFFLINE=1 $V/bin/python scripts/make-merge-fixtures.py tests/fixtures/mergekit
