#!/usr/bin/env bash
# `make test-real`'s first step: make sure DIR holds the three real models (build.sh) and the real
# recording (recordings.sh), building only what is missing. Exit status 0 when all are there.
set -uo pipefail
OUT=${1:?usage: ensure.sh DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
ready() {
  for m in whisper-tiny.en whisper-base smollm2-135m-instruct; do [ -f "$OUT/$m/model.safetensors" ] || return 1; done
}
ready || bash "$HERE/build.sh" "$OUT" || exit 1
bash "$HERE/recordings.sh" "$OUT" || exit 1
