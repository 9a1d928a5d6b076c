#!/usr/bin/env bash
# Download, here, the wheels of every package that benchmarks/gpu_check.py needs and the device machine's image
# lacks, into .whl/ (ignored by git), and print the one command that installs them there and runs the check.
#
#   bash benchmarks/gpu_wheels.sh            # download (skips what is there), recompress, print the command
#   bash benchmarks/gpu_wheels.sh --print    # only print the command
#   bash benchmarks/gpu_wheels.sh --verify   # also run gpu_check --device cpu --quick in an emulated image (below)
#   bash benchmarks/gpu_wheels.sh --no-taesd # leave TAESD's weights out (GMS then trains on a tiny random VAE)
#
# The device (the `device` tool's machines): Python 3.12, x86-64, torch 2.11 and the packages listed in IMAGE below
# (the tool's KINDS.md), nothing can be downloaded there, and at most 64 MiB travel per call (the working tree and
# .whl together). So:
# * WHEELS is the full list, resolved here: the closure of nnunetv2's, acvl_utils', batchgenerators', blosc2's and
#   diffusers' requirements, minus what the image has, minus what is declared but never imported on the check's
#   path (graphviz, imagecodecs, yacs, future, unittest2, pydantic: blosc2.schema_validation only, h2: httpx[http2],
#   importlib_metadata: Python < 3.8 only, monai / torchio: nnunet-ext evaluate / robustness only). --verify shows
#   it: it installs exactly these wheels (their cp311 builds, same versions) into an environment that holds only the
#   IMAGE packages of this checkout's .venv, without console scripts, and runs the quick check there.
# * wheels larger than 1 MiB are recompressed with LZMA (still wheels: pip reads any zip compression Python's zipfile
#   reads, and RECORD hashes the uncompressed files): SimpleITK goes from 50 to 27 MiB (this takes a few minutes once).
# * acvl_utils publishes no wheel: built here from its sdist (pure Python).
# * TAESD's weights (../shared/weights/taesd, 4.7 MiB) go along as .whl/taesd (gpu_check looks there), unless
#   --no-taesd: without them the GMS smoke trains on a tiny random VAE and the GMS timing uses TAESD's architecture
#   with random weights (the same step time).
# * this package is not installed there: gpu_check puts the repository on PYTHONPATH and calls every console script
#   (nnUNetv2_*, nnunet-ext) through its entry point, writing shims on PATH for the project's own subprocess calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST=.whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(
  "nnunetv2==2.8.1"
  "batchgenerators==0.25.5"
  "batchgeneratorsv2==0.3.6"
  "dynamic-network-architectures==0.4.4"
  "blosc2==4.16.1"                   # nnU-Net's preprocessed data
  "ndindex==1.10.1"                  # blosc2
  "SimpleITK==2.5.7"                 # nnU-Net's image reader (imported by nnunetv2.imageio)
  "nibabel==5.4.2"                   # imported by nnunetv2.imageio
  "connected-components-3d==4.1.1"   # acvl_utils.morphology: nnU-Net's transforms and post-processing
  "diffusers==0.42.1"                # VAEs (GMS, STEGO's taesd), S2S2's diffusion generator
)
SDIST_ONLY=("acvl-utils==0.2.6")
# the device image's Python packages (the device tool's KINDS.md, read 2026-11-17)
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp"

print_command() {
  cat <<'EOF'
Device command (run tool: carry [".whl"], timeout_s 600):
set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_check.py --budget-s 520 --results $OUT 2>&1 | tee $OUT/gpu_check.log
Re-run only what failed (same machine, still warm: the wheels are installed): append --parts smoke --items NAME,NAME
EOF
}

have() {  # is a wheel of $2 (any spelling: SimpleITK, simpleitk; acvl-utils, acvl_utils) version $3 in $1?
  local norm; norm="$(echo "$2" | tr 'A-Z-' 'a-z_')"
  ls "$1" 2>/dev/null | grep '\.whl$' | tr 'A-Z' 'a-z' | grep -q "^${norm}-${3}-"
}

download() {  # $1 = destination, $2 = python version (312 on the device, 311 for --verify here)
  local dest="$1" pyv="$2"
  mkdir -p "$dest"
  for spec in "${WHEELS[@]}"; do
    local name="${spec%%==*}" version="${spec##*==}"
    if have "$dest" "$name" "$version"; then continue; fi
    echo "downloading $spec (Python ${pyv})"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyv" --implementation cp \
      "${PLATFORMS[@]}" -d "$dest" "$spec"
  done
  for spec in "${SDIST_ONLY[@]}"; do
    if have "$dest" "${spec%%==*}" "${spec##*==}"; then continue; fi
    echo "building $spec (no wheel published; pure Python)"
    "$PY" -m pip wheel -q --no-deps -w "$dest" "$spec"
  done
}

recompress() {  # LZMA for wheels over 1 MiB (idempotent: already-LZMA wheels are left alone)
  "$PY" - "$1" <<'PYEOF'
import os, sys, zipfile
folder = sys.argv[1]
for name in sorted(os.listdir(folder)):
    if name.endswith(".whl.tmp"):  # left by an interrupted run
        os.unlink(os.path.join(folder, name))
for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not name.endswith(".whl") or os.path.getsize(path) < (1 << 20):
        continue
    with zipfile.ZipFile(path) as z:
        if all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist() if i.file_size):
            continue
        tmp = path + ".tmp"
        with zipfile.ZipFile(tmp, "w") as out:
            for info in z.infolist():
                info2 = zipfile.ZipInfo(info.filename, info.date_time)
                info2.external_attr, info2.compress_type = info.external_attr, zipfile.ZIP_LZMA
                out.writestr(info2, z.read(info))
    before = os.path.getsize(path)
    os.replace(tmp, path)
    print(f"recompressed {name}: {before / 2**20:.1f} -> {os.path.getsize(path) / 2**20:.1f} MiB")
PYEOF
}

verify() {
  # an environment that has only the image's packages (this checkout's .venv builds of them), no console scripts,
  # and the wheel set installed with --target, as on the device; then the quick check in it
  local root=/tmp/gpu_wheels_verify
  local venv_py=.venv/bin/python
  [ -x "$venv_py" ] || { echo "--verify needs ./.venv (scripts/setup_env.sh)" >&2; exit 1; }
  rm -rf "$root"
  mkdir -p "$root"
  download "$root/whl311" 311
  cp "$DEST"/*none-any.whl "$root/whl311/" 2>/dev/null || true
  local base; base="$("$venv_py" -c 'import sys; print(sys._base_executable)')"
  "$base" -m venv --without-pip "$root/venv"
  local site; site="$("$root/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # the image holds its packages' own requirements: link those of this checkout's builds too (they may differ from
  # the image's versions, e.g. huggingface_hub 2.x needs httpx2), but never a package of the wheel set
  IMAGE="$IMAGE" SHIPPED="${WHEELS[*]} ${SDIST_ONLY[*]}" "$venv_py" - "$site" <<'PYEOF'
import os, re, sys
from importlib.metadata import distributions
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
dists = {norm(d.metadata["Name"]): d for d in distributions()}
shipped = {norm(spec.split("==")[0]) for spec in os.environ["SHIPPED"].split()}
image, todo = set(), [norm(n) for n in os.environ["IMAGE"].split()]
while todo:
    name = todo.pop()
    if name in image or name in shipped or name not in dists:
        continue
    image.add(name)
    for r in dists[name].requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(norm(req.name))
site = sys.argv[1]
linked = set()
for name in sorted(image):
    d = dists[name]
    tops = {f.parts[0] for f in (d.files or []) if f.parts and not f.parts[0].startswith("..")}
    for top in tops | {os.path.basename(str(d._path))}:
        src = os.path.join(os.path.dirname(str(d._path)), top)
        dst = os.path.join(site, top)
        if os.path.exists(src) and not os.path.exists(dst) and not top.endswith(".pth") and top != "bin":
            os.symlink(src, dst)
            linked.add(top)
print(f"emulated image: {len(linked)} entries linked into {site}")
PYEOF
  "$venv_py" -m pip install -q --no-index --no-deps --no-compile --target "$root/site" "$root"/whl311/*.whl
  echo "running the quick check in the emulated image (a few minutes)"
  env -u VIRTUAL_ENV PYTHONPATH="$root/site:$PWD" PATH="$root/site/bin:/usr/bin:/bin" PYTHONUNBUFFERED=1 \
    "$root/venv/bin/python" benchmarks/gpu_check.py --device cpu --quick --results "$root/results"
}

MODE=download
TAESD=1
for a in "$@"; do
  case "$a" in
    --print) MODE=print ;;
    --verify) MODE=verify ;;
    --no-taesd) TAESD=0 ;;
    *) echo "unknown argument $a (--print, --verify, --no-taesd)" >&2; exit 2 ;;
  esac
done
if [ "$MODE" = print ]; then print_command; exit 0; fi
grep -qx '.whl/' .gitignore 2>/dev/null || echo "warning: .whl/ is not in .gitignore" >&2
download "$DEST" 312
recompress "$DEST"
if [ "$TAESD" = 1 ] && [ -f ../shared/weights/taesd/taesd_encoder.safetensors ]; then
  mkdir -p "$DEST/taesd"
  cp -u ../shared/weights/taesd/taesd_*.safetensors "$DEST/taesd/"
elif [ "$TAESD" = 0 ]; then
  rm -rf "$DEST/taesd"
fi
echo "wheels in $DEST: $(ls "$DEST"/*.whl | wc -l), $(du -sh "$DEST" | cut -f1) in all (with TAESD: $TAESD);" \
     "the working tree travels beside them: keep the total under 64 MiB"
if [ "$MODE" = verify ]; then verify; fi
print_command
