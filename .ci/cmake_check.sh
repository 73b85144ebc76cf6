#!/usr/bin/env bash
# Configures and builds the CMake target (CPU kernels) against the venv's torch, then loads it.
# A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit even for a CPU-only
# target, so point it at the real toolkit (the nvcc on PATH may be a wrapper script) and at the
# pip-installed nvrtc that the toolkit here lacks.
set -euo pipefail
PY=${PY:-.venv/bin/python}
BUILD=${BUILD:-build/cmake}
args=(-DCMAKE_PREFIX_PATH="$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')")
if [ "$($PY -c 'import torch; print(torch.version.cuda is not None)')" = True ] && command -v nvcc > /dev/null; then
  nvcc_real=$(sed -n 's/^exec[[:space:]]\{1,\}\([^[:space:]]*\/bin\/nvcc\).*/\1/p' "$(command -v nvcc)" | head -n 1)
  cuda_root=$(dirname "$(dirname "$(readlink -f "${nvcc_real:-$(command -v nvcc)}")")")
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_root")
  nvrtc=$(find "$($PY -c 'import sys; print(sys.prefix)')" -name 'libnvrtc.so*' 2> /dev/null | sort | head -n 1)
  [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}  # no GPU to detect one from
fi
mkdir -p "$BUILD"
cmake -S . -B "$BUILD" "${args[@]}" > "$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "${MAX_JOBS:-2}"
$PY -c "import torch, sys; torch.ops.load_library(sys.argv[1]); print('CMake build loads:', torch.ops.miue.mi_ue_loss_forward)" "$BUILD/libmiue_ops.so"
