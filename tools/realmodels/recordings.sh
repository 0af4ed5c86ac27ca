#!/usr/bin/env bash
# Fetch a real recording of human speech, with its reference transcript, from the package index:
#   DIR/recordings/sample.wav  30 s, 16 kHz mono, two people on a telephone line (English)
#   DIR/recordings/sample.stm  13 segments: session, channel, speaker, start s, end s, words
# Both ship in the wheel of pyannote.audio 4.0.7 (MIT licence), as pyannote/audio/sample/.
# Usage: recordings.sh DIR   (about 1 MB; re-running skips what exists). Nothing is committed.
set -euo pipefail
OUT=${1:?usage: recordings.sh DIR}
PY=${PYTHON:-python3}
REC=$OUT/recordings
[ -f "$REC/sample.wav" ] && [ -f "$REC/sample.stm" ] && exit 0
W=$OUT/wheels; mkdir -p "$W" "$REC"
ls "$W"/pyannote_audio-4.0.7-*.whl >/dev/null 2>&1 \
  || "$PY" -m pip download -q --no-deps -d "$W" "pyannote.audio==4.0.7"
"$PY" - "$(ls "$W"/pyannote_audio-4.0.7-*.whl)" "$REC" <<'PYCODE'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("sample.wav", "sample.stm"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"pyannote/audio/sample/{name}"))
PYCODE
printf '%s\n\nFetched by tools/realmodels/recordings.sh on %s.\n' \
  "sample.wav and sample.stm from the wheel of pyannote.audio 4.0.7 (MIT licence, (c) CNRS, pyannoteAI), files pyannote/audio/sample/: 30 s of real conversational telephone speech, two speakers, with a reference transcript (STM)." \
  "$(date -u +%F)" >"$REC/PROVENANCE.md"
echo "real recording ready in $REC"
