#!/usr/bin/env bash
# Installs the tools the CI tests use: check-jsonschema (PyPI) in a venv under
# ~/.cache/exp/ci-venv, to validate the workflow `exp ci init github` writes against GitHub
# Actions' schema (bundled with check-jsonschema: no network at test time). Idempotent.
set -euo pipefail
venv="$HOME/.cache/exp/ci-venv"
[ -x "$venv/bin/check-jsonschema" ] && exit 0
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'check-jsonschema>=0.29'
"$venv/bin/check-jsonschema" --version >/dev/null
