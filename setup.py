"""Builds miue_ext._C from csrc/: C++ kernels always, CUDA kernels when USE_CUDA says so.

Environment: USE_CUDA=auto|1|0 (auto: whenever nvcc and a CUDA build of torch are present,
GPU or not), TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), MAX_JOBS, DEBUG=1.
"""

import os
import re
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def find_cuda_home():
    """The toolkit folder. The nvcc on PATH may be a wrapper script that execs the real nvcc;
    torch would take the wrapper's folder for CUDA_HOME and then fail to find libcudart."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc_path = Path(nvcc).resolve()
    if nvcc_path.stat().st_size < 64 * 1024:  # a script, not the compiler binary
        text = nvcc_path.read_bytes().decode("utf-8", errors="ignore")
        target = re.search(r"exec\s+[\"']?(/\S*?/bin/nvcc)\b", text)
        if target:
            nvcc_path = Path(target.group(1)).resolve()
    return str(nvcc_path.parent.parent)


cuda_home = find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home  # must be set before torch.utils.cpp_extension is imported
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    mode = os.environ.get("USE_CUDA", "auto").lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"USE_CUDA must be auto, 1 or 0, got {mode!r}")
    available = torch.version.cuda is not None and cuda_home is not None and Path(cuda_home, "bin", "nvcc").exists()
    if mode == "1" and not available:
        raise SystemExit(
            f"USE_CUDA=1 but CUDA kernels cannot be built: torch.version.cuda={torch.version.cuda}, "
            f"CUDA_HOME={cuda_home}. Install a CUDA build of torch and the CUDA toolkit (nvcc)."
        )
    return available if mode == "auto" else mode == "1"


def extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cpp = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    cu = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    # at::parallel_for expands OpenMP pragmas inside our translation units; -fno-trapping-math
    # lets the compiler if-convert (and so vectorise) the branch-free exp of the CPU rows.
    args = {"cxx": opt + ["-fopenmp", "-fno-trapping-math", "-DMIUE_PYTHON_MODULE"]}
    link = ["-fopenmp"]
    if want_cuda():
        args["nvcc"] = opt + ["-lineinfo", "-DMIUE_PYTHON_MODULE"]
        return CUDAExtension("miue_ext._C", cpp + cu, extra_compile_args=args, extra_link_args=link)
    return CppExtension("miue_ext._C", cpp, extra_compile_args=args, extra_link_args=link)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
