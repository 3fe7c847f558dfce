#!/usr/bin/env bash
# The wheels a lent GPU machine lacks, for `make gpu-check` there (it has no network): the
# packages of this project that its image (python3 3.12 with torch, triton, lightning,
# torchmetrics, …) does not hold, at the versions constraints.txt pins, for CPython 3.12 on
# manylinux x86-64, into .whl/ (ignored by git; about 30 MB). docs/benchmarks.md#gpu shows the
# command that installs them there.
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING=(
  jsonargparse docstring_parser typeshed_client
  albumentations albucore stringzilla simsimd
  torch-pruning
  wandb cwevals platformdirs xxhash pydantic pydantic_core annotated-types typing-inspection
  opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
  opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
  opentelemetry-exporter-otlp-common opentelemetry-exporter-http-transport
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
  manylinux1_x86_64)
mkdir -p .whl
for name in "${MISSING[@]}"; do
  pattern="^$(sed 's/[-_]/[-_]/g' <<<"$name")=="
  pin=$(grep -i -m1 "$pattern" constraints.txt) || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp ${PLATFORMS[@]/#/--platform } -d .whl "$pin"
done
echo "$(ls .whl | wc -l) wheels in .whl/ ($(du -sh .whl | cut -f1))"
